-- void: a refunded order's seats and GA tickets go back on sale (sold -> free).
-- KEYS:  the 13 event keys of common.lua.
-- ARGV[1] order_id · ARGV[2] refund JSON (who, why, provider refund id)
-- Returns {status, JSON}: ok {order_id, seats, ga, count, version, replay} · order_not_found
-- Keeps: idempotent (a second void changes nothing); the void is appended to the ledger
-- in the same call.
--!include common

local order_id, refund_json = ARGV[1], ARGV[2]
local raw = redis.call('HGET', K_ORDERS, order_id)
if not raw then return reply('order_not_found', {order_id = order_id}) end
local result = cjson.decode(raw)
if type(result.seats) ~= 'table' then result.seats = {} end
if type(result.ga) ~= 'table' then result.ga = {} end
if result.voided_at_ms then
  return reply('ok', {order_id = order_id, seats = result.seats, ga = result.ga, count = result.count,
                      version = result.void_version, replay = true})
end
for i = 1, #result.seats do redis.call('SETBIT', K_SOLD, result.seats[i], 0) end
for code, n in pairs(result.ga) do redis.call('HINCRBY', K_GA, 'sold:' .. code, -n) end
if redis.call('HINCRBY', K_BUYERS, result.buyer, -result.count) <= 0 then redis.call('HDEL', K_BUYERS, result.buyer) end
local v = record_change(OP_VOID, result.seats, result.ga, -1)
local now = now_ms()
result.voided_at_ms, result.void_version = now, v
redis.call('HSET', K_ORDERS, order_id, cjson.encode(result))
redis.call('XADD', K_LEDGER, '*', 'k', 'void', 'd', cjson.encode({order_id = order_id, voided_at_ms = now,
           seats = result.seats, ga = result.ga, version = v}), 'o', refund_json)
return reply('ok', {order_id = order_id, seats = result.seats, ga = result.ga, count = result.count,
                    version = v, replay = false})
