-- abort_checkout: a checkout whose payment did not happen gives the hold back to its buyer
-- (state paying -> held) so they can try again; the expiry stays where it is.
-- KEYS:  the 12 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] checkout key that began the checkout
-- Returns {status, JSON}: ok {hold_id, state} · hold_not_found · forbidden · hold_expired
-- Keeps: only the checkout that began paying can end it; a hold never loses seats here.
--!include common

local hold_id, buyer, key = ARGV[1], ARGV[2], ARGV[3]
local rec, err = owned_hold(hold_id, buyer, now_ms())
if not rec then return err end
if rec.st == 'paying' and rec.k == key then
  rec.st, rec.k = 'held', nil
  redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
end
return reply('ok', {hold_id = hold_id, state = rec.st})
