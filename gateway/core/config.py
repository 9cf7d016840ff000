"""Settings: one pydantic-settings class, read from the environment and `.env`.

Development mode generates its own secrets (stable per data directory, so a
restart keeps tokens valid). Production mode refuses to start while a secret is
missing or still a development value, and names the variable.
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_PREFIX = "dev-"
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Secrets: in production each must be set and must not look like a development value.
SECRET_FIELDS = ("secret_key",)


class SettingsError(ValueError):
    pass


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
    # Prefix of every Redis key: lets several stacks (or test runs) share one server.
    redis_prefix: str = "fg"

    # HMAC key for buyer, queue, admission and order tokens; required in production.
    secret_key: str | None = None

    data_dir: Path = PROJECT_ROOT / "var"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    log_level: str = "INFO"

    max_body_bytes: int = 1_048_576
    snapshot_refresh_s: float = 0.1
    snapshot_stale_after_s: float = 10.0

    # Inventory defaults (an event may override).
    default_hold_ttl_s: int = 600
    default_per_buyer_limit: int = 8
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
    queue_tickets_per_buyer: float = 2.0       # expected tickets per admitted buyer (inventory pause)
    queue_decision_s: float = 60.0             # admitted buyers count as pending demand for about this long
    queue_expiring_window_s: float = 60.0      # holds expiring within this window count as coming back
    queue_poll_per_ip_per_s: float = 200.0     # in-process, per worker
    queue_poll_per_token_per_s: float = 2.0    # in-process, per worker (burst 5x)
    queue_join_per_ip_per_s: float = 10.0      # in-process, per worker (burst 5x)
    queue_join_per_ip_per_min: int = 120       # Redis counter, per event
    queue_join_per_buyer_per_min: int = 10     # Redis counter, per event

    @model_validator(mode="after")
    def _secrets(self) -> "Settings":
        if self.environment == "production":
            for name in SECRET_FIELDS:
                value = getattr(self, name)
                env = f"FLASHGATE_{name.upper()}"
                if not value:
                    raise SettingsError(f"{env} must be set in production")
                if value.startswith(DEV_SECRET_PREFIX) or len(value) < 32:
                    raise SettingsError(
                        f"{env} is a development value or shorter than 32 characters; "
                        "set a random production secret"
                    )
        elif not self.secret_key:
            self.secret_key = _dev_secret(self.data_dir)
        return self

    @property
    def secret_bytes(self) -> bytes:
        assert self.secret_key is not None
        return self.secret_key.encode()


def _dev_secret(data_dir: Path) -> str:
    """A development secret kept under the data directory, so restarts keep tokens valid."""
    path = data_dir / "dev-secret"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = DEV_SECRET_PREFIX + secrets.token_urlsafe(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        path.chmod(0o600)
    except OSError:
        pass
    return value


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
