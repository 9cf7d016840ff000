"""What an organiser sends to create an event (validated before anything is written)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Label = Annotated[str, Field(min_length=1, max_length=24, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._']*$")]
Code = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$")]

MAX_SEATS = 250_000
# The one place these defaults live (the API, the docs and the tests read them from here).
DEFAULT_HOLD_TTL_S = 600
DEFAULT_PER_BUYER_LIMIT = 8


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowSpec(Strict):
    label: Label
    seats: Annotated[int, Field(ge=1, le=2000)] | Annotated[list[Label], Field(min_length=1, max_length=2000)]
    price_tier: Code

    @field_validator("seats")
    @classmethod
    def _unique(cls, seats: int | list[str]) -> int | list[str]:
        if isinstance(seats, list) and len(set(seats)) != len(seats):
            raise ValueError("seat labels in a row must be unique")
        return seats

    def labels(self) -> list[str]:
        return [str(i) for i in range(1, self.seats + 1)] if isinstance(self.seats, int) else list(self.seats)


class SectionSpec(Strict):
    name: Label
    rows: Annotated[list[RowSpec], Field(min_length=1, max_length=2000)]

    @field_validator("rows")
    @classmethod
    def _unique_rows(cls, rows: list[RowSpec]) -> list[RowSpec]:
        labels = [r.label for r in rows]
        if len(set(labels)) != len(labels):
            raise ValueError("row labels in a section must be unique")
        return rows


class GATypeSpec(Strict):
    code: Code
    name: Annotated[str, Field(min_length=1, max_length=100)]
    capacity: Annotated[int, Field(ge=0, le=10_000_000)]
    price_minor: Annotated[int, Field(ge=0, le=100_000_000)]


class QueueSpec(Strict):
    enabled: bool = False
    admission_rate: Annotated[float, Field(gt=0, le=100_000)] = 50.0


class WebhookSpec(Strict):
    """Where the organiser wants sale events (order.paid, order.refunded), signed with `secret`."""

    url: Annotated[str, Field(max_length=500, pattern=r"^https?://[^\s]+$")]
    secret: Annotated[str, Field(min_length=16, max_length=200)]


class EventSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    venue: Annotated[str, Field(max_length=200)] | None = None
    starts_at: datetime | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    hold_ttl_s: Annotated[int, Field(ge=5, le=86_400)] = DEFAULT_HOLD_TTL_S
    per_buyer_limit: Annotated[int, Field(ge=1, le=1000)] = DEFAULT_PER_BUYER_LIMIT
    price_tiers: dict[Code, Annotated[int, Field(ge=0, le=100_000_000)]] = Field(default_factory=dict)
    sections: Annotated[list[SectionSpec], Field(max_length=1000)] = Field(default_factory=list)
    ga: Annotated[list[GATypeSpec], Field(max_length=100)] = Field(default_factory=list)
    queue: QueueSpec = Field(default_factory=QueueSpec)
    webhook: WebhookSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "EventSpec":
        if not self.sections and not self.ga:
            raise ValueError("an event needs a seat map (sections) or general-admission types (ga), or both")
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise ValueError("section names must be unique")
        codes = [g.code for g in self.ga]
        if len(set(codes)) != len(codes):
            raise ValueError("general-admission type codes must be unique")
        total = 0
        labels: set[str] = set()
        for section in self.sections:
            for row in section.rows:
                if row.price_tier not in self.price_tiers:
                    raise ValueError(f"row {section.name}-{row.label} uses unknown price tier {row.price_tier!r}")
                for seat in row.labels():
                    label = f"{section.name}-{row.label}-{seat}"
                    if label in labels:
                        raise ValueError(f"seat label {label} appears twice")
                    labels.add(label)
                total += len(row.labels())
                if total > MAX_SEATS:
                    raise ValueError(f"a seat map may have at most {MAX_SEATS} seats")
        return self
