-- queue_join: join an event's waiting room, or find the buyer's existing place.
-- KEYS[1] meta      HASH   inventory meta (reads status, queue_mode)
-- KEYS[2] q:state   HASH   epoch, seq (arrivals), upto (admitted up to place), opened, pre (pre-queue size),
--                          seed (revealed at opening), prequeue, sold_out, ... (see queue_advance.lua)
-- KEYS[3] q:who     HASH   buyer -> arrival number
-- KEYS[4] q:seen    STRING u32 (big-endian) per place: last join or poll, seconds since epoch + 1; 0 = never
-- KEYS[5] q:fate    STRING u32 per place: 0 undecided, 1 skipped (stalled), t + 2 = admitted at epoch + t
-- KEYS[6] q:seed    STRING the pre-queue seed, secret until the sale opens
-- KEYS[7] rate counter of the caller's IP for this event · KEYS[8] rate counter of the buyer for this event
-- KEYS[9] q:pre     ZSET   pre-queue arrivals scored by their key (the order, see below)
-- ARGV[1] buyer · ARGV[2] IP limit · ARGV[3] buyer limit · ARGV[4] window (s) · ARGV[5] admission TTL (s)
-- Returns {status, JSON}:
--   ok            {n arrival number, r place (0 while in the pre-queue), existing, epoch, upto, admitted_at?}
--   rate_limited  {retry_after, scope}
--   not_on_sale {status} · invalid_state {reason} · sold_out {}
-- Keeps: one live place per buyer (a second join returns the same place); places are numbered by one
-- counter, so after opening admission order is join order; the pre-queue is frozen (size fixed, seed
-- revealed) by the first script that sees the sale open, atomically with that observation.

--!include prequeue

local K_META, K_STATE, K_WHO, K_SEEN, K_FATE, K_SEED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function reply(status, detail)
  return {status, cjson.encode(detail or {})}
end

local function over(key, limit, window)
  local c = redis.call('INCR', key)
  if c == 1 then redis.call('EXPIRE', key, window) end
  if c > limit then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    return ttl
  end
  return nil
end

-- The pre-queue order: each pre-queue arrival n is scored by key(n) = the first 13 hex digits of
-- SHA-1(seed text .. ':' .. n) in KEYS[9] (member: n, zero-padded to 10 digits, so equal keys rank
-- by arrival); its place once the sale opens is its rank. gateway/waiting_room/shuffle.py is the twin.
local function prequeue_key(seed, n)
  return tonumber(string.sub(redis.sha1hex(seed .. ':' .. n), 1, 13), 16)
end
local function member(n)
  return string.format('%010d', n)
end

local window = tonumber(ARGV[4])
local wait = over(KEYS[7], tonumber(ARGV[2]), window)
if wait then return reply('rate_limited', {retry_after = wait, scope = 'ip'}) end
wait = over(KEYS[8], tonumber(ARGV[3]), window)
if wait then return reply('rate_limited', {retry_after = wait, scope = 'buyer'}) end

local buyer, ttl = ARGV[1], tonumber(ARGV[5])
local m = redis.call('HMGET', K_META, 'status', 'queue_mode')
local status = m[1]
if not status then
  if redis.call('HGET', K_STATE, 'prequeue') ~= '1' then return reply('not_on_sale', {status = 'draft'}) end
  status = 'draft'
elseif m[2] ~= '1' then
  return reply('invalid_state', {reason = 'no_waiting_room'})
elseif status == 'closed' then
  return reply('not_on_sale', {status = status})
end

local t = redis.call('TIME')
local now_s = tonumber(t[1])
if redis.call('HSETNX', K_STATE, 'epoch', now_s) == 1 then
  redis.call('HSET', K_STATE, 'seq', 0, 'upto', 0, 'last', now_s * 1000)
end
local s = redis.call('HMGET', K_STATE, 'epoch', 'opened', 'pre', 'seed', 'upto', 'sold_out')
-- The queue opens at the first join on sale, or at once without a pre-queue to shuffle (no seed): a
-- join while the event is paused before it ever opened is an ordinary place, kept alive by its polls.
if not s[2] and (status == 'on_sale' or (redis.call('GET', K_SEED) or '') == '') then
  freeze_prequeue(K_STATE, K_SEED, now_s, now_s * 1000)
  s = redis.call('HMGET', K_STATE, 'epoch', 'opened', 'pre', 'seed', 'upto', 'sold_out')
end
if s[6] == '1' then return reply('sold_out', {}) end
local epoch, opened, pre, seed, upto = tonumber(s[1]), s[2], tonumber(s[3]) or 0, s[4] or '', tonumber(s[5]) or 0
local rel = now_s - epoch

local function place_of(n)
  if not opened then return 0 end
  if n <= pre then return redis.call('ZRANK', KEYS[9], member(n)) + 1 end
  return n
end

local n = tonumber(redis.call('HGET', K_WHO, buyer))
if n then
  local r = place_of(n)
  if r == 0 then
    return reply('ok', {n = n, r = 0, existing = true, epoch = epoch, upto = upto})
  end
  if r > upto then
    redis.call('BITFIELD', K_SEEN, 'SET', 'u32', '#' .. r, rel + 1)  -- a refresh keeps the place alive
    return reply('ok', {n = n, r = r, existing = true, epoch = epoch, upto = upto})
  end
  local fate = tonumber(redis.call('BITFIELD', K_FATE, 'GET', 'u32', '#' .. r)[1]) or 0
  if fate >= 2 and rel < fate - 2 + ttl then
    return reply('ok', {n = n, r = r, existing = true, epoch = epoch, upto = upto, admitted_at = epoch + fate - 2})
  end
  -- skipped (stalled) or admission expired: a new place at the back
end
n = redis.call('HINCRBY', K_STATE, 'seq', 1)
redis.call('HSET', K_WHO, buyer, n)
local r = 0
if opened then
  r = n
  redis.call('BITFIELD', K_SEEN, 'SET', 'u32', '#' .. r, rel + 1)
else
  local secret = redis.call('GET', K_SEED)
  if secret and secret ~= '' then redis.call('ZADD', KEYS[9], prequeue_key(secret, n), member(n)) end
end
return reply('ok', {n = n, r = r, existing = false, epoch = epoch, upto = upto})
