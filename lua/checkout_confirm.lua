-- checkout_confirm: the last step of a paid checkout in one call: the hold is sold (confirm), the
-- key's record says done, the checkout latency feeds the waiting room's backpressure, and the
-- attempt's lock is let go (only by its owner). The caller sends the "paid" record (HSET) in the
-- same write just before this script, so an interrupted attempt is finished by a retry or refunded
-- by recovery, never forgotten.
-- KEYS:  the 14 event keys of common.lua · KEYS[15] checkouts HASH · KEYS[16] the attempt's lock
--        · KEYS[17] the waiting room's q:state HASH (checkout_ms, an EWMA)
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] order id · ARGV[4] order JSON · ARGV[5] record field
--        · ARGV[6] paid record JSON · ARGV[7] lock token · ARGV[8] this checkout's latency ms
--        · ARGV[9] EWMA weight
-- Returns what confirm returns. On an error the record stays "paid" and the lock is kept: the
-- caller refunds, records the refusal and lets go.
--!include common
--!include sale

local hold_id, buyer, order_id, order_json, field, paid, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5], ARGV[6], ARGV[7]
local latency, alpha = tonumber(ARGV[8]), tonumber(ARGV[9])
local K_RECORDS, K_LOCK, K_QSTATE = KEYS[15], KEYS[16], KEYS[17]

local result, err = sell(hold_id, buyer, order_id, order_json)
if not result then return err end
local rec = cjson.decode(paid)
rec.state = 'done'
redis.call('HSET', K_RECORDS, field, cjson.encode(rec))
if latency then
  local old = tonumber(redis.call('HGET', K_QSTATE, 'checkout_ms'))
  redis.call('HSET', K_QSTATE, 'checkout_ms', old and ((1 - alpha) * old + alpha * latency) or latency)
end
if redis.call('GET', K_LOCK) == token then redis.call('DEL', K_LOCK) end
return reply('ok', result)
