"""What the platform configurations may name: the settings the application reads, and its commands."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from gateway.cli import build_parser
from gateway.core.config import NotifySettings, ProviderSettings, Settings
from gateway.workers import WORKERS

PLATFORM = Path(__file__).resolve().parents[2] / "platform"


def _names(model: type, prefix: str) -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        out.add(alias if isinstance(alias, str) else f"{prefix}{name.upper()}")
    return out


def setting_names() -> set[str]:
    """Every environment variable a gateway or worker reads (gateway/core/config.py)."""
    return (_names(Settings, "FLASHGATE_") - {"FLASHGATE_PAYMENTS", "FLASHGATE_NOTIFY"}) \
        | _names(ProviderSettings, "FLASHGATE_PAYMENTS_") | _names(NotifySettings, "FLASHGATE_NOTIFY_")


def parse_command(argv: list[str] | str) -> argparse.Namespace:
    """The `flashgate ...` command line as the CLI reads it; fails on an unknown command, option or worker."""
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    assert Path(args[0]).name == "flashgate", args
    ns = build_parser().parse_args(args[1:])  # argparse exits (SystemExit) on anything it does not know
    if ns.command == "worker":
        assert ns.name in WORKERS, f"unknown worker {ns.name!r}; known: {sorted(WORKERS)}"
    return ns
