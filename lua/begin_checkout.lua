-- begin_checkout: mark a hold as paying and extend it to cover the payment.
-- KEYS:  the 12 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] checkout key (Idempotency-Key of the checkout)
-- Returns {status, JSON}: ok {hold_id, seats, ga, count, expires_at_ms, state, checkout_key}
--   hold_not_found · forbidden · hold_expired · invalid_state {state, checkout_key}
-- Keeps: expiry only ever moves later, to now + meta.checkout_ms at most; a second
-- checkout with another key on a paying hold is refused (one payment per hold).
--!include common

local hold_id, buyer, key = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
local rec, err = owned_hold(hold_id, buyer, now)
if not rec then return err end
local meta = load_meta()
if rec.st == 'paying' and rec.k ~= key then
  return reply('invalid_state', {state = 'paying', checkout_key = rec.k})
end
local exp = math.max(rec.e, now + meta.checkout_ms)
rec.st, rec.k, rec.e = 'paying', key, exp
redis.call('ZADD', K_HOLDS, exp, hold_id)
redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
local view = hold_view(hold_id, rec)
view.checkout_key = key
return reply('ok', view)
