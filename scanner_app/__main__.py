"""`python -m scanner_app --gateway URL --token T`: the door scanner in a terminal."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from scanner_app.client import BadRequest, GatewayClient, Refused
from scanner_app.manifest import ManifestError
from scanner_app.scanner import NoManifest, Scanner
from scanner_app.store import Store
from scanner_app.terminal import Terminal


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flashgate-scanner"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scanner_app", description=(
        "Door scanner for keyboard-wedge barcode scanners: scan (or type) a ticket code and Enter. "
        "Works offline by itself when the gateway cannot be reached."))
    p.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. https://tickets.example.org")
    p.add_argument("--token", default=os.environ.get("FLASHGATE_DEVICE_TOKEN"),
                   help="this device's token (POST /v1/events/{id}/devices); or FLASHGATE_DEVICE_TOKEN")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the manifest, seen-set and offline queue are kept (default: %(default)s under "
                        "$XDG_DATA_HOME/flashgate-scanner, one file per gateway and token)")
    p.add_argument("--retry", type=float, default=2.0, help="seconds between attempts to reach the gateway offline")
    p.add_argument("--no-bell", action="store_true", help="do not beep")
    args = p.parse_args(argv)
    if not args.token:
        p.error("a device token is needed: --token or FLASHGATE_DEVICE_TOKEN")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One database per (gateway, token): two devices on one machine never share a seen-set or a queue.
    tag = hashlib.sha256(f"{args.gateway.rstrip('/')}\n{args.token}".encode()).hexdigest()[:16]
    path = (args.data_dir or default_data_dir()) / f"scanner-{tag}.sqlite3"
    store = Store(path)
    client = GatewayClient(args.gateway, args.token)
    scanner = Scanner(client=client, store=store, retry_s=args.retry)
    try:
        try:
            scanner.start()
        except NoManifest as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 2
        except Refused as exc:
            print(f"this device is refused by the gateway: {exc} ({exc.code})", file=sys.stderr)
            return 3
        except (BadRequest, ManifestError) as exc:
            print(f"cannot start: {exc}", file=sys.stderr)
            return 2
        return Terminal(scanner, bell=not args.no_bell).run(sys.stdin)
    finally:
        client.close()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
