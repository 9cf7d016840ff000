"""Settings: development makes its own secret; production refuses missing or development secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.core.config import Settings


def test_development_generates_a_stable_secret(tmp_path):
    a = Settings(environment="development", data_dir=tmp_path, secret_key=None)
    b = Settings(environment="development", data_dir=tmp_path, secret_key=None)
    assert a.secret_key and a.secret_key == b.secret_key and a.secret_key.startswith("dev-")


@pytest.mark.parametrize("secret", [None, "", "dev-abcdefghijklmnopqrstuvwxyz0123456789", "short"])
def test_production_refuses_weak_secrets(tmp_path, secret):
    with pytest.raises((ValidationError, ValueError)) as err:
        Settings(environment="production", data_dir=tmp_path, secret_key=secret)
    assert "FLASHGATE_SECRET_KEY" in str(err.value)


def test_production_accepts_a_real_secret(tmp_path):
    s = Settings(environment="production", data_dir=tmp_path, secret_key="p" * 48)
    assert s.secret_bytes == b"p" * 48


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://example:1/0")
    monkeypatch.setenv("FLASHGATE_REDIS_PREFIX", "zz")
    s = Settings(data_dir=tmp_path)
    assert s.redis_url == "redis://example:1/0" and s.redis_prefix == "zz"
