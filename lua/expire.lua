-- expire: give back holds whose expiry has passed, in bounded batches.
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] max holds to expire in this call (bounds the time Redis spends here)
-- Returns {status, JSON}: ok {expired, remaining_due, version}
-- Keeps: a hold expires at most once and only after its expiry (Redis clock); a paying
-- hold's expiry was extended by begin_checkout, so it is not taken away mid-payment.
--!include common

local max = tonumber(ARGV[1]) or 100
local now = now_ms()
local n = sweep(now, max)
local due = redis.call('ZCOUNT', K_HOLDS, '-inf', now)
return reply('ok', {expired = n, remaining_due = due, version = tonumber(redis.call('HGET', K_META, 'version')) or 0})
