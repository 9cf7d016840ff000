# cython: language_level=3, embedsignature=True
"""Native hot-path structures: availability snapshot, recent-scan set, token buckets.

The pure-Python twin ``hotpath._snapshot_py`` has the same classes and gives the same
answers; ``tests/hotpath`` replays random operations on both and compares.
"""

from libc.stdint cimport uint64_t, int64_t, uint8_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memcmp, memset
from cpython.number cimport PyNumber_Index
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

import math

from hotpath._layout import parse_rows

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #include <intrin.h>
    static __inline int fg_popcount64(unsigned long long x) { return (int)__popcnt64(x); }
    static __inline int fg_ctz64(unsigned long long x) { unsigned long i; _BitScanForward64(&i, x); return (int)i; }
    #else
    static inline int fg_popcount64(unsigned long long x) { return __builtin_popcountll(x); }
    static inline int fg_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    #endif
    """
    int fg_popcount64(uint64_t x) noexcept nogil
    int fg_ctz64(uint64_t x) noexcept nogil

OP_HOLD = 1     # set held
OP_RELEASE = 2  # clear held
OP_SELL = 3     # clear held, set sold
OP_VOID = 4     # clear sold
OP_EXPIRE = 5   # clear held (a hold that timed out)

# _REV[b]: b with its bits reversed (Redis bit order is MSB first within a byte).
# _SPREAD[b]: eight bytes in memory order, byte j = bit j of b (for render_state).
cdef uint8_t _REV[256]
cdef uint64_t _SPREAD[256]


cdef void _init_tables() noexcept:
    cdef int b, j
    cdef uint8_t r
    cdef uint8_t lanes[8]
    for b in range(256):
        r = 0
        for j in range(8):
            if b & (1 << j):
                r |= <uint8_t>(0x80 >> j)
            lanes[j] = (b >> j) & 1
        _REV[b] = r
        memcpy(&_SPREAD[b], lanes, 8)


_init_tables()


cdef inline uint64_t _window(const uint64_t* w, Py_ssize_t p) noexcept nogil:
    """Bits p .. p+63 of a padded bitset (bit j of the result = bit p+j)."""
    cdef Py_ssize_t k = p >> 6
    cdef int o = p & 63
    if o == 0:
        return w[k]
    return (w[k] >> o) | (w[k + 1] << (64 - o))


cdef inline uint64_t _low(Py_ssize_t n) noexcept nogil:
    """Mask of the n low bits, 0 <= n <= 64."""
    if n >= 64:
        return ~(<uint64_t>0)
    return ((<uint64_t>1) << n) - 1


cdef inline uint64_t _run_starts(uint64_t x, Py_ssize_t c) noexcept nogil:
    """Bit j set iff bits j .. j+c-1 of x are all set (doubling: O(log c) shifts)."""
    cdef Py_ssize_t k = 1, s
    while k < c:
        s = k if k < c - k else c - k
        x &= x >> s
        k += s
    return x


cdef inline uint64_t _straddles(uint64_t b, Py_ssize_t c) noexcept nogil:
    """Bit j set iff b has a set bit among j+1 .. j+c-1 (a row starts inside the block)."""
    if c <= 1:
        return 0
    cdef uint64_t y = b >> 1
    cdef Py_ssize_t k = 1, s
    while k < c - 1:
        s = k if k < c - 1 - k else c - 1 - k
        y |= y >> s
        k += s
    return y


cdef Py_ssize_t _popcount_range(const uint64_t* w, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Set bits among bit positions a .. b-1."""
    if a >= b:
        return 0
    cdef Py_ssize_t ka = a >> 6, kb = (b - 1) >> 6, k
    cdef uint64_t first = ~_low(a & 63)
    cdef uint64_t last = _low(((b - 1) & 63) + 1)
    if ka == kb:
        return fg_popcount64(w[ka] & first & last)
    cdef Py_ssize_t total = fg_popcount64(w[ka] & first) + fg_popcount64(w[kb] & last)
    for k in range(ka + 1, kb):
        total += fg_popcount64(w[k])
    return total


cdef void* _alloc(Py_ssize_t n, size_t size) except NULL:
    cdef void* p = calloc(n if n > 0 else 1, size)
    if p == NULL:
        raise MemoryError()
    return p


cdef class AvailabilitySnapshot:
    """Read-only, in-process copy of one event's seat bitmaps.

    Costs: 4 bits per seat plus O(rows + sections) words. is_* and any_sold O(1) per
    seat; row_of / section_of O(log rows); section_counts O(sections); apply_changes
    O(log sections) per changed seat; load / render_state / sold_bytes O(seats / 8);
    best_available O(seats of the section / 60) word steps, fully taken words skipped.
    """

    def __init__(self, rows):
        row_start, row_section, sec_row_start = parse_rows(rows)
        cdef Py_ssize_t r, s, n = row_start[len(row_start) - 1]
        if self._sold != NULL:
            raise RuntimeError("AvailabilitySnapshot is already initialised")
        self._n = n
        self._n_rows = len(row_section)
        self._n_sections = len(sec_row_start) - 1
        self._n_words = (n + 63) // 64 + 1
        self._version = 0
        self._sold = <uint64_t*>_alloc(self._n_words, sizeof(uint64_t))
        self._held = <uint64_t*>_alloc(self._n_words, sizeof(uint64_t))
        self._free = <uint64_t*>_alloc(self._n_words, sizeof(uint64_t))
        self._bound = <uint64_t*>_alloc(self._n_words, sizeof(uint64_t))
        self._row_start = <Py_ssize_t*>_alloc(self._n_rows + 1, sizeof(Py_ssize_t))
        self._sec_start = <Py_ssize_t*>_alloc(self._n_sections + 1, sizeof(Py_ssize_t))
        self._sec_row_start = <Py_ssize_t*>_alloc(self._n_sections + 1, sizeof(Py_ssize_t))
        self._word_sec = <Py_ssize_t*>_alloc(self._n_words, sizeof(Py_ssize_t))
        self._sec_free = <Py_ssize_t*>_alloc(self._n_sections + 1, sizeof(Py_ssize_t))
        self._sec_held = <Py_ssize_t*>_alloc(self._n_sections + 1, sizeof(Py_ssize_t))
        self._sec_sold = <Py_ssize_t*>_alloc(self._n_sections + 1, sizeof(Py_ssize_t))
        for r in range(self._n_rows + 1):
            self._row_start[r] = row_start[r]
        for r in range(self._n_rows):
            if self._row_start[r] < n:
                self._bound[self._row_start[r] >> 6] |= (<uint64_t>1) << (self._row_start[r] & 63)
        for s in range(self._n_sections + 1):
            self._sec_row_start[s] = sec_row_start[s]
            self._sec_start[s] = self._row_start[self._sec_row_start[s]]
        for r in range(self._n_words):
            self._word_sec[r] = self._section_bisect(r * 64)
        self._recount()

    def __dealloc__(self):
        free(self._sold)
        free(self._held)
        free(self._free)
        free(self._bound)
        free(self._row_start)
        free(self._sec_start)
        free(self._sec_row_start)
        free(self._word_sec)
        free(self._sec_free)
        free(self._sec_held)
        free(self._sec_sold)

    # -- shape -------------------------------------------------------------------------
    @property
    def n_seats(self):
        return self._n

    @property
    def n_sections(self):
        return self._n_sections

    @property
    def n_rows(self):
        return self._n_rows

    @property
    def version(self):
        return self._version

    cdef Py_ssize_t _check_seat(self, object i) except -1:
        cdef Py_ssize_t k = i
        if k < 0 or k >= self._n:
            raise IndexError(f"seat index {k} out of range 0..{self._n - 1}")
        return k

    cdef Py_ssize_t _row_of(self, Py_ssize_t i) noexcept nogil:
        # Last row whose start is <= i (skips empty rows sharing that start).
        cdef Py_ssize_t lo = 0, hi = self._n_rows, mid
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if self._row_start[mid] <= i:
                lo = mid
            else:
                hi = mid
        return lo

    cdef Py_ssize_t _section_of(self, Py_ssize_t i) noexcept nogil:
        cdef Py_ssize_t s = self._word_sec[i >> 6]
        while self._sec_start[s + 1] <= i:
            s += 1
        return s

    cdef Py_ssize_t _section_bisect(self, Py_ssize_t i) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._n_sections, mid
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if self._sec_start[mid] <= i:
                lo = mid
            else:
                hi = mid
        return lo

    def row_of(self, i):
        return self._row_of(self._check_seat(i))

    def section_of(self, i):
        return self._section_of(self._check_seat(i))

    def row_range(self, row):
        cdef Py_ssize_t r = row
        if r < 0 or r >= self._n_rows:
            raise IndexError(f"row {r} out of range 0..{self._n_rows - 1}")
        return (self._row_start[r], self._row_start[r + 1])

    # -- state -------------------------------------------------------------------------
    cdef void _recount(self) noexcept nogil:
        cdef Py_ssize_t k, s, a, b
        cdef Py_ssize_t last = self._n_words - 1
        for k in range(last):
            self._free[k] = ~(self._sold[k] | self._held[k])
        self._free[last] = 0
        if self._n & 63:
            self._free[last - 1] &= _low(self._n & 63)
        for s in range(self._n_sections):
            a = self._sec_start[s]
            b = self._sec_start[s + 1]
            self._sec_sold[s] = _popcount_range(self._sold, a, b)
            self._sec_free[s] = _popcount_range(self._free, a, b)
            self._sec_held[s] = (b - a) - self._sec_sold[s] - self._sec_free[s]
        self._counts_stale = True

    def load(self, sold, held, version):
        """Replace the state with raw Redis strings (GET of the sold / held bitmaps)."""
        cdef int64_t v = PyNumber_Index(version)
        # Take both buffers before touching anything: bad input changes nothing.
        cdef const unsigned char[::1] src_sold = sold if sold else b""
        cdef const unsigned char[::1] src_held = held if held else b""
        self._unpack(src_sold, self._sold)
        self._unpack(src_held, self._held)
        self._version = v
        self._recount()

    cdef void _unpack(self, const unsigned char[::1] src, uint64_t* dst) noexcept:
        cdef Py_ssize_t k, n_bytes = (self._n + 7) // 8
        cdef Py_ssize_t nb = src.shape[0] if src.shape[0] < n_bytes else n_bytes
        memset(dst, 0, self._n_words * sizeof(uint64_t))
        for k in range(nb):
            dst[k >> 3] |= (<uint64_t>_REV[src[k]]) << ((k & 7) * 8)
        if self._n & 63:
            dst[self._n_words - 2] &= _low(self._n & 63)

    def is_free(self, i):
        cdef Py_ssize_t k = self._check_seat(i)
        return (self._free[k >> 6] >> (k & 63)) & 1 == 1

    def is_sold(self, i):
        cdef Py_ssize_t k = self._check_seat(i)
        return (self._sold[k >> 6] >> (k & 63)) & 1 == 1

    def is_held(self, i):
        cdef Py_ssize_t k = self._check_seat(i)
        return (self._held[k >> 6] >> (k & 63)) & 1 == 1

    def any_sold(self, indices):
        cdef Py_ssize_t k
        for i in indices:
            k = self._check_seat(i)
            if (self._sold[k >> 6] >> (k & 63)) & 1:
                return True
        return False

    def section_counts(self):
        # Readers poll far more often than counts change: keep the tuples until a change.
        cdef Py_ssize_t s
        if self._counts_stale or self._counts is None:
            self._counts = [(self._sec_free[s], self._sec_held[s], self._sec_sold[s])
                            for s in range(self._n_sections)]
            self._counts_stale = False
        return list(self._counts)

    def count_free(self, section):
        cdef Py_ssize_t s = section
        if s < 0 or s >= self._n_sections:
            raise IndexError(f"section {s} out of range 0..{self._n_sections - 1}")
        return self._sec_free[s]

    def total_free(self):
        cdef Py_ssize_t s, total = 0
        for s in range(self._n_sections):
            total += self._sec_free[s]
        return total

    cdef void _change(self, Py_ssize_t i, int op) noexcept nogil:
        cdef Py_ssize_t k = i >> 6, sec
        cdef uint64_t bit = (<uint64_t>1) << (i & 63)
        cdef bint sold = (self._sold[k] & bit) != 0
        cdef bint held = (self._held[k] & bit) != 0
        cdef int before = 2 if sold else (1 if held else 0)
        cdef int after
        if op == 1:
            held = True
        elif op == 3:
            held = False
            sold = True
        elif op == 4:
            sold = False
        else:
            held = False
        after = 2 if sold else (1 if held else 0)
        if sold:
            self._sold[k] |= bit
        else:
            self._sold[k] &= ~bit
        if held:
            self._held[k] |= bit
        else:
            self._held[k] &= ~bit
        if sold or held:
            self._free[k] &= ~bit
        else:
            self._free[k] |= bit
        if before != after:
            self._counts_stale = True
            sec = self._section_of(i)
            if before == 0:
                self._sec_free[sec] -= 1
            elif before == 1:
                self._sec_held[sec] -= 1
            else:
                self._sec_sold[sec] -= 1
            if after == 0:
                self._sec_free[sec] += 1
            elif after == 1:
                self._sec_held[sec] += 1
            else:
                self._sec_sold[sec] += 1

    def apply_changes(self, records):
        """Apply ``(version, op, seats)`` records in order; False on a version gap."""
        cdef int64_t v
        cdef Py_ssize_t o, j, k, n_seats
        cdef Py_ssize_t local[16]
        cdef Py_ssize_t* idx
        for version, op, seats in records:
            v = PyNumber_Index(version)
            if v <= self._version:
                continue
            if v > self._version + 1:
                return False
            o = PyNumber_Index(op)
            if o < 1 or o > 5:
                raise ValueError(f"unknown change op {o}")
            if type(seats) is not list and type(seats) is not tuple:
                seats = list(seats)
            # Convert and check every seat first: a refused record changes nothing.
            n_seats = len(seats)
            idx = &local[0]
            if n_seats > 16:
                idx = <Py_ssize_t*>_alloc(n_seats, sizeof(Py_ssize_t))
            try:
                j = 0
                for i in seats:
                    k = i
                    if k < 0 or k >= self._n:
                        raise IndexError(f"seat index {k} out of range 0..{self._n - 1}")
                    idx[j] = k
                    j += 1
                for j in range(n_seats):
                    self._change(idx[j], o)
            finally:
                if idx != &local[0]:
                    free(idx)
            self._version = v
        return True

    cdef Py_ssize_t _best_in_row(self, Py_ssize_t r, Py_ssize_t c) noexcept nogil:
        # Block centre vs row centre, doubled to stay in integers: |2q + c - s - e|.
        cdef Py_ssize_t s = self._row_start[r], e = self._row_start[r + 1]
        cdef Py_ssize_t target2 = s + e - c, best = -1, best_d = 0, d, q
        cdef Py_ssize_t p = s, step = 65 - c
        cdef uint64_t x, m
        while p + c <= e:
            x = _window(self._free, p) & _low(e - p)
            m = _run_starts(x, c)
            while m:
                q = p + fg_ctz64(m)
                d = 2 * q - target2
                if d < 0:
                    d = -d
                if best < 0 or d < best_d:
                    best = q
                    best_d = d
                elif 2 * q > target2:
                    return best  # past the centre: later blocks only get farther
                m &= m - 1
            p += step
        return best

    cdef Py_ssize_t _search(self, Py_ssize_t section, Py_ssize_t c) noexcept nogil:
        # The first block (in seat order) of c free seats that does not straddle a row
        # lies in the best row that has one; then centre within that row.
        cdef Py_ssize_t a = self._sec_start[section], b = self._sec_start[section + 1]
        cdef Py_ssize_t p = a, step = 65 - c
        cdef uint64_t x, m
        while p + c <= b:
            x = _window(self._free, p) & _low(b - p)
            if x == 0:
                p += 64  # nothing free here: no block can start in these 64 seats
                continue
            m = _run_starts(x, c)
            if m:
                m &= ~_straddles(_window(self._bound, p), c)
                if m:
                    return self._best_in_row(self._row_of(p + fg_ctz64(m)), c)
            p += step
        return -1

    cdef Py_ssize_t _search_slow(self, Py_ssize_t section, Py_ssize_t c) noexcept nogil:
        # Blocks wider than a 64-bit window: seat by seat, same choice as the fast path.
        cdef Py_ssize_t r, s, e, i, run, q, d, best, best_d, target2
        for r in range(self._sec_row_start[section], self._sec_row_start[section + 1]):
            s = self._row_start[r]
            e = self._row_start[r + 1]
            if e - s < c:
                continue
            target2 = s + e - c
            best = -1
            best_d = 0
            run = 0
            for i in range(s, e):
                if not (self._free[i >> 6] >> (i & 63)) & 1:
                    run = 0
                    continue
                run += 1
                if run >= c:
                    q = i - c + 1
                    d = 2 * q - target2
                    if d < 0:
                        d = -d
                    if best < 0 or d < best_d:
                        best = q
                        best_d = d
                    elif 2 * q > target2:
                        break
            if best >= 0:
                return best
        return -1

    def best_available(self, section, count, exclude=()):
        """``count`` adjacent free seats in the best row of ``section``, centred; or None."""
        cdef Py_ssize_t sec = section, c = count, n_ex = 0, j, k, found
        cdef Py_ssize_t* cleared = NULL
        cdef uint64_t bit
        if sec < 0 or sec >= self._n_sections:
            raise IndexError(f"section {sec} out of range 0..{self._n_sections - 1}")
        if c < 1:
            raise ValueError("count must be at least 1")
        if type(exclude) is not list and type(exclude) is not tuple:
            exclude = list(exclude)
        if len(exclude):
            # Excluded seats are taken out of the free bitset for the search only.
            for i in exclude:
                self._check_seat(i)
            cleared = <Py_ssize_t*>_alloc(len(exclude), sizeof(Py_ssize_t))
            for i in exclude:
                k = i
                bit = (<uint64_t>1) << (k & 63)
                if self._free[k >> 6] & bit:
                    self._free[k >> 6] &= ~bit
                    cleared[n_ex] = k
                    n_ex += 1
        if c <= 64:
            found = self._search(sec, c)
        else:
            found = self._search_slow(sec, c)
        if cleared != NULL:
            for j in range(n_ex):
                k = cleared[j]
                self._free[k >> 6] |= (<uint64_t>1) << (k & 63)
            free(cleared)
        if found < 0:
            return None
        return list(range(found, found + c))

    # -- export ------------------------------------------------------------------------
    def render_state(self):
        """One ASCII byte per seat: b'0' free, b'1' held, b'2' sold (sold wins)."""
        cdef Py_ssize_t n = self._n, w, full = n >> 6, k
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef char* dst = PyBytes_AS_STRING(out)
        cdef uint64_t sw, hw, lanes
        cdef int b
        # 64 seats per word; each byte of the word becomes 8 output bytes at once.
        for w in range(full):
            sw = self._sold[w]
            hw = self._held[w] & ~sw
            for b in range(8):
                lanes = (0x3030303030303030ULL + _SPREAD[(hw >> (8 * b)) & 0xFF]
                         + 2 * _SPREAD[(sw >> (8 * b)) & 0xFF])
                memcpy(dst + w * 64 + b * 8, &lanes, 8)
        for k in range(full * 64, n):
            dst[k] = 0x32 if (self._sold[k >> 6] >> (k & 63)) & 1 else (
                0x31 if (self._held[k >> 6] >> (k & 63)) & 1 else 0x30)
        return out

    cdef bytes _pack(self, const uint64_t* words):
        cdef Py_ssize_t k, n_bytes = (self._n + 7) // 8
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n_bytes)
        cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
        for k in range(n_bytes):
            dst[k] = _REV[(words[k >> 3] >> ((k & 7) * 8)) & 0xFF]
        return out

    def sold_bytes(self):
        return self._pack(self._sold)

    def held_bytes(self):
        return self._pack(self._held)


cdef inline bytes _key(object key):
    if type(key) is bytes:
        return <bytes>key
    if isinstance(key, str):
        return (<str>key).encode("utf-8")
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


cdef inline uint64_t _fnv1a(bytes key) noexcept:
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(key)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(key)
    cdef uint64_t h = 14695981039346656037ULL
    for i in range(n):
        h = (h ^ p[i]) * 1099511628211ULL
    return h


cdef inline Py_ssize_t _home(uint64_t h, Py_ssize_t mask) noexcept nogil:
    return <Py_ssize_t>((h ^ (h >> 29)) & <uint64_t>mask)


cdef class _KeyTable:
    """Bounded key -> entry map with eviction of the oldest (least recently used) entry."""

    cdef _setup(self, Py_ssize_t capacity):
        cdef Py_ssize_t size = 8, i
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if self._slots != NULL:
            raise RuntimeError(f"{type(self).__name__} is already initialised")
        while size < 2 * capacity:
            size *= 2
        self._capacity = capacity
        self._mask = size - 1
        self._slots = <Py_ssize_t*>_alloc(size, sizeof(Py_ssize_t))
        self._hash = <uint64_t*>_alloc(capacity, sizeof(uint64_t))
        self._prev = <Py_ssize_t*>_alloc(capacity, sizeof(Py_ssize_t))
        self._next = <Py_ssize_t*>_alloc(capacity, sizeof(Py_ssize_t))
        self._keys = [None] * capacity
        for i in range(size):
            self._slots[i] = -1
        self._len = 0
        self._head = -1
        self._tail = -1

    def __dealloc__(self):
        free(self._slots)
        free(self._hash)
        free(self._prev)
        free(self._next)

    def __len__(self):
        return self._len

    @property
    def capacity(self):
        return self._capacity

    def clear(self):
        cdef Py_ssize_t i
        for i in range(self._mask + 1):
            self._slots[i] = -1
        for i in range(self._capacity):
            self._keys[i] = None
        self._len = 0
        self._head = -1
        self._tail = -1

    cdef Py_ssize_t _find(self, bytes key, uint64_t h):
        cdef Py_ssize_t i = _home(h, self._mask), e
        cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
        cdef bytes other
        while True:
            e = self._slots[i]
            if e < 0:
                return -1
            if self._hash[e] == h:
                other = <bytes>self._keys[e]
                if PyBytes_GET_SIZE(other) == n and memcmp(
                        PyBytes_AS_STRING(other), PyBytes_AS_STRING(key), n) == 0:
                    return e
            i = (i + 1) & self._mask

    cdef void _unlink(self, Py_ssize_t e) noexcept:
        cdef Py_ssize_t p = self._prev[e], n = self._next[e]
        if p >= 0:
            self._next[p] = n
        else:
            self._head = n
        if n >= 0:
            self._prev[n] = p
        else:
            self._tail = p

    cdef void _append(self, Py_ssize_t e) noexcept:
        self._prev[e] = self._tail
        self._next[e] = -1
        if self._tail >= 0:
            self._next[self._tail] = e
        else:
            self._head = e
        self._tail = e

    cdef void _touch(self, Py_ssize_t e) noexcept:
        if self._tail != e:
            self._unlink(e)
            self._append(e)

    cdef void _unslot(self, Py_ssize_t e) noexcept:
        # Backward-shift deletion keeps probe chains intact without tombstones.
        cdef Py_ssize_t mask = self._mask
        cdef Py_ssize_t i = _home(self._hash[e], mask), j, k, f
        while self._slots[i] != e:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            f = self._slots[j]
            if f < 0:
                break
            k = _home(self._hash[f], mask)
            # Leave f where it is if its home lies cyclically in (i, j].
            if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
                continue
            self._slots[i] = f
            i = j
        self._slots[i] = -1

    cdef Py_ssize_t _insert(self, bytes key, uint64_t h):
        """New entry for a key known to be absent, as the newest; evicts the oldest if full."""
        cdef Py_ssize_t e, i
        if self._len >= self._capacity:
            e = self._head
            self._unslot(e)
            self._unlink(e)
        else:
            e = self._len
            self._len += 1
        self._hash[e] = h
        self._keys[e] = key
        self._append(e)
        i = _home(h, self._mask)
        while self._slots[i] >= 0:
            i = (i + 1) & self._mask
        self._slots[i] = e
        return e


cdef class RecentSet(_KeyTable):
    """Bounded set of recently seen keys with a fixed time to live.

    Costs: O(1) expected add / contains; when full, the entry added longest ago is
    evicted. Memory: capacity * (~56 bytes + the key object).
    """

    def __init__(self, capacity, ttl):
        cdef double t = ttl
        if not t >= 0.0 or math.isinf(t):
            raise ValueError("ttl must be a finite number >= 0")
        self._setup(capacity)
        self._ttl = t
        self._expiry = <double*>_alloc(self._capacity, sizeof(double))

    def __dealloc__(self):
        free(self._expiry)

    @property
    def ttl(self):
        return self._ttl

    def add(self, key, double now):
        cdef bytes k = _key(key)
        cdef uint64_t h = _fnv1a(k)
        cdef Py_ssize_t e = self._find(k, h)
        if e >= 0:
            if now < self._expiry[e]:
                return False
            # Expired: recorded again as if new, so it becomes the newest entry.
            self._touch(e)
        else:
            e = self._insert(k, h)
        self._expiry[e] = now + self._ttl
        return True

    def contains(self, key, double now):
        cdef bytes k = _key(key)
        cdef Py_ssize_t e = self._find(k, _fnv1a(k))
        return e >= 0 and now < self._expiry[e]


cdef class TokenBucketTable(_KeyTable):
    """Token buckets per key (``rate`` tokens/s, up to ``burst``), bounded to ``capacity`` keys.

    Costs: O(1) expected allow / retry_after; a new key on a full table drops the least
    recently used bucket (it starts full again). Memory: capacity * (~64 bytes + key).
    """

    def __init__(self, rate, burst, capacity):
        cdef double r = rate, b = burst
        if not r >= 0.0 or math.isinf(r):
            raise ValueError("rate must be a finite number >= 0")
        if not b >= 0.0 or math.isinf(b):
            raise ValueError("burst must be a finite number >= 0")
        self._setup(capacity)
        self._rate = r
        self._burst = b
        self._tokens = <double*>_alloc(self._capacity, sizeof(double))
        self._last = <double*>_alloc(self._capacity, sizeof(double))

    def __dealloc__(self):
        free(self._tokens)
        free(self._last)

    @property
    def rate(self):
        return self._rate

    @property
    def burst(self):
        return self._burst

    def allow(self, key, double now, double cost=1.0):
        cdef bytes k = _key(key)
        cdef uint64_t h
        cdef Py_ssize_t e
        cdef double elapsed, tokens
        if not cost >= 0.0:
            raise ValueError("cost must be >= 0")
        h = _fnv1a(k)
        e = self._find(k, h)
        if e < 0:
            e = self._insert(k, h)
            self._tokens[e] = self._burst
            self._last[e] = now
        else:
            self._touch(e)
            elapsed = now - self._last[e]
            if elapsed > 0.0:
                tokens = self._tokens[e] + elapsed * self._rate
                self._tokens[e] = self._burst if tokens > self._burst else tokens
                self._last[e] = now
        if self._tokens[e] >= cost:
            self._tokens[e] -= cost
            return True
        return False

    def retry_after(self, key, double now, double cost=1.0):
        """Seconds until ``allow(key, ...)`` would pass; does not consume or refresh."""
        cdef bytes k = _key(key)
        cdef Py_ssize_t e
        cdef double elapsed, tokens
        if not cost >= 0.0:
            raise ValueError("cost must be >= 0")
        e = self._find(k, _fnv1a(k))
        if e < 0:
            tokens = self._burst
        else:
            tokens = self._tokens[e]
            elapsed = now - self._last[e]
            if elapsed > 0.0:
                tokens = tokens + elapsed * self._rate
                if tokens > self._burst:
                    tokens = self._burst
        if tokens >= cost:
            return 0.0
        if cost > self._burst or self._rate <= 0.0:
            return math.inf
        return (cost - tokens) / self._rate
