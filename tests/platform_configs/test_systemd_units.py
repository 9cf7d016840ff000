"""platform/systemd/: the gateway and worker units start real `flashgate` commands (every worker the CLI
knows, through the template), with the hardening and restart policy docs/deployment.md promises, and an
environment file whose every variable is a setting the application reads and which makes valid production
settings; `systemd-analyze verify` accepts the units."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core.config import Settings
from gateway.workers import WORKERS
from tests.conftest import need
from tests.platform_configs.common import PLATFORM, parse_command, setting_names

UNITS = PLATFORM / "systemd"
GATEWAY = UNITS / "flashgate-gateway.service"
WORKER = UNITS / "flashgate-worker@.service"
ENV_FILE = UNITS / "flashgate.env.example"
ENV_PATH = "/etc/flashgate/flashgate.env"


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",), comment_prefixes=("#", ";"),
                                          interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key), line
        assert key not in out, f"{key} twice"
        out[key] = shlex.split(value)[0] if value.startswith('"') else value
    return out


@pytest.mark.parametrize("path", [GATEWAY, WORKER], ids=lambda p: p.name)
def test_units_are_hardened_and_restart_on_failure(path: Path) -> None:
    service = unit(path)["Service"]
    data_dir = re.fullmatch(r"FLASHGATE_DATA_DIR=(\S+)", service["Environment"])
    assert data_dir, "FLASHGATE_DATA_DIR is set per host, in the unit"
    expected = {"Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                "ProtectHome": "yes", "PrivateTmp": "yes", "EnvironmentFile": ENV_PATH, "User": "flashgate",
                "ReadWritePaths": data_dir.group(1), "StateDirectory": "flashgate"}
    assert {k: service.get(k) for k in expected} == expected
    assert data_dir.group(1) == "/var/lib/" + service["StateDirectory"]
    assert service["CapabilityBoundingSet"] == ""  # no capabilities at all
    assert unit(path)["Install"]["WantedBy"] == "multi-user.target"


def test_gateway_unit_runs_flashgate_serve_on_every_address() -> None:
    ns = parse_command(unit(GATEWAY)["Service"]["ExecStart"])
    assert (ns.command, ns.host) == ("serve", "0.0.0.0")


def test_worker_template_runs_every_worker_the_cli_knows() -> None:
    text = WORKER.read_text()
    exec_start = unit(WORKER)["Service"]["ExecStart"]
    assert "%i" in exec_start
    for name in WORKERS:
        ns = parse_command(exec_start.replace("%i", name))
        assert (ns.command, ns.name) == ("worker", name)
        assert f"flashgate-worker@{name}" in text, f"the unit's instructions do not name the {name} worker"
    with pytest.raises(AssertionError, match="unknown worker"):
        parse_command(exec_start.replace("%i", "no-such-worker"))


def test_env_file_names_only_real_settings_and_makes_valid_production_settings(monkeypatch) -> None:
    env = env_file(ENV_FILE)
    unknown = set(env) - setting_names()
    assert not unknown, f"not settings the application reads: {sorted(unknown)}"
    for key in [k for k in os.environ if k.startswith("FLASHGATE_") or k.endswith("_URL")]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # The example's secret is a placeholder that production refuses; a real one passes.
    with pytest.raises(ValueError, match="FLASHGATE_SECRET_KEY"):
        Settings(_env_file=None)
    monkeypatch.setenv("FLASHGATE_SECRET_KEY", "kV3p9-Qz7xLw2RtY8mNc4HbJ6fDs1GaE0uIoPq5Zr")
    s = Settings(_env_file=None)
    assert (s.environment, s.trusted_proxies, s.notify.smtp_starttls) == ("production", env[
        "FLASHGATE_TRUSTED_PROXIES"], True)
    assert s.redis_url and s.redis_url.startswith("redis+cluster://")


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        need("systemd-analyze not found: install Debian's `systemd` package (`apt-get install systemd`); "
             ".ci/run does")
    flashgate = shutil.which("flashgate") or str(Path(sys.executable).with_name("flashgate"))
    assert os.access(flashgate, os.X_OK), "the flashgate command is not installed"
    # The installed paths, pointed at this machine's: verify checks that ExecStart's binary exists.
    names = [GATEWAY.name] + [f"flashgate-worker@{w}.service" for w in WORKERS]
    for source, name in [(GATEWAY, GATEWAY.name)] + [(WORKER, n) for n in names[1:]]:
        text = source.read_text().replace("/opt/flashgate/bin/flashgate", flashgate)
        (tmp_path / name).write_text(text.replace(ENV_PATH, str(ENV_FILE)))
    out = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in names)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and re.search(r"Failed to (initialize|connect|set up)|not been booted",
                                         out.stderr) and not os.environ.get("CI"):
        pytest.skip(f"systemd-analyze cannot run here: {out.stderr.strip()[:300]}")
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 0 and not problems, problems
