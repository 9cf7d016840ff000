"""A private Postgres primary and a streaming replica of it, started from the binaries on this machine
(the replica tests and `bench/bench_pg_replica.py`; docs/deployment.md has the same steps for real hosts).

The primary is an ordinary `PostgresServer` (its initdb'd pg_hba.conf trusts replication connections on
loopback); the replica is a `pg_basebackup -R` copy of it (standby.signal + primary_conninfo) started on a
port of its own, so it follows the primary over streaming replication.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.stack.embedded import PostgresServer, ServerFailed, _unprivileged_user, find_binary


def basebackup_binary() -> str:
    """pg_basebackup beside the server binaries (the same version), else wherever find_binary finds it."""
    beside = os.path.join(os.path.dirname(find_binary("initdb")), "pg_basebackup")
    return beside if os.access(beside, os.X_OK) else find_binary("pg_basebackup")


@dataclass
class ReplicaPair:
    primary: PostgresServer
    replica: PostgresServer

    @classmethod
    def start(cls, root: Path, *, fast_unsafe: bool = True) -> "ReplicaPair":
        basebackup = basebackup_binary()
        primary = PostgresServer(root / "primary", fast_unsafe=fast_unsafe).start()
        try:
            replica = PostgresServer(root / "replica", fast_unsafe=fast_unsafe)
            replica.data_dir.mkdir(parents=True, exist_ok=True)
            run_as = _unprivileged_user()
            if run_as:
                info = pwd.getpwnam(run_as)
                os.chown(replica.data_dir, info.pw_uid, info.pw_gid)
            result = subprocess.run(
                [basebackup, "-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user,
                 "-D", str(replica.pgdata), "-R", "-X", "stream", "-c", "fast",
                 *(["--no-sync"] if fast_unsafe else [])],
                capture_output=True, text=True, user=run_as, cwd=str(replica.data_dir), timeout=120)
            if result.returncode != 0:
                raise ServerFailed(f"pg_basebackup failed: {result.stderr.strip() or result.stdout.strip()}")
            replica.start()  # PG_VERSION is there: no initdb; standby.signal makes it a standby
        except BaseException:
            primary.stop()
            raise
        return cls(primary, replica)

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()
