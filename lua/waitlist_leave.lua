-- waitlist_leave: a buyer leaves the waiting list; an open offer of theirs passes to the next listed buyers.
-- KEYS:  gateway/store/keys.py waitlist_keys.
-- ARGV[1] buyer · ARGV[2] offer time (ms)
-- Returns {status, JSON}: ok {entry} · not_listed {}
--!include common
--!include waitlist

local buyer, ttl_ms = ARGV[1], tonumber(ARGV[2]) or 600000
local e = wl_entry(buyer)
if not e then return reply('not_listed', {}) end
local now = now_ms()
if e.st == 'waiting' then
  redis.call('ZREM', K_WL_LIST, buyer)
  e.st = 'left'
  wl_save(buyer, e)
elseif e.st == 'offered' then
  wl_offer(now, ttl_ms, wl_end_offer(buyer, e, 'left', now))
end
return reply('ok', {entry = wl_entry(buyer)})
