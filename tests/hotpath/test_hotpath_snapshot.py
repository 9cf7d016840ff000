"""AvailabilitySnapshot unit tests, run on both implementations ([c] / [py])."""

import pytest


def redis_bitmap(indices, n_bytes=None):
    """Bytes as Redis stores a bitmap after SETBIT key i 1 for each i (bit 0 = MSB of byte 0)."""
    indices = list(indices)
    size = n_bytes if n_bytes is not None else (max(indices) // 8 + 1 if indices else 0)
    out = bytearray(size)
    for i in indices:
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def venue(impl, sections):
    """Snapshot from a list of sections, each a list of row sizes."""
    rows = [(s, n) for s, sizes in enumerate(sections) for n in sizes]
    return impl.AvailabilitySnapshot(rows)


# -- construction ------------------------------------------------------------------------
def test_shape(impl):
    snap = venue(impl, [[5, 10], [3], [0, 7]])
    assert (snap.n_seats, snap.n_rows, snap.n_sections, snap.version) == (25, 5, 3, 0)
    assert snap.section_counts() == [(15, 0, 0), (3, 0, 0), (7, 0, 0)]
    assert snap.total_free() == 25
    assert [snap.row_range(r) for r in range(5)] == [(0, 5), (5, 15), (15, 18), (18, 18), (18, 25)]


def test_empty_venue(impl):
    snap = impl.AvailabilitySnapshot([])
    assert (snap.n_seats, snap.n_rows, snap.n_sections) == (0, 0, 0)
    assert snap.section_counts() == [] and snap.total_free() == 0
    assert snap.render_state() == b"" and snap.sold_bytes() == b""
    snap.load(b"\xff", b"\xff", 4)
    assert snap.version == 4 and snap.render_state() == b""


@pytest.mark.parametrize("rows", [
    [(0, -1)],
    [(1, 4)],
    [(0, 4), (2, 4)],
    [(0, 4), (1, 4), (0, 4)],
    [(0, 4, 5)],
    [5],
])
def test_bad_layouts_are_refused(impl, rows):
    with pytest.raises(ValueError):
        impl.AvailabilitySnapshot(rows)


def test_version_is_read_only(impl):
    snap = venue(impl, [[4]])
    with pytest.raises(AttributeError):
        snap.version = 3
    with pytest.raises(AttributeError):
        snap.n_seats = 3


# -- load and bit order --------------------------------------------------------------------
def test_load_uses_redis_bit_order(impl):
    snap = venue(impl, [[8, 8], [4]])
    sold = [0, 7, 9, 19]
    held = [1, 9, 12]
    snap.load(redis_bitmap(sold), redis_bitmap(held), 42)
    assert snap.version == 42
    for i in range(20):
        assert snap.is_sold(i) == (i in sold)
        assert snap.is_held(i) == (i in held)
        assert snap.is_free(i) == (i not in sold and i not in held)
    assert snap.sold_bytes() == redis_bitmap(sold, 3)
    assert snap.held_bytes() == redis_bitmap(held, 3)
    # seat 9 is both sold and held: sold wins in counts and rendering.
    assert snap.section_counts() == [(11, 2, 3), (3, 0, 1)]
    assert snap.render_state() == b"21000002" + b"02001000" + b"0002"


@pytest.mark.parametrize(("setbits", "stored"), [
    ([0], b"\x80"),  # SETBIT k 0 1 -> GET k == "\x80"
    ([7], b"\x01"),  # SETBIT k 7 1 -> "\x01"
    ([9], b"\x00\x40"),  # SETBIT k 9 1 -> "\x00@"
    ([0, 1, 2, 3, 12, 15], b"\xf0\x09"),
])
def test_load_agrees_with_redis_setbit_strings(impl, setbits, stored):
    assert redis_bitmap(setbits) == stored
    snap = venue(impl, [[6], [10]])
    snap.load(stored, b"", 1)
    assert [i for i in range(16) if snap.is_sold(i)] == setbits
    assert snap.sold_bytes() == stored.ljust(2, b"\0")
    snap.load(b"", stored, 2)
    assert [i for i in range(16) if snap.is_held(i)] == setbits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 65, 130])
def test_load_short_empty_and_long_bitmaps(impl, n):
    snap = venue(impl, [[n]])
    n_bytes = (n + 7) // 8
    snap.load(b"\xff" * (n_bytes + 5), None, 1)  # longer: extra bits ignored
    assert snap.section_counts() == [(0, 0, n)]
    assert snap.sold_bytes() == redis_bitmap(range(n), n_bytes)
    snap.load(b"", b"", 2)  # empty: all free
    assert snap.section_counts() == [(n, 0, 0)]
    assert snap.sold_bytes() == bytes(n_bytes)
    snap.load(b"\xff", b"", 3)  # short: missing bytes are zeros
    assert snap.section_counts() == [(n - min(n, 8), 0, min(n, 8))]
    assert snap.render_state() == b"2" * min(n, 8) + b"0" * (n - min(n, 8))


def test_load_accepts_bytearray_and_memoryview(impl):
    snap = venue(impl, [[10]])
    snap.load(bytearray(b"\x80"), memoryview(b"\x40"), 1)
    assert snap.render_state() == b"2100000000"


def test_index_errors(impl):
    snap = venue(impl, [[3], [2]])
    for method in (snap.is_free, snap.is_sold, snap.is_held, snap.row_of, snap.section_of):
        with pytest.raises(IndexError):
            method(5)
        with pytest.raises(IndexError):
            method(-1)
    with pytest.raises(IndexError):
        snap.any_sold([0, 5])
    with pytest.raises(IndexError):
        snap.count_free(2)
    with pytest.raises(IndexError):
        snap.count_free(-1)
    with pytest.raises(IndexError):
        snap.row_range(2)
    with pytest.raises(IndexError):
        snap.best_available(2, 1)
    with pytest.raises(IndexError):
        snap.best_available(0, 1, exclude=[9])
    with pytest.raises(ValueError):
        snap.best_available(0, 0)


def test_row_and_section_of(impl):
    snap = venue(impl, [[2, 0, 3], [0, 1]])
    assert [snap.row_of(i) for i in range(6)] == [0, 0, 2, 2, 2, 4]
    assert [snap.section_of(i) for i in range(6)] == [0, 0, 0, 0, 0, 1]


def test_any_sold(impl):
    snap = venue(impl, [[16]])
    snap.load(redis_bitmap([3]), redis_bitmap([4]), 1)
    assert snap.any_sold([1, 2, 3]) is True
    assert snap.any_sold([4, 5]) is False
    assert snap.any_sold([]) is False
    assert snap.any_sold(iter([0, 3])) is True


def test_count_free_and_total(impl):
    snap = venue(impl, [[4, 4], [4]])
    snap.load(redis_bitmap([0, 1, 8]), redis_bitmap([2, 9]), 1)
    assert [snap.count_free(s) for s in range(2)] == [5, 2]
    assert snap.total_free() == 7


# -- apply_changes ---------------------------------------------------------------------------
def test_apply_changes_ops(impl):
    snap = venue(impl, [[4], [4]])
    assert snap.apply_changes([
        (1, impl.OP_HOLD, [0, 1, 4]),
        (2, impl.OP_SELL, [0]),
        (3, impl.OP_RELEASE, [1]),
        (4, impl.OP_HOLD, [2, 3]),
        (5, impl.OP_EXPIRE, (3,)),
        (6, impl.OP_SELL, [5, 6]),
        (7, impl.OP_VOID, [6]),
    ]) is True
    assert snap.version == 7
    assert snap.render_state() == b"2010" + b"1200"
    assert snap.section_counts() == [(2, 1, 1), (2, 1, 1)]


def test_apply_changes_is_idempotent_on_bits(impl):
    snap = venue(impl, [[4]])
    assert snap.apply_changes([(1, impl.OP_HOLD, [1, 1]), (2, impl.OP_HOLD, [1]),
                               (3, impl.OP_RELEASE, [0]), (4, impl.OP_VOID, [2])])
    assert snap.section_counts() == [(3, 1, 0)]
    assert snap.apply_changes([(5, impl.OP_SELL, [1]), (6, impl.OP_SELL, [1])])
    assert snap.section_counts() == [(3, 0, 1)]


def test_apply_changes_skips_old_and_stops_at_gap(impl):
    snap = venue(impl, [[8]])
    snap.load(b"", b"", 10)
    assert snap.apply_changes([(9, impl.OP_SELL, [0]), (10, impl.OP_SELL, [1])]) is True
    assert snap.version == 10 and snap.total_free() == 8
    assert snap.apply_changes([(11, impl.OP_HOLD, [2]), (13, impl.OP_SELL, [3]),
                               (14, impl.OP_SELL, [4])]) is False
    assert snap.version == 11
    assert snap.render_state() == b"00100000"
    assert snap.apply_changes([]) is True and snap.version == 11
    assert snap.apply_changes(iter([(12, impl.OP_SELL, iter([2]))])) is True
    assert snap.render_state() == b"00200000"


def test_apply_changes_refuses_bad_records(impl):
    snap = venue(impl, [[4]])
    with pytest.raises(ValueError):
        snap.apply_changes([(1, 9, [0])])
    with pytest.raises(IndexError):
        snap.apply_changes([(1, impl.OP_SELL, [0, 4])])
    # A refused record changes nothing.
    assert snap.version == 0 and snap.render_state() == b"0000"


# -- best_available ------------------------------------------------------------------------------
def test_best_available_centres_in_the_best_row(impl):
    snap = venue(impl, [[10, 10]])
    assert snap.best_available(0, 4) == [3, 4, 5, 6]
    assert snap.best_available(0, 3) == [3, 4, 5]  # tie between 3 and 4: lower index
    assert snap.best_available(0, 10) == list(range(10))
    assert snap.best_available(0, 11) is None


def test_best_available_skips_taken_rows_and_blocks(impl):
    snap = venue(impl, [[6, 6, 6], [6]])
    # row 0 fully sold, row 1 has a 2-gap only, row 2 free on its left part.
    sold = list(range(6)) + [6, 9, 10, 11] + [15, 16, 17]
    snap.load(redis_bitmap(sold), b"", 1)
    assert snap.best_available(0, 2) == [7, 8]
    assert snap.best_available(0, 3) == [12, 13, 14]
    assert snap.best_available(0, 4) is None
    assert snap.best_available(1, 6) == list(range(18, 24))


def test_best_available_never_straddles_rows(impl):
    snap = venue(impl, [[3, 3, 4]])
    snap.load(redis_bitmap([0, 8]), b"", 1)
    # seats 1,2 | 3,4,5 would be adjacent indices, but rows break them.
    assert snap.best_available(0, 4) is None
    assert snap.best_available(0, 3) == [3, 4, 5]
    assert snap.best_available(0, 2) == [1, 2]


def test_best_available_with_exclude(impl):
    snap = venue(impl, [[10, 10]])
    assert snap.best_available(0, 4, exclude=[4]) == [5, 6, 7, 8]
    assert snap.best_available(0, 4, exclude=(3, 6)) == [13, 14, 15, 16]
    assert snap.best_available(0, 2, exclude=iter([4, 4, 5])) == [2, 3]
    # exclude never changes the snapshot itself.
    assert snap.render_state() == b"0" * 20 and snap.section_counts() == [(20, 0, 0)]
    assert snap.best_available(0, 4) == [3, 4, 5, 6]


def test_best_available_held_seats_are_taken(impl):
    snap = venue(impl, [[8]])
    snap.load(b"", redis_bitmap([3, 4]), 1)
    assert snap.best_available(0, 3) == [0, 1, 2]  # tie with [5, 6, 7]: lower index
    assert snap.best_available(0, 3, exclude=[0]) == [5, 6, 7]
    assert snap.best_available(0, 4) is None


@pytest.mark.parametrize("width", [63, 64, 65, 70, 130, 200])
def test_best_available_wide_rows_and_blocks(impl, width):
    snap = venue(impl, [[5, width]])
    s = 5
    sold = [s + width // 3]  # one sold seat a third of the way in
    snap.load(redis_bitmap(sold), b"", 1)
    right = list(range(sold[0] + 1, s + width))
    for count in (1, 4, width // 2, len(right), len(right) + 1, 66):
        got = snap.best_available(0, count)
        if count <= 5:
            assert got == _centred(0, 5, count)  # row 0 is the best row and all free
            continue
        if count <= len(right):
            assert got is not None and len(got) == count
            assert all(snap.is_free(i) for i in got)
        else:
            assert got is None


def _centred(s, e, count):
    q = (s + e - count) // 2
    return list(range(q, q + count))


def test_best_available_in_a_mostly_sold_large_section(impl):
    n_rows, width = 200, 50
    snap = venue(impl, [[width] * n_rows])
    n = n_rows * width
    last_row = range(n - width, n)
    free = {i for i in range(0, n - width, 4)} | {n - width + 10 + k for k in range(4)}
    sold = [i for i in range(n) if i not in free]
    snap.load(redis_bitmap(sold, (n + 7) // 8), b"", 1)
    assert snap.best_available(0, 4) == [n - width + 10 + k for k in range(4)]
    assert snap.best_available(0, 1) == [24]  # row 0: free seats 0,4,..,48; centre 24.5
    assert snap.best_available(0, 5) is None
    assert min(last_row) == n - width


def test_render_state_single_pass_values(impl):
    snap = venue(impl, [[3], [7]])
    snap.load(redis_bitmap([1, 9]), redis_bitmap([2, 9]), 1)
    assert snap.render_state() == b"021" + b"0000002"


def test_non_integers_are_refused_and_change_nothing(impl):
    snap = venue(impl, [[10]])
    snap.load(b"\x80", None, 1)
    calls = [
        lambda: snap.load(b"\xff", "text", 2),
        lambda: snap.load(b"\xff", b"", 2.5),
        lambda: snap.load(b"\xff", 5, 2),
        lambda: snap.is_free(1.0),
        lambda: snap.any_sold([1.0]),
        lambda: snap.apply_changes([(2, 1.0, [1])]),
        lambda: snap.apply_changes([(2.0, 1, [1])]),
        lambda: snap.apply_changes([(2, 1, [1.0])]),
        lambda: snap.best_available(0, 2.0),
        lambda: snap.best_available(0.0, 2),
        lambda: snap.count_free(0.0),
        lambda: snap.row_range(0.0),
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()
    assert snap.render_state() == b"2000000000" and snap.version == 1
