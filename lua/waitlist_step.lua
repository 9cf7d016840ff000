-- waitlist_step: the admission leader's waiting-list work for one event, each tick after the final sell-out:
-- offers past their deadline lapse and pass to the next listed buyers; tickets that came back free (a hold
-- given back after the sell-out) are offered; the offers to tell by e-mail are handed to the caller.
-- KEYS:  gateway/store/keys.py waitlist_keys.
-- ARGV[1] offer time (ms)
-- Returns {status, JSON}: ok {lapsed, offered, mail [JSON, ...]}
-- Keeps: a lapsed offer's tickets go to the next buyer in the same call (never free in between).
--!include common
--!include waitlist

local ttl_ms = tonumber(ARGV[1]) or 600000
local now = now_ms()
local lapsed, hints = 0, {}
local due = redis.call('ZRANGEBYSCORE', K_WL_OFFERS, '-inf', now, 'LIMIT', 0, 100)
for i = 1, #due do
  local e = wl_entry(due[i])
  if e and e.st == 'offered' then
    local seats = wl_end_offer(due[i], e, 'lapsed', now)
    for j = 1, #seats do hints[#hints + 1] = seats[j] end
    lapsed = lapsed + 1
  else
    redis.call('ZREM', K_WL_OFFERS, due[i])
  end
end
local offered = 0
if redis.call('ZCARD', K_WL_LIST) > 0 then offered = wl_offer(now, ttl_ms, hints) end
local mail = {}
if redis.call('LLEN', K_WL_MAIL) > 0 then
  mail = redis.call('LRANGE', K_WL_MAIL, 0, 99)
  redis.call('LTRIM', K_WL_MAIL, #mail, -1)
end
return reply('ok', {lapsed = lapsed, offered = offered, mail = mail})
