"""Private servers: a missing binary names itself and how to install it."""

from __future__ import annotations

import pytest

from gateway.stack import embedded


def test_missing_binary_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(embedded, "_EXTRA_DIRS", ())
    with pytest.raises(embedded.MissingBinary) as err:
        embedded.find_binary("redis-server")
    message = str(err.value)
    assert "redis-server" in message and "apt-get install redis-server" in message and "brew install" in message


def test_postgres_found_off_path(monkeypatch, tmp_path):
    fake = tmp_path / "lib" / "postgresql" / "16" / "bin"
    fake.mkdir(parents=True)
    (fake / "initdb").write_text("#!/bin/sh\n")
    (fake / "initdb").chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(embedded, "_EXTRA_DIRS", (str(tmp_path / "lib" / "postgresql" / "*" / "bin"),))
    assert embedded.find_binary("initdb") == str(fake / "initdb")
