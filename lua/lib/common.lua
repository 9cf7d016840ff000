-- common.lua: helpers shared by the inventory scripts.
-- The loader (gateway/store/scripts.py) replaces the line `--!include common` of a
-- script with this file, so every script stays one self-contained EVALSHA.
--
-- Every inventory script receives the same event keys, all tagged {ev:<id>}:
--   KEYS[1]  meta     HASH   status, n_seats, hold_ttl_ms, limit, version, checkout_ms
--   KEYS[2]  sold     STRING bitmap, bit i = seat i sold (Redis bit order)
--   KEYS[3]  held     STRING bitmap, bit i = seat i held
--   KEYS[4]  holds    ZSET   hold_id -> expiry (ms since epoch, Redis clock)
--   KEYS[5]  hdata    HASH   hold_id -> JSON {b buyer, s seats, g {type: n}, st state, e expiry, c created, n count;
--                            while paying: k checkout key, he own expiry, pb when the payment began}
--   KEYS[6]  seatown  HASH   seat index -> hold_id holding it
--   KEYS[7]  buyers   HASH   buyer -> tickets held + bought (per-buyer limit)
--   KEYS[8]  changes  STREAM one record per inventory change (see record_change)
--   KEYS[9]  ledger   STREAM final writes for Postgres {k kind, d JSON}
--   KEYS[10] orders   HASH   order_id -> JSON result of confirm (idempotent replays), "void" flag inside
--   KEYS[11] ga       HASH   cap:<type>, held:<type>, sold:<type>
--   KEYS[12] serial   STRING ticket serial counter
--   KEYS[13] gone     ZSET   hold_id -> when it expired (ms): tombstones, kept TOMB_MS, so a late
--                            checkout or release of an expired hold hears "hold_expired", not "not found"
--   KEYS[14] addrs    HASH   client address -> tickets it holds at once (holds per address, see
--                            address_take); a hold taken with an address records it as `a`
-- Time comes from the Redis clock (TIME), so every caller agrees on expiry.

local K_META, K_SOLD, K_HELD, K_HOLDS, K_HDATA, K_SEATOWN, K_BUYERS, K_CHANGES, K_LEDGER, K_ORDERS, K_GA, K_SERIAL =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local K_GONE, K_ADDRS = KEYS[13], KEYS[14]
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

-- One change record; returns the new version. The availability snapshots read
--   v version · op · s "i,j,.." seats · g "type:delta,.." GA tickets;
-- the audit's replay (gateway/organisers/history.py) also reads
--   h hold id (a void: the order's hold) · b buyer · n tickets · t the script's clock (ms) ·
--   e the hold's expiry in force (ms; a sale's includes the payment window; none for a void) ·
--   p when the payment of a sold hold began (ms; only a sale of a paying hold).
local function record_change(op, seats, g, sign, hold_id, buyer, n, exp, now, paid_from)
  local v = redis.call('HINCRBY', K_META, 'version', 1)
  local f = {'v', v, 'op', op, 's', join(seats), 'g', ga_csv(g, sign), 'h', hold_id, 'b', buyer, 'n', n, 't', now}
  if exp then
    f[#f + 1] = 'e'
    f[#f + 1] = exp
  end
  if paid_from then
    f[#f + 1] = 'p'
    f[#f + 1] = paid_from
  end
  redis.call('XADD', K_CHANGES, 'MAXLEN', '~', CHANGES_MAXLEN, '*', unpack(f))
  return v
end

-- Holds per client address: see address_take below.
local function address_give_back(rec)
  if rec.a and K_ADDRS then
    if redis.call('HINCRBY', K_ADDRS, rec.a, -rec.n) <= 0 then redis.call('HDEL', K_ADDRS, rec.a) end
  end
end

-- The optional `@<address>`, factor pair at the end of ARGV (after `first` fixed arguments), or nil.
local function address_args(first)
  local n = #ARGV
  if n >= first + 2 and string.sub(ARGV[n - 1], 1, 1) == '@' then return ARGV[n - 1], ARGV[n] end
  return nil, nil
end

-- Give a hold's inventory back (release, expiry) at `now`. Returns the new version.
local function drop_hold(hold_id, rec, op, now)
  for i = 1, #rec.s do
    local idx = rec.s[i]
    redis.call('SETBIT', K_HELD, idx, 0)
    if redis.call('HGET', K_SEATOWN, idx) == hold_id then redis.call('HDEL', K_SEATOWN, idx) end
  end
  for code, n in pairs(rec.g) do redis.call('HINCRBY', K_GA, 'held:' .. code, -n) end
  if redis.call('HINCRBY', K_BUYERS, rec.b, -rec.n) <= 0 then redis.call('HDEL', K_BUYERS, rec.b) end
  address_give_back(rec)
  redis.call('ZREM', K_HOLDS, hold_id)
  redis.call('HDEL', K_HDATA, hold_id)
  if op == OP_EXPIRE then redis.call('ZADD', K_GONE, now, hold_id) end
  return record_change(op, rec.s, rec.g, -1, hold_id, rec.b, rec.n, rec.e, now)
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
    if raw then drop_hold(ids[i], decode_hold(raw), OP_EXPIRE, now) else redis.call('ZREM', K_HOLDS, ids[i]) end
  end
  return #ids
end

-- Holds per client address (gateway/api/sybil.py): the trailing optional arguments of the hold
-- scripts, `@<address>` then a factor, cap the tickets one address holds at once across all its
-- buyer tokens at floor(factor x the per-buyer limit). Taken with the hold (the caller adds n to
-- K_ADDRS and records the address as `a`), given back when the hold is released, expires or is
-- sold (address_give_back). Returns the address (or nil: not counted), else nil and an error reply.
local function address_take(addr_arg, factor_arg, n, meta, now)
  if not addr_arg or string.sub(addr_arg, 1, 1) ~= '@' or not K_ADDRS then return nil, nil end
  local addr, factor = string.sub(addr_arg, 2), tonumber(factor_arg) or 0
  if addr == '' then return nil, nil end
  if factor <= 0 then return addr, nil end
  local cap = math.floor(factor * meta.limit)
  local have = tonumber(redis.call('HGET', K_ADDRS, addr)) or 0
  if have + n > cap then
    while sweep(now, 64) == 64 do end  -- expired holds of this address may be what counts
    have = tonumber(redis.call('HGET', K_ADDRS, addr)) or 0
  end
  if have + n > cap then
    -- No index of an address's holds is kept: the wait named is the longest it can take (a hold time).
    return nil, reply('address_limit_exceeded', {limit = cap, held = have, requested = n,
                                                 retry_after_s = math.ceil(meta.ttl / 1000)})
  end
  return addr, nil
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
    rec.e = exp or rec.e
    drop_hold(hold_id, rec, OP_EXPIRE, now)
    return nil, reply('hold_expired', {hold_id = hold_id})
  end
  rec.e = exp
  return rec, nil
end
