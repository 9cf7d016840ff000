"""Benchmark of the hotpath structures: native (Cython) against the pure-Python twin.

Run: ``.venv/bin/python bench/bench_snapshot.py`` (build first with
``python setup.py build_ext --inplace``). Prints medians of repeated runs in µs per call
and the native/pure speed ratio. Exit status is 0 even when a target is missed: this is a
report, not a test.
"""

from __future__ import annotations

import random
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hotpath  # noqa: E402

SECTIONS, ROWS, WIDTH = 50, 40, 50  # 100,000 seats
N = SECTIONS * ROWS * WIDTH
SOLD_SHARE = 0.9
REPEAT = 15


def bitmap(seats, n: int) -> bytes:
    """Redis bit order: seat i is bit i of the string, bit 0 = MSB of byte 0."""
    out = bytearray((n + 7) // 8)
    for i in seats:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def layout(sections: int, rows: int, width: int) -> list[tuple[int, int]]:
    return [(s, width) for s in range(sections) for _ in range(rows)]


def scattered_free(n: int, width: int) -> bytes:
    """90% sold with free seats 10 apart, so no row has 4 adjacent free seats, except a
    block of 4 in the very last row: best_available has to scan the whole section."""
    free = {i for i in range(0, n, 10)}
    free |= {n - width + 23 + k for k in range(4)}
    return bitmap((i for i in range(n) if i not in free), n)


def timed(stmt, setup=None, number: int = 1, repeat: int = REPEAT) -> float:
    """Median µs per call."""
    runs = timeit.repeat(stmt, setup=setup or (lambda: None), number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def measure(mod) -> dict[str, float]:
    rng = random.Random(20240601)
    sold_seats = rng.sample(range(N), int(N * SOLD_SHARE))
    sold = bitmap(sold_seats, N)
    sold_set = set(sold_seats)
    held = bitmap(rng.sample([i for i in range(N) if i not in sold_set], N // 100), N)
    snap = mod.AvailabilitySnapshot(layout(SECTIONS, ROWS, WIDTH))
    snap.load(sold, held, 1)

    results: dict[str, float] = {}
    results["is_free(i)"] = timed(lambda: snap.is_free(4321), number=20000)
    four = [4321, 4322, 4323, 4324]
    results["any_sold(4 seats)"] = timed(lambda: snap.any_sold(four), number=20000)
    results["load(sold, held) 100k seats"] = timed(lambda: snap.load(sold, held, 1), number=3)
    results["section_counts() 50 sections (cached)"] = timed(snap.section_counts, number=2000)
    results["count_free(s) for all 50 sections"] = timed(
        lambda: [snap.count_free(s) for s in range(SECTIONS)], number=2000)

    worst = mod.AvailabilitySnapshot(layout(SECTIONS, ROWS, WIDTH))
    worst.load(scattered_free(N, WIDTH), b"", 1)
    assert worst.best_available(SECTIONS - 1, 4) == [N - WIDTH + 23 + k for k in range(4)]
    results["best_available(4) worst, section of 2,000"] = timed(
        lambda: worst.best_available(SECTIONS - 1, 4), number=200)
    one = mod.AvailabilitySnapshot(layout(1, SECTIONS * ROWS, WIDTH))
    one.load(scattered_free(N, WIDTH), b"", 1)
    assert one.best_available(0, 4) == [N - WIDTH + 23 + k for k in range(4)]
    results["best_available(4) worst, section of 100,000"] = timed(
        lambda: one.best_available(0, 4), number=2 if mod is hotpath.py_module() else 2000, repeat=5)

    free_seats = [i for i in range(N) if snap.is_free(i)]
    records, version = [], 1
    for k in range(1000):
        version += 1
        seats = rng.sample(free_seats, rng.randint(1, 4))
        records.append((version, (mod.OP_HOLD, mod.OP_SELL, mod.OP_RELEASE)[k % 3], seats))
    results["apply_changes(1,000 records)"] = timed(
        lambda: snap.apply_changes(records), setup=lambda: snap.load(sold, held, 1), repeat=31)
    results["render_state() 100k seats"] = timed(snap.render_state, number=20)

    seen = mod.RecentSet(100_000, 60.0)
    codes = [f"T-{i:08d}" for i in range(50_000)]
    results["RecentSet.add(new key)"] = timed(
        lambda: [seen.add(c, 1.0) for c in codes], setup=seen.clear, repeat=7) / len(codes)
    results["RecentSet.contains(key)"] = timed(
        lambda: [seen.contains(c, 2.0) for c in codes], repeat=7) / len(codes)
    buckets = mod.TokenBucketTable(rate=5.0, burst=10.0, capacity=10_000)
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(20_000)]
    results["TokenBucketTable.allow(key)"] = timed(
        lambda: [buckets.allow(ip, 3.0) for ip in ips], repeat=7) / len(ips)
    return results


WHOLE_VENUE = {"load(sold, held) 100k seats", "best_available(4) worst, section of 2,000",
               "best_available(4) worst, section of 100,000",
               "apply_changes(1,000 records)", "render_state() 100k seats"}


def target(name: str, native: float, ratio: float) -> str:
    notes = []
    if name.startswith("best_available"):
        notes.append(("ok" if native <= 20.0 else "MISSED") + " <= 20 us")
    if name in WHOLE_VENUE:
        notes.append(("ok" if ratio >= 20.0 else "MISSED") + " >= 20x")
    return ", ".join(notes)


def main() -> int:
    pure = measure(hotpath.py_module())
    try:
        native = measure(hotpath.c_module())
    except ImportError as exc:
        print(f"native extension not built ({exc}); pure-Python figures only")
        native = None
    print(f"hotpath benchmark: {N:,} seats ({SECTIONS} sections x {ROWS} rows x {WIDTH}), "
          f"{SOLD_SHARE:.0%} sold; median of repeated runs, us per call")
    header = f"| {'operation':<45} | {'native us':>10} | {'pure us':>10} | {'ratio':>8} | target |"
    print(header)
    print("|" + "-" * 47 + "|" + "-" * 12 + "|" + "-" * 12 + "|" + "-" * 10 + "|--------|")
    for name, py_us in pure.items():
        if native is None:
            print(f"| {name:<45} | {'-':>10} | {py_us:>10.3f} | {'-':>8} | |")
            continue
        c_us = native[name]
        ratio = py_us / c_us
        print(f"| {name:<45} | {c_us:>10.3f} | {py_us:>10.3f} | {ratio:>7.1f}x | "
              f"{target(name, c_us, ratio)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
