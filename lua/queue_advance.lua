-- queue_advance: one tick of the admission leader for one event: take or renew the leader lease,
-- then move "admitted up to place" forward at the organiser's rate, slowed by backpressure and
-- paused when the inventory left cannot serve the buyers already admitted.
-- KEYS[1] q:lease   STRING leader id, with expiry (PX)
-- KEYS[2] q:state   HASH   see queue_join.lua; this script writes upto, credit, last (ms), recent,
--                          mrate (places/s), arate (admissions/s), admitted, skipped, paused, factor,
--                          free, held, holds, sold_out, leader
-- KEYS[3] q:seen    STRING u32 per place (see queue_join.lua) · KEYS[4] q:fate STRING u32 per place
-- KEYS[5] q:seed    STRING pre-queue seed (revealed into q:state when the sale opens)
-- KEYS[6] meta · KEYS[7] sold · KEYS[8] held · KEYS[9] holds · KEYS[10] ga   (inventory keys, read only)
-- ARGV[1] leader id · ARGV[2] lease ms · ARGV[3] stall s · ARGV[4] tickets per buyer · ARGV[5] decision s
-- ARGV[6] expiring window s · ARGV[7] max active holds · ARGV[8] max checkout ms · ARGV[9] max places per call
-- Returns {status, JSON}:
--   ok          {upto, admitted, skipped, paused, factor} or {idle = true} (no waiting room)
--   not_leader  {leader}
-- Keeps: one writer (the lease holder) per event; upto only grows; every place up to upto has its
-- fate written once (admitted at t, or skipped because it stopped polling for longer than stall s).

--!include prequeue

local K_LEASE, K_STATE, K_SEEN, K_FATE, K_SEED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_META, K_SOLD, K_HELD, K_HOLDS, K_GA = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]

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

local m = redis.call('HMGET', K_META, 'status', 'queue_mode', 'admission_rate', 'n_seats')
if m[2] ~= '1' then return reply('ok', {idle = true}) end
local status, rate, n_seats = m[1], tonumber(m[3]) or 0, tonumber(m[4]) or 0
local stall, tpb, decision = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local window, max_holds, max_ms, max_scan = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HSETNX', K_STATE, 'epoch', now_s) == 1 then
  redis.call('HSET', K_STATE, 'seq', 0, 'upto', 0, 'last', now_ms)
end
if status == 'on_sale' then freeze_prequeue(K_STATE, K_SEED, now_s, now_ms) end
local s = redis.call('HMGET', K_STATE, 'epoch', 'opened', 'pre', 'upto', 'seq', 'last', 'credit', 'recent',
                     'mrate', 'arate', 'checkout_ms')
local epoch, opened, pre = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]) or 0
local upto, seq, last = tonumber(s[4]) or 0, tonumber(s[5]) or 0, tonumber(s[6]) or now_ms
local credit, recent = tonumber(s[7]) or 0, tonumber(s[8]) or 0
local mrate, arate, checkout_ms = tonumber(s[9]) or 0, tonumber(s[10]) or 0, tonumber(s[11]) or 0
local rel = now_s - epoch
local dt = (now_ms - last) / 1000
if dt < 0 then dt = 0 end
if dt > 5 then dt = 5 end  -- a leader gap does not turn into a burst

-- Inventory still free (seats + GA), and held tickets that come back soon.
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
local held = held_n + gheld
local holds = redis.call('ZCARD', K_HOLDS)
local expiring = 0
if holds > 0 then
  expiring = redis.call('ZCOUNT', K_HOLDS, '-inf', now_ms + window * 1000) * held / holds
end
local sold_out = free <= 0 and held <= 0

-- Backpressure: full speed below 80 % of a limit, linearly down to a stop at 100 %.
local function ease(load, limit)
  if limit <= 0 then return 1 end
  local x = load / limit
  if x <= 0.8 then return 1 elseif x >= 1 then return 0 end
  return (1 - x) / 0.2
end
local factor = math.min(ease(holds, max_holds), ease(checkout_ms, max_ms))
recent = recent * math.exp(-dt / decision)  -- admitted buyers still deciding (decays over `decision` s)

local paused, admitted, skipped, upto0 = '', 0, 0, upto
if status ~= 'on_sale' then
  paused, credit = 'event_' .. (status or 'gone'), 0
elseif sold_out then
  paused, credit = 'sold_out', 0
else
  credit = math.min(credit + rate * factor * dt, math.max(1, rate))  -- at most one second of backlog
  local want = math.floor(credit)
  local budget = math.floor((free + expiring) / tpb - recent)
  if budget < want then want = math.max(budget, 0) end
  if want == 0 and budget <= 0 then paused = 'inventory'
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
recent = recent + admitted
if dt > 0 then
  local a = 1 - math.exp(-dt / 5)  -- 5 s EWMA
  mrate = mrate + a * ((upto - upto0) / dt - mrate)
  arate = arate + a * (admitted / dt - arate)
end
redis.call('HSET', K_STATE, 'upto', upto, 'credit', credit, 'last', now_ms, 'recent', recent, 'mrate', mrate,
           'arate', arate, 'paused', paused, 'factor', factor, 'free', free, 'held', held, 'holds', holds,
           'sold_out', sold_out and 1 or 0, 'leader', me, 'rate', rate)
if admitted > 0 then redis.call('HINCRBY', K_STATE, 'admitted', admitted) end
if skipped > 0 then redis.call('HINCRBY', K_STATE, 'skipped', skipped) end
return reply('ok', {upto = upto, admitted = admitted, skipped = skipped, paused = paused, factor = factor})
