-- checkout_begin: the first step of a checkout attempt in one call: the idempotency record, the
-- attempt's lock and begin_checkout (held -> paying).
-- KEYS:  the 14 event keys of common.lua · KEYS[15] checkouts HASH (buyer|key -> record JSON)
--        · KEYS[16] the attempt's lock STRING
-- ARGV[1] hold_id · ARGV[2] buyer · ARGV[3] Idempotency-Key · ARGV[4] record field (buyer|key)
--        · ARGV[5] request fingerprint · ARGV[6] order id · ARGV[7] lock token · ARGV[8] lock ms
-- Returns {status, JSON}:
--   ok {hold view..., resumed}       the caller holds the lock and goes on to the payment
--   settled {record, order}          the key's attempt finished: answer `order` (done) or its error
--   busy {}                          another attempt with this key runs; retry shortly
--   idempotency_conflict {}          the key was used with another request
--   hold_not_found · forbidden · hold_expired · invalid_state   (never recorded: a new key's refusal
--                                    writes nothing; a started or paid record is settled by recovery)
-- Keeps: one attempt per key at a time; a finished key always answers the same.
--!include common
--!include sale

local hold_id, buyer, key, field, fp, order_id, token, lock_ms =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local K_RECORDS, K_LOCK = KEYS[15], KEYS[16]

local raw = redis.call('HGET', K_RECORDS, field)
local rec = nil
if raw then
  rec = cjson.decode(raw)
  if rec.fp ~= fp then return reply('idempotency_conflict', {}) end
  if rec.state == 'done' or rec.state == 'failed' then
    return reply('settled', {record = rec, order = redis.call('HGET', K_ORDERS, rec.order_id) or false})
  end
end
if not redis.call('SET', K_LOCK, token, 'NX', 'PX', lock_ms) then return reply('busy', {}) end
-- A new key's record is written only once its hold is being paid: a refusal of a new key (no such
-- hold or event, another buyer's hold, one paid with another key, an expired one) writes nothing,
-- so checkouts for holds that do not exist cannot fill Redis; the same key again is refused again.
-- The record names its hold and when its payment began: recovery judges an attempt that died by them.
local fresh = rec == nil
if fresh then rec = {fp = fp, state = 'started', order_id = order_id, hold_id = hold_id, since = now_ms() / 1000} end
local done = redis.call('HGET', K_ORDERS, rec.order_id)
if done then  -- a resumed attempt that had confirmed: only the answer was missing
  rec.state = 'done'
  redis.call('HSET', K_RECORDS, field, cjson.encode(rec))
  redis.call('DEL', K_LOCK)
  return reply('settled', {record = rec, order = done})
end
local view, err = begin_paying(hold_id, buyer, key, now_ms())
if not view then
  -- A key with a record began paying: money may have been taken by the attempt that died. Its record
  -- stays as it is, and recovery settles it (refunded, or nothing taken) after asking the provider.
  redis.call('DEL', K_LOCK)
  return err
end
if fresh then redis.call('HSET', K_RECORDS, field, cjson.encode(rec)) end
view.resumed = raw ~= nil
return reply('ok', view)
