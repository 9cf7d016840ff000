-- hold_ga: hold a quantity of one general-admission ticket type, all or nothing.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] ticket type code · ARGV[4] quantity (>= 1)
-- optional ARGV[5] `@<client address>`, ARGV[6] factor: holds per address (address_take in common.lua)
-- Returns {status, JSON}:
--   ok             {hold_id, ga {type: n}, expires_at_ms, count, version}
--   sold_out       {type, available}
--   limit_exceeded {limit, held, requested}
--   address_limit_exceeded {limit, held, requested} (tickets held at once from the address)
--   not_on_sale · event_not_found · bad_request {reason}
-- Keeps: held:<type> + sold:<type> <= cap:<type> (expired holds are swept first).
--!include common

local hold_id, buyer, code, qty = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local meta = load_meta()
if not meta then return reply('event_not_found') end
if meta.status ~= 'on_sale' then return reply('not_on_sale', {status = meta.status}) end
if not qty or qty < 1 or qty ~= math.floor(qty) then return reply('bad_request', {reason = 'quantity must be a positive integer'}) end
local cap = tonumber(redis.call('HGET', K_GA, 'cap:' .. code))
if not cap then return reply('bad_request', {reason = 'unknown ticket type', type = code}) end
local existing = redis.call('HGET', K_HDATA, hold_id)
if existing then
  local rec = decode_hold(existing)
  if rec.b ~= buyer then return reply('bad_request', {reason = 'hold id already used'}) end
  local view = hold_view(hold_id, rec)
  view.version = tonumber(redis.call('HGET', K_META, 'version')) or 0
  return reply('ok', view)
end

local now = now_ms()
local have = tonumber(redis.call('HGET', K_BUYERS, buyer)) or 0
if have + qty > meta.limit then
  return reply('limit_exceeded', {limit = meta.limit, held = have, requested = qty})
end
local addr, addr_err = address_take(ARGV[5], ARGV[6], qty, meta, now)
if addr_err then return addr_err end

local function available()
  local c = redis.call('HMGET', K_GA, 'held:' .. code, 'sold:' .. code)
  return cap - (tonumber(c[1]) or 0) - (tonumber(c[2]) or 0)
end
local free = available()
if free < qty then
  -- Expired holds may be what stands in the way: give them back, then look again.
  while sweep(now, 64) == 64 do end
  free = available()
  if free < qty then return reply('sold_out', {type = code, available = math.max(free, 0)}) end
else
  sweep(now, 16)
end

local exp = now + meta.ttl
local g = {}
g[code] = qty
redis.call('HINCRBY', K_GA, 'held:' .. code, qty)
redis.call('HINCRBY', K_BUYERS, buyer, qty)
if addr then redis.call('HINCRBY', K_ADDRS, addr, qty) end
redis.call('ZADD', K_HOLDS, exp, hold_id)
local rec = {b = buyer, s = {}, g = g, st = 'held', e = exp, c = now, n = qty, a = addr}
redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
local v = record_change(OP_HOLD, {}, g, 1, hold_id, buyer, qty, exp, now)
local view = hold_view(hold_id, rec)
view.version = v
return reply('ok', view)
