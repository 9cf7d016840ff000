-- queue_advance: one tick of the admission leader for one event: take or renew the leader lease,
-- then move "admitted up to place" forward at the organiser's rate, slowed by backpressure and
-- held back only by what the inventory left can really serve (see "Admission budget" below).
-- KEYS[1] q:lease   STRING leader id, with expiry (PX)
-- KEYS[2] q:state   HASH   see queue_join.lua; this script writes upto, credit, last (ms), mrate (places/s),
--                          frate (the rate ETAs are forecast at),
--                          arate (admissions/s), admitted, skipped, paused, factor, free, held, expiring,
--                          holds, sold_out, leader, rate, and the demand model: pend (JSON [[t, n], ...]:
--                          admissions not answered yet, t = ms since epoch, oldest first), pending, ccur
--                          (changes stream cursor), react (running median reaction time, s), pwin (pending
--                          window, s), tpb (tickets per buyer), acted, taken, sells, returns, ret, budget
-- KEYS[3] q:seen    STRING u32 per place (see queue_join.lua) · KEYS[4] q:fate STRING u32 per place
-- KEYS[5] q:seed    STRING pre-queue seed (revealed into q:state when the sale opens)
-- KEYS[6] meta · KEYS[7] sold · KEYS[8] held · KEYS[9] holds · KEYS[10] ga · KEYS[11] buyers
-- KEYS[12] changes  (inventory keys of lua/lib/common.lua, read only)
-- KEYS[13] q:acted  SET    buyers whose first hold has answered an admission (their later holds answer none)
-- KEYS[14] q:who    HASH   buyer -> arrival number (see queue_join.lua) · KEYS[15] q:pre ZSET the pre-queue order
-- ARGV[1] leader id · ARGV[2] lease ms · ARGV[3] stall s · ARGV[4] prior tickets per buyer
-- ARGV[5] decision s (longest time an admitted buyer counts as pending) · ARGV[6] expiring window s
-- ARGV[7] max active holds · ARGV[8] max checkout ms · ARGV[9] max places per call
-- ARGV[10] admission TTL s · ARGV[11] poll interval s (shortest pending window) · ARGV[12] prior weight (buyers)
-- ARGV[13] checkout latency target ms (above it, admission follows the measured sales rate; see "Pacing")
-- Returns {status, JSON}:
--   ok          {upto, admitted, skipped, paused, factor, budget, pending, sold_out} or {idle = true} (no
--               waiting room)
--   not_leader  {leader}
-- Keeps: one writer (the lease holder) per event; upto only grows; every place up to upto has its
-- fate written once (admitted at t, or skipped because it stopped polling for longer than stall s).
--
-- Admission budget: how many more buyers the tickets left can serve (the rate and backpressure still apply).
--   m       = (sold + held + prior_n x prior_m) / (acted + prior_n), clamped to [1, per-buyer limit]:
--             tickets per buyer, measured over the buyers who hold or own tickets (HLEN buyers), from the
--             prior (queue_tickets_per_buyer, weight queue_tickets_prior_n buyers) until enough have acted
--   pending = admitted buyers who have not acted yet. Admissions join a list (batches, oldest first); every
--             buyer's first hold (op 1 in the changes stream, by a buyer not yet in q:acted; a changed seat
--             or a hold again after an expiry answers nothing) answers that buyer's own admission: the
--             buyer's place (q:who, q:pre) gives the second it was admitted (q:fate), which names its batch.
--             The batch's age is the buyer's reaction time (running median; a buyer whose batch already left
--             the list is a late buyer: observed, nothing to answer). An admission not answered within
--             W = clamp(3 x median, poll interval, decision s), at most the admission TTL, leaves the list
--             (W = decision s before the first measurement). A buyer who held and then released, or whose
--             hold expired, answered their admission: they no longer count.
--   back    = held tickets in holds expiring within the window x ret, the measured share of holds that end
--             released or expired rather than sold: (returns + 10) / (sells + returns + 10) (prior: all)
--   budget  = ceil((free + back - pending x m) / m) when positive, else 0 (paused: inventory)
-- So while tickets are free and nobody admitted is still deciding, at least ceil(free / m) >= 1 buyers
-- are admitted: the queue moves until the last ticket is sold. Sold out (free = 0 and held = 0) stops it.
--
-- Pacing by the measured checkout throughput: admissions/s are capped by `pace`. srate = sales per second
-- (2 s EWMA of op 3 in the changes stream). While checkouts take longer than the target (checkout_ms, the
-- EWMA written by checkout_confirm, above ARGV[13]) and sales are flowing, pace follows what checkout
-- completes, in buyers:
--   pace = max(1, srate / m x clamp(1.2 x target / checkout_ms, 0.5, 1.2))
-- (20 % more than checkout completes when just at the target, down to half when twice as slow). Otherwise
-- pace doubles every second in which it is what holds waiting buyers back (slow start, from PACE_START),
-- up to the organiser's rate x factor. So a queue that opens on a crowd ramps up to the rate in a few
-- seconds while checkout shows it keeps up, and buyers wait in the queue, where waiting is cheap and
-- honest, rather than at a saturated checkout.

--!include prequeue

local K_LEASE, K_STATE, K_SEEN, K_FATE, K_SEED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_META, K_SOLD, K_HELD, K_HOLDS, K_GA = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local K_BUYERS, K_CHANGES, K_ACTED, K_WHO, K_PRE = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local REACT_STEP = 1.05        -- the running median moves by this factor per observed reaction
local WINDOW_MEDIANS = 3       -- an admission unanswered for this many median reaction times is gone
local MERGE_MS = 250           -- admissions closer than this share one entry of the pending list
local MATCH_MS = 1500          -- a hold answers a batch at most this far from the middle of its admission second
                               -- (a merged batch's time is the mean of its admissions': up to 2 x MERGE_MS early)
local MAX_CHANGES = 2000       -- changes-stream entries read per call (the rest next tick)
local RETURN_PRIOR_N = 10      -- weight, in holds, of the prior "every expiring hold comes back"
local UH_KEEP = 4              -- seconds of admitted-up-to history kept for positions
local PACE_START = 20          -- admissions/s a queue starts at (slow start: doubles every second it is used)

local function reply(status, detail)
  return {status, cjson.encode(detail or {})}
end

local me = ARGV[1]
local cur = redis.call('GET', K_LEASE)
if cur == me then
  redis.call('PEXPIRE', K_LEASE, ARGV[2])
elseif not cur then
  redis.call('SET', K_LEASE, me, 'PX', ARGV[2])
else
  return reply('not_leader', {leader = cur})
end

local m = redis.call('HMGET', K_META, 'status', 'queue_mode', 'admission_rate', 'n_seats', 'limit')
if m[2] ~= '1' then return reply('ok', {idle = true}) end
local status, rate, n_seats = m[1], tonumber(m[3]) or 0, tonumber(m[4]) or 0
local limit = tonumber(m[5]) or 8
local stall, prior_m, decision = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window, max_holds, max_ms, max_scan = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local adm_ttl, poll_s, prior_n = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local target_ms = tonumber(ARGV[13]) or 0

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HSETNX', K_STATE, 'epoch', now_s) == 1 then
  redis.call('HSET', K_STATE, 'seq', 0, 'upto', 0, 'last', now_ms)
end
if status == 'on_sale' then freeze_prequeue(K_STATE, K_SEED, now_s, now_ms) end
local s = redis.call('HMGET', K_STATE, 'epoch', 'opened', 'pre', 'upto', 'seq', 'last', 'credit', 'pend',
                     'mrate', 'arate', 'checkout_ms', 'ccur', 'react', 'sells', 'returns', 'srate', 'pace', 'uh')
local epoch, opened, pre = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]) or 0
local upto, seq, last = tonumber(s[4]) or 0, tonumber(s[5]) or 0, tonumber(s[6]) or now_ms
local credit = tonumber(s[7]) or 0
local mrate, arate, checkout_ms = tonumber(s[9]) or 0, tonumber(s[10]) or 0, tonumber(s[11]) or 0
local ccur, react = s[12] or '0-0', tonumber(s[13])
local sells, returns = tonumber(s[14]) or 0, tonumber(s[15]) or 0
local srate = tonumber(s[16]) or 0
local pace = tonumber(s[17]) or PACE_START
-- uh: admitted-up-to at the start of each of the last seconds, "second:upto,..." oldest first. Workers show
-- positions against the value of the previous second, which every worker knows (they refresh within it),
-- so a buyer's position is the same on every worker and never rises (gateway/waiting_room/cache.py).
local uh = s[18] or ''
do
  local last = tonumber(string.match(uh, '(%d+):%d+$'))
  if not last or last < now_s then
    local entries = {}
    for e in string.gmatch(uh, '[^,]+') do entries[#entries + 1] = e end
    entries[#entries + 1] = now_s .. ':' .. (tonumber(s[4]) or 0)
    while #entries > UH_KEEP do table.remove(entries, 1) end
    uh = table.concat(entries, ',')
  end
end
local sells0 = sells
local rel = now_s - epoch
local rel_ms = now_ms - epoch * 1000
local dt = (now_ms - last) / 1000
if dt < 0 then dt = 0 end
if dt > 5 then dt = 5 end  -- a leader gap does not turn into a burst

-- Inventory still free (seats + GA), held tickets that may come back soon, and what buyers took.
local sold_n, held_n = redis.call('BITCOUNT', K_SOLD), redis.call('BITCOUNT', K_HELD)
local cap, gheld, gsold = 0, 0, 0
local ga = redis.call('HGETALL', K_GA)
for i = 1, #ga, 2 do
  local f, v = ga[i], tonumber(ga[i + 1]) or 0
  if string.sub(f, 1, 4) == 'cap:' then cap = cap + v
  elseif string.sub(f, 1, 5) == 'held:' then gheld = gheld + v
  elseif string.sub(f, 1, 5) == 'sold:' then gsold = gsold + v end
end
local free = (n_seats - sold_n - held_n) + (cap - gheld - gsold)
if free < 0 then free = 0 end
local held = held_n + gheld
local taken = held + sold_n + gsold
local holds = redis.call('ZCARD', K_HOLDS)
local expiring = 0
if holds > 0 then
  expiring = redis.call('ZCOUNT', K_HOLDS, '-inf', now_ms + window * 1000) * held / holds
end
-- Sold out is final once seen (nothing free, nothing held): the queue ends, and tickets that come back
-- afterwards go to the waiting list (lua/lib/waitlist.lua), not to the places still in the queue.
local sold_out = (free <= 0 and held <= 0) or redis.call('HGET', K_STATE, 'sold_out') == '1'

-- Tickets per buyer: measured over the buyers who hold or own tickets, from the prior until enough acted.
local acted = redis.call('HLEN', K_BUYERS)
local tpb = prior_m
if acted + prior_n > 0 then tpb = (taken + prior_n * prior_m) / (acted + prior_n) end
if tpb > limit then tpb = limit end
if tpb < 1 then tpb = 1 end

-- When a buyer's place was admitted (seconds since the epoch), or nil: not a buyer of this queue, or a
-- place not admitted (yet).
local function admitted_second(buyer)
  local n = tonumber(redis.call('HGET', K_WHO, buyer))
  if not n or not opened then return nil end
  local r = n
  if n <= pre then
    local rank = redis.call('ZRANK', K_PRE, string.format('%010d', n))
    if not rank then return nil end
    r = rank + 1
  end
  if r > upto then return nil end
  local v = tonumber(redis.call('BITFIELD', K_FATE, 'GET', 'u32', '#' .. r)[1]) or 0
  if v < 2 then return nil end
  return v - 2
end

-- Changes since the last call: a buyer's first hold is an admitted buyer who acted (a later hold of the
-- same buyer is a changed mind, not an answer); sales and returns (release, expiry) measure the share of
-- holds that come back.
local answers = {}  -- the admission second of each admitted buyer who held for the first time
local entries = redis.call('XRANGE', K_CHANGES, '(' .. ccur, '+', 'COUNT', MAX_CHANGES)
for i = 1, #entries do
  local f = entries[i][2]
  local op, buyer
  for j = 1, #f, 2 do
    if f[j] == 'op' then op = f[j + 1]
    elseif f[j] == 'b' then buyer = f[j + 1]; break end
  end
  if op == '1' then
    if buyer and redis.call('SADD', K_ACTED, buyer) == 1 then
      local at = admitted_second(buyer)
      if at then answers[#answers + 1] = at end
    end
  elseif op == '3' then sells = sells + 1
  elseif op == '2' or op == '5' then returns = returns + 1 end
end
if #entries > 0 then ccur = entries[#entries][1] end
local ret = (returns + RETURN_PRIOR_N) / (sells + returns + RETURN_PRIOR_N)
local back = expiring * ret

-- Pending admissions: each first hold answers its own buyer's batch, found by the second the buyer's place
-- was admitted (a batch merges admissions less than MERGE_MS apart, so it may sit across a second).
local pend = {}
if s[8] and s[8] ~= '' then pend = cjson.decode(s[8]) end
local function observe(age_ms)  -- running median of the reaction time: one step towards the observation
  local age = math.max(age_ms / 1000, 0.01)
  if not react then react = age
  elseif age > react then react = math.min(age, react * REACT_STEP)
  elseif age < react then react = math.max(age, react / REACT_STEP) end
end
if #answers > 0 then
  local bysec = {}
  for i = 1, #pend do
    local sec = math.floor(pend[i][1] / 1000)
    bysec[sec] = bysec[sec] or {}
    table.insert(bysec[sec], pend[i])
  end
  for _, at in ipairs(answers) do
    -- the batch nearest the middle of that second, within MATCH_MS of it
    local mid, found, best = at * 1000 + 500, nil, MATCH_MS
    for sec = at - 2, at + 2 do
      for _, e in ipairs(bysec[sec] or {}) do
        local d = math.abs(e[1] - mid)
        if e[2] > 0 and d <= best then found, best = e, d end
      end
    end
    if found then
      found[2] = found[2] - 1
      observe(rel_ms - found[1])
    else  -- a late buyer: the batch left the list (or was answered by the others of its second)
      observe(rel_ms - at * 1000 - 500)
    end
  end
end
local pwin = math.min(decision, adm_ttl)
if react then pwin = math.min(pwin, math.max(WINDOW_MEDIANS * react, poll_s)) end
local kept, pending = {}, 0
for i = 1, #pend do
  local e = pend[i]
  if e[2] > 0 and rel_ms - e[1] <= pwin * 1000 then
    kept[#kept + 1] = e
    pending = pending + e[2]
  end
end

-- Backpressure: full speed below 80 % of a limit, linearly down to a stop at 100 %.
local function ease(load, lim)
  if lim <= 0 then return 1 end
  local x = load / lim
  if x <= 0.8 then return 1 elseif x >= 1 then return 0 end
  return (1 - x) / 0.2
end
local factor = math.min(ease(holds, max_holds), ease(checkout_ms, max_ms))

-- Admission budget: buyers the tickets left (free + coming back) can serve beyond the pending demand.
local spare = free + back - pending * tpb
local budget = 0
if spare > 0 then budget = math.ceil(spare / tpb - 1e-9) end

-- Pacing by the measured checkout throughput (see the header).
if dt > 0 then srate = srate + (1 - math.exp(-dt / 2)) * ((sells - sells0) / dt - srate) end
local eff, ccap = rate * factor, nil
if target_ms > 0 then
  if checkout_ms > target_ms and srate >= 0.5 then  -- checkout is saturated: follow what it completes
    local gain = math.max(0.5, math.min(1.2, 1.2 * target_ms / checkout_ms))
    pace = math.max(1, srate / tpb * gain)
  elseif dt > 0 and pace < eff and upto < seq and budget > 0 then
    -- checkout keeps up and the pace is what holds buyers back: double per second (a leader gap is no growth)
    pace = math.min(eff, pace * 2 ^ math.min(dt, 0.5))
  end
  if pace < eff then eff, ccap = pace, pace end
end
-- The rate waiting buyers' ETAs are forecast at (gateway/waiting_room/cache.py eta_rate): where this
-- leader is heading, i.e. the configured rate under backpressure, capped by checkout's pace only while
-- it follows checkout (a slow start is over in seconds). 0 when the tickets left cannot serve a second of
-- it: the ETA then rests on the measured rate alone.
local frate = rate * factor
if target_ms > 0 and checkout_ms > target_ms and srate >= 0.5 and pace < frate then frate = pace end
if budget < frate then frate = 0 end

local paused, admitted, skipped, upto0 = '', 0, 0, upto
if status ~= 'on_sale' then
  paused, credit = 'event_' .. (status or 'gone'), 0
elseif sold_out then
  paused, credit, budget = 'sold_out', 0, 0
else
  credit = math.min(credit + eff * dt, math.max(1, eff))  -- at most one second of backlog
  if factor == 0 then credit = 0 end                        -- nothing saved up is spent at backpressure
  local want = math.floor(credit)
  if budget < want then want = budget end
  if budget <= 0 then paused = 'inventory'
  elseif factor == 0 then paused = 'backpressure' end
  if want > 0 and upto < seq then
    local scan_end = math.min(seq, upto + max_scan)
    local raw = redis.call('GETRANGE', K_SEEN, 4 * (upto + 1), 4 * scan_end + 3)
    local opened_rel = (opened or now_s) - epoch
    local out, r = {}, upto
    while r < scan_end and admitted < want do
      r = r + 1
      local o = 4 * (r - upto0 - 1)
      local b1, b2, b3, b4 = string.byte(raw, o + 1, o + 4)
      local seen = -1
      if b4 then seen = ((b1 * 256 + b2) * 256 + b3) * 256 + b4 - 1 end
      if r <= pre and seen < opened_rel then seen = opened_rel end  -- pre-queue places start live at opening
      local v = 1
      if seen >= 0 and rel - seen <= stall then
        admitted = admitted + 1
        v = rel + 2
      else
        skipped = skipped + 1
      end
      out[#out + 1] = string.char(math.floor(v / 16777216) % 256, math.floor(v / 65536) % 256,
                                  math.floor(v / 256) % 256, v % 256)
    end
    if r > upto then
      redis.call('SETRANGE', K_FATE, 4 * (upto + 1), table.concat(out))
      upto = r
    end
    credit = credit - admitted
  end
end

if admitted > 0 then  -- this tick's admissions join the pending list (merged with a batch of < MERGE_MS ago)
  local tail = kept[#kept]
  if tail and rel_ms - tail[1] < MERGE_MS then
    tail[1] = math.floor((tail[1] * tail[2] + rel_ms * admitted) / (tail[2] + admitted))
    tail[2] = tail[2] + admitted
  else
    kept[#kept + 1] = {rel_ms, admitted}
  end
  pending = pending + admitted
end
local pend_json = '[]'
if #kept > 0 then pend_json = cjson.encode(kept) end

if dt > 0 and upto < seq then
  -- 5 s EWMA of places passed per second, measured while buyers wait after the tick (a queue that
  -- drains measures demand, not how fast places pass).
  local a = 1 - math.exp(-dt / 5)
  mrate = mrate + a * ((upto - upto0) / dt - mrate)
end
if dt > 0 then
  local a = 1 - math.exp(-dt / 5)
  arate = arate + a * (admitted / dt - arate)
end
redis.call('HSET', K_STATE, 'upto', upto, 'credit', credit, 'last', now_ms, 'mrate', mrate,
           'arate', arate, 'paused', paused, 'factor', factor, 'free', free, 'held', held, 'holds', holds,
           'expiring', expiring, 'sold_out', sold_out and 1 or 0, 'leader', me, 'rate', rate,
           'pend', pend_json, 'pending', pending, 'ccur', ccur, 'react', react or '', 'pwin', pwin,
           'tpb', tpb, 'acted', acted, 'taken', taken, 'sells', sells, 'returns', returns, 'ret', ret,
           'budget', budget, 'srate', srate, 'ccap', ccap or '', 'pace', pace, 'uh', uh, 'frate', frate)
if admitted > 0 then redis.call('HINCRBY', K_STATE, 'admitted', admitted) end
if skipped > 0 then redis.call('HINCRBY', K_STATE, 'skipped', skipped) end
return reply('ok', {upto = upto, admitted = admitted, skipped = skipped, paused = paused, factor = factor,
                    budget = budget, pending = pending, sold_out = sold_out})
