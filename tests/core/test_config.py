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


def _dev_secret_in(data_dir: str) -> str:
    return Settings(environment="development", data_dir=data_dir, secret_key=None).secret_key or ""


def test_processes_starting_together_share_one_development_secret(tmp_path):
    """Eight processes reading the settings of one fresh data directory at once all sign with the same
    secret (the workers of `flashgate up` start together; different secrets refuse each other's tokens)."""
    import concurrent.futures
    import multiprocessing

    for attempt in range(2):
        data_dir = tmp_path / f"data-{attempt}"
        with concurrent.futures.ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as pool:
            got = list(pool.map(_dev_secret_in, [str(data_dir)] * 8))
        assert len(set(got)) == 1 and got[0].startswith("dev-"), got
        assert (data_dir / "dev-secret").read_text() == got[0]
        assert [p.name for p in data_dir.iterdir()] == ["dev-secret"]  # no temporary file left behind


def test_a_data_directory_that_cannot_keep_the_secret_is_refused(tmp_path):
    """Without a place to keep it, each process would make up its own secret: refused, saying what to do."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the data directory should be")
    with pytest.raises((ValidationError, ValueError)) as err:
        Settings(environment="development", data_dir=blocked, secret_key=None)
    assert "FLASHGATE_SECRET_KEY" in str(err.value) and "FLASHGATE_DATA_DIR" in str(err.value)
    assert Settings(environment="development", data_dir=blocked, secret_key="s" * 40).secret_key == "s" * 40


@pytest.mark.parametrize("secret", [None, "", "dev-abcdefghijklmnopqrstuvwxyz0123456789", "short",
                                    "test-" + secrets.token_urlsafe(32), "a" * 32, "p" * 48, "password" * 4,
                                    "abcdefghijklmnopqrstuvwxyz012345", "qwertyuiopasdfghjklzxcvbnm123456",
                                    "Tr0ub4dor&3Tr0ub4dor&3Tr0ub4dor&3", "0123456789" * 4,
                                    "correct horse battery staple!!!1", "change-me-to-a-long-random-value",
                                    "CHANGE_ME_" + secrets.token_hex(4) + "_please_use_a_real_one",
                                    "<your-secret-here-at-least-32-characters>"],
                         ids=lambda s: "random" if s and ("test-" in s and len(s) > 40 or "CHANGE_ME_" in s) else None)
def test_production_refuses_weak_secrets(tmp_path, secret):
    with pytest.raises((ValidationError, ValueError)) as err:
        Settings(environment="production", data_dir=tmp_path, secret_key=secret)
    assert "FLASHGATE_SECRET_KEY" in str(err.value)
    assert not secret or len(secret) < 8 or secret not in str(err.value)  # the value is never echoed


@pytest.mark.parametrize("secret", [secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_hex(32),
                                    secrets.token_urlsafe(64)], ids=["urlsafe32", "hex16", "hex32", "urlsafe64"])
def test_production_accepts_a_real_secret(tmp_path, secret):
    s = Settings(environment="production", data_dir=tmp_path, secret_key=secret)
    assert s.secret_bytes == secret.encode()


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://example:1/0")
    monkeypatch.setenv("FLASHGATE_REDIS_PREFIX", "zz")
    s = Settings(data_dir=tmp_path)
    assert s.redis_url == "redis://example:1/0" and s.redis_prefix == "zz"
