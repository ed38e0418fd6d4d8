# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled inner loop of granttag's prediction path (issue 2); optional.

granttag works without this module: :mod:`classifier.columns` has a
pure-Python class with the same behaviour (a test compares the two). It is
built by ``pip install .`` when a C compiler is present.
"""

from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from libc.string cimport memset


cdef extern from "Python.h":
    ctypedef struct PyObject
    # Py_UCS4 as a plain C integer (Cython's own Py_UCS4 turns into a str in arithmetic).
    ctypedef unsigned int ucs4 "Py_UCS4"
    int PyUnicode_KIND(object u)
    void* PyUnicode_DATA(object u)
    Py_ssize_t PyUnicode_GET_LENGTH(object u)
    ucs4 PyUnicode_READ(int kind, void* data, Py_ssize_t index)
    object PyUnicode_Substring(object u, Py_ssize_t start, Py_ssize_t end)


cdef int _compare(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<int64_t*>a)[0]
    cdef int64_t y = (<int64_t*>b)[0]
    return (x > y) - (x < y)


# FNV-1a over the code points, so that a key hashes alike whatever the kind of the string it sits in.
cdef extern from *:
    """
    #define GRANTTAG_FNV_OFFSET 14695981039346656037ULL
    #define GRANTTAG_FNV_PRIME 1099511628211ULL
    """
    uint64_t FNV_OFFSET "GRANTTAG_FNV_OFFSET"
    uint64_t FNV_PRIME "GRANTTAG_FNV_PRIME"


cdef inline uint64_t _hash(int kind, void* data, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(start, end):
        h = (h ^ PyUnicode_READ(kind, data, i)) * FNV_PRIME
    return h | 1  # 0 marks an empty slot


cdef inline bint _space(ucs4 ch) noexcept:
    # What str.split() splits on (Py_UNICODE_ISSPACE), without a function call for every kanji.
    if ch < 128:
        return ch == 32 or 9 <= ch <= 13 or 28 <= ch <= 31
    if ch > 0x3000:
        return False
    return (ch == 0x85 or ch == 0xA0 or ch == 0x1680 or 0x2000 <= ch <= 0x200A or ch == 0x2028 or ch == 0x2029
            or ch == 0x202F or ch == 0x205F or ch == 0x3000)


cdef inline Py_ssize_t _next_morpheme(int kind, void* data, Py_ssize_t i, Py_ssize_t length,
                                     Py_ssize_t* start, uint64_t* h) noexcept:
    """The next whitespace-separated morpheme at or after ``i``: set ``*start`` and ``*h`` (its
    hash, as :func:`_hash` gives it) and return its end, in one pass; -1 when none is left."""
    cdef uint64_t hh = FNV_OFFSET
    cdef ucs4 ch
    while i < length and _space(PyUnicode_READ(kind, data, i)):
        i += 1
    if i >= length:
        return -1
    start[0] = i
    while i < length:
        ch = PyUnicode_READ(kind, data, i)
        if _space(ch):
            break
        hh = (hh ^ ch) * FNV_PRIME
        i += 1
    h[0] = hh | 1
    return i


cdef bytes _as_bytes(void* data, Py_ssize_t size):
    return (<char*>data)[:size] if size else b""


ctypedef struct Slot:
    uint64_t hash  # 0: empty
    int64_t col
    PyObject* key  # an owned reference


cdef class MorphemeColumns:
    """A table from morpheme (``str``) to model column (an int, -1 for none).

    It behaves as a ``dict[str, int]`` for ``len``, ``get``, ``[]``, ``in``
    and ``clear``; :meth:`count` reads MeCab's output strings without making
    a ``str`` of every morpheme.
    """

    # One array of slots (hash, column, key): a lookup touches one cache line, not three.
    cdef Slot* slots
    cdef Py_ssize_t cap
    cdef Py_ssize_t size

    def __cinit__(self) -> None:
        self.cap = 0
        self.size = 0
        self._allocate(1024)

    def __dealloc__(self) -> None:
        self._release()

    cdef void _release(self) noexcept:
        cdef Py_ssize_t i
        if self.slots != NULL:
            for i in range(self.cap):
                if self.slots[i].key != NULL:
                    Py_DECREF(<object>self.slots[i].key)
        free(self.slots)
        self.slots = NULL

    cdef int _allocate(self, Py_ssize_t cap) except -1:
        self.slots = <Slot*>calloc(cap, sizeof(Slot))
        if self.slots == NULL:
            raise MemoryError()
        self.cap = cap
        self.size = 0
        return 0

    cdef int _grow(self) except -1:
        cdef Slot* old = self.slots
        cdef Py_ssize_t cap = self.cap, i, j, mask
        self.slots = NULL
        try:
            self._allocate(2 * cap)
        except MemoryError:
            self.slots, self.cap = old, cap
            raise
        mask = self.cap - 1
        for i in range(cap):
            if old[i].hash:
                j = <Py_ssize_t>(old[i].hash & mask)
                while self.slots[j].hash:
                    j = (j + 1) & mask
                self.slots[j] = old[i]  # the key's reference moves with it
                self.size += 1
        free(old)
        return 0

    cdef Py_ssize_t _slot(self, uint64_t h, int kind, void* data, Py_ssize_t start, Py_ssize_t end) noexcept:
        """The slot of the key text[start:end] (hash h), or of the empty slot where it would go."""
        cdef Py_ssize_t mask = self.cap - 1, j = <Py_ssize_t>(h & mask), n = end - start, k
        cdef object key
        cdef int key_kind
        cdef void* key_data
        while self.slots[j].hash:
            if self.slots[j].hash == h:
                key = <object>self.slots[j].key
                if PyUnicode_GET_LENGTH(key) == n:
                    key_kind = PyUnicode_KIND(key)
                    key_data = PyUnicode_DATA(key)
                    k = 0
                    while k < n and PyUnicode_READ(key_kind, key_data, k) == PyUnicode_READ(kind, data, start + k):
                        k += 1
                    if k == n:
                        return j
            j = (j + 1) & mask
        return j

    cdef int _put(self, object key, Py_ssize_t slot, uint64_t h, int64_t col) except -1:
        if self.slots[slot].hash:
            self.slots[slot].col = col
            return 0
        Py_INCREF(key)
        self.slots[slot].hash = h
        self.slots[slot].col = col
        self.slots[slot].key = <PyObject*>key
        self.size += 1
        if 2 * self.size > self.cap:
            self._grow()
        return 0

    def __len__(self) -> int:
        return self.size

    def __reduce__(self):
        # A cache: a copy starts empty and fills again on use (as the tokenizer's tagger is rebuilt).
        return (MorphemeColumns, ())

    cdef Py_ssize_t _key_slot(self, str key, uint64_t* h) noexcept:
        """The slot of a whole key (see :meth:`_slot`); its hash goes to ``*h``."""
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(key)
        cdef int kind = PyUnicode_KIND(key)
        cdef void* data = PyUnicode_DATA(key)
        h[0] = _hash(kind, data, 0, n)
        return self._slot(h[0], kind, data, 0, n)

    def __contains__(self, str key) -> bool:
        cdef uint64_t h
        return self.slots[self._key_slot(key, &h)].hash != 0

    def get(self, str key, default=None):
        cdef uint64_t h
        cdef Py_ssize_t slot = self._key_slot(key, &h)
        return self.slots[slot].col if self.slots[slot].hash else default

    def __getitem__(self, str key) -> int:
        cdef uint64_t h
        cdef Py_ssize_t slot = self._key_slot(key, &h)
        if not self.slots[slot].hash:
            raise KeyError(key)
        return self.slots[slot].col

    def __setitem__(self, str key, int64_t col) -> None:
        cdef uint64_t h
        cdef Py_ssize_t slot = self._key_slot(key, &h)
        self._put(key, slot, h, col)

    def clear(self) -> None:
        self._release()
        self._allocate(1024)

    def first_with(self, str text, int64_t column):
        """The first whitespace-separated morpheme of ``text`` whose column in the table is ``column``, or None."""
        cdef int kind = PyUnicode_KIND(text)
        cdef void* data = PyUnicode_DATA(text)
        cdef Py_ssize_t length = PyUnicode_GET_LENGTH(text), i = 0, start, slot
        cdef uint64_t h
        while True:
            i = _next_morpheme(kind, data, i, length, &start, &h)
            if i < 0:
                return None
            slot = self._slot(h, kind, data, start, i)
            if self.slots[slot].hash and self.slots[slot].col == column:
                return PyUnicode_Substring(text, start, i)

    def count(self, list texts, Py_ssize_t width, resolve):
        """Count the columns of the whitespace-separated morphemes of each text.

        A morpheme not in the table is given to ``resolve``, which returns its
        column (or -1); the answer is kept. Returns ``(rows, columns, counts)``
        as ``bytes`` of int64, int64 and float64: one entry per (text,
        column), sorted by text then column. Columns must be below ``width``.
        """
        cdef Py_ssize_t n_texts = len(texts)
        cdef Py_ssize_t row, i, j, start, length, n_touched, n_out = 0, slot
        cdef Py_ssize_t cap_touched = 512, cap_out = 4096
        cdef int kind
        cdef void* data
        cdef int64_t col
        cdef uint64_t h
        cdef object text, key
        cdef void* grown
        if width < 0:
            raise ValueError("width must not be negative")
        cdef int* acc = <int*>calloc(width if width > 0 else 1, sizeof(int))
        cdef int64_t* touched = <int64_t*>malloc(cap_touched * sizeof(int64_t))
        cdef int64_t* out_rows = <int64_t*>malloc(cap_out * sizeof(int64_t))
        cdef int64_t* out_cols = <int64_t*>malloc(cap_out * sizeof(int64_t))
        cdef double* out_counts = <double*>malloc(cap_out * sizeof(double))
        try:
            if acc == NULL or touched == NULL or out_rows == NULL or out_cols == NULL or out_counts == NULL:
                raise MemoryError()
            for row in range(n_texts):
                text = texts[row]
                if not isinstance(text, str):
                    raise TypeError(f"text {row} is {type(text).__name__}, not str")
                kind = PyUnicode_KIND(text)
                data = PyUnicode_DATA(text)
                length = PyUnicode_GET_LENGTH(text)
                n_touched = 0
                i = 0
                while True:
                    i = _next_morpheme(kind, data, i, length, &start, &h)
                    if i < 0:
                        break
                    slot = self._slot(h, kind, data, start, i)
                    if self.slots[slot].hash:
                        col = self.slots[slot].col
                    else:
                        key = PyUnicode_Substring(text, start, i)
                        col = resolve(key)
                        # resolve may have changed the table: look the slot up again.
                        self._put(key, self._slot(h, kind, data, start, i), h, col)
                    if col < 0:
                        continue
                    if col >= width:
                        raise ValueError(f"column {col} of {PyUnicode_Substring(text, start, i)!r} is outside the {width} columns")
                    if acc[col] == 0:
                        if n_touched == cap_touched:
                            grown = realloc(touched, 2 * cap_touched * sizeof(int64_t))
                            if grown == NULL:
                                raise MemoryError()
                            touched = <int64_t*>grown
                            cap_touched *= 2
                        touched[n_touched] = col
                        n_touched += 1
                    acc[col] += 1
                qsort(touched, n_touched, sizeof(int64_t), _compare)
                while n_out + n_touched > cap_out:
                    grown = realloc(out_rows, 2 * cap_out * sizeof(int64_t))
                    if grown == NULL:
                        raise MemoryError()
                    out_rows = <int64_t*>grown
                    grown = realloc(out_cols, 2 * cap_out * sizeof(int64_t))
                    if grown == NULL:
                        raise MemoryError()
                    out_cols = <int64_t*>grown
                    grown = realloc(out_counts, 2 * cap_out * sizeof(double))
                    if grown == NULL:
                        raise MemoryError()
                    out_counts = <double*>grown
                    cap_out *= 2
                for j in range(n_touched):
                    col = touched[j]
                    out_rows[n_out] = row
                    out_cols[n_out] = col
                    out_counts[n_out] = acc[col]
                    acc[col] = 0
                    n_out += 1
            return (
                _as_bytes(out_rows, n_out * sizeof(int64_t)),
                _as_bytes(out_cols, n_out * sizeof(int64_t)),
                _as_bytes(out_counts, n_out * sizeof(double)),
            )
        finally:
            free(acc)
            free(touched)
            free(out_rows)
            free(out_cols)
            free(out_counts)
