"""A real gateway (granian, 2 workers) of its own for the observability tests: scrapes need a metrics
token, and its log file is read line by line."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.config import Settings
from gateway.core.metrics import FLUSH_S
from tests.utils.live import start_gateway

METRICS_TOKEN = "scrape-" + "m" * 32
EVENT_LABELS = 2  # events with a label of their own (FLASHGATE_METRICS_EVENT_LABELS)


@dataclass
class Gateway2:
    url: str
    log: Path

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of `/metrics`, by (name, labels)."""
        resp = httpx.get(self.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain")
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(resp.text) for s in family.samples}


@pytest.fixture(scope="module")
def gateway2(settings: Settings, tmp_path_factory: pytest.TempPathFactory,
             payment_simulator: str) -> Iterator[Gateway2]:
    log_dir = tmp_path_factory.mktemp("observability")
    extra = {"FLASHGATE_METRICS_TOKEN": METRICS_TOKEN, "FLASHGATE_METRICS_EVENT_LABELS": str(EVENT_LABELS)}
    os.environ.update(extra)  # read into start_gateway's environment, then removed
    try:
        with start_gateway(settings, log_dir, workers=2) as url:
            for name in extra:
                os.environ.pop(name, None)
            yield Gateway2(url, next(log_dir.glob("gateway-*.log")))
    finally:
        for name in extra:
            os.environ.pop(name, None)


def settled(gateway: Gateway2) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape once every worker has flushed what it counted so far (each does every FLUSH_S)."""
    time.sleep(FLUSH_S + 0.4)
    return gateway.scrape()


def sample(samples: dict, name: str, **labels: str) -> float:
    """One sample's value (0 when the series is not there yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
