-- confirm: a paid hold becomes sold, and the sale is appended to the ledger.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] order_id · ARGV[4] order JSON (payment, totals, email)
-- Returns {status, JSON}:
--   ok {order_id, hold_id, seats, ga, count, serial_start, confirmed_at_ms, version, replay}
--   hold_not_found · forbidden · hold_expired · invalid_state {order_id} (hold sold to another order)
-- Keeps: only the owner, only before expiry; held -> sold, the ledger entry and the change
-- record are written in this one call; a retry with the same order id returns the same
-- result and changes nothing (idempotent), so a hold converts into exactly one order.
--!include common
--!include sale

local result, err = sell(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if not result then return err end
return reply('ok', result)
