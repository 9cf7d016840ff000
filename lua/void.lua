-- void: a refunded order's seats and GA tickets go back on sale (sold -> free).
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] order_id · ARGV[2] refund JSON (who, why, provider refund id)
-- ARGV[3] waiting-list offer time (ms) · then optionally the waiting-list keys of lib/waitlist.lua
-- Returns {status, JSON}: ok {order_id, seats, ga, count, version, replay, offered} · order_not_found
-- Keeps: idempotent (a second void changes nothing); the void is appended to the ledger
-- in the same call. After the event's final sell-out the returned tickets go, in the same call, to
-- the waiting list's first buyers as offers (held for them), never free for anyone else.
--!include common
--!include waitlist

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
local now = now_ms()
local v = record_change(OP_VOID, result.seats, result.ga, -1, result.hold_id, result.buyer, result.count, nil, now)
result.voided_at_ms, result.void_version = now, v
redis.call('HSET', K_ORDERS, order_id, cjson.encode(result))
redis.call('XADD', K_LEDGER, '*', 'k', 'void', 'd', cjson.encode({order_id = order_id, voided_at_ms = now,
           seats = result.seats, ga = result.ga, version = v}), 'o', refund_json)
local offered = wl_offer(now, tonumber(ARGV[3]) or 600000, result.seats)
return reply('ok', {order_id = order_id, seats = result.seats, ga = result.ga, count = result.count,
                    version = v, replay = false, offered = offered})
