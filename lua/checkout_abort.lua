-- checkout_abort: a checkout attempt whose payment did not happen, in one call: the hold goes back
-- to its buyer with its own expiry (abort_checkout), a final refusal (declined) is recorded as the
-- key's answer, and the attempt's lock is let go (only by its owner).
-- KEYS:  the 14 event keys of common.lua · KEYS[15] checkouts HASH · KEYS[16] the attempt's lock
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] Idempotency-Key · ARGV[4] record field · ARGV[5] lock token
--        · ARGV[6] error JSON {code, message, details} to record as final, or '' (retryable)
-- Returns {status, JSON}: ok {state} (the hold's state, or the error that ended it)
--!include common
--!include sale

local hold_id, buyer, key, field, token, final = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local K_RECORDS, K_LOCK = KEYS[15], KEYS[16]
local state, err = end_paying(hold_id, buyer, key, now_ms())
if final ~= '' then
  local raw = redis.call('HGET', K_RECORDS, field)
  if raw then
    local rec = cjson.decode(raw)
    rec.state, rec.error = 'failed', cjson.decode(final)
    redis.call('HSET', K_RECORDS, field, cjson.encode(rec))
  end
end
if redis.call('GET', K_LOCK) == token then redis.call('DEL', K_LOCK) end
return reply('ok', {state = state or err[1]})
