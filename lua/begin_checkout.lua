-- begin_checkout: mark a hold as paying and extend it to cover the payment.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] checkout key (Idempotency-Key of the checkout)
-- Returns {status, JSON}: ok {hold_id, seats, ga, count, expires_at_ms, state, checkout_key}
--   hold_not_found · forbidden · hold_expired · invalid_state {state, checkout_key}
-- Keeps: expiry only ever moves later, to now + meta.checkout_ms at most; the hold's own expiry
-- is remembered for abort_checkout; a second checkout with another key on a paying hold is
-- refused (one payment per hold).
--!include common
--!include sale

local view, err = begin_paying(ARGV[1], ARGV[2], ARGV[3], now_ms())
if not view then return err end
return reply('ok', view)
