-- prequeue.lua: closing the pre-queue when the sale opens, shared by queue_freeze.lua,
-- queue_join.lua and queue_advance.lua (whichever sees the open sale first decides, atomically).
-- Fixes the pre-queue's size (arrivals so far; 0 when no seed was committed) and reveals the seed.
-- Returns true when this call closed it.
local function freeze_prequeue(k_state, k_seed, now_s, now_ms)
  if redis.call('HGET', k_state, 'opened') then return false end
  local seq = tonumber(redis.call('HGET', k_state, 'seq')) or 0
  local seed = redis.call('GET', k_seed) or ''
  if seed == '' then seq = 0 end
  redis.call('HSET', k_state, 'opened', now_s, 'pre', seq, 'seed', seed, 'last', now_ms)
  return true
end
