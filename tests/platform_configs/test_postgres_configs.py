"""platform/postgres/: a real primary and a streaming replica, each started with the shipped settings
included in its postgresql.conf the way docs/deployment.md says, replicate through the shipped slot: the
replica is a hot standby that streams from the primary through `flashgate_replica_1` and sends feedback, and
a row written on the primary is read on the replica. docs/deployment.md, "Postgres read replica"."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from gateway.stack.embedded import MissingBinary, PostgresServer, _unprivileged_user
from gateway.stack.pgreplica import basebackup_binary
from tests.conftest import need
from tests.utils.pgreplica import replayed_all

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

POSTGRES_DIR = Path(__file__).resolve().parents[2] / "platform" / "postgres"
SLOT = "flashgate_replica_1"


def _include(server: PostgresServer, source: Path, name: str, replace: str | None = None) -> None:
    """Copy `source` beside the server's postgresql.conf and include it at the end (readable by the server's
    user); `replace` is an include line to swap for this one (the replica's copy of the primary's)."""
    target = server.pgdata / name
    shutil.copy(source, target)
    run_as = _unprivileged_user()
    if run_as:
        info = pwd.getpwnam(run_as)
        os.chown(target, info.pw_uid, info.pw_gid)
    conf = server.pgdata / "postgresql.conf"
    text = conf.read_text()
    line = f"include '{name}'\n"
    conf.write_text(text.replace(replace, line) if replace else text + "\n" + line)


async def _show(url: str, *names: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return {n: await conn.fetchval(f"SHOW {n}") for n in names}
    finally:
        await conn.close()


async def test_primary_and_replica_stream_through_the_shipped_settings(tmp_path: Path) -> None:
    try:
        basebackup = basebackup_binary()
    except MissingBinary as exc:
        need(str(exc))
    # The server's own settings on the command line (port, loopback, fsync off for a throwaway cluster)
    # win over the files; everything else comes from the shipped ones.
    primary = PostgresServer(tmp_path / "primary", fast_unsafe=True).start()
    replica = PostgresServer(tmp_path / "replica", fast_unsafe=True)
    try:
        primary.stop()
        _include(primary, POSTGRES_DIR / "postgresql.conf", "flashgate.conf")  # the cold tier's settings
        _include(primary, POSTGRES_DIR / "primary.conf", "flashgate-primary.conf")
        primary.start()
        assert await _show(primary.url(), "wal_level", "max_wal_senders", "max_slot_wal_keep_size",
                           "max_replication_slots") == {
            "wal_level": "replica", "max_wal_senders": "10", "max_slot_wal_keep_size": "50GB",
            "max_replication_slots": "10"}
        assert (await _show(primary.url(), "wal_compression"))["wal_compression"] != "off"  # from postgresql.conf
        conn = await asyncpg.connect(primary.url())
        try:
            await conn.execute(f"SELECT pg_create_physical_replication_slot('{SLOT}')")
        finally:
            await conn.close()

        # The documented copy: pg_basebackup -R (standby.signal, primary_conninfo in postgresql.auto.conf).
        replica.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = _unprivileged_user()
        if run_as:
            info = pwd.getpwnam(run_as)
            os.chown(replica.data_dir, info.pw_uid, info.pw_gid)
        out = await asyncio.to_thread(subprocess.run, [
            basebackup, "-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user, "-D", str(replica.pgdata),
            "-R", "-X", "stream", "-c", "fast", "--no-sync"],
            capture_output=True, text=True, user=run_as, cwd=str(replica.data_dir), timeout=120)
        assert out.returncode == 0, out.stderr
        (replica.pgdata / "flashgate-primary.conf").unlink()  # flashgate.conf came along: the same on both
        _include(replica, POSTGRES_DIR / "replica.conf", "flashgate-replica.conf",
                 replace="include 'flashgate-primary.conf'\n")
        await asyncio.to_thread(replica.start)

        settings = await _show(replica.url(), "hot_standby", "hot_standby_feedback",
                               "max_standby_streaming_delay", "primary_slot_name")
        assert settings == {"hot_standby": "on", "hot_standby_feedback": "on",
                            "max_standby_streaming_delay": "30s", "primary_slot_name": SLOT}
        conn = await asyncpg.connect(replica.url())
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
        finally:
            await conn.close()

        # It streams through the slot (primary_slot_name from replica.conf) and sends feedback.
        conn = await asyncpg.connect(primary.url())
        try:
            deadline = time.monotonic() + 15
            while True:
                slot = await conn.fetchrow("SELECT active, xmin FROM pg_replication_slots WHERE slot_name = $1", SLOT)
                state = await conn.fetchval("SELECT state FROM pg_stat_replication LIMIT 1")
                if slot["active"] and state == "streaming" and slot["xmin"] is not None:
                    break
                assert time.monotonic() < deadline, (dict(slot), state)
                await asyncio.sleep(0.1)
            await conn.execute("CREATE TABLE probe (n int); INSERT INTO probe VALUES (42)")
        finally:
            await conn.close()
        await replayed_all(primary.url(), replica.url())
        conn = await asyncpg.connect(replica.url())
        try:
            assert await conn.fetchval("SELECT n FROM probe") == 42
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(replica.stop)
        await asyncio.to_thread(primary.stop)
