# Declarations for hotpath._snapshot_c (code in _snapshot_c.pyx).
from libc.stdint cimport uint64_t, int64_t


cdef class AvailabilitySnapshot:
    # Seats live in three bitsets of 64-bit words, LSB first (seat i = bit i & 63 of
    # word i >> 6), each with one zero padding word so a 64-bit window can be read at
    # any seat offset: sold, held, free (= neither; kept in step on every change).
    # _bound marks the first seat of every row, so a run search over a whole section
    # can refuse blocks that straddle two rows.
    # Memory: 5 bits per seat + 8 bytes per row + 40 bytes per section.
    # _word_sec makes section_of(i) O(1) in practice (a few steps from the word's section).
    cdef Py_ssize_t _n
    cdef Py_ssize_t _n_words
    cdef Py_ssize_t _n_rows
    cdef Py_ssize_t _n_sections
    cdef int64_t _version
    cdef uint64_t* _sold
    cdef uint64_t* _held
    cdef uint64_t* _free
    cdef uint64_t* _bound
    cdef Py_ssize_t* _row_start        # n_rows + 1 seat indices
    cdef Py_ssize_t* _sec_start        # n_sections + 1 seat indices
    cdef Py_ssize_t* _sec_row_start    # n_sections + 1 row indices
    cdef Py_ssize_t* _word_sec         # section of the first seat of each word
    cdef Py_ssize_t* _sec_free
    cdef Py_ssize_t* _sec_held
    cdef Py_ssize_t* _sec_sold
    cdef list _counts                  # section_counts() answer, rebuilt when stale
    cdef bint _counts_stale

    cdef Py_ssize_t _check_seat(self, object i) except -1
    cdef Py_ssize_t _row_of(self, Py_ssize_t i) noexcept nogil
    cdef Py_ssize_t _section_of(self, Py_ssize_t i) noexcept nogil
    cdef Py_ssize_t _section_bisect(self, Py_ssize_t i) noexcept nogil
    cdef void _recount(self) noexcept nogil
    cdef void _unpack(self, const unsigned char[::1] src, uint64_t* dst) noexcept
    cdef void _change(self, Py_ssize_t i, int op) noexcept nogil
    cdef Py_ssize_t _best_in_row(self, Py_ssize_t r, Py_ssize_t c) noexcept nogil
    cdef Py_ssize_t _search(self, Py_ssize_t section, Py_ssize_t c) noexcept nogil
    cdef Py_ssize_t _search_slow(self, Py_ssize_t section, Py_ssize_t c) noexcept nogil
    cdef bytes _pack(self, const uint64_t* words)


cdef class _KeyTable:
    # Open-addressing hash table (linear probing, load <= 1/2, backward-shift deletion)
    # of entry ids, plus entries in a doubly linked recency list for O(1) eviction.
    # Keys are FNV-1a 64 hashed; the full key bytes are stored and compared, so a hash
    # collision never changes an answer. Lookup / insert / evict O(1) expected.
    # Memory per entry: 8 (hash) + 16 (links) + 16 (table, 2 slots) + the key object.
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _mask
    cdef Py_ssize_t _len
    cdef Py_ssize_t _head              # oldest entry, -1 when empty
    cdef Py_ssize_t _tail              # newest entry
    cdef Py_ssize_t* _slots            # table of entry ids, -1 = empty
    cdef uint64_t* _hash
    cdef Py_ssize_t* _prev
    cdef Py_ssize_t* _next
    cdef list _keys

    cdef _setup(self, Py_ssize_t capacity)
    cdef Py_ssize_t _find(self, bytes key, uint64_t h)
    cdef Py_ssize_t _insert(self, bytes key, uint64_t h)
    cdef void _unlink(self, Py_ssize_t e) noexcept
    cdef void _append(self, Py_ssize_t e) noexcept
    cdef void _touch(self, Py_ssize_t e) noexcept
    cdef void _unslot(self, Py_ssize_t e) noexcept


cdef class RecentSet(_KeyTable):
    cdef double _ttl
    cdef double* _expiry


cdef class TokenBucketTable(_KeyTable):
    cdef double _rate
    cdef double _burst
    cdef double* _tokens
    cdef double* _last
