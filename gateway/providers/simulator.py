"""A card-payment provider simulator: a real HTTP server for the local stack, the tests and load runs.

Run it with `python -m gateway.providers.simulator --port 8099 [--workers N] [--redis-url URL]
[--latency-ms N] [--latency-p50-ms N --latency-p99-ms N] [--decline-rate F] [--failure-rate F]
[--rate-limit-per-s N] [--storm JSON]`, or from Python with `start_simulator_process()`.

It is a plain ASGI app (no framework, orjson, no per-request logging) served by granian with
several worker processes. With a Redis URL all state lives in Redis under one key prefix and
every API call is one Lua script (two when there is latency to wait), so idempotency, payments,
configuration, statistics, the rate limit and `/_reset` are exact across the workers. Without a
Redis URL it runs one worker with the same rules in memory. See docs/providers.md.

Rules, in the order a call meets them:
- `down: true` answers 503 at once (an outage that fails fast);
- `rate_limit_per_s`: a token bucket shared by all workers; empty -> 429 with `Retry-After`;
- a `storm` in `timeout` mode hangs the call for `timeout_ms`, then 504;
- the same `Idempotency-Key` (per operation) returns the stored answer (`Idempotent-Replayed:
  true`); with another body 422; while the first call with that key still runs, 409
  `idempotency_key_in_use` (as Stripe does; nothing is stored, retry later);
- latency: `latency_ms` plus, when `latency_p50_ms` is set, a log-normal draw fitted to
  `latency_p50_ms` / `latency_p99_ms` (capped at 10 x p99), plus `capture_latency_ms` for a capture
  (a capture call, or an authorize call with `capture: true`, a one-step charge);
- failure: a `reference` containing `fail`, or a draw under `failure_rate` (or a storm's
  `failure_rate` while the storm lasts) -> 503, not remembered, so a retry with the key may succeed;
- then the operation; a `reference` containing `decline`, or a draw under `decline_rate`, declines.

`POST /v1/payments/{id}/void` cancels an authorization that was never captured (status `voided`; a
voided payment can be neither captured nor refunded; a captured, refunded, declined or voided one cannot
be voided: 409 `invalid_state`). It takes an Idempotency-Key and meets the same rules as a refund.

`GET /v1/payments?idempotency_key=<key>` finds the payment an authorize call with that key created,
with its current state (404: none was created; 409 while that call still runs); it takes no key of its
own and meets the same rules (down, rate limit, latency, failures).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

ENV_PREFIX = "FLASHGATE_SIMULATOR_"
DEFAULT_PREFIX = "flashgate-sim"
DEFAULT_TTL_S = 86_400  # payments and idempotency records are kept a day, as providers keep keys
DEFAULT_WORKERS_WITH_REDIS = 4
MAX_KEY_LENGTH = 255
Z99 = 2.3263478740408408  # the standard normal's 99th percentile

_STORM_DEFAULTS: dict[str, Any] = {"every_s": 0.0, "duration_s": None, "failure_rate": 1.0, "mode": "error",
                                   "timeout_ms": 10_000.0, "start_in_s": 0.0}


def _number(name: str, value: Any, *, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < low or (high is not None and number > high):
        raise ValueError(f"{name} out of range")
    return number


def _storm(value: Any) -> dict[str, Any] | None:
    if value is None or value is False:
        return None
    if isinstance(value, (str, bytes)):
        value = orjson.loads(value)
    if not isinstance(value, dict):
        raise ValueError("storm must be an object or null")
    unknown = set(value) - set(_STORM_DEFAULTS) - {"started_at_ms"}
    if unknown:
        raise ValueError(f"unknown storm settings: {sorted(unknown)}")
    storm = {**_STORM_DEFAULTS, **{k: v for k, v in value.items() if k != "started_at_ms"}}
    if storm["duration_s"] is None:
        raise ValueError("storm.duration_s is required")
    storm["duration_s"] = _number("storm.duration_s", storm["duration_s"])
    storm["every_s"] = _number("storm.every_s", storm["every_s"])
    storm["failure_rate"] = _number("storm.failure_rate", storm["failure_rate"], high=1.0)
    storm["timeout_ms"] = _number("storm.timeout_ms", storm["timeout_ms"])
    storm["start_in_s"] = _number("storm.start_in_s", storm["start_in_s"])
    if storm["mode"] not in ("error", "timeout"):
        raise ValueError("storm.mode must be error or timeout")
    if storm["duration_s"] <= 0 or (storm["every_s"] and storm["every_s"] < storm["duration_s"]):
        raise ValueError("storm.duration_s must be positive and at most every_s")
    return storm


@dataclass
class SimConfig:
    """The simulator's behaviour; `PUT /_config` changes any subset, for every worker at once."""

    latency_ms: float = 0.0         # fixed part of every call's latency
    latency_p50_ms: float = 0.0     # > 0: add a log-normal draw with this median ...
    latency_p99_ms: float = 0.0     # ... and this 99th percentile (<= p50: no spread)
    capture_latency_ms: float = 0.0  # added to the latency of captures only (one-step charges included)
    decline_rate: float = 0.0
    failure_rate: float = 0.0       # share of calls answered 503 after the latency
    down: bool = False              # every API call 503 at once
    rate_limit_per_s: float = 0.0   # > 0: token bucket shared by all workers, 429 + Retry-After
    rate_limit_burst: float = 0.0   # bucket size; 0: one second's worth (at least 1)
    storm: dict[str, Any] | None = None  # {"duration_s", "every_s", "failure_rate", "mode", "timeout_ms", "start_in_s"}

    @staticmethod
    def validate(values: dict[str, Any]) -> dict[str, Any]:
        """The normalised subset of `values`; ValueError on unknown names or values out of range."""
        if not isinstance(values, dict):
            raise ValueError("the configuration must be a JSON object")
        values = {k: v for k, v in values.items() if k != "storm_active"}  # GET's answer may be PUT back
        names = {f.name for f in fields(SimConfig)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name == "down":
                out[name] = value in (True, 1, "1", "true", "True") if isinstance(value, (str, int)) else bool(value)
            elif name == "storm":
                out[name] = _storm(value)
            elif name in ("decline_rate", "failure_rate"):
                out[name] = _number(name, value, high=1.0)
            else:
                out[name] = _number(name, value)
        if "latency_p50_ms" in out and "latency_p99_ms" in out and 0 < out["latency_p99_ms"] < out["latency_p50_ms"]:
            raise ValueError("latency_p99_ms must not be below latency_p50_ms")
        return out

    @classmethod
    def from_env(cls) -> "SimConfig":
        """FLASHGATE_SIMULATOR_<FIELD> variables (STORM as JSON); unset ones keep their defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw not in (None, ""):
                values[f.name] = raw
        return cls(**cls.validate(values))

    def update(self, values: dict[str, Any]) -> None:
        for name, value in self.validate(values).items():
            setattr(self, name, value)


def _public_config(cfg: dict[str, Any], now_ms: float) -> dict[str, Any]:
    out = asdict(SimConfig())
    for name in out:
        if name in cfg and cfg[name] is not None:
            out[name] = cfg[name] if name in ("storm", "down") else float(cfg[name])
    if isinstance(out["storm"], dict):  # numbers as floats, whichever store (Lua's cjson writes 1.0 as 1)
        out["storm"] = {k: v if k == "mode" else int(v) if k == "started_at_ms" else float(v)
                        for k, v in out["storm"].items()}
    out["storm_active"] = _storm_rate(out["storm"], now_ms, None) > 0
    return out


def _storm_rate(storm: Any, now_ms: float, mode: str | None) -> float:
    """The storm's failure rate at `now_ms` (0 outside its windows, or if `mode` differs)."""
    if not isinstance(storm, dict) or (mode is not None and storm.get("mode", "error") != mode):
        return 0.0
    elapsed = (now_ms - float(storm.get("started_at_ms") or 0)) / 1000
    if elapsed < 0:
        return 0.0
    every = float(storm.get("every_s") or 0)
    if every > 0:
        elapsed %= every
    return float(storm.get("failure_rate") or 0) if elapsed < float(storm.get("duration_s") or 0) else 0.0


# --- the shared store: one Lua script per call -----------------------------------------------------

# KEYS: cfg, stats, bucket, epoch, idempotency record, payment
# ARGV: phase (begin|finish), kind, has key (1|0), fingerprint, amount, currency, reference, new id,
#       u_fail, u_decline, u_storm, z, ttl ms, epoch seen at begin (finish), capture on authorize (1|0)
# Returns {action, status, body, flag, sleep ms, epoch}: action `answer` (sleep, then send it) or
# `continue` (sleep, then run the phase `finish`); flag `replayed` or `retry:<ms>`.
# Records are strings written with one SET ... PX each: a payment is its public JSON; an
# idempotency record is "<state>\n<status>\n<fingerprint>\n<body>" (state `running` or `done`).
# TIME and the epoch are read only when needed: a plain authorization is six Redis calls.
CALL_LUA = r"""
local cfg_key, stats_key, bucket_key, epoch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local idem_key, pay_key = KEYS[5], KEYS[6]
local phase, kind, has_key, fp = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local amount, currency, reference, new_id = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local ttl_ms = ARGV[13]

local raw = redis.call('GET', cfg_key)
local cfg = raw and cjson.decode(raw) or {}
local function num(v) return tonumber(v) or 0 end
local storm = cfg.storm
if type(storm) ~= 'table' then storm = nil end
local now_ms = 0
if storm or num(cfg.rate_limit_per_s) > 0 then
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function answer(status, body, flag, sleep_ms)
  return {'answer', status, body, flag or '', tostring(sleep_ms or 0), ''}
end
local function err(code, message)
  return cjson.encode({error = {code = code, message = message}})
end
local function storm_rate(mode)
  if not storm or storm.mode ~= mode then return 0 end
  local elapsed = (now_ms - num(storm.started_at_ms)) / 1000
  if elapsed < 0 then return 0 end
  local every = num(storm.every_s)
  if every > 0 then elapsed = elapsed % every end
  if elapsed < num(storm.duration_s) then return num(storm.failure_rate) end
  return 0
end

-- find: the payment the authorize call with the Idempotency-Key of KEYS[5] (that call's record)
-- created; KEYS[6] is then the payments' key prefix (the simulator's store is one Redis, never a Cluster).
local function find_payment()
  local rec = redis.call('GET', idem_key)
  if not rec then return 404, err('not_found', 'no payment was created with this Idempotency-Key') end
  local a = string.find(rec, '\n', 1, true)
  local b = string.find(rec, '\n', a + 1, true)
  local c = string.find(rec, '\n', b + 1, true)
  if string.sub(rec, 1, a - 1) ~= 'done' then
    return 409, err('idempotency_key_in_use', 'the call with this Idempotency-Key is in progress; retry later')
  end
  local id = cjson.decode(string.sub(rec, c + 1)).id
  local stored = id and redis.call('GET', pay_key .. id)
  if not stored then return 404, err('not_found', 'no payment was created with this Idempotency-Key') end
  return 200, stored
end

local function execute()
  local rate = num(cfg.failure_rate)
  local storming = storm_rate('error')
  if storming > rate then rate = storming end
  if string.find(reference, 'fail', 1, true) or tonumber(ARGV[9]) < rate then
    if has_key then redis.call('DEL', idem_key) end
    redis.call('HINCRBY', stats_key, 'failed', 1)
    return answer(503, err('temporarily_unavailable', 'simulated failure'))
  end
  local status, body
  if kind == 'authorize' then
    local declined = string.find(reference, 'decline', 1, true) or tonumber(ARGV[10]) < num(cfg.decline_rate)
    local st = declined and 'declined' or 'authorized'
    local captured = 0
    if st == 'authorized' and ARGV[15] == '1' then st, captured = 'captured', amount end  -- a one-step charge
    redis.call('SET', pay_key, cjson.encode({id = new_id, status = st, amount_minor = amount, currency = currency,
                                             reference = reference, captured_minor = captured, refunded_minor = 0}),
               'PX', ttl_ms)
    redis.call('HINCRBY', stats_key, st, 1)
    status, body = 201, cjson.encode({id = new_id, status = st, amount_minor = amount, currency = currency})
  elseif kind == 'find' then
    status, body = find_payment()
  else
    local stored = redis.call('GET', pay_key)
    if not stored then
      status, body = 404, err('not_found', 'no such payment')
    elseif kind == 'get' then
      status, body = 200, stored
    else
      local p = cjson.decode(stored)
      local amt = amount
      if kind == 'capture' then
        if amt == 0 then amt = p.amount_minor end
        if p.status ~= 'authorized' or amt <= 0 or amt > p.amount_minor then
          status, body = 409, err('invalid_state', 'cannot capture a ' .. p.status .. ' payment')
        else
          p.status, p.captured_minor = 'captured', amt
          status, body = 200, cjson.encode({id = p.id, status = 'captured', amount_minor = amt, currency = p.currency})
        end
      elseif kind == 'void' then  -- cancel an authorization nothing was captured from
        if p.status ~= 'authorized' then
          status, body = 409, err('invalid_state', 'cannot void a ' .. p.status .. ' payment')
        else
          p.status = 'voided'
          status, body = 200, cjson.encode({id = p.id, status = 'voided', amount_minor = p.amount_minor,
                                            currency = p.currency})
        end
      else -- refund
        local left = p.captured_minor - p.refunded_minor
        if amt == 0 then amt = left end
        if (p.status ~= 'captured' and p.status ~= 'refunded') or amt <= 0 or amt > left then
          status, body = 409, err('invalid_state', 'nothing to refund')
        else
          p.refunded_minor = p.refunded_minor + amt
          if p.refunded_minor == p.captured_minor then p.status = 'refunded' end
          status, body = 200, cjson.encode({id = p.id, refund_id = new_id, status = 'refunded', amount_minor = amt,
                                            currency = p.currency})
        end
      end
      if status == 200 then redis.call('SET', pay_key, cjson.encode(p), 'KEEPTTL') end
    end
  end
  if has_key then
    redis.call('SET', idem_key, 'done\n' .. status .. '\n' .. fp .. '\n' .. body, 'PX', ttl_ms)
  end
  return answer(status, body)
end

if phase == 'finish' then
  if (redis.call('GET', epoch_key) or '0') ~= ARGV[14] then
    return answer(503, err('reset', 'the simulator was reset while this call ran'))
  end
  return execute()
end

redis.call('HINCRBY', stats_key, kind, 1)
if cfg.down == true then
  redis.call('HINCRBY', stats_key, 'refused_down', 1)
  return answer(503, err('down', 'provider is down'))
end
local limit = num(cfg.rate_limit_per_s)
if limit > 0 then
  local burst = num(cfg.rate_limit_burst)
  if burst <= 0 then burst = math.max(1, limit) end
  local b = redis.call('HMGET', bucket_key, 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]) or burst, tonumber(b[2]) or now_ms
  tokens = math.min(burst, tokens + math.max(0, now_ms - ts) * limit / 1000)
  if tokens < 1 then
    redis.call('HSET', bucket_key, 'tokens', tokens, 'ts', now_ms)
    redis.call('HINCRBY', stats_key, 'rate_limited', 1)
    local wait_ms = math.ceil((1 - tokens) * 1000 / limit)
    return answer(429, cjson.encode({error = {code = 'rate_limited', message = 'too many requests',
                                              retry_after_ms = wait_ms}}), 'retry:' .. wait_ms)
  end
  redis.call('HSET', bucket_key, 'tokens', tokens - 1, 'ts', now_ms)
end
local hang = storm_rate('timeout')
if hang > 0 and tonumber(ARGV[11]) < hang then
  redis.call('HINCRBY', stats_key, 'timed_out', 1)
  return answer(504, err('timeout', 'simulated timeout'), '', num(storm.timeout_ms))
end
local latency = num(cfg.latency_ms)
local p50 = num(cfg.latency_p50_ms)
if p50 > 0 then
  local p99 = num(cfg.latency_p99_ms)
  if p99 < p50 then p99 = p50 end
  local draw = p50 * math.exp((math.log(p99) - math.log(p50)) / 2.3263478740408408 * tonumber(ARGV[12]))
  latency = latency + math.min(draw, 10 * p99)
end
if kind == 'capture' or ARGV[15] == '1' then latency = latency + num(cfg.capture_latency_ms) end
if has_key then
  local rec = redis.call('GET', idem_key)
  if rec then
    local a = string.find(rec, '\n', 1, true)
    local b = string.find(rec, '\n', a + 1, true)
    local c = string.find(rec, '\n', b + 1, true)
    if string.sub(rec, b + 1, c - 1) ~= fp then
      redis.call('HINCRBY', stats_key, 'conflicts', 1)
      return answer(422, err('idempotency_conflict', 'Idempotency-Key reused with another request'), '', latency)
    end
    if string.sub(rec, 1, a - 1) ~= 'done' then
      redis.call('HINCRBY', stats_key, 'in_progress', 1)
      return answer(409, err('idempotency_key_in_use',
                             'another request with this Idempotency-Key is in progress; retry later'), '', latency)
    end
    redis.call('HINCRBY', stats_key, 'replayed', 1)
    return answer(tonumber(string.sub(rec, a + 1, b - 1)), string.sub(rec, c + 1), 'replayed', latency)
  end
end
if latency > 0 then
  if has_key then
    redis.call('SET', idem_key, 'running\n0\n' .. fp .. '\n', 'PX', math.ceil(latency) + 10000)
  end
  return {'continue', 0, '', '', tostring(latency), redis.call('GET', epoch_key) or '0'}
end
return execute()
"""

# KEYS: cfg. ARGV: the new values (JSON), mode (merge|replace). Returns the stored configuration.
CONFIG_LUA = r"""
local raw = redis.call('GET', KEYS[1])
local cfg = {}
if raw and ARGV[2] == 'merge' then cfg = cjson.decode(raw) end
local new = cjson.decode(ARGV[1])
for k, v in pairs(new) do cfg[k] = v end
if type(new.storm) == 'table' then
  local t = redis.call('TIME')
  cfg.storm.started_at_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                            + 1000 * (tonumber(new.storm.start_in_s) or 0)
end
local out = cjson.encode(cfg)
redis.call('SET', KEYS[1], out)
return out
"""


class _Call:
    """One API call as the store sees it, with every random draw made up front."""

    __slots__ = ("kind", "key", "fingerprint", "amount", "currency", "reference", "payment_id", "new_id",
                 "u_fail", "u_decline", "u_storm", "z", "capture")

    def __init__(self, kind: str, key: str | None, fingerprint: bytes, amount: int, currency: str, reference: str,
                 payment_id: str, capture: bool = False) -> None:
        self.kind = kind
        self.capture = capture  # an authorize call that also captures (a one-step charge)
        self.key = key
        self.fingerprint = fingerprint
        self.amount = amount
        self.currency = currency
        self.reference = reference
        rnd = random.random
        self.new_id = ("pay_%020x" if kind == "authorize" else "re_%020x") % random.getrandbits(80)
        self.payment_id = self.new_id if kind == "authorize" else payment_id
        self.u_fail, self.u_decline, self.u_storm = rnd(), rnd(), rnd()
        self.z = random.gauss(0.0, 1.0)


# An outcome: (action, status, body, flag, sleep_ms, epoch)
Outcome = tuple[str, int, bytes, str, float, str]


def _err(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


class RedisStore:
    """State shared by every worker: `<prefix>:cfg` (JSON), `<prefix>:stats` (hash), `<prefix>:bucket`
    (hash), `<prefix>:epoch`, `<prefix>:idem:<operation>:<key>` and `<prefix>:pay:<id>` (strings, TTL)."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, ttl_s: float = DEFAULT_TTL_S) -> None:
        from gateway.store.wire import WireConnection, encode_head

        self.wire = WireConnection(url, timeout_s=5.0)
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.k_cfg, self.k_stats = f"{prefix}:cfg", f"{prefix}:stats"
        self.k_bucket, self.k_epoch = f"{prefix}:bucket", f"{prefix}:epoch"
        self.sha = hashlib.sha1(CALL_LUA.encode()).hexdigest()
        self.config_sha = hashlib.sha1(CONFIG_LUA.encode()).hexdigest()
        self._head = encode_head("EVALSHA", self.sha, 6, self.k_cfg, self.k_stats, self.k_bucket, self.k_epoch)

    async def _script(self, command: bytes, source: str) -> Any:
        from redis.exceptions import NoScriptError

        from gateway.store.wire import encode

        try:
            return await self.wire.call(command)
        except NoScriptError:
            await self.wire.call(encode("SCRIPT", "LOAD", source))
            return await self.wire.call(command)

    async def run(self, phase: str, c: _Call, epoch: str) -> Outcome:
        from gateway.store.wire import encode_with

        p = self.prefix
        idem = f"{p}:idem:{c.kind}:{c.key}" if c.key else f"{p}:idem:-"
        pay = f"{p}:pay:{c.payment_id}"
        if c.kind == "find":  # the authorize call's record, and the payments' prefix (see find_payment)
            idem, pay = f"{p}:idem:authorize:{c.payment_id}", f"{p}:pay:"
        command = encode_with(self._head, idem, pay, phase, c.kind, "1" if c.key else "0",
                              c.fingerprint, c.amount, c.currency, c.reference, c.new_id, repr(c.u_fail),
                              repr(c.u_decline), repr(c.u_storm), repr(c.z), self.ttl_ms, epoch,
                              "1" if c.capture else "0")
        action, status, body, flag, sleep, seen = await self._script(command, CALL_LUA)
        return action.decode(), status, body, flag.decode(), float(sleep), seen.decode()

    async def get_config(self) -> dict[str, Any]:
        from gateway.store.wire import encode

        raw, now = await asyncio.gather(self.wire.call(encode("GET", self.k_cfg)), self.wire.call(encode("TIME")))
        return _public_config(orjson.loads(raw) if raw else {}, int(now[0]) * 1000 + int(now[1]) // 1000)

    async def put_config(self, values: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        from gateway.store.wire import encode

        command = encode("EVALSHA", self.config_sha, 1, self.k_cfg, orjson.dumps(values),
                         "replace" if replace else "merge")
        await self._script(command, CONFIG_LUA)
        return await self.get_config()

    async def stats(self) -> dict[str, int]:
        from gateway.store.wire import encode

        flat = await self.wire.call(encode("HGETALL", self.k_stats))
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def reset(self) -> None:
        """A new epoch (calls in flight from before cannot write any more), then every key but the epoch goes."""
        from gateway.store.wire import encode

        await self.wire.call(encode("INCR", self.k_epoch))
        pattern = _glob_escape(self.prefix) + ":*"
        epoch_key = self.k_epoch.encode()
        cursor = b"0"
        while True:
            cursor, keys = await self.wire.call(encode("SCAN", cursor, "MATCH", pattern, "COUNT", 1000))
            keys = [k for k in keys if k != epoch_key]
            if keys:
                await self.wire.call(encode("UNLINK", *keys))
            if cursor == b"0":
                return

    async def aclose(self) -> None:
        await self.wire.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class MemoryStore:
    """The same rules as CALL_LUA, in one process's memory (one worker, no Redis)."""

    def __init__(self, config: SimConfig | None = None, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.cfg: dict[str, Any] = {}
        self.epoch = 0
        self.reset_state()
        if config is not None:
            self._apply(SimConfig.validate(asdict(config)), replace=True)

    def reset_state(self) -> None:
        self.payments: dict[str, dict[str, Any]] = {}
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.bucket: tuple[float, float] | None = None

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    async def run(self, phase: str, c: _Call, epoch: str) -> Outcome:
        return self._run(phase, c, epoch)

    def _run(self, phase: str, c: _Call, seen_epoch: str) -> Outcome:
        cfg = self.cfg
        now_ms = time.time() * 1000
        epoch = str(self.epoch)
        num = lambda v: float(v or 0)  # noqa: E731

        def answer(status: int, body: bytes, flag: str = "", sleep_ms: float = 0.0) -> Outcome:
            return "answer", status, body, flag, sleep_ms, epoch

        if phase == "finish":
            if epoch != seen_epoch:
                return answer(503, _err("reset", "the simulator was reset while this call ran"))
            return answer(*self._execute(c, cfg, now_ms))
        self._count(c.kind)
        if cfg.get("down"):
            self._count("refused_down")
            return answer(503, _err("down", "provider is down"))
        limit = num(cfg.get("rate_limit_per_s"))
        if limit > 0:
            burst = num(cfg.get("rate_limit_burst")) or max(1.0, limit)
            tokens, ts = self.bucket or (burst, now_ms)
            tokens = min(burst, tokens + max(0.0, now_ms - ts) * limit / 1000)
            if tokens < 1:
                self.bucket = (tokens, now_ms)
                self._count("rate_limited")
                wait_ms = math.ceil((1 - tokens) * 1000 / limit)
                return answer(429, orjson.dumps({"error": {"code": "rate_limited", "message": "too many requests",
                                                           "retry_after_ms": wait_ms}}), f"retry:{wait_ms}")
            self.bucket = (tokens - 1, now_ms)
        hang = _storm_rate(cfg.get("storm"), now_ms, "timeout")
        if hang > 0 and c.u_storm < hang:
            self._count("timed_out")
            return answer(504, _err("timeout", "simulated timeout"), "", num(cfg["storm"].get("timeout_ms")))
        latency = num(cfg.get("latency_ms"))
        p50 = num(cfg.get("latency_p50_ms"))
        if p50 > 0:
            p99 = max(p50, num(cfg.get("latency_p99_ms")))
            latency += min(p50 * math.exp((math.log(p99) - math.log(p50)) / Z99 * c.z), 10 * p99)
        if c.kind == "capture" or c.capture:
            latency += num(cfg.get("capture_latency_ms"))
        if c.key:
            rec = self.answers.get((c.kind, c.key))
            if rec is not None:
                if rec["fp"] != c.fingerprint:
                    self._count("conflicts")
                    return answer(422, _err("idempotency_conflict", "Idempotency-Key reused with another request"),
                                  "", latency)
                if rec["state"] != "done":
                    self._count("in_progress")
                    return answer(409, _err("idempotency_key_in_use", "another request with this Idempotency-Key "
                                            "is in progress; retry later"), "", latency)
                self._count("replayed")
                return answer(rec["status"], rec["body"], "replayed", latency)
        if latency > 0:
            if c.key:
                self.answers[(c.kind, c.key)] = {"fp": c.fingerprint, "state": "running"}
            return "continue", 0, b"", "", latency, epoch
        return answer(*self._execute(c, cfg, now_ms))

    def _execute(self, c: _Call, cfg: dict[str, Any], now_ms: float) -> tuple[int, bytes]:
        rate = max(float(cfg.get("failure_rate") or 0), _storm_rate(cfg.get("storm"), now_ms, "error"))
        if "fail" in c.reference or c.u_fail < rate:
            if c.key:
                self.answers.pop((c.kind, c.key), None)
            self._count("failed")
            return 503, _err("temporarily_unavailable", "simulated failure")
        status, body = self._operate(c, cfg)
        if c.key:
            self.answers[(c.kind, c.key)] = {"fp": c.fingerprint, "status": status, "body": body, "state": "done"}
        return status, body

    def _operate(self, c: _Call, cfg: dict[str, Any]) -> tuple[int, bytes]:
        if c.kind == "authorize":
            declined = "decline" in c.reference or c.u_decline < float(cfg.get("decline_rate") or 0)
            status = "declined" if declined else "captured" if c.capture else "authorized"
            self.payments[c.new_id] = {"id": c.new_id, "status": status, "amount_minor": c.amount,
                                       "currency": c.currency, "reference": c.reference,
                                       "captured_minor": c.amount if status == "captured" else 0,
                                       "refunded_minor": 0}
            self._count(status)
            return 201, orjson.dumps({"id": c.new_id, "status": status, "amount_minor": c.amount,
                                      "currency": c.currency})
        if c.kind == "find":  # c.payment_id: the Idempotency-Key of the authorize call looked for
            rec = self.answers.get(("authorize", c.payment_id))
            if rec is not None and rec["state"] != "done":
                return 409, _err("idempotency_key_in_use", "the call with this Idempotency-Key is in progress; "
                                 "retry later")
            found = self.payments.get(orjson.loads(rec["body"]).get("id", "")) if rec is not None else None
            if found is None:
                return 404, _err("not_found", "no payment was created with this Idempotency-Key")
            return 200, orjson.dumps(found)
        p = self.payments.get(c.payment_id)
        if p is None:
            return 404, _err("not_found", "no such payment")
        if c.kind == "get":
            return 200, orjson.dumps(p)
        if c.kind == "capture":
            amount = c.amount or p["amount_minor"]
            if p["status"] != "authorized" or not 0 < amount <= p["amount_minor"]:
                return 409, _err("invalid_state", f"cannot capture a {p['status']} payment")
            p["status"], p["captured_minor"] = "captured", amount
            return 200, orjson.dumps({"id": p["id"], "status": "captured", "amount_minor": amount,
                                      "currency": p["currency"]})
        if c.kind == "void":  # cancel an authorization nothing was captured from
            if p["status"] != "authorized":
                return 409, _err("invalid_state", f"cannot void a {p['status']} payment")
            p["status"] = "voided"
            return 200, orjson.dumps({"id": p["id"], "status": "voided", "amount_minor": p["amount_minor"],
                                      "currency": p["currency"]})
        left = p["captured_minor"] - p["refunded_minor"]
        amount = c.amount or left
        if p["status"] not in ("captured", "refunded") or not 0 < amount <= left:
            return 409, _err("invalid_state", "nothing to refund")
        p["refunded_minor"] += amount
        if p["refunded_minor"] == p["captured_minor"]:
            p["status"] = "refunded"
        return 200, orjson.dumps({"id": p["id"], "refund_id": c.new_id, "status": "refunded", "amount_minor": amount,
                                  "currency": p["currency"]})

    def _apply(self, values: dict[str, Any], *, replace: bool = False) -> None:
        cfg = {} if replace else dict(self.cfg)
        cfg.update(values)
        if isinstance(values.get("storm"), dict):
            storm = cfg["storm"] = dict(values["storm"])
            storm["started_at_ms"] = int(time.time() * 1000 + 1000 * float(storm.get("start_in_s") or 0))
        self.cfg = cfg

    async def get_config(self) -> dict[str, Any]:
        return _public_config(self.cfg, time.time() * 1000)

    async def put_config(self, values: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        self._apply(values, replace=replace)
        return await self.get_config()

    async def stats(self) -> dict[str, int]:
        return dict(self.counts)

    async def reset(self) -> None:
        self.epoch += 1
        self.cfg = {}
        self.reset_state()

    async def aclose(self) -> None:
        return None


# --- the ASGI app ----------------------------------------------------------------------------------

_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")
_PAYMENTS = "/v1/payments/"


def create_app(config: SimConfig | None = None, *, redis_url: str | None = None, prefix: str = DEFAULT_PREFIX,
               ttl_s: float = DEFAULT_TTL_S) -> Any:
    """The simulator as a plain ASGI callable; state in Redis when `redis_url` is given, else in memory.

    With Redis, `config` is not applied here (the launcher writes it once for all workers)."""
    store: RedisStore | MemoryStore = (RedisStore(redis_url, prefix, ttl_s) if redis_url
                                       else MemoryStore(config, ttl_s))
    worker = (b"x-simulator-worker", str(os.getpid()).encode())
    # Storage faults are provider faults: the caller sees a 503, as from a real provider's outage.
    from redis.exceptions import RedisError

    async def respond(send: Any, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON, (b"content-length", b"%d" % len(body)), worker, *extra]})
        await send({"type": "http.response.body", "body": body})

    async def read_body(receive: Any) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            return body
        chunks = [body]
        while message.get("more_body"):
            message = await receive()
            chunks.append(message.get("body", b""))
        return b"".join(chunks)

    async def api(scope: Any, receive: Any, send: Any, kind: str, payment_id: str) -> None:
        raw = await read_body(receive)
        key: str | None = None
        amount, currency, reference, capture = 0, "", "", False
        body: Any = {}
        if kind not in ("get", "find"):
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                return await respond(send, 400, _err("malformed_json", "body must be a JSON object"))
            for name, value in scope["headers"]:
                if name == b"idempotency-key":
                    key = value.decode("latin-1")
                    break
            if not key:
                return await respond(send, 400, _err("idempotency_key_required", "Idempotency-Key header is required"))
            if len(key) > MAX_KEY_LENGTH:
                return await respond(send, 400, _err("bad_request", f"Idempotency-Key longer than {MAX_KEY_LENGTH}"))
            try:
                if kind == "authorize":
                    amount, currency = int(body["amount_minor"]), str(body["currency"])
                    reference = str(body.get("reference", ""))
                    if amount <= 0 or len(currency) != 3:
                        raise ValueError("amount_minor must be positive and currency three letters")
                    capture = body.get("capture", False)
                    if not isinstance(capture, bool):
                        raise ValueError("capture must be true or false")
                else:
                    amount = int(body.get("amount_minor") or 0)
            except (KeyError, TypeError, ValueError) as exc:
                return await respond(send, 400, _err("bad_request", f"invalid request: {exc}"))
        fingerprint = orjson.dumps([scope["path"], body], option=orjson.OPT_SORT_KEYS) if key else b""
        call = _Call(kind, key, fingerprint, amount, currency, reference, payment_id, capture)
        try:
            action, status, answer, flag, sleep_ms, epoch = await store.run("begin", call, "")
            if sleep_ms > 0:
                await asyncio.sleep(sleep_ms / 1000)
            if action == "continue":
                action, status, answer, flag, sleep_ms, epoch = await store.run("finish", call, epoch)
        except RedisError as exc:
            return await respond(send, 503, _err("store_unavailable", f"simulator store: {type(exc).__name__}"))
        if not flag:
            return await respond(send, status, answer)
        if flag == "replayed":
            return await respond(send, status, answer, _REPLAYED)
        retry_ms = int(flag.partition(":")[2] or 1000)
        return await respond(send, status, answer, (b"retry-after", b"%d" % max(1, math.ceil(retry_ms / 1000))))

    async def control(scope: Any, receive: Any, send: Any, path: str, method: str) -> None:
        if path == "/_config" and method in ("GET", "PUT"):
            if method == "PUT":
                try:
                    values = SimConfig.validate(orjson.loads(await read_body(receive) or b"{}"))
                except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
                    return await respond(send, 400, _err("bad_request", str(exc)))
                return await respond(send, 200, orjson.dumps(await store.put_config(values)))
            return await respond(send, 200, orjson.dumps(await store.get_config()))
        if path == "/_stats" and method == "GET":
            return await respond(send, 200, orjson.dumps(await store.stats()))
        if path == "/_reset" and method == "POST":
            await store.reset()
            return await respond(send, 200, b'{"reset":true}')
        return await respond(send, 404, _err("not_found", "no such endpoint"))

    async def lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await store.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == _PAYMENTS[:-1]:
            if method != "GET":
                return await respond(send, 405, _err("method_not_allowed", "method not allowed"))
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            lookup = (query.get("idempotency_key") or [""])[0]
            if not lookup or len(lookup) > MAX_KEY_LENGTH:
                return await respond(send, 400, _err("bad_request", "send idempotency_key=<the Idempotency-Key "
                                                     f"of an authorize call> (1 to {MAX_KEY_LENGTH} characters)"))
            return await api(scope, receive, send, "find", lookup)
        if path.startswith(_PAYMENTS):
            rest = path[len(_PAYMENTS):]
            if rest == "authorize":
                if method == "POST":
                    return await api(scope, receive, send, "authorize", "")
            elif "/" not in rest:
                if not rest:
                    return await respond(send, 404, _err("not_found", "no such endpoint"))
                if method == "GET":
                    return await api(scope, receive, send, "get", rest)
            else:
                payment_id, _, action = rest.partition("/")
                if action in ("capture", "refund", "void") and payment_id:
                    if method == "POST":
                        return await api(scope, receive, send, action, payment_id)
                else:
                    return await respond(send, 404, _err("not_found", "no such endpoint"))
            return await respond(send, 405, _err("method_not_allowed", "method not allowed"))
        try:
            await control(scope, receive, send, path, method)
        except RedisError as exc:
            await respond(send, 503, _err("store_unavailable", f"simulator store: {type(exc).__name__}"))

    app.store = store  # type: ignore[attr-defined]
    return app


def app_from_env() -> Any:
    """granian's factory target: settings arrive in FLASHGATE_SIMULATOR_* variables."""
    redis_url = os.environ.get(ENV_PREFIX + "REDIS_URL") or None
    return create_app(None if redis_url else SimConfig.from_env(), redis_url=redis_url,
                      prefix=os.environ.get(ENV_PREFIX + "PREFIX") or DEFAULT_PREFIX,
                      ttl_s=float(os.environ.get(ENV_PREFIX + "TTL_S") or DEFAULT_TTL_S))


# --- processes -------------------------------------------------------------------------------------

def _free_port() -> int:
    from gateway.stack.embedded import free_port

    return free_port()


def _config_env(config: dict[str, Any]) -> dict[str, str]:
    env = {}
    for name, value in config.items():
        if name == "storm":
            env[ENV_PREFIX + "STORM"] = orjson.dumps(value).decode() if value else ""
        else:
            env[ENV_PREFIX + name.upper()] = "1" if value is True else "0" if value is False else str(value)
    return env


def start_simulator_process(port: int | None = None, *, host: str = "127.0.0.1", log: Path | None = None,
                            timeout: float = 20.0, workers: int | None = None, redis_url: str | None = None,
                            prefix: str | None = None, ttl_s: float | None = None,
                            forget_on_exit: bool | None = None, **config: Any) -> tuple[subprocess.Popen, str]:
    """Start the simulator as a child process and wait until it answers; returns (process, base URL).

    `config` takes SimConfig fields (latency_ms, latency_p50_ms, latency_p99_ms, decline_rate, failure_rate,
    down, rate_limit_per_s, rate_limit_burst, storm). `redis_url` (default: FLASHGATE_SIMULATOR_REDIS_URL)
    shares the state between `workers` processes (default 4 with Redis, 1 without; more than one needs
    Redis). `prefix` defaults to a fresh one whose keys are deleted when the process stops
    (`forget_on_exit`). Stop it with `gateway.stack.embedded.stop_process(proc)`.
    """
    from gateway.stack.embedded import ServerFailed, spawn, stop_process

    unknown = set(config) - {f.name for f in fields(SimConfig)}
    if unknown:
        raise TypeError(f"unknown simulator settings: {sorted(unknown)}")
    SimConfig.validate(config)
    redis_url = redis_url or os.environ.get(ENV_PREFIX + "REDIS_URL") or None
    workers = workers or (DEFAULT_WORKERS_WITH_REDIS if redis_url else 1)
    if workers > 1 and not redis_url:
        raise ValueError("several simulator workers need a shared store: pass redis_url")
    if forget_on_exit is None:
        forget_on_exit = prefix is None
    prefix = prefix or f"{DEFAULT_PREFIX}:{secrets.token_hex(4)}"
    port = port or _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(_config_env(config))
    args = [sys.executable, "-m", "gateway.providers.simulator", "--port", str(port), "--host", host, "--from-env",
            "--workers", str(workers)]
    if redis_url:
        args += ["--redis-url", redis_url, "--prefix", prefix]
        if forget_on_exit:
            args.append("--forget-on-exit")
    if ttl_s is not None:
        args += ["--ttl-s", str(ttl_s)]
    proc = spawn(args, log=log, env=env)
    base_url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"payment simulator exited with status {proc.returncode}")
        try:
            if httpx.get(base_url + "/_config", timeout=0.5).status_code == 200:
                return proc, base_url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_process(proc)
    raise ServerFailed(f"payment simulator did not answer on {base_url} within {timeout:.0f} s")


def _forget(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=_glob_escape(prefix) + ":*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i:i + 1000])
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.providers.simulator",
                                     description="Payment-provider simulator (HTTP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--workers", type=int, help=f"worker processes (default {DEFAULT_WORKERS_WITH_REDIS} "
                        "with a Redis URL, else 1; more than one needs Redis)")
    parser.add_argument("--redis-url", default=os.environ.get(ENV_PREFIX + "REDIS_URL") or None,
                        help="shared state for the workers (default: $FLASHGATE_SIMULATOR_REDIS_URL)")
    parser.add_argument("--prefix", default=os.environ.get(ENV_PREFIX + "PREFIX") or DEFAULT_PREFIX,
                        help="Redis key prefix")
    parser.add_argument("--ttl-s", type=float, default=float(os.environ.get(ENV_PREFIX + "TTL_S") or DEFAULT_TTL_S),
                        help="how long payments and idempotency records are kept")
    for f in fields(SimConfig):
        if f.name not in ("down", "storm"):
            parser.add_argument("--" + f.name.replace("_", "-"), type=float)
    parser.add_argument("--down", action="store_true", default=None)
    parser.add_argument("--storm", help='JSON, e.g. \'{"every_s": 30, "duration_s": 5, "failure_rate": 1}\'')
    parser.add_argument("--from-env", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forget-on-exit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(SimConfig) if getattr(args, f.name) is not None}
    try:
        config = SimConfig.from_env()
        config.update(given)
    except ValueError as exc:
        parser.error(str(exc))
    workers = args.workers or (DEFAULT_WORKERS_WITH_REDIS if args.redis_url else 1)
    if workers > 1 and not args.redis_url:
        parser.error("--workers above 1 needs --redis-url (or FLASHGATE_SIMULATOR_REDIS_URL): the workers share "
                     "payments and idempotency records there")
    os.environ.update(_config_env(asdict(config)))
    if args.redis_url:
        import redis

        client = redis.Redis.from_url(args.redis_url)
        try:  # the launch configuration, once for all workers
            client.eval(CONFIG_LUA, 1, f"{args.prefix}:cfg",
                        orjson.dumps(SimConfig.validate(asdict(config))), "replace")
        except redis.RedisError as exc:
            parser.error(f"cannot use Redis at {args.redis_url}: {exc}")
        finally:
            client.close()
        os.environ[ENV_PREFIX + "REDIS_URL"] = args.redis_url
    else:
        os.environ.pop(ENV_PREFIX + "REDIS_URL", None)
    os.environ[ENV_PREFIX + "PREFIX"] = args.prefix
    os.environ[ENV_PREFIX + "TTL_S"] = str(args.ttl_s)

    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    try:
        Granian("gateway.providers.simulator:app_from_env", address=args.host, port=args.port,
                interface=Interfaces.ASGI, workers=workers, factory=True, log_level=LogLevels.warning,
                log_access=False, loop="uvloop", backlog=4096, respawn_failed_workers=True).serve()
    finally:
        if args.redis_url and args.forget_on_exit:
            _forget(args.redis_url, args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
