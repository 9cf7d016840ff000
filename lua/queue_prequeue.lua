-- queue_prequeue: open an event's waiting room before the sale (the pre-queue). Everyone who joins
-- before the sale opens is equal: at opening they are put in one random order derived from a seed
-- whose SHA-256 (the commitment) is published now; the seed itself is revealed at opening.
-- KEYS[1] q:state HASH (see queue_join.lua) · KEYS[2] q:seed STRING the secret seed
-- ARGV[1] a new random seed (hex) · ARGV[2] its commitment (hex SHA-256)
-- Returns {status, JSON}: ok {commitment, created} · invalid_state {reason = 'already_open'}
-- Keeps: the seed is chosen once; calling again returns the same commitment.

local K_STATE, K_SEED = KEYS[1], KEYS[2]

local function reply(status, detail)
  return {status, cjson.encode(detail or {})}
end

if redis.call('HGET', K_STATE, 'opened') then return reply('invalid_state', {reason = 'already_open'}) end
local t = redis.call('TIME')
if redis.call('HSETNX', K_STATE, 'epoch', tonumber(t[1])) == 1 then
  redis.call('HSET', K_STATE, 'seq', 0, 'upto', 0, 'last', tonumber(t[1]) * 1000)
end
local created = redis.call('SET', K_SEED, ARGV[1], 'NX')
if created then redis.call('HSET', K_STATE, 'commitment', ARGV[2]) end
redis.call('HSET', K_STATE, 'prequeue', 1)
return reply('ok', {commitment = redis.call('HGET', K_STATE, 'commitment'), created = created and true or false})
