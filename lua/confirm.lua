-- confirm: a paid hold becomes sold, and the sale is appended to the ledger.
-- KEYS:  the 12 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] order_id · ARGV[4] order JSON (payment, totals, email)
-- Returns {status, JSON}:
--   ok {order_id, hold_id, seats, ga, count, serial_start, confirmed_at_ms, version, replay}
--   hold_not_found · forbidden · hold_expired · invalid_state {order_id} (hold sold to another order)
-- Keeps: only the owner, only before expiry; held -> sold, the ledger entry and the change
-- record are written in this one call; a retry with the same order id returns the same
-- result and changes nothing (idempotent), so a hold converts into exactly one order.
--!include common

local hold_id, buyer, order_id, order_json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local done = redis.call('HGET', K_ORDERS, order_id)
if done then
  local result = cjson.decode(done)
  if result.hold_id ~= hold_id then return reply('bad_request', {reason = 'order id already used'}) end
  result.replay = true
  return reply('ok', result)
end
local other = redis.call('HGET', K_ORDERS, 'hold:' .. hold_id)
if other then return reply('invalid_state', {order_id = other}) end

local now = now_ms()
local rec, err = owned_hold(hold_id, buyer, now)
if not rec then return err end

for i = 1, #rec.s do
  local idx = rec.s[i]
  redis.call('SETBIT', K_HELD, idx, 0)
  redis.call('SETBIT', K_SOLD, idx, 1)
  redis.call('HDEL', K_SEATOWN, idx)
end
for code, n in pairs(rec.g) do
  redis.call('HINCRBY', K_GA, 'held:' .. code, -n)
  redis.call('HINCRBY', K_GA, 'sold:' .. code, n)
end
redis.call('ZREM', K_HOLDS, hold_id)
redis.call('HDEL', K_HDATA, hold_id)
local v = record_change(OP_SELL, rec.s, rec.g, 1)
local serial_start = redis.call('INCRBY', K_SERIAL, rec.n) - rec.n + 1

local result = {order_id = order_id, hold_id = hold_id, buyer = buyer, seats = rec.s, ga = rec.g,
                count = rec.n, serial_start = serial_start, confirmed_at_ms = now, version = v}
redis.call('HSET', K_ORDERS, order_id, cjson.encode(result), 'hold:' .. hold_id, order_id)
redis.call('XADD', K_LEDGER, '*', 'k', 'order', 'd', cjson.encode(result), 'o', order_json)
result.replay = false
return reply('ok', result)
