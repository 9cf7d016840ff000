-- waitlist_join: put a buyer on the event's waiting list (after its final sell-out), or find their entry.
-- KEYS:  gateway/store/keys.py waitlist_keys (the event keys, q:state, the wl:* keys of lib/waitlist.lua).
-- ARGV[1] buyer · ARGV[2] e-mail for the offer ('' = none; a new one replaces the old) · ARGV[3] offer time (ms)
-- Returns {status, JSON}:
--   ok             {existing, entry (see lib/waitlist.lua), position (1 = next offer; nil unless waiting), length}
--   not_sold_out   {} (the waiting room still runs: join the queue) · invalid_state {reason} · event_not_found
-- Keeps: one entry per buyer (a second join returns it); a buyer who left or let an offer lapse joins again
-- at the back. Tickets already free (returned with nobody listed) are offered at once, in the same call.
--!include common
--!include waitlist

local buyer, email, ttl_ms = ARGV[1], ARGV[2] or '', tonumber(ARGV[3]) or 600000
local m = redis.call('HMGET', K_META, 'status', 'queue_mode')
if not m[1] then return reply('event_not_found') end
if m[2] ~= '1' then return reply('invalid_state', {reason = 'no_waiting_room'}) end
if not wl_final() then return reply('not_sold_out', {}) end
local now = now_ms()
local e = wl_entry(buyer)
local existing = e ~= nil and e.st ~= 'left' and e.st ~= 'lapsed'
if not existing then
  local n = redis.call('HINCRBY', K_WL_STATE, 'seq', 1)
  e = {n = n, st = 'waiting', t = now, em = e and e.em or nil}
  redis.call('ZADD', K_WL_LIST, n, buyer)
end
if email ~= '' then e.em = email end
wl_save(buyer, e)
if not existing then
  wl_offer(now, ttl_ms, {})
  e = wl_entry(buyer)
end
local position = nil
local rank = redis.call('ZRANK', K_WL_LIST, buyer)
if rank then position = rank + 1 end
return reply('ok', {existing = existing, entry = e, position = position, length = redis.call('ZCARD', K_WL_LIST)})
