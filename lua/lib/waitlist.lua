-- waitlist.lua: an event's waiting list after its final sell-out (docs/waiting-room.md, "Waiting list").
-- Needs common.lua included first. The waiting-list scripts (and void.lua) receive, after the event keys
-- of common.lua, these keys (found by their names, so the event keys may grow;
-- gateway/store/keys.py waitlist_keys):
--   q:state    HASH   the waiting room's state; sold_out = 1 is the final sell-out (queue_advance.lua)
--   wl:list    ZSET   listed buyers still waiting for an offer -> list number (list order)
--   wl:who     HASH   buyer -> JSON entry {n list number, em e-mail?, st waiting|offered|accepted|lapsed|
--                     full|left, t joined (ms); once offered: h offer hold, dl offer deadline (ms), q tickets
--                     offered, o offer number; accepted: ah the buyer's hold, k tickets taken}
--   wl:offers  ZSET   buyers with an open offer -> deadline (ms)
--   wl:state   HASH   seq (list numbers), offers, offered_tickets, accepted, accepted_tickets, lapsed, declined
--   wl:mail    LIST   offers to tell by e-mail (JSON), drained by waitlist_step.lua
-- An offer is a hold of the listed buyer (hold id `<event>-wl<offer number>`), so the returned tickets it
-- carries are held, not free: nobody else can hold them, and the audit replays it like any hold. Its expiry
-- in the hold index is the offer deadline + WL_GRACE_MS: the admission leader passes a lapsed offer on
-- (release + the next buyer's grant in one call) before the hold itself could expire.
-- Without these keys (callers that predate the list) nothing here does anything.

local function wl_find(suffix)
  for i = #KEYS, 1, -1 do
    if string.sub(KEYS[i], -#suffix) == suffix then return KEYS[i] end
  end
  return nil
end
local K_QSTATE, K_WL_LIST, K_WL_WHO = wl_find(':q:state'), wl_find(':wl:list'), wl_find(':wl:who')
local K_WL_OFFERS, K_WL_STATE, K_WL_MAIL = wl_find(':wl:offers'), wl_find(':wl:state'), wl_find(':wl:mail')
local WL_GRACE_MS = 60000
local WL_MAX_OFFERS = 100  -- offers made per call at most (the rest on the leader's next tick)

local function wl_final()
  return K_QSTATE ~= nil and K_WL_LIST ~= nil and redis.call('HGET', K_QSTATE, 'sold_out') == '1'
end

local function wl_entry(buyer)
  local raw = redis.call('HGET', K_WL_WHO, buyer)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function wl_save(buyer, e)
  redis.call('HSET', K_WL_WHO, buyer, cjson.encode(e))
end

local function wl_event_id()
  return string.match(K_META, '{ev:(%d+)}') or '0'
end

-- GA types with tickets left: {{code, n}, ...} in type order.
local function wl_free_ga()
  local caps, used, out = {}, {}, {}
  local ga = redis.call('HGETALL', K_GA)
  for i = 1, #ga, 2 do
    local f, v = ga[i], tonumber(ga[i + 1]) or 0
    local kind, code = string.match(f, '^(%a+):(.*)$')
    if kind == 'cap' then caps[code] = v
    elseif kind == 'held' or kind == 'sold' then used[code] = (used[code] or 0) + v end
  end
  for code, cap in pairs(caps) do
    local n = cap - (used[code] or 0)
    if n > 0 then out[#out + 1] = {code, n} end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end

-- Up to `want` free seats (neither sold nor held): the `hint` seats first (those just returned), then
-- the lowest free seat numbers.
local function wl_free_seats(hint, want, n_seats)
  local out, seen = {}, {}
  if want <= 0 or n_seats <= 0 then return out end
  for i = 1, #hint do
    local idx = hint[i]
    if #out >= want then return out end
    if not seen[idx] and redis.call('GETBIT', K_SOLD, idx) == 0 and redis.call('GETBIT', K_HELD, idx) == 0 then
      out[#out + 1] = idx
      seen[idx] = true
    end
  end
  local sold, held = redis.call('GET', K_SOLD) or '', redis.call('GET', K_HELD) or ''
  for byte = 0, math.floor((n_seats - 1) / 8) do
    local b = bit.bor(string.byte(sold, byte + 1) or 0, string.byte(held, byte + 1) or 0)
    if b ~= 255 then
      for j = 0, 7 do
        local idx = byte * 8 + j
        if idx >= n_seats or #out >= want then return out end
        if bit.band(b, bit.rshift(128, j)) == 0 and not seen[idx] then
          out[#out + 1] = idx
          seen[idx] = true
        end
      end
    end
    if #out >= want then return out end
  end
  return out
end

-- Grant a hold of `seats` and GA tickets `g` ({type: n}) to `buyer`: the same state and change record
-- as hold.lua / hold_ga.lua write.
local function wl_grant(hold_id, buyer, seats, g, n, exp, now)
  for i = 1, #seats do
    redis.call('SETBIT', K_HELD, seats[i], 1)
    redis.call('HSET', K_SEATOWN, seats[i], hold_id)
  end
  for code, k in pairs(g) do redis.call('HINCRBY', K_GA, 'held:' .. code, k) end
  redis.call('HINCRBY', K_BUYERS, buyer, n)
  redis.call('ZADD', K_HOLDS, exp, hold_id)
  local rec = {b = buyer, s = seats, g = g, st = 'held', e = exp, c = now, n = n}
  redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
  record_change(OP_HOLD, seats, g, 1, hold_id, buyer, n, exp, now)
  return rec
end

-- Offer the free tickets to listed buyers in list order, each up to what the per-buyer limit leaves
-- them; `hint` = seats just returned (offered first). Only after the final sell-out. Returns offers made.
local function wl_offer(now, ttl_ms, hint)
  if not wl_final() then return 0 end
  local meta = load_meta()
  if not meta or meta.status ~= 'on_sale' then return 0 end
  local made = 0
  while made < WL_MAX_OFFERS do
    local first = redis.call('ZRANGE', K_WL_LIST, 0, 0)[1]
    if not first then break end
    local ga = wl_free_ga()
    local ga_n = 0
    for i = 1, #ga do ga_n = ga_n + ga[i][2] end
    local seats_left = math.max(0, meta.n_seats - redis.call('BITCOUNT', K_SOLD) - redis.call('BITCOUNT', K_HELD))
    if ga_n + seats_left <= 0 then break end
    redis.call('ZREM', K_WL_LIST, first)
    local e = wl_entry(first) or {n = 0, t = now}
    local room = meta.limit - (tonumber(redis.call('HGET', K_BUYERS, first)) or 0)
    if room <= 0 then
      e.st = 'full'  -- already holds or owns the most a buyer may have
      wl_save(first, e)
    else
      local seats = wl_free_seats(hint, math.min(room, seats_left), meta.n_seats)
      local g, n = {}, #seats
      for i = 1, #ga do
        if n >= room then break end
        local k = math.min(ga[i][2], room - n)
        g[ga[i][1]] = k
        n = n + k
      end
      if n <= 0 then  -- nothing could be taken after all (a stale held bit): keep the place, stop here
        redis.call('ZADD', K_WL_LIST, e.n, first)
        break
      end
      local o = redis.call('HINCRBY', K_WL_STATE, 'offers', 1)
      redis.call('HINCRBY', K_WL_STATE, 'offered_tickets', n)
      local hold_id = wl_event_id() .. '-wl' .. o
      local dl = now + ttl_ms
      wl_grant(hold_id, first, seats, g, n, dl + WL_GRACE_MS, now)
      e.st, e.h, e.dl, e.q, e.o = 'offered', hold_id, dl, n, o
      wl_save(first, e)
      redis.call('ZADD', K_WL_OFFERS, dl, first)
      if e.em and e.em ~= '' and K_WL_MAIL then
        redis.call('RPUSH', K_WL_MAIL, cjson.encode({to = e.em, buyer = first, count = n, deadline_ms = dl,
                                                     offer = o}))
      end
      made = made + 1
    end
  end
  return made
end

-- End `buyer`'s open offer at `now` with state `st` (lapsed, left): its hold is given back (released while
-- before its own expiry) and its tickets go to the next listed buyers. A hold already paid for or in
-- payment (the buyer checked it out directly) counts as accepted. Returns the offer's seats (hints).
local function wl_end_offer(buyer, e, st, now)
  redis.call('ZREM', K_WL_OFFERS, buyer)
  local hint = {}
  local raw = e.h and redis.call('HGET', K_HDATA, e.h)
  if raw then
    local rec = decode_hold(raw)
    if rec.st == 'paying' then
      e.st, e.ah, e.k = 'accepted', e.h, rec.n
      redis.call('HINCRBY', K_WL_STATE, 'accepted', 1)
      redis.call('HINCRBY', K_WL_STATE, 'accepted_tickets', rec.n)
      wl_save(buyer, e)
      return hint
    end
    local exp = tonumber(redis.call('ZSCORE', K_HOLDS, e.h)) or rec.e
    rec.e = exp
    drop_hold(e.h, rec, (exp > now) and OP_RELEASE or OP_EXPIRE, now)
    hint = rec.s
  end
  e.st = st
  redis.call('HINCRBY', K_WL_STATE, st == 'left' and 'declined' or 'lapsed', 1)
  wl_save(buyer, e)
  return hint
end
