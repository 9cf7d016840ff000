-- common.lua: helpers shared by the inventory scripts.
-- The loader (gateway/store/scripts.py) replaces the line `--!include common` of a
-- script with this file, so every script stays one self-contained EVALSHA.
--
-- Every inventory script receives the same event keys, all tagged {ev:<id>}:
--   KEYS[1]  meta     HASH   status, n_seats, hold_ttl_ms, limit, version, checkout_ms
--   KEYS[2]  sold     STRING bitmap, bit i = seat i sold (Redis bit order)
--   KEYS[3]  held     STRING bitmap, bit i = seat i held
--   KEYS[4]  holds    ZSET   hold_id -> expiry (ms since epoch, Redis clock)
--   KEYS[5]  hdata    HASH   hold_id -> JSON {b buyer, s seats, g {type: n}, st state, e expiry, c created, n count}
--   KEYS[6]  seatown  HASH   seat index -> hold_id holding it
--   KEYS[7]  buyers   HASH   buyer -> tickets held + bought (per-buyer limit)
--   KEYS[8]  changes  STREAM availability changes {v version, op, s "i,j,..", g "type:delta,.."}
--   KEYS[9]  ledger   STREAM final writes for Postgres {k kind, d JSON}
--   KEYS[10] orders   HASH   order_id -> JSON result of confirm (idempotent replays), "void" flag inside
--   KEYS[11] ga       HASH   cap:<type>, held:<type>, sold:<type>
--   KEYS[12] serial   STRING ticket serial counter
--   KEYS[13] gone     ZSET   hold_id -> when it expired (ms): tombstones, kept TOMB_MS, so a late
--                            checkout or release of an expired hold hears "hold_expired", not "not found"
-- Time comes from the Redis clock (TIME), so every caller agrees on expiry.

local K_META, K_SOLD, K_HELD, K_HOLDS, K_HDATA, K_SEATOWN, K_BUYERS, K_CHANGES, K_LEDGER, K_ORDERS, K_GA, K_SERIAL =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local K_GONE = KEYS[13]
local TOMB_MS = 600000

local OP_HOLD, OP_RELEASE, OP_SELL, OP_VOID, OP_EXPIRE = 1, 2, 3, 4, 5
local CHANGES_MAXLEN = 100000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function reply(status, detail)
  return {status, cjson.encode(detail or {})}
end

local function load_meta()
  local m = redis.call('HMGET', K_META, 'status', 'n_seats', 'hold_ttl_ms', 'limit', 'checkout_ms')
  if not m[1] then return nil end
  return {status = m[1], n_seats = tonumber(m[2]) or 0, ttl = tonumber(m[3]) or 600000,
          limit = tonumber(m[4]) or 8, checkout_ms = tonumber(m[5]) or 120000}
end

local function join(list)
  local parts = {}
  for i = 1, #list do parts[i] = tostring(list[i]) end
  return table.concat(parts, ',')
end

local function ga_csv(g, sign)
  local parts = {}
  for code, n in pairs(g) do parts[#parts + 1] = code .. ':' .. tostring(sign * n) end
  return table.concat(parts, ',')
end

-- One change record; returns the new version.
local function record_change(op, seats, g, sign)
  local v = redis.call('HINCRBY', K_META, 'version', 1)
  redis.call('XADD', K_CHANGES, 'MAXLEN', '~', CHANGES_MAXLEN, '*', 'v', v, 'op', op,
             's', join(seats), 'g', ga_csv(g, sign))
  return v
end

-- Give a hold's inventory back (release, expiry). Returns the new version.
local function drop_hold(hold_id, rec, op)
  for i = 1, #rec.s do
    local idx = rec.s[i]
    redis.call('SETBIT', K_HELD, idx, 0)
    if redis.call('HGET', K_SEATOWN, idx) == hold_id then redis.call('HDEL', K_SEATOWN, idx) end
  end
  for code, n in pairs(rec.g) do redis.call('HINCRBY', K_GA, 'held:' .. code, -n) end
  if redis.call('HINCRBY', K_BUYERS, rec.b, -rec.n) <= 0 then redis.call('HDEL', K_BUYERS, rec.b) end
  redis.call('ZREM', K_HOLDS, hold_id)
  redis.call('HDEL', K_HDATA, hold_id)
  if op == OP_EXPIRE then redis.call('ZADD', K_GONE, now_ms(), hold_id) end
  return record_change(op, rec.s, rec.g, -1)
end

local function decode_hold(raw)
  local rec = cjson.decode(raw)
  if type(rec.s) ~= 'table' then rec.s = {} end
  if type(rec.g) ~= 'table' then rec.g = {} end
  return rec
end

-- Expire up to `max` holds whose expiry has passed. Returns how many.
local function sweep(now, max)
  redis.call('ZREMRANGEBYSCORE', K_GONE, '-inf', now - TOMB_MS)
  local ids = redis.call('ZRANGEBYSCORE', K_HOLDS, '-inf', now, 'LIMIT', 0, max)
  for i = 1, #ids do
    local raw = redis.call('HGET', K_HDATA, ids[i])
    if raw then drop_hold(ids[i], decode_hold(raw), OP_EXPIRE) else redis.call('ZREM', K_HOLDS, ids[i]) end
  end
  return #ids
end

local function hold_view(hold_id, rec)
  return {hold_id = hold_id, seats = rec.s, ga = rec.g, expires_at_ms = rec.e, state = rec.st, count = rec.n}
end

-- A hold record that the caller may act on, or an error reply.
local function owned_hold(hold_id, buyer, now)
  local raw = redis.call('HGET', K_HDATA, hold_id)
  if not raw then
    if redis.call('ZSCORE', K_GONE, hold_id) then return nil, reply('hold_expired', {hold_id = hold_id}) end
    return nil, reply('hold_not_found', {hold_id = hold_id})
  end
  local rec = decode_hold(raw)
  if rec.b ~= buyer then return nil, reply('forbidden', {hold_id = hold_id}) end
  local exp = tonumber(redis.call('ZSCORE', K_HOLDS, hold_id))
  if not exp or exp <= now then
    drop_hold(hold_id, rec, OP_EXPIRE)
    return nil, reply('hold_expired', {hold_id = hold_id})
  end
  rec.e = exp
  return rec, nil
end
