"""Seat maps from CSV: one line per seat, `section,row,seat,tier`.

The first line names the columns (these four, in any order). Sections appear in the order of their
first line, rows in the order of their first line within their section, seats in file order. `tier`
is the code of one of the event's price tiers; seats of one row may have different tiers. Blank lines
are skipped; a UTF-8 byte-order mark is ignored. Every error names its line (1 = the header) and
column, and the first error stops the import, so nothing is half-imported.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Any

from gateway.core.errors import DomainError
from gateway.organisers.event_spec import (MAX_ROWS_PER_SECTION, MAX_SEATS, MAX_SEATS_PER_ROW, MAX_SECTIONS)

COLUMNS = ("section", "row", "seat", "tier")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._']{0,23}$")
CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class SeatMapError(DomainError):
    def __init__(self, line: int, column: str | None, message: str) -> None:
        where = f"line {line}" + (f", column {column}" if column else "")
        super().__init__("invalid_seat_map", f"Seat map CSV, {where}: {message}",
                         details={"line": line, "column": column}, status=422)


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SeatMapError(line, None, "the file is not UTF-8 text") from None


def parse(text: str, *, price_tiers: Iterable[str]) -> list[dict[str, Any]]:
    """The `sections` of an event body (rows with seat labels and price tiers) from CSV text."""
    tiers = set(price_tiers)
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    header: list[str] | None = None
    order: list[int] = []
    sections: dict[str, dict[str, dict[str, Any]]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    count = 0
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip().lower() for f in fields]
                missing = [c for c in COLUMNS if c not in header]
                extra = [c for c in header if c not in COLUMNS]
                if missing or extra or len(set(header)) != len(header):
                    raise SeatMapError(line, None, f"the first line must name the columns {','.join(COLUMNS)} "
                                       f"(found {','.join(header)})")
                order = [header.index(c) for c in COLUMNS]
                continue
            if len(fields) != len(COLUMNS):
                raise SeatMapError(line, None, f"expected {len(COLUMNS)} values, found {len(fields)}")
            section, row, seat, tier = (fields[i].strip() for i in order)
            for column, value, pattern in (("section", section, LABEL), ("row", row, LABEL),
                                           ("seat", seat, LABEL), ("tier", tier, CODE)):
                if not pattern.match(value):
                    rule = ("a price-tier code: lower-case letters, digits, '-' or '_', up to 32" if column == "tier"
                            else "1 to 24 letters, digits, spaces or . _ ', starting with a letter or digit")
                    raise SeatMapError(line, column, f"{value!r} is not valid ({rule})")
            if tier not in tiers:
                known = ", ".join(sorted(tiers)) or "none defined"
                raise SeatMapError(line, "tier", f"unknown price tier {tier!r} (the event's tiers: {known})")
            key = (section, row, seat)
            if key in seen:
                raise SeatMapError(line, "seat", f"seat {section}-{row}-{seat} already appears on line {seen[key]}")
            count += 1
            if count > MAX_SEATS:
                raise SeatMapError(line, None, f"a seat map may have at most {MAX_SEATS:,} seats")
            seen[key] = line
            rows = sections.get(section)
            if rows is None:
                if len(sections) >= MAX_SECTIONS:
                    raise SeatMapError(line, "section", f"a seat map may have at most {MAX_SECTIONS} sections")
                rows = sections[section] = {}
            entry = rows.get(row)
            if entry is None:
                if len(rows) >= MAX_ROWS_PER_SECTION:
                    raise SeatMapError(line, "row", f"a section may have at most {MAX_ROWS_PER_SECTION} rows")
                entry = rows[row] = {"label": row, "seats": [], "tiers": []}
            if len(entry["seats"]) >= MAX_SEATS_PER_ROW:
                raise SeatMapError(line, "seat", f"a row may have at most {MAX_SEATS_PER_ROW} seats")
            entry["seats"].append(seat)
            entry["tiers"].append(tier)
    except csv.Error as exc:
        raise SeatMapError(reader.line_num, None, f"not valid CSV ({exc})") from None
    if header is None:
        raise SeatMapError(1, None, f"the file is empty; the first line names the columns {','.join(COLUMNS)}")
    if not count:
        raise SeatMapError(reader.line_num or 1, None, "the file has no seats")
    return [{"name": name, "rows": [_row(r) for r in rows.values()]} for name, rows in sections.items()]


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    tiers = entry["tiers"]
    row = {"label": entry["label"], "seats": entry["seats"], "price_tier": tiers[0]}
    if any(t != tiers[0] for t in tiers):
        row["seat_price_tiers"] = tiers
    return row
