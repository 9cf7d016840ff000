"""Venue layout parsing shared by both snapshot implementations.

Both twins call :func:`parse_rows`, so they accept and reject exactly the same input.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import index

__all__ = ["parse_rows", "key_bytes"]


def parse_rows(rows: Iterable[tuple[int, int]]) -> tuple[list[int], list[int], list[int]]:
    """Validate ``(section_index, n_seats)`` rows given in seat order.

    Returns ``(row_start, row_section, section_row_start)``: ``row_start`` has one entry
    per row plus the total seat count, ``section_row_start`` one entry per section plus
    the row count. Raises ``ValueError`` for negative sizes or sections that are not
    numbered 0, 1, 2, ... with their rows contiguous.
    """
    row_start = [0]
    row_section: list[int] = []
    section_row_start: list[int] = []
    for position, row in enumerate(rows):
        try:
            section, n_seats = row
        except (TypeError, ValueError):
            raise ValueError(f"row {position} is not a (section_index, n_seats) pair") from None
        section = index(section)
        n_seats = index(n_seats)
        if n_seats < 0:
            raise ValueError(f"row {position} has a negative seat count ({n_seats})")
        current = len(section_row_start) - 1
        if section == current + 1:
            section_row_start.append(position)
        elif section != current:
            raise ValueError(
                f"row {position} belongs to section {section}; expected {current} or "
                f"{current + 1} (sections are numbered from 0 and their rows are contiguous)"
            )
        row_section.append(section)
        row_start.append(row_start[-1] + n_seats)
    section_row_start.append(len(row_section))
    if row_start[-1] >= 2**31:
        raise ValueError("a venue is limited to 2**31 - 1 seats")
    return row_start, row_section, section_row_start


def key_bytes(key: str | bytes) -> bytes:
    """Normalise a table key: ``str`` is UTF-8 encoded, so ``"a"`` and ``b"a"`` are one key."""
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")
