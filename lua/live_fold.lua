-- live_fold: fold the new records of an event's change and ledger streams into the running totals
-- of the organiser's live figures (holds, releases, expiries, sales, refunds, revenue, per minute).
-- It reads what the sale already writes and changes neither stream.
-- KEYS[1] changes STREAM (common.lua) · KEYS[2] ledger STREAM (common.lua)
--      · KEYS[3] live HASH: cur:changes, cur:ledger (the last record folded of each stream),
--        holds, released, sold, voided, expired (+ <name>:tickets), orders, revenue, refunds, refunded,
--        orphan_refunds, min:lo (oldest per-minute bucket kept)
--      · KEYS[4] live:min HASH: t:<minute> tickets sold, o:<minute> orders, r:<minute> revenue (minor
--        units); minute = stream id ms // 60000
-- ARGV[1] most records read per stream in this call · ARGV[2] minutes of buckets kept
-- Returns {changes cursor, ledger cursor, more} (more = 1: a stream had more new records than ARGV[1]).
-- Keeps: every record is counted once, whoever calls and however many call at once (the cursors move
-- in the same call as the totals).

local K_LIVE, K_MIN = KEYS[3], KEYS[4]
local max, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local NAMES = {'holds', 'released', 'sold', 'voided', 'expired'}  -- by op (lua/lib/common.lua)
local newest = nil

local function fields(list)
  local f = {}
  for i = 1, #list, 2 do f[list[i]] = list[i + 1] end
  return f
end

local function minute(id)
  local m = math.floor(tonumber(string.match(id, '^(%d+)')) / 60000)
  if not newest or m > newest then newest = m end
  return m
end

local function tickets(f)
  local n = 0
  if f.s and f.s ~= '' then for _ in string.gmatch(f.s, '[^,]+') do n = n + 1 end end
  if f.g and f.g ~= '' then for d in string.gmatch(f.g, ':(-?%d+)') do n = n + math.abs(tonumber(d)) end end
  return n
end

local more = 0
local cur = redis.call('HGET', K_LIVE, 'cur:changes') or '0-0'
local rows = redis.call('XRANGE', KEYS[1], '(' .. cur, '+', 'COUNT', max)
for i = 1, #rows do
  local f = fields(rows[i][2])
  local name = NAMES[tonumber(f.op) or 0]
  if name then
    local n = tickets(f)
    redis.call('HINCRBY', K_LIVE, name, 1)
    redis.call('HINCRBY', K_LIVE, name .. ':tickets', n)
    if name == 'sold' then redis.call('HINCRBY', K_MIN, 't:' .. minute(rows[i][1]), n) end
  end
end
if #rows > 0 then
  cur = rows[#rows][1]
  redis.call('HSET', K_LIVE, 'cur:changes', cur)
end
if #rows >= max then more = 1 end

local lcur = redis.call('HGET', K_LIVE, 'cur:ledger') or '0-0'
rows = redis.call('XRANGE', KEYS[2], '(' .. lcur, '+', 'COUNT', max)
for i = 1, #rows do
  local f = fields(rows[i][2])
  local ok, o = pcall(cjson.decode, f.o or '{}')
  local amount = 0
  if ok and type(o) == 'table' then amount = math.floor(tonumber(o.amount_minor) or 0) end
  if f.k == 'order' then
    local m = minute(rows[i][1])
    redis.call('HINCRBY', K_LIVE, 'orders', 1)
    redis.call('HINCRBY', K_LIVE, 'revenue', amount)
    redis.call('HINCRBY', K_MIN, 'o:' .. m, 1)
    redis.call('HINCRBY', K_MIN, 'r:' .. m, amount)
  elseif f.k == 'void' then
    redis.call('HINCRBY', K_LIVE, 'refunds', 1)
    redis.call('HINCRBY', K_LIVE, 'refunded', amount)
  elseif f.k == 'orphan_refund' then
    redis.call('HINCRBY', K_LIVE, 'orphan_refunds', 1)
  end
end
if #rows > 0 then
  lcur = rows[#rows][1]
  redis.call('HSET', K_LIVE, 'cur:ledger', lcur)
end
if #rows >= max then more = 1 end

-- Forget buckets older than `keep` minutes (at most 2 * keep fields per call: bounded work).
if newest then
  local lo = tonumber(redis.call('HGET', K_LIVE, 'min:lo') or newest)
  local upto = newest - keep
  if upto - lo > 2 * keep then lo = upto - 2 * keep end
  for m = lo, upto - 1 do redis.call('HDEL', K_MIN, 't:' .. m, 'o:' .. m, 'r:' .. m) end
  redis.call('HSET', K_LIVE, 'min:lo', math.max(lo, upto))
end
return {cur, lcur, more}
