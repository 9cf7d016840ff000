"""Settings: one pydantic-settings class, read from the environment and `.env`.

Development mode generates its own secrets (stable per data directory, so a
restart keeps tokens valid). Production mode refuses to start while a secret is
missing or still a development value, and names the variable.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.resources import IN_SOURCE_CHECKOUT

DEV_SECRET_PREFIX = "dev-"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout; site-packages when installed from a wheel


def _default_data_dir() -> Path:
    """`var/` of the source checkout; an installed copy never writes into site-packages: `<cwd>/var`."""
    if IN_SOURCE_CHECKOUT:
        return PROJECT_ROOT / "var"
    return Path.cwd() / "var"


# Secrets: in production each must be set, must not look like a development value, and must be random
# enough (check_secret).
SECRET_FIELDS = ("secret_key",)
DEV_SECRET_PREFIXES = (DEV_SECRET_PREFIX, "test-")  # generated in development; the test suites' secrets
MIN_SECRET_LENGTH = 32
MIN_SECRET_DISTINCT = 10      # distinct characters: refuses 'a' * 32, 'password' * 4
MIN_SECRET_GUESSES_LOG10 = 25  # zxcvbn's estimate (~83 bits): refuses repeats, sequences, words, keyboard walks
# Words of the placeholders that configuration examples and templates carry ("change-me-to-a-long-random-value",
# "<your secret here>"): long enough for zxcvbn, never meant to be kept.
PLACEHOLDER_WORDS = ("changeme", "replaceme", "placeholder", "yoursecret", "secrethere", "example", "randomvalue",
                     "notsecret", "insecure", "fillme", "xxxxxx")


def check_secret(env: str, value: str | None) -> None:
    """Refuse a production secret that is missing, a development value, or guessable; the message
    names the variable and how to make a good one, never the value."""
    if not value:
        raise SettingsError(f"{env} must be set in production")
    how = "set a random production secret, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
    if value.startswith(DEV_SECRET_PREFIXES):
        raise SettingsError(f"{env} is a development value; {how}")
    if len(value) < MIN_SECRET_LENGTH:
        raise SettingsError(f"{env} is shorter than {MIN_SECRET_LENGTH} characters; {how}")
    letters = "".join(ch for ch in value.lower() if ch.isalnum())
    if any(word in letters for word in PLACEHOLDER_WORDS):
        raise SettingsError(f"{env} looks like a placeholder from an example; {how}")
    if len(set(value)) < MIN_SECRET_DISTINCT:
        raise SettingsError(f"{env} has fewer than {MIN_SECRET_DISTINCT} distinct characters; {how}")
    from zxcvbn import zxcvbn  # imported only here: production start-up

    if zxcvbn(value[:72])["guesses_log10"] < MIN_SECRET_GUESSES_LOG10:  # zxcvbn reads at most 72 characters
        raise SettingsError(f"{env} is too easy to guess (repeats, sequences, words or keyboard patterns); {how}")


class SettingsError(ValueError):
    pass


class ProviderSettings(BaseSettings):
    """Payment-provider settings (FLASHGATE_PAYMENTS_*)."""

    model_config = SettingsConfigDict(env_prefix="FLASHGATE_PAYMENTS_", env_file=".env", extra="ignore")

    url: str = "http://127.0.0.1:8099"
    timeout_s: float = 2.0  # whole budget of one operation, retries included
    connect_timeout_s: float = 0.5
    max_concurrency: int = 64
    acquire_timeout_s: float = 0.05
    breaker_fail_max: int = 5
    breaker_reset_s: float = 10.0
    retry_attempts: int = 3
    retry_initial_s: float = 0.05
    retry_max_s: float = 0.5
    # Adaptive concurrency limit (gateway/providers/limiter.py, docs/providers.md "Pacing"), per process.
    limit_initial: int = 16              # starting limit (calls in flight)
    limit_min: int = 2                   # never below
    limit_max: int = 64                  # never above; also capped by max_concurrency (the bulkhead)
    limit_tolerance: float = 2.0         # latency up to this multiple of the baseline RTT is not queueing
    limit_smoothing: float = 0.2         # share of the gradient step taken per round trip of the window
    limit_latency_target_s: float | None = None  # RTT above this shrinks the limit; None: timeout_s / 3
    limit_throttle_backoff: float = 0.5  # a 429 multiplies the limit by this (at most once per RTT)
    limit_baseline_window_s: float = 30.0  # time constant of the baseline RTT drifting up
    limit_rtt_floor_s: float = 0.02      # RTTs below this are never queueing (a busy gateway's own loop lag)
    queue_max: int = 512                 # callers waiting for a slot, at most; beyond: shed (busy)
    queue_margin_rtts: float = 1.5       # a call leaves only with this many RTTs of budget left
    breaker_trial_lease_s: float | None = None  # one trial across processes; None: timeout_s + 1
    # Checkout charges in one call (authorize with capture, as card providers offer); false: authorize, then
    # capture in a second call (docs/checkout.md "Round trips").
    capture_on_authorize: bool = True


class NotifySettings(BaseSettings):
    """Notification delivery settings (FLASHGATE_NOTIFY_*)."""

    model_config = SettingsConfigDict(env_prefix="FLASHGATE_NOTIFY_", env_file=".env", extra="ignore")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "Flashgate <tickets@flashgate.local>"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 5.0
    smtp_max_concurrency: int = 8
    webhook_timeout_s: float = 5.0
    webhook_max_concurrency: int = 8  # per destination host
    # Webhooks reach public addresses only (gateway/providers/egress.py); these CIDRs are let through
    # anyway, e.g. "127.0.0.0/8" for a receiver on a development machine. Refused in production when it
    # opens loopback or link-local addresses (the stack's own servers, the cloud metadata service).
    webhook_allow_networks: str = ""
    # A worker waits for a bulkhead slot rather than failing at once: it is not serving a buyer.
    acquire_timeout_s: float = 10.0
    max_attempts: int = 5
    backoff_base_s: float = 2.0  # attempt n waits base * 2**(n-1), with up to 25 % jitter
    backoff_max_s: float = 900.0
    breaker_fail_max: int = 5
    breaker_reset_s: float = 30.0
    batch: int = 32
    block_ms: int = 500
    claim_idle_s: float = 60.0  # a pending entry idle this long belongs to a dead consumer
    claim_every_s: float = 5.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLASHGATE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    environment: Literal["development", "test", "production"] = "development"

    # Connection URLs keep their conventional unprefixed names.
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    # A streaming replica for organiser reads that tolerate lag (gateway/db/replica.py, docs/scaling.md).
    database_replica_url: str | None = Field(default=None, validation_alias="DATABASE_REPLICA_URL")
    database_replica_max_lag_s: float = Field(default=5.0, gt=0)  # more behind: those reads go to the primary
    database_replica_check_s: float = Field(default=1.0, gt=0)    # how often each process checks the replica
    # Prefix of every Redis key: lets several stacks (or test runs) share one server.
    redis_prefix: str = "fg"

    # HMAC key for buyer, queue, admission and order tokens; required in production.
    secret_key: str | None = None

    data_dir: Path = Field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    # A worker that has not stopped this long after being asked is killed (an open live-figures stream
    # never ends by itself, and granian waits for open connections before it stops a worker).
    worker_stop_timeout_s: int = 5
    log_level: str = "INFO"

    # Every Redis command (waiting for a pooled connection included) answers within this budget,
    # else the request gets 503 with Retry-After; a stalled Redis never hangs a request.
    redis_timeout_s: float = 1.0
    redis_max_connections: int = 64          # redis-py pool per process (callers queue for a connection)
    pg_pool_size: int = 10

    max_body_bytes: int = 1_048_576
    snapshot_refresh_s: float = 0.1
    snapshot_stale_after_s: float = 10.0

    # Per event: hold TTL and per-buyer limit are part of the event body (defaults and bounds in
    # gateway/organisers/event_spec.py); this bounds one hold request.
    max_seats_per_hold: int = 50

    # Waiting room (docs/waiting-room.md).
    queue_token_ttl_s: int = 6 * 3600          # a queue token's lifetime
    queue_admission_ttl_s: int = 900           # an admission lasts this long from the moment of admission
    queue_stall_s: float = 60.0                # no poll for this long: the place is skipped (lost)
    queue_cache_s: float = 0.25                # per-worker cache of the admitted-up-to counter
    queue_seen_flush_s: float = 1.0            # how often a worker writes poll liveness to Redis (batched)
    queue_poll_after_s: float = 5.0            # the poll interval suggested to clients
    queue_tick_s: float = 0.1                  # the admission leader's tick
    queue_lease_ms: int = 2000                 # leader lease; a dead leader is replaced after this
    queue_max_active_holds: int = 5000         # backpressure: admission slows above 80 %, stops at 100 %
    queue_max_checkout_ms: float = 3000.0      # backpressure on the checkout latency (EWMA)
    queue_checkout_target_ms: float = 400.0    # above it, admission follows the measured sales rate (0: off)
    queue_tickets_per_buyer: float = 2.0       # prior of the measured tickets per admitted buyer (inventory budget)
    queue_tickets_prior_n: float = 20.0        # weight of that prior, in buyers (measured data takes over after)
    queue_decision_s: float = 60.0             # an admitted buyer who has not acted counts as pending demand at most
                                               # this long (less when buyers are measured to react faster)
    queue_expiring_window_s: float = 60.0      # holds expiring within this window count as coming back
    queue_poll_per_ip_per_s: float = 200.0     # in-process, per worker
    trusted_proxies: str = ""                  # CIDRs whose X-Forwarded-For names the client (gateway/api/clientip.py)
    queue_poll_per_token_per_s: float = 2.0    # in-process, per worker (burst 5x)
    queue_join_per_ip_per_s: float = 10.0      # in-process, per worker (burst 5x)
    queue_join_per_ip_per_min: int = 120       # Redis counter, per event
    queue_join_per_buyer_per_min: int = 10     # Redis counter, per event
    # Waiting list after the final sell-out (docs/waiting-room.md, "Waiting list").
    waitlist_offer_ttl_s: int = Field(default=600, ge=1, le=86_400)  # an offer is bound to its buyer this long

    # Sybil protections (docs/waiting-room.md, "Sybil protections"; gateway/api/sybil.py). An IPv6
    # client's "address" is its /64 (a subscriber's usual allocation), its "prefix" its /48; IPv4: the
    # address and its /24. Addresses that are themselves trusted proxies are not limited. 0: off.
    buyer_token_per_ip_per_s: float = 0.5      # token minting, in-process per worker (sustained)
    buyer_token_per_ip_burst: float = 20.0     #   ... and at once
    buyer_token_per_prefix_per_s: float = 10.0  # per network prefix, sized for carrier-grade NAT
    buyer_token_per_prefix_burst: float = 300.0
    ipv4_prefix_bits: int = 24
    ipv6_prefix_bits: int = 48
    ipv6_address_bits: int = 64
    # Loopback clients (this host: tools, a load generator or chaos run on the same machine) skip the
    # three Sybil limits; unset: yes in development and test, no in production.
    sybil_exempt_loopback: bool | None = None
    holds_per_address_factor: float = 4.0      # tickets held at once per address per event: x per-buyer limit
    queue_pow: bool = False                    # proof of work on joining a waiting room
    queue_pow_bits: int = 16                   # its difficulty: leading zero bits of SHA-256 (~2^bits hashes)
    queue_pow_ttl_s: int = 3600                # how long a challenge can be solved and shown

    # Organiser API keys (docs/organisers.md, "Keys and roles").
    api_key_fail_burst: int = 10               # failed key checks per address at once (in-process, per worker)
    api_key_fail_per_ip_per_min: int = 30      # failed key checks per address per minute (Redis, all workers)
    seat_map_max_bytes: int = 16 * 1_048_576   # body limit of the seat-map route (PUT .../seat-map)

    # Sections with their own variable prefix (FLASHGATE_PAYMENTS_*, FLASHGATE_NOTIFY_*).
    payments: ProviderSettings = Field(default_factory=ProviderSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)

    # Ledger worker (docs/checkout.md, "Ledger worker"): FLASHGATE_LEDGER_*.
    ledger_batch: int = 1000                   # entries per read and per Postgres transaction
    ledger_consumers: int = 2                  # consumers (consumer-group members) per worker process
    ledger_claim_idle_ms: int = 15000          # pending this long (a dead consumer's): claimed by another
    ledger_round_s: float = 5.0                # housekeeping round: claim, prune, on-sale marks, scrub
    ledger_idle_poll_s: float = 0.2            # idle poll interval (from 20 ms after work, doubling up to it)
    ledger_scrub_batch: int = 10               # registry events checked per round by the background scrub

    # Metrics (docs/operations.md, "Metrics and alerts"). `GET /metrics` asks for `Authorization: Bearer
    # <metrics_token>` when it is set; unset, only loopback clients may scrape.
    metrics_token: str | None = None
    metrics_event_labels: int = 20            # the most recent events with a label of their own; the rest `other`

    @model_validator(mode="after")
    def _secrets(self) -> "Settings":
        if self.environment == "production":
            for name in SECRET_FIELDS:
                check_secret(f"FLASHGATE_{name.upper()}", getattr(self, name))
        elif not self.secret_key:
            self.secret_key = _dev_secret(self.data_dir)
        if self.environment == "production":
            _check_webhook_allow_list(self.notify.webhook_allow_networks)
        return self

    @property
    def secret_bytes(self) -> bytes:
        assert self.secret_key is not None
        return self.secret_key.encode()


def _check_webhook_allow_list(spec: str) -> None:
    import ipaddress

    never = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10")]
    for part in filter(None, (p.strip() for p in spec.split(","))):
        net = ipaddress.ip_network(part, strict=False)
        if any(net.version == n.version and net.overlaps(n) for n in never):
            raise SettingsError(f"FLASHGATE_NOTIFY_WEBHOOK_ALLOW_NETWORKS opens {part} (loopback or link-local) "
                                "to webhooks; that is for development only")


def _dev_secret(data_dir: Path) -> str:
    """A development secret kept under the data directory, so restarts keep tokens valid and every
    process of this data directory signs with the same one. Written once, atomically (a link that fails
    when another process got there first: then theirs is used). A data directory where it cannot be kept
    is refused: each process would otherwise sign with its own secret and refuse the others' tokens."""
    path = data_dir / "dev-secret"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SettingsError(_dev_secret_problem(path, exc)) from None
    value = DEV_SECRET_PREFIX + secrets.token_urlsafe(32)
    tmp = data_dir / f".dev-secret.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process wrote it first
            value = path.read_text().strip()
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise SettingsError(_dev_secret_problem(path, exc)) from None
    return value


def _dev_secret_problem(path: Path, exc: OSError) -> str:
    return (f"the development secret cannot be kept in {path} ({exc.strerror or exc}): make the data directory "
            "(FLASHGATE_DATA_DIR) writable, or set FLASHGATE_SECRET_KEY")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
