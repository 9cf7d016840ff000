-- scan_checkin: one door scan, decided and recorded atomically (docs/scanning.md).
-- KEYS (all tagged {ev:<id>}, see gateway/store/keys.py scan_keys):
--   KEYS[1] scan:revoked  SET    revoked device ids
--   KEYS[2] scan:contact  HASH   device id -> "<last contact ms>|<queue length or ''>|<gate>"
--   KEYS[3] scan:checkin  HASH   serial -> JSON {a at ms, s scan uuid, sid device scan id, g gate, d device,
--                                               i inside 0/1, n entries}: the scan that let the ticket in
--   KEYS[4] scan:ids      HASH   "<device>|<scan id>" -> the answer given (idempotency)
--   KEYS[5] scan:stats    HASH   "<gate>|<result>" counters (+ "<gate>|reentered", "<gate>|conflict"), "inside"
--   KEYS[6] scan:rules    HASH   rule key ("ga:<code>" / "sec:<name>") -> "1" when re-entry is allowed
--   KEYS[7] orders        HASH   the event's orders (read only: serial range, voided_at_ms)
--   KEYS[8] ledger        STREAM final writes for Postgres: XADD k=scan
-- ARGV[1] device id · ARGV[2] device scan id · ARGV[3] scan uuid · ARGV[4] gate
-- ARGV[5] verdict: ticket | invalid | wrong_event (the gateway checked the code's signature)
-- ARGV[6] serial · ARGV[7] order id · ARGV[8] rule key · ARGV[9] direction: in | out
-- ARGV[10] mode: online | offline | degraded · ARGV[11] scan time ms ('' = now, Redis clock)
-- ARGV[12] queue length reported by the device ('' = not reported) · ARGV[13] ticket id
-- ARGV[14] JSON of extra facts for the answer and the ledger {reason, local_result, code_event}
-- Returns {status, JSON}:
--   ok {r result, at, id, sid, g, d, sn serial, ce event of the code, f first scan, i inside, re reentry,
--       c conflict, n entries, va voided_at_ms, rs reason, replay}
--   device_revoked {}
-- Keeps: first scan wins: online, the first to arrive; offline and degraded (replayed) scans, the
-- earliest scan time (an earlier offline scan takes over the admission, the displaced scan becomes a
-- duplicate in the ledger via `demote`); a (device, scan id) is decided once (replays answer the same);
-- the decision, the counters and the ledger entry are written in this one call.
local K_REVOKED, K_CONTACT, K_CHECKIN, K_IDS, K_STATS, K_RULES, K_ORDERS, K_LEDGER =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local device, sid, uuid, gate, verdict = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local serial, order_id, rule, direction, mode = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local queue, ticket_id = ARGV[12], ARGV[13]
local extra = cjson.decode(ARGV[14])

local function reply(status, detail) return {status, cjson.encode(detail or {})} end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[11]) or now

if redis.call('SISMEMBER', K_REVOKED, device) == 1 then return reply('device_revoked', {}) end

-- Last contact (and the queue length the device reported, else the one it reported before).
if queue == '' then
  local prev = redis.call('HGET', K_CONTACT, device)
  if prev then queue = string.match(prev, '^[^|]*|([^|]*)|') or '' end
end
redis.call('HSET', K_CONTACT, device, now .. '|' .. queue .. '|' .. gate)

local idk = device .. '|' .. sid
local done = redis.call('HGET', K_IDS, idk)
if done then
  local answer = cjson.decode(done)
  answer.replay = true
  return reply('ok', answer)
end

local function count(name, n) redis.call('HINCRBY', K_STATS, gate .. '|' .. name, n or 1) end

local answer = {id = uuid, sid = sid, g = gate, d = device, at = at, rs = extra.reason, sn = tonumber(serial),
                ce = extra.code_event}
local result, demote
local pg_result
local offline = mode ~= 'online'

if verdict ~= 'ticket' then
  result = verdict
else
  local raw = order_id ~= '' and redis.call('HGET', K_ORDERS, order_id)
  local order = raw and cjson.decode(raw)
  local n = tonumber(serial)
  if not order or not n or n < tonumber(order.serial_start) or n >= tonumber(order.serial_start) + tonumber(order.count) then
    result, answer.rs = 'invalid', 'not_issued'
  elseif order.voided_at_ms then
    result, answer.va = 'void', order.voided_at_ms
  else
    local reentry = rule ~= '' and redis.call('HGET', K_RULES, rule) == '1'
    answer.re = reentry
    local rawrec = redis.call('HGET', K_CHECKIN, serial)
    local rec = rawrec and cjson.decode(rawrec)
    if direction == 'out' then
      if rec and rec.i == 1 then
        rec.i = 0
        redis.call('HSET', K_CHECKIN, serial, cjson.encode(rec))
        redis.call('HINCRBY', K_STATS, 'inside', -1)
        result, answer.i = 'exited', 0
      else
        result, answer.i = 'not_inside', 0
      end
    elseif not rec or (rec.i == 0 and reentry) then
      local entries = (rec and rec.n or 0) + 1
      rec = {a = at, s = uuid, sid = sid, g = gate, d = device, i = 1, n = entries}
      redis.call('HSET', K_CHECKIN, serial, cjson.encode(rec))
      redis.call('HINCRBY', K_STATS, 'inside', 1)
      result, answer.i, answer.n = 'admitted', 1, entries
      if entries > 1 then
        count('reentered')
        pg_result = 'reentered'
      end
    elseif offline and not reentry and at < tonumber(rec.a) then
      -- An offline scan made before the current admitting scan: it admitted the ticket first.
      demote = rec.s
      redis.call('HINCRBY', K_STATS, rec.g .. '|admitted', -1)
      redis.call('HINCRBY', K_STATS, rec.g .. '|duplicate', 1)
      rec.a, rec.s, rec.sid, rec.g, rec.d = at, uuid, sid, gate, device
      redis.call('HSET', K_CHECKIN, serial, cjson.encode(rec))
      result, answer.i, answer.n, answer.c = 'admitted', rec.i, rec.n, true
    else
      result, answer.i, answer.n = 'duplicate', rec.i, rec.n
      answer.f = {s = rec.s, sid = rec.sid, g = rec.g, d = rec.d, a = rec.a}
      if offline and extra.local_result == 'admitted' then answer.c = true end
    end
  end
end

answer.r = result
count(result)
if answer.c then count('conflict') end
redis.call('HSET', K_IDS, idk, cjson.encode(answer))
local entry = {scan_id = uuid, ticket_id = (result ~= 'invalid' and result ~= 'wrong_event' and ticket_id ~= '')
                 and ticket_id or nil,
               device_id = device, device_scan_id = sid, gate = gate, result = pg_result or result,
               scanned_at_ms = at, serial = tonumber(serial), direction = direction, mode = mode,
               local_result = extra.local_result, reason = answer.rs, conflict = answer.c, demote = demote,
               code_event = extra.code_event, received_at_ms = now}
redis.call('XADD', K_LEDGER, '*', 'k', 'scan', 'd', cjson.encode(entry))
answer.replay = false
return reply('ok', answer)
