"""Waiting-room benchmark: queue-status polls/s (no Redis command per poll) and joins/s.

Runs a real gateway (granian, 2 workers by default) on this machine against a
private Redis and Postgres (or REDIS_URL / DATABASE_URL when set) and drives it
with wrk (`apt-get install -y wrk`) on the same machine. Prints the figures,
the Redis commands counted during the poll run (INFO commandstats) and the
command line used.

    .venv/bin/python bench/bench_queue.py [--duration 10] [--connections 64] [--workers 2]

The per-IP and per-token poll limits are raised for the run (every request
comes from 127.0.0.1); the token-bucket checks still run on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.core.config import Settings  # noqa: E402
from gateway.core.tokens import TokenSigner  # noqa: E402
from gateway.stack.embedded import PostgresServer, RedisServer, free_port, spawn, stop_process  # noqa: E402

EVENT_ID = 1
TOKENS = 20_000
SECRET = "bench-" + "s" * 40

LUA = """
local tokens = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  i = math.random(#tokens)
end
request = function()
  i = i %% #tokens + 1
  return wrk.format("%s", "/v1/events/%d/queue", {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


def commands(client: redis.Redis) -> int:
    return sum(v["calls"] for k, v in client.info("commandstats").items()
               if k not in ("cmdstat_info", "cmdstat_config"))


def wrk(url: str, method: str, token_file: Path, script_dir: Path, duration: int, connections: int
        ) -> tuple[float, str, str]:
    script = script_dir / f"{method.lower()}.lua"
    script.write_text(LUA % (method, EVENT_ID))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url, "--",
           str(token_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  warning: {non2xx.group(1)} non-2xx answers", file=sys.stderr)
    return rps, p99.group(1) if p99 else "?", " ".join(cmd[:-1] + ["<tokens>"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found; install it with `apt-get install -y wrk`")
    tmp = Path(tempfile.mkdtemp(prefix="flashgate-bench-queue-"))
    servers = []
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    gateway = None
    try:
        if not redis_url:
            servers.append(RedisServer(tmp / "redis").start())
            redis_url = servers[-1].url
        if not database_url:
            pg = PostgresServer(tmp / "postgres", fast_unsafe=True).start()
            servers.append(pg)
            database_url = pg.url()
        prefix = f"bq{os.getpid()}"
        admin = redis.Redis.from_url(redis_url)
        admin.hset(f"{prefix}:{{ev:{EVENT_ID}}}:meta",
                   mapping={"status": "on_sale", "queue_mode": 1, "admission_rate": 100})
        port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "FLASHGATE_REDIS_PREFIX": prefix,
               "FLASHGATE_SECRET_KEY": SECRET, "FLASHGATE_ENVIRONMENT": "test", "FLASHGATE_LOG_LEVEL": "WARNING",
               "FLASHGATE_DATA_DIR": str(tmp / "data"),
               "FLASHGATE_QUEUE_POLL_PER_IP_PER_S": "1e9", "FLASHGATE_QUEUE_POLL_PER_TOKEN_PER_S": "1e9",
               "FLASHGATE_QUEUE_JOIN_PER_IP_PER_S": "1e9", "FLASHGATE_QUEUE_JOIN_PER_IP_PER_MIN": "1000000000",
               "FLASHGATE_QUEUE_JOIN_PER_BUYER_PER_MIN": "1000000000"}
        gateway = spawn([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers",
                         str(args.workers)], log=tmp / "gateway.log", env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or gateway.poll() is not None:
                sys.exit(f"gateway did not start: {(tmp / 'gateway.log').read_text()[-2000:]}")
            time.sleep(0.1)
        signer = TokenSigner(Settings(environment="test", secret_key=SECRET).secret_bytes)
        exp = int(time.time()) + 3600
        buyers = [f"b_bench{i:06d}" for i in range(TOKENS)]
        buyer_file = tmp / "buyers.txt"
        buyer_file.write_text("\n".join(signer.sign("b", {"sub": b, "exp": exp}) for b in buyers) + "\n")

        print(f"gateway: granian, {args.workers} workers, {os.cpu_count()} CPUs on this machine (wrk shares them)")
        join_rps, join_p99, join_cmd = wrk(url, "POST", buyer_file, tmp, args.duration, args.connections)
        joined = int(admin.hget(f"{prefix}:{{ev:{EVENT_ID}}}:q:state", "seq") or 0)
        print(f"joins:  {join_rps:,.0f} /s  (p99 {join_p99}; {joined} places; each is one Lua call)")

        queue_file = tmp / "queue.txt"
        n = min(joined, TOKENS) or 1
        queue_file.write_text("\n".join(signer.sign("q", {"ev": EVENT_ID, "n": i + 1, "sub": buyers[i],
                                                          "exp": exp}) for i in range(n)) + "\n")
        # warm every worker's cache, then count Redis commands during the poll run only
        asyncio.run(_warm(url, queue_file.read_text().split()[:50]))
        admin.config_resetstat()
        poll_rps, poll_p99, poll_cmd = wrk(url, "GET", queue_file, tmp, args.duration, args.connections)
        calls = commands(admin)
        polls = poll_rps * args.duration
        print(f"polls:  {poll_rps:,.0f} /s  (p99 {poll_p99}; {polls:,.0f} polls, {calls} Redis commands in "
              f"{args.duration} s = {calls / max(polls, 1):.5f} per poll, all from the background refresh)")
        print(f"commands: {join_cmd}\n          {poll_cmd}")
        return 0
    finally:
        if gateway is not None:
            stop_process(gateway)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _warm(url: str, tokens: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        for token in tokens:
            await client.get(f"/v1/events/{EVENT_ID}/queue", headers={"Authorization": f"Bearer {token}"})


if __name__ == "__main__":
    sys.exit(main())
