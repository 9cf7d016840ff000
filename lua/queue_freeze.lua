-- queue_freeze: close the pre-queue when the sale opens: fix its size and reveal the seed.
-- Run right after an organiser opens the sale; queue_join.lua and queue_advance.lua do the same at
-- their first sight of the open sale, so whichever runs first decides, atomically.
-- KEYS[1] meta HASH (reads status) · KEYS[2] q:state HASH · KEYS[3] q:seed STRING
-- ARGV: none.
-- Returns 1 when this call closed the pre-queue, else 0.
-- Keeps: the pre-queue closes once; joins after it get places after every pre-queue place.

--!include prequeue

local K_META, K_STATE, K_SEED = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', K_META, 'status') ~= 'on_sale' then return 0 end
if redis.call('EXISTS', K_STATE) == 0 then return 0 end
local t = redis.call('TIME')
local now_s = tonumber(t[1])
if freeze_prequeue(K_STATE, K_SEED, now_s, now_s * 1000 + math.floor(tonumber(t[2]) / 1000)) then return 1 end
return 0
