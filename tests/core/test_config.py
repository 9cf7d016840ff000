"""Settings: development makes its own secret; production refuses missing or development secrets."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from gateway.core.config import Settings


def test_development_generates_a_stable_secret(tmp_path):
    a = Settings(environment="development", data_dir=tmp_path, secret_key=None)
    b = Settings(environment="development", data_dir=tmp_path, secret_key=None)
    assert a.secret_key and a.secret_key == b.secret_key and a.secret_key.startswith("dev-")


@pytest.mark.parametrize("secret", [None, "", "dev-abcdefghijklmnopqrstuvwxyz0123456789", "short",
                                    "test-" + secrets.token_urlsafe(32), "a" * 32, "p" * 48, "password" * 4,
                                    "abcdefghijklmnopqrstuvwxyz012345", "qwertyuiopasdfghjklzxcvbnm123456",
                                    "Tr0ub4dor&3Tr0ub4dor&3Tr0ub4dor&3", "0123456789" * 4,
                                    "correct horse battery staple!!!1", "change-me-to-a-long-random-value",
                                    "CHANGE_ME_" + secrets.token_hex(4) + "_please_use_a_real_one",
                                    "<your-secret-here-at-least-32-characters>"])
def test_production_refuses_weak_secrets(tmp_path, secret):
    with pytest.raises((ValidationError, ValueError)) as err:
        Settings(environment="production", data_dir=tmp_path, secret_key=secret)
    assert "FLASHGATE_SECRET_KEY" in str(err.value)
    assert not secret or len(secret) < 8 or secret not in str(err.value)  # the value is never echoed


@pytest.mark.parametrize("secret", [secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_hex(32),
                                    secrets.token_urlsafe(64)])
def test_production_accepts_a_real_secret(tmp_path, secret):
    s = Settings(environment="production", data_dir=tmp_path, secret_key=secret)
    assert s.secret_bytes == secret.encode()


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://example:1/0")
    monkeypatch.setenv("FLASHGATE_REDIS_PREFIX", "zz")
    s = Settings(data_dir=tmp_path)
    assert s.redis_url == "redis://example:1/0" and s.redis_prefix == "zz"
