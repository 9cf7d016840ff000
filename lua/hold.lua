-- hold: hold reserved seats, all or nothing.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] hold_id (made by the gateway; a retry with the same id and buyer returns the same hold)
-- ARGV[2] buyer
-- ARGV[3] group size g (seats per candidate group)
-- ARGV[4..] seat indices: one group (explicit seats) or several candidate groups of g
--           seats each (best available); the first group whose seats are all free is held.
-- optional, last: `@<client address>`, factor: holds per address (address_take in common.lua)
-- Returns {status, JSON}:
--   ok               {hold_id, seats, expires_at_ms, count, version}
--   seat_unavailable {seats: [indices taken]} (for candidates: the seats that lost the race)
--   limit_exceeded   {limit, held, requested}
--   address_limit_exceeded {limit, held, requested} (tickets held at once from the address)
--   not_on_sale      {status} · event_not_found · bad_request {reason}
-- Keeps: a seat's held bit is set only when it is neither sold nor held by a live hold
-- (expired holds met on the way are given back first), so no seat is held or sold twice.
--!include common

local hold_id, buyer, size = ARGV[1], ARGV[2], tonumber(ARGV[3])
local addr_arg, factor_arg = address_args(3)
local n_args = addr_arg and #ARGV - 2 or #ARGV
local meta = load_meta()
if not meta then return reply('event_not_found') end
if meta.status ~= 'on_sale' then return reply('not_on_sale', {status = meta.status}) end
if not size or size < 1 or (n_args - 3) < size or (n_args - 3) % size ~= 0 then
  return reply('bad_request', {reason = 'seat list does not match the group size'})
end
local existing = redis.call('HGET', K_HDATA, hold_id)
if existing then
  local rec = decode_hold(existing)
  if rec.b ~= buyer then return reply('bad_request', {reason = 'hold id already used'}) end
  local view = hold_view(hold_id, rec)
  view.version = tonumber(redis.call('HGET', K_META, 'version')) or 0
  return reply('ok', view)
end

local now = now_ms()
sweep(now, 16)


-- A seat is taken when sold, or held by a live hold; an expired owner is given back now.
local function taken(idx)
  if redis.call('GETBIT', K_SOLD, idx) == 1 then return true end
  if redis.call('GETBIT', K_HELD, idx) == 0 then return false end
  local owner = redis.call('HGET', K_SEATOWN, idx)
  if owner then
    local exp = tonumber(redis.call('ZSCORE', K_HOLDS, owner))
    if exp and exp > now then return true end
    local raw = redis.call('HGET', K_HDATA, owner)
    if raw then drop_hold(owner, decode_hold(raw), OP_EXPIRE, now) end
  end
  redis.call('SETBIT', K_HELD, idx, 0)  -- no live owner: a stale bit
  redis.call('HDEL', K_SEATOWN, idx)
  return false
end

-- Validate every group before anything else: bad input changes nothing.
local groups = (n_args - 3) / size
local candidates = {}
for gi = 0, groups - 1 do
  local seats, seen = {}, {}
  for j = 1, size do
    local idx = tonumber(ARGV[3 + gi * size + j])
    if not idx or idx < 0 or idx >= meta.n_seats or idx ~= math.floor(idx) then
      return reply('bad_request', {reason = 'unknown seat', seat = ARGV[3 + gi * size + j]})
    end
    if seen[idx] then return reply('bad_request', {reason = 'duplicate seat', seat = idx}) end
    seen[idx] = true
    seats[j] = idx
  end
  candidates[gi + 1] = seats
end

local have = tonumber(redis.call('HGET', K_BUYERS, buyer)) or 0
if have + size > meta.limit then
  return reply('limit_exceeded', {limit = meta.limit, held = have, requested = size})
end
local addr, addr_err = address_take(addr_arg, factor_arg, size, meta, now)
if addr_err then return addr_err end

local lost = {}
local chosen = nil
for gi = 1, groups do
  local seats, ok = candidates[gi], true
  for j = 1, size do
    if taken(seats[j]) then
      ok = false
      lost[#lost + 1] = seats[j]
    end
  end
  if ok then chosen = seats break end
end
if not chosen then return reply('seat_unavailable', {seats = lost}) end

local exp = now + meta.ttl
for j = 1, size do
  redis.call('SETBIT', K_HELD, chosen[j], 1)
  redis.call('HSET', K_SEATOWN, chosen[j], hold_id)
end
redis.call('HINCRBY', K_BUYERS, buyer, size)
if addr then redis.call('HINCRBY', K_ADDRS, addr, size) end
redis.call('ZADD', K_HOLDS, exp, hold_id)
local rec = {b = buyer, s = chosen, g = {}, st = 'held', e = exp, c = now, n = size, a = addr}
redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
local v = record_change(OP_HOLD, chosen, {}, 1, hold_id, buyer, size, exp, now)
local view = hold_view(hold_id, rec)
view.version = v
return reply('ok', view)
