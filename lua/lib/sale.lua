-- sale.lua: the three steps of paying for a hold, shared by begin_checkout / abort_checkout /
-- confirm and by the one-call checkout scripts (checkout_begin, checkout_abort, checkout_confirm).
-- Needs common.lua included first.

-- held -> paying: the hold is kept for the payment window (meta.checkout_ms) from now; its own
-- expiry is remembered (rec.he) so that a payment that does not happen gives it back unchanged,
-- and so is when the payment began (rec.pb: the sale's change record carries it, see sell).
-- Returns the hold view, or nil and an error reply.
local function begin_paying(hold_id, buyer, key, now)
  local rec, err = owned_hold(hold_id, buyer, now)
  if not rec then return nil, err end
  if rec.st == 'paying' and rec.k ~= key then
    return nil, reply('invalid_state', {state = 'paying', checkout_key = rec.k})
  end
  local meta = load_meta()
  if rec.st ~= 'paying' then rec.he, rec.pb = rec.e, now end
  local exp = math.max(rec.e, now + meta.checkout_ms)
  rec.st, rec.k, rec.e = 'paying', key, exp
  redis.call('ZADD', K_HOLDS, exp, hold_id)
  redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
  local view = hold_view(hold_id, rec)
  view.checkout_key = key
  return view, nil
end

-- paying -> held, back to the hold's own expiry (a declined or failed payment never extends a
-- hold; an expiry that passed meanwhile takes effect at the next sweep).
-- Returns the hold's state, or nil and an error reply.
local function end_paying(hold_id, buyer, key, now)
  local rec, err = owned_hold(hold_id, buyer, now)
  if not rec then return nil, err end
  if rec.st == 'paying' and rec.k == key then
    local own = tonumber(rec.he) or rec.e
    rec.st, rec.k, rec.he, rec.pb, rec.e = 'held', nil, nil, nil, own
    redis.call('ZADD', K_HOLDS, own, hold_id)
    redis.call('HSET', K_HDATA, hold_id, cjson.encode(rec))
  end
  return rec.st, nil
end

-- held/paying -> sold, with the ledger entry and the change record, in this one call; the same
-- order id again returns the same result (replay = true) and changes nothing.
-- Returns the result table, or nil and an error reply.
local function sell(hold_id, buyer, order_id, order_json)
  local done = redis.call('HGET', K_ORDERS, order_id)
  if done then
    local result = cjson.decode(done)
    if result.hold_id ~= hold_id then return nil, reply('bad_request', {reason = 'order id already used'}) end
    result.replay = true
    return result, nil
  end
  local other = redis.call('HGET', K_ORDERS, 'hold:' .. hold_id)
  if other then return nil, reply('invalid_state', {order_id = other}) end

  local now = now_ms()
  local rec, err = owned_hold(hold_id, buyer, now)
  if not rec then return nil, err end

  for i = 1, #rec.s do
    local idx = rec.s[i]
    redis.call('SETBIT', K_HELD, idx, 0)
    redis.call('SETBIT', K_SOLD, idx, 1)
    redis.call('HDEL', K_SEATOWN, idx)
  end
  for code, n in pairs(rec.g) do
    redis.call('HINCRBY', K_GA, 'held:' .. code, -n)
    redis.call('HINCRBY', K_GA, 'sold:' .. code, n)
  end
  redis.call('ZREM', K_HOLDS, hold_id)
  redis.call('HDEL', K_HDATA, hold_id)
  address_give_back(rec)  -- the address cap counts tickets held, not bought
  local v = record_change(OP_SELL, rec.s, rec.g, 1, hold_id, rec.b, rec.n, rec.e, now, rec.pb)
  local serial_start = redis.call('INCRBY', K_SERIAL, rec.n) - rec.n + 1

  local result = {order_id = order_id, hold_id = hold_id, buyer = buyer, seats = rec.s, ga = rec.g,
                  count = rec.n, serial_start = serial_start, confirmed_at_ms = now, version = v}
  redis.call('HSET', K_ORDERS, order_id, cjson.encode(result), 'hold:' .. hold_id, order_id)
  redis.call('XADD', K_LEDGER, '*', 'k', 'order', 'd', cjson.encode(result), 'o', order_json)
  result.replay = false
  return result, nil
end
