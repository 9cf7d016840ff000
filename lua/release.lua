-- release: the buyer gives a hold back before it expires.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] hold_id · ARGV[2] buyer
-- Returns {status, JSON}: ok {hold_id, version} · hold_not_found · forbidden ·
--   hold_expired (already given back) · invalid_state {state} (payment in progress)
-- Keeps: inventory returns exactly once (the record is deleted in the same call).
--!include common

local hold_id, buyer = ARGV[1], ARGV[2]
local now = now_ms()
local rec, err = owned_hold(hold_id, buyer, now)
if not rec then return err end
if rec.st == 'paying' then return reply('invalid_state', {state = 'paying', hold_id = hold_id}) end
local v = drop_hold(hold_id, rec, OP_RELEASE, now)
return reply('ok', {hold_id = hold_id, version = v})
