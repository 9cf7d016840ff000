-- abort_checkout: a checkout whose payment did not happen gives the hold back to its buyer
-- (state paying -> held) with its own expiry again, so they can try again until then.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] checkout key that began the checkout
-- Returns {status, JSON}: ok {hold_id, state} · hold_not_found · forbidden · hold_expired
-- Keeps: only the checkout that began paying can end it; a hold never loses seats here, and a
-- failed payment never extends it (each attempt starts from the hold's own expiry).
--!include common
--!include sale

local state, err = end_paying(ARGV[1], ARGV[2], ARGV[3], now_ms())
if not state then return err end
return reply('ok', {hold_id = ARGV[1], state = state})
