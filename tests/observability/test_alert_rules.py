"""platform/observability/: the Prometheus configuration and alert rules are valid (promtool), each alert
fires on the series that should trip it and not on healthy ones (`promtool test rules`), and every
series the rules read is one the gateway really exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import need
from tests.observability.conftest import METRICS_TOKEN, Gateway2

HERE = Path(__file__).resolve().parents[2] / "platform" / "observability"


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        need("promtool not found: install Debian's `prometheus` package (`apt-get install prometheus`), "
             "which ships it; .ci/run does")
    out = subprocess.run([binary, *args], cwd=HERE, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_scrape_config_is_valid() -> None:
    # --syntax-only: the token file it names exists on the Prometheus host, not here.
    assert "SUCCESS" in promtool("check", "config", "--syntax-only", "prometheus.yml")


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yml")


def test_alerts_fire_when_they_should_and_only_then() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


@pytest.mark.slow
def test_every_series_the_rules_read_is_exposed(gateway2: Gateway2) -> None:
    resp = httpx.get(gateway2.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    families = set(re.findall(r"^# TYPE (\S+) ", resp.text, re.MULTILINE))  # also those with no sample yet
    exposed = families | {f"{name}_{suffix}" for name in families for suffix in ("bucket", "count", "sum")}
    used = set(re.findall(r"\bflashgate_[a-z_]+", (HERE / "alerts.yml").read_text()))
    assert used, "the rules read no flashgate series"
    assert used <= exposed, f"series the rules read but /metrics does not expose: {sorted(used - exposed)}"
