-- prepare_event: load an event's inventory into Redis when it first opens; later
-- calls only set the status (opening, pausing and closing never touch inventory).
-- KEYS:  the 14 event keys of common.lua.
-- ARGV[1] status · ARGV[2] n_seats · ARGV[3] hold_ttl_ms · ARGV[4] per-buyer limit
-- ARGV[5] checkout_ms · ARGV[6..] GA pairs: code, capacity, code, capacity, ...
-- Returns {status, JSON}: ok {created, version}
-- Keeps: bitmaps, counters and holds of a prepared event are never reset here.
--!include common

local status = ARGV[1]
if redis.call('EXISTS', K_META) == 1 then
  redis.call('HSET', K_META, 'status', status)
  return reply('ok', {created = false, version = tonumber(redis.call('HGET', K_META, 'version')) or 0})
end
local n = tonumber(ARGV[2])
redis.call('HSET', K_META, 'status', status, 'n_seats', n, 'hold_ttl_ms', ARGV[3], 'limit', ARGV[4],
           'checkout_ms', ARGV[5], 'version', 0)
if n > 0 then
  redis.call('SETBIT', K_SOLD, n - 1, 0)
  redis.call('SETBIT', K_HELD, n - 1, 0)
end
for i = 6, #ARGV, 2 do
  redis.call('HSET', K_GA, 'cap:' .. ARGV[i], ARGV[i + 1], 'held:' .. ARGV[i], 0, 'sold:' .. ARGV[i], 0)
end
return reply('ok', {created = true, version = 0})
