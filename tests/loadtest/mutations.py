"""Planted bugs: copies of `lua/` with one deliberate mistake each, to prove the audit's verdict can fail.

Each `Mutation` is data: the exact text replacements that make the bug, the history violation the
audit must then report (`expect`, a kind of `gateway.organisers.history.CHECKS`) and what in a sale
makes the bug show. `apply(mutation, src_dir, dst_dir)` copies a Lua directory and applies the edits;
every original text must occur exactly once, so an edit of the scripts that makes a mutation stale
fails loudly (`StaleMutation`) instead of silently testing the unmodified scripts.

A gateway runs on a copy with `FLASHGATE_LUA_DIR=<dst_dir>` (docs/audit.md). From a shell:

    python -m tests.loadtest.mutations ignore_sold /tmp/lua-ignore-sold   # prints the directory
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

#: The real scripts of this checkout.
SOURCE_DIR = Path(__file__).resolve().parents[2] / "lua"


class StaleMutation(AssertionError):
    """A mutation's original text is not (exactly once) in the scripts any more."""


@dataclass(frozen=True)
class Edit:
    path: str       # relative to the Lua directory
    old: str        # must occur exactly once
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    summary: str
    expect: str                 # the history violation kind the audit reports
    trigger: str                # what in a sale makes it show
    edits: tuple[Edit, ...]


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "ignore_sold", "a seat hold ignores the sold bit (explicit seats and best-available alike)",
        "granted_while_sold",
        "a hold request for a seat sold moments before, reaching Lua before the gateway worker's snapshot "
        "(refreshed every 0.1 s) shows the sale",
        (Edit("hold.lua", "  if redis.call('GETBIT', K_SOLD, idx) == 1 then return true end\n", ""),)),
    Mutation(
        "early_sweep", "the expiry sweep takes holds in their last 2 s as expired",
        "expired_early",
        "any hold left to expire: the expiry worker (every 0.2 s) or the next hold call takes it up to 2 s early",
        (Edit("lib/common.lua", "redis.call('ZRANGEBYSCORE', K_HOLDS, '-inf', now, 'LIMIT', 0, max)",
              "redis.call('ZRANGEBYSCORE', K_HOLDS, '-inf', now + 2000, 'LIMIT', 0, max)"),)),
    Mutation(
        "early_steal", "a seat hold takes a seat from a hold in its last 2 s",
        "expired_early",
        "a buyer asking for a seat that another buyer's hold keeps, in that hold's last 2 s",
        (Edit("hold.lua", "    if exp and exp > now then return true end",
              "    if exp and exp > now + 2000 then return true end"),)),
    Mutation(
        "late_confirm", "holds stay payable (and unswept) for 10 s after their expiry",
        "sold_after_expiry",
        "a checkout started after the hold expired (within 10 s), before another hold took its seats",
        (Edit("lib/common.lua", "  if not exp or exp <= now then\n", "  if not exp or exp + 10000 <= now then\n"),
         Edit("lib/common.lua", "redis.call('ZRANGEBYSCORE', K_HOLDS, '-inf', now, 'LIMIT', 0, max)",
              "redis.call('ZRANGEBYSCORE', K_HOLDS, '-inf', now - 10000, 'LIMIT', 0, max)"),
         Edit("expire.lua", "redis.call('ZCOUNT', K_HOLDS, '-inf', now)",
              "redis.call('ZCOUNT', K_HOLDS, '-inf', now - 10000)"))),
    Mutation(
        "ga_double_release", "a released GA hold gives back twice its tickets to the held counter (records n)",
        "end_state",
        "any release of a GA hold (and, once GA is short, holds beyond capacity: ga_over_capacity)",
        (Edit("lib/common.lua", "for code, n in pairs(rec.g) do redis.call('HINCRBY', K_GA, 'held:' .. code, -n) end",
              "for code, n in pairs(rec.g) do redis.call('HINCRBY', K_GA, 'held:' .. code, "
              "-(op == OP_RELEASE and 2 * n or n)) end"),)),
    Mutation(
        "limit_per_request", "the per-buyer limit is checked against each request alone, not what the buyer has",
        "buyer_over_limit",
        "a buyer whose holds and orders together go over the limit (several holds, each within it)",
        (Edit("hold.lua", "if have + size > meta.limit then", "if size > meta.limit then"),
         Edit("hold_ga.lua", "if have + qty > meta.limit then", "if qty > meta.limit then"))),
    Mutation(
        "ga_ignores_held", "GA availability counts sold tickets only, not held ones",
        "ga_over_capacity",
        "a GA type whose held + sold tickets reach its capacity while buyers still ask",
        (Edit("hold_ga.lua", "  return cap - (tonumber(c[1]) or 0) - (tonumber(c[2]) or 0)",
              "  return cap - (tonumber(c[2]) or 0)"),)),
    Mutation(
        "sell_keeps_held", "a sale sets the sold bit but leaves the held bit set",
        "end_state",
        "any sale of seats",
        (Edit("lib/sale.lua", "    redis.call('SETBIT', K_HELD, idx, 0)\n    redis.call('SETBIT', K_SOLD, idx, 1)\n",
              "    redis.call('SETBIT', K_SOLD, idx, 1)\n"),)),
)
BY_NAME: dict[str, Mutation] = {m.name: m for m in MUTATIONS}


def apply(mutation: Mutation | str, src_dir: Path | str, dst_dir: Path | str) -> Path:
    """Copy the Lua directory `src_dir` to `dst_dir` (replacing what is there) and make the mutation's
    edits in the copy. Returns `dst_dir`, ready for `FLASHGATE_LUA_DIR` or `Scripts(redis, dst_dir)`.
    Raises `StaleMutation` when an original text does not occur exactly once."""
    m = BY_NAME[mutation] if isinstance(mutation, str) else mutation
    src, dst = Path(src_dir), Path(dst_dir)
    if dst.resolve() == src.resolve():
        raise ValueError("dst_dir must be a directory other than the scripts themselves")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for edit in m.edits:
        path = dst / edit.path
        text = path.read_text()
        found = text.count(edit.old)
        if found != 1:
            raise StaleMutation(f"mutation {m.name}: {edit.path} holds its original text {found} times, not once "
                                f"({edit.old.strip()!r}); update the mutation to the scripts")
        path.write_text(text.replace(edit.old, edit.new))
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a copy of lua/ with one planted bug")
    parser.add_argument("mutation", choices=sorted(BY_NAME))
    parser.add_argument("dst_dir", type=Path)
    parser.add_argument("--src-dir", type=Path, default=SOURCE_DIR)
    args = parser.parse_args(argv)
    print(apply(args.mutation, args.src_dir, args.dst_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["BY_NAME", "Edit", "MUTATIONS", "Mutation", "SOURCE_DIR", "StaleMutation", "apply"]
