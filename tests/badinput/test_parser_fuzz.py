"""Fuzzing the two parsers that read text from outside: ticket codes (door scanners, offline uploads)
and seat-map CSV (organisers). Whatever they are given, they answer or refuse with their own error
(InvalidCode, SeatMapError: a 4xx at the API), never another exception."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.orders import ticketcodes
from gateway.orders.ticketcodes import CODE_LENGTH, InvalidCode
from gateway.organisers import seatmap_csv
from gateway.organisers.event_spec import EventSpec
from gateway.organisers.seatmap_csv import SeatMapError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRIVATE, PUBLIC = ticketcodes.generate_keypair()
VALID = ticketcodes.encode(private_key=PRIVATE, key_id=1, event_id=42, serial=7)
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Characters near the alphabet: lower case, digits 0/1/8/9, padding, whitespace, letters whose case
# mapping changes length or lands in ASCII ("ß" -> "SS", "ı" -> "I", "ﬀ" -> "FF"), digits int() reads.
NEAR = st.sampled_from(list(B32 + B32.lower() + "01890=-_ \t\r\n\x00ßıﬀ²٣\u200b\ufeff"))


def codes() -> st.SearchStrategy[str]:
    """Valid codes with a few characters replaced, inserted or removed, and codes of the right length."""
    edits = st.lists(st.tuples(st.sampled_from(["replace", "insert", "delete"]),
                               st.integers(0, CODE_LENGTH - 1), NEAR), max_size=4)

    def apply(ops: list[tuple[str, int, str]]) -> str:
        text = VALID
        for op, at, ch in ops:
            at = min(at, len(text))
            if op == "replace":
                text = text[:at] + ch + text[at + 1:]
            elif op == "insert":
                text = text[:at] + ch + text[at:]
            else:
                text = text[:at] + text[at + 1:]
        return text

    return st.one_of(edits.map(apply), st.text(NEAR, min_size=CODE_LENGTH - 2, max_size=CODE_LENGTH + 2),
                     st.text(max_size=300))


@FUZZ
@given(code=codes())
def test_ticket_codes_verify_or_raise_invalid_code(code: str) -> None:
    try:
        claims = ticketcodes.verify(code, {1: PUBLIC})
    except InvalidCode:
        return
    # Accepted only when it spells the signed code (the scanner's normalising: case, outer whitespace).
    assert (claims.event_id, claims.serial) == (42, 7)
    assert code.strip().upper() == VALID


@FUZZ
@given(code=codes())
def test_ticket_codes_decode_or_raise_invalid_code(code: str) -> None:
    try:
        ticketcodes.decode(code)
    except InvalidCode:
        pass


@FUZZ
@given(code=st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=200), st.lists(st.text()),
                      st.dictionaries(st.text(), st.text())),
       keys=st.one_of(st.dictionaries(st.integers(), st.binary(max_size=64)), st.just({}),
                      st.dictionaries(st.integers(), st.text(max_size=40))))
def test_anything_else_is_an_invalid_code(code: Any, keys: Any) -> None:
    for candidate in (code, VALID):
        try:
            ticketcodes.verify(candidate, keys)
        except InvalidCode:
            pass
        else:
            assert candidate == VALID and keys.get(1) == PUBLIC


CELL = st.text(alphabet=string.ascii_letters + string.digits + " ._'-\"\\,\n\r\t\x00é²ı", max_size=12)
HEADER = st.permutations(["section", "row", "seat", "tier"]).map(",".join)


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    """CSV close to a seat map: a header (sometimes wrong), lines of 3-5 cells of near-valid values,
    quoting, blank lines, a byte-order mark, different line ends."""
    header = draw(st.one_of(HEADER, HEADER.map(str.upper), st.just("section,row,seat"), CELL))
    lines = draw(st.lists(st.lists(st.one_of(CELL, st.sampled_from(["A", "1", "12", "front", "p1", ""])),
                                   min_size=3, max_size=5).map(",".join), max_size=30))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return bom + end.join([header, *lines]) + draw(st.sampled_from(["", end]))


def parse_or_refuse(text: str) -> list[dict[str, Any]] | None:
    try:
        return seatmap_csv.parse(text, price_tiers=["front", "p1"])
    except SeatMapError as err:
        assert err.status == 422 and err.details["line"] >= 1
        return None


@FUZZ
@given(text=st.one_of(csv_texts(), st.text(max_size=400)))
def test_seat_map_csv_parses_or_names_the_line(text: str) -> None:
    sections = parse_or_refuse(text)
    if sections is not None:
        # What it accepts is a seat map the event body accepts: parsed sections are never a 500 later.
        EventSpec.model_validate({"name": "x", "currency": "EUR", "price_tiers": {"front": 100, "p1": 50},
                                  "sections": sections})


@FUZZ
@given(raw=st.binary(max_size=400))
def test_seat_map_bytes_decode_or_name_the_line(raw: bytes) -> None:
    try:
        text = seatmap_csv.decode(raw)
    except SeatMapError as err:
        assert err.details["line"] >= 1
        return
    assume(text)
    parse_or_refuse(text)
