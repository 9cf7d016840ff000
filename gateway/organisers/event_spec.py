"""What an organiser sends to create an event (validated before anything is written)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator,
                      model_validator)

def _time_as_text(value: Any) -> Any:
    """Times are RFC 3339 text, as documented: a number (which pydantic would read as Unix time) is refused."""
    if value is not None and not isinstance(value, (str, datetime)):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


Time = Annotated[datetime, BeforeValidator(_time_as_text)]
AwareTime = Annotated[AwareDatetime, BeforeValidator(_time_as_text)]
Label = Annotated[str, Field(min_length=1, max_length=24, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._']*$")]
Code = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$")]

MAX_SEATS = 250_000
MAX_SECTIONS = 1000
MAX_ROWS_PER_SECTION = 2000
MAX_SEATS_PER_ROW = 2000
DEFAULT_PREQUEUE_S = 1800  # a scheduled sale with a waiting room: the pre-queue opens this long before
# The one place these defaults live (the API, the docs and the tests read them from here).
DEFAULT_HOLD_TTL_S = 600
DEFAULT_PER_BUYER_LIMIT = 8


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowSpec(Strict):
    label: Label
    seats: (Annotated[int, Field(ge=1, le=MAX_SEATS_PER_ROW)]
            | Annotated[list[Label], Field(min_length=1, max_length=MAX_SEATS_PER_ROW)])
    price_tier: Code
    # Optional: a tier per seat (same order as the seats) when a row mixes tiers.
    seat_price_tiers: Annotated[list[Code], Field(min_length=1, max_length=MAX_SEATS_PER_ROW)] | None = None

    @field_validator("seats")
    @classmethod
    def _unique(cls, seats: int | list[str]) -> int | list[str]:
        if isinstance(seats, list) and len(set(seats)) != len(seats):
            raise ValueError("seat labels in a row must be unique")
        return seats

    @model_validator(mode="after")
    def _tiers_fit(self) -> "RowSpec":
        if self.seat_price_tiers is not None and len(self.seat_price_tiers) != len(self.labels()):
            raise ValueError(f"row {self.label}: seat_price_tiers needs one tier per seat")
        return self

    def labels(self) -> list[str]:
        return [str(i) for i in range(1, self.seats + 1)] if isinstance(self.seats, int) else list(self.seats)

    def tiers(self) -> list[str]:
        """The price tier of each seat, in seat order."""
        return list(self.seat_price_tiers) if self.seat_price_tiers else [self.price_tier] * len(self.labels())


class SectionSpec(Strict):
    name: Label
    rows: Annotated[list[RowSpec], Field(min_length=1, max_length=MAX_ROWS_PER_SECTION)]

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
    # With `sale_opens_at`: the pre-queue opens this many seconds before the sale (0: no pre-queue).
    prequeue_s: Annotated[int, Field(ge=0, le=7 * 86_400)] = DEFAULT_PREQUEUE_S


class WebhookSpec(Strict):
    """Where the organiser wants sale events (order.paid, order.refunded), signed with `secret`."""

    url: Annotated[str, Field(max_length=500, pattern=r"^https?://[^\s]+$")]
    secret: Annotated[str, Field(min_length=16, max_length=200)]


class EventSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    venue: Annotated[str, Field(max_length=200)] | None = None
    starts_at: Time | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    hold_ttl_s: Annotated[int, Field(ge=5, le=86_400)] = DEFAULT_HOLD_TTL_S
    per_buyer_limit: Annotated[int, Field(ge=1, le=1000)] = DEFAULT_PER_BUYER_LIMIT
    price_tiers: dict[Code, Annotated[int, Field(ge=0, le=100_000_000)]] = Field(default_factory=dict)
    sections: Annotated[list[SectionSpec], Field(max_length=MAX_SECTIONS)] = Field(default_factory=list)
    # Instead of `sections`: the seat map as CSV text (gateway/organisers/seatmap_csv.py).
    seat_map_csv: Annotated[str, Field(max_length=16 * 1_048_576)] | None = Field(default=None, exclude=True)
    ga: Annotated[list[GATypeSpec], Field(max_length=100)] = Field(default_factory=list)
    queue: QueueSpec = Field(default_factory=QueueSpec)
    webhook: WebhookSpec | None = None
    # The sale opens and closes by itself at these times (docs/organisers.md, "Scheduling").
    sale_opens_at: AwareTime | None = None
    sale_closes_at: AwareTime | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        """Postgres text cannot hold a NUL character: refused here (422), before anything is written."""
        if isinstance(data, dict):
            bad = sorted(str(k) for k, v in data.items() if _has_nul(k) or _has_nul(v))
            if bad:
                raise ValueError(f"text may not contain a NUL character (\\u0000): {', '.join(bad)}")
        return data

    @model_validator(mode="before")
    @classmethod
    def _csv_seat_map(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("seat_map_csv") is not None:
            from gateway.organisers import seatmap_csv

            if data.get("sections"):
                raise ValueError("send the seat map either as sections or as seat_map_csv, not both")
            tiers = data.get("price_tiers")
            text = data["seat_map_csv"]
            if isinstance(text, str) and isinstance(tiers, dict):
                data = {**data, "sections": seatmap_csv.parse(text, price_tiers=tiers)}
        return data

    @field_validator("sale_closes_at")
    @classmethod
    def _closes_after_opening(cls, closes: datetime | None, info: ValidationInfo) -> datetime | None:
        opens = info.data.get("sale_opens_at")
        if closes is not None and opens is not None and closes <= opens:
            raise ValueError("sale_closes_at must be after sale_opens_at")
        return closes

    def schedule(self) -> tuple[datetime | None, datetime | None, datetime | None]:
        """(sale opens, sale closes, pre-queue opens) as given; the pre-queue only with a waiting room."""
        prequeue = None
        if self.sale_opens_at is not None and self.queue.enabled and self.queue.prequeue_s:
            from datetime import timedelta

            prequeue = self.sale_opens_at - timedelta(seconds=self.queue.prequeue_s)
        return self.sale_opens_at, self.sale_closes_at, prequeue

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
                unknown = [t for t in {row.price_tier, *(row.seat_price_tiers or ())} if t not in self.price_tiers]
                if unknown:
                    raise ValueError(f"row {section.name}-{row.label} uses unknown price tier {unknown[0]!r}")
                for seat in row.labels():
                    label = f"{section.name}-{row.label}-{seat}"
                    if label in labels:
                        raise ValueError(f"seat label {label} appears twice")
                    labels.add(label)
                total += len(row.labels())
                if total > MAX_SEATS:
                    raise ValueError(f"a seat map may have at most {MAX_SEATS:,} seats")
        return self
