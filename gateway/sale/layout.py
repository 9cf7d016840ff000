"""An event's seat map as the gateway uses it: labels <-> seat indices, prices,
the rows given to the availability snapshot. Immutable once the event exists;
kept in Redis beside the inventory so workers never need Postgres to sell."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class GAType:
    code: str
    name: str
    capacity: int
    price_minor: int


@dataclass
class EventLayout:
    event_id: int
    currency: str
    section_names: list[str]
    # (section index, row label, first seat index, seat labels) in seat order, best rows first.
    rows: list[tuple[int, str, int, list[str]]]
    seat_price: list[int]
    ga: dict[str, GAType]
    seat_labels: list[str] = field(default_factory=list)
    label_index: dict[str, int] = field(default_factory=dict)
    section_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.seat_labels:
            for section, row_label, start, labels in self.rows:
                name = self.section_names[section]
                self.seat_labels.extend(f"{name}-{row_label}-{label}" for label in labels)
        self.label_index = {label: i for i, label in enumerate(self.seat_labels)}
        self.section_index = {name: i for i, name in enumerate(self.section_names)}

    @property
    def n_seats(self) -> int:
        return len(self.seat_labels)

    def snapshot_rows(self) -> list[tuple[int, int]]:
        return [(section, len(labels)) for section, _, _, labels in self.rows]

    def to_json(self) -> bytes:
        return orjson.dumps({
            "event_id": self.event_id, "currency": self.currency, "sections": self.section_names,
            "rows": self.rows, "seat_price": self.seat_price,
            "ga": {c: [t.name, t.capacity, t.price_minor] for c, t in self.ga.items()},
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> "EventLayout":
        data: dict[str, Any] = orjson.loads(raw)
        return cls(event_id=data["event_id"], currency=data["currency"], section_names=data["sections"],
                   rows=[tuple(r) for r in data["rows"]], seat_price=data["seat_price"],  # type: ignore[misc]
                   ga={c: GAType(c, v[0], v[1], v[2]) for c, v in data["ga"].items()})
