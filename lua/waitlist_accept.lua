-- waitlist_accept: a listed buyer takes up to the tickets of their open offer as an ordinary hold.
-- KEYS:  gateway/store/keys.py waitlist_keys.
-- ARGV[1] buyer · ARGV[2] tickets to take (0 = all offered) · ARGV[3] the new hold's id · ARGV[4] offer time (ms)
-- Returns {status, JSON}:
--   ok             {hold_id, seats, ga, expires_at_ms, state, count, version} (the new hold, the event's hold time)
--   no_offer       {status} (not listed, waiting, accepted, ...) · offer_lapsed {deadline_ms}
--   not_on_sale {status} · invalid_state {state} · bad_request {reason} · event_not_found
-- Keeps: only the buyer the offer is bound to takes it, before its deadline; the offer hold is released
-- and the new hold granted in one call (the tickets are never free in between); what the buyer does not
-- take is offered to the next listed buyers in the same call.
--!include common
--!include waitlist

local buyer, want, hold_id, ttl_ms = ARGV[1], tonumber(ARGV[2]) or 0, ARGV[3], tonumber(ARGV[4]) or 600000
local meta = load_meta()
if not meta then return reply('event_not_found') end
local now = now_ms()
local e = wl_entry(buyer)
if not e or e.st ~= 'offered' then return reply('no_offer', {status = e and e.st or 'not_listed'}) end
if e.dl <= now then
  wl_offer(now, ttl_ms, wl_end_offer(buyer, e, 'lapsed', now))
  return reply('offer_lapsed', {deadline_ms = e.dl})
end
if meta.status ~= 'on_sale' then return reply('not_on_sale', {status = meta.status}) end
local raw = redis.call('HGET', K_HDATA, e.h)
if not raw then
  wl_end_offer(buyer, e, 'lapsed', now)
  return reply('offer_lapsed', {deadline_ms = e.dl})
end
local rec = decode_hold(raw)
if rec.st == 'paying' then return reply('invalid_state', {state = 'paying'}) end
if want == 0 then want = rec.n end
if want < 1 or want > rec.n or want ~= math.floor(want) then
  return reply('bad_request', {reason = 'count must be a whole number from 1 to ' .. rec.n, offered = rec.n})
end

-- The first `want` tickets of the offer: its seats in order, then its GA tickets in type order.
local seats, g, n, rest = {}, {}, 0, {}
for i = 1, #rec.s do
  if n < want then
    seats[#seats + 1] = rec.s[i]
    n = n + 1
  else
    rest[#rest + 1] = rec.s[i]
  end
end
local codes = {}
for code in pairs(rec.g) do codes[#codes + 1] = code end
table.sort(codes)
for i = 1, #codes do
  if n >= want then break end
  local k = math.min(rec.g[codes[i]], want - n)
  g[codes[i]] = k
  n = n + k
end

rec.e = tonumber(redis.call('ZSCORE', K_HOLDS, e.h)) or rec.e
drop_hold(e.h, rec, OP_RELEASE, now)
local hold = wl_grant(hold_id, buyer, seats, g, want, now + meta.ttl, now)
redis.call('ZREM', K_WL_OFFERS, buyer)
e.st, e.ah, e.k = 'accepted', hold_id, want
redis.call('HINCRBY', K_WL_STATE, 'accepted', 1)
redis.call('HINCRBY', K_WL_STATE, 'accepted_tickets', want)
wl_save(buyer, e)
wl_offer(now, ttl_ms, rest)
local view = hold_view(hold_id, hold)
view.version = tonumber(redis.call('HGET', K_META, 'version')) or 0
return reply('ok', view)
