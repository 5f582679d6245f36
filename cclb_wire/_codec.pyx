# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Cython backend: the hot paths of cclb_wire in C, same behaviour as _fallback.

Encoding: a size pass over the value (which also checks every type), then one
write pass into an exact-size ``bytes`` object or straight into the caller's
buffer. Strings are read from CPython's own storage: ASCII and Latin-1 data are
copied as they are, other strings are encoded to UTF-8 on the fly, so nothing
is allocated but the output.

Decoding: rkyv's ``access`` rules (the window [lo, hi), post-order, alignment,
strict UTF-8, tags) checked in C while the values are built.

Errors: whenever the fast path meets anything it does not accept, it hands the
same call to the pure-Python fallback, which raises the one canonical error (or,
if it disagrees, returns its own result). So both backends raise identical
errors by construction, and the differential tests check that successes agree.

Every read is bounds-checked by hand against the buffer before it happens
(``boundscheck`` is off); positions are Py_ssize_t and every length is bounded
by the buffer (decode) or by MAX_ARCHIVE_SIZE (encode), so sums cannot overflow.
"""

from cpython.buffer cimport (
    PyBUF_ANY_CONTIGUOUS,
    PyBUF_SIMPLE,
    PyBUF_WRITABLE,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Check, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsUnsignedLongLong, PyLong_Check, PyLong_FromUnsignedLongLong
from cpython.object cimport PyObject, PyTypeObject
from cpython.sequence cimport PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_Check
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

import uuid as _uuid

from . import _fallback, host_rules, host_types, schema, wire
from ._validate import coerce_enum as _coerce_enum
from .errors import DecodeError

cdef extern from "Python.h":
    bint PyBool_Check(object)
    bint PyMemoryView_Check(object)
    int PyUnicode_KIND(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    bint PyUnicode_IS_ASCII(object)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    object PyUnicode_FromStringAndSize(const char* s, Py_ssize_t size)
    object PyObject_GenericGetAttr(object, object)
    int PyObject_GenericSetAttr(object, object, object) except -1
    ctypedef struct PyTypeObject_alloc "PyTypeObject":
        PyObject* (*tp_alloc)(PyTypeObject*, Py_ssize_t)

cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030C0000
    #define CCLB_UNICODE_READY(op) PyUnicode_READY(op)
    #else
    #define CCLB_UNICODE_READY(op) 0
    #endif
    #define CCLB_KIND1 PyUnicode_1BYTE_KIND
    #define CCLB_KIND2 PyUnicode_2BYTE_KIND
    #define CCLB_KIND4 PyUnicode_4BYTE_KIND
    static PyObject* cclb_u128(const unsigned char* big_endian16) {
    #if PY_VERSION_HEX >= 0x030D0000
        return PyLong_FromUnsignedNativeBytes(big_endian16, 16,
            Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
    #else
        return _PyLong_FromByteArray(big_endian16, 16, 0, 0);
    #endif
    }
    static int cclb_little_endian(void) { const uint16_t one = 1; return *(const uint8_t*)&one == 1; }
    """
    int CCLB_UNICODE_READY(object) except -1
    int CCLB_KIND1
    int CCLB_KIND2
    int CCLB_KIND4
    object cclb_u128(const unsigned char* big_endian16)
    int cclb_little_endian()

# The archived layouts this file is written for. _check_layouts() compares them
# with cclb_wire.schema at import; a mismatch makes the import fail.
cdef enum:
    MAX_ARCHIVE = 0x7FFFFFFF
    PTR = 8
    HEADER_SIZE = 16
    CLAIM_SIZE = 16
    PRINCIPAL_SIZE = 24
    CANDIDATE_SIZE = 40
    CANDIDATE_ALIGN = 8
    CAND_ID = 0
    CAND_NAME = 8
    CAND_KIND = 16
    CAND_OBSERVED = 24
    CAND_TOKENS = 32
    REQ_ID = 0
    REQ_METHOD = 8
    REQ_PATH = 16
    REQ_QUERY = 24
    REQ_HEADERS = 36
    REQ_BODY = 44
    REQ_PRINCIPAL = 52
    REQ_TAIL = 76
    FILTER_REQUEST_SIZE = 84
    SHAPE_REQUEST_SIZE = 92
    UPSTREAM_BASE_URL = 4
    REASON_SIZE = 24
    FILTER_RESPONSE_SIZE = 8
    SHAPE_RESPONSE_SIZE = 32
    SRESP_URL = 0
    SRESP_METHOD = 8
    SRESP_HEADERS = 16
    SRESP_BODY = 24
    EVENT_SIZE = 80
    EVENT_ALIGN = 8

_COMPILED_LAYOUTS = {
    "Header": (HEADER_SIZE, 4, (0, 8)),
    "Claim": (CLAIM_SIZE, 4, (0, 8)),
    "Principal": (PRINCIPAL_SIZE, 4, (0, 8, 16)),
    "UpstreamCandidate": (CANDIDATE_SIZE, CANDIDATE_ALIGN, (CAND_ID, CAND_NAME, CAND_KIND, CAND_OBSERVED, CAND_TOKENS)),
    "FilterRequest": (FILTER_REQUEST_SIZE, 4, (REQ_ID, REQ_METHOD, REQ_PATH, REQ_QUERY, REQ_HEADERS, REQ_BODY, REQ_PRINCIPAL, REQ_TAIL)),
    "ShapeRequest": (SHAPE_REQUEST_SIZE, 4, (REQ_ID, REQ_METHOD, REQ_PATH, REQ_QUERY, REQ_HEADERS, REQ_BODY, REQ_PRINCIPAL, REQ_TAIL)),
    "PerCandidateReason": (REASON_SIZE, 4, (0, 8, 16)),
    "FilterResponse": (FILTER_RESPONSE_SIZE, 4, (0,)),
    "ShapeResponse": (SHAPE_RESPONSE_SIZE, 4, (SRESP_URL, SRESP_METHOD, SRESP_HEADERS, SRESP_BODY)),
    "Upstream": (16, 4, {"AnthropicDirect": (UPSTREAM_BASE_URL,)}),
    "ObserveEvent": (EVENT_SIZE, EVENT_ALIGN, {
        "RequestStarted": (4, 12),
        "AuthnComplete": (4, 12),
        "UpstreamChosen": (4,),
        "Chunk": (8, 16, 24),
        "RequestFinished": (2, 8, 24, 40, 56, 72),
        "Error": (4, 12, 20),
    }),
}


def compiled_layouts():
    """The layouts compiled into this extension: {type: (size, align, offsets)}."""
    return _COMPILED_LAYOUTS


def _check_layouts():
    for name, (size, align, offsets) in _COMPILED_LAYOUTS.items():
        t = schema.ALL_TYPES[name]
        if (t.size, t.align) != (size, align):
            raise ImportError(f"cclb_wire._codec was built for another {name} layout")
        if isinstance(t, schema.StructType):
            actual = tuple(f.offset for f in t.fields)
        else:
            actual = {v.name: tuple(f.offset for f in v.fields) for v in t.variants}
        if actual != offsets:
            raise ImportError(f"cclb_wire._codec was built for other {name} field offsets")
    if not cclb_little_endian():
        raise ImportError("cclb_wire._codec needs a little-endian machine")


_check_layouts()

# --- classes and constants ------------------------------------------------------

cdef object HEADER_CLS = wire.Header
cdef object CLAIM_CLS = wire.Claim
cdef object PRINCIPAL_CLS = wire.Principal
cdef object CANDIDATE_CLS = wire.UpstreamCandidate
cdef object REASON_CLS = wire.PerCandidateReason
cdef object FILTER_REQUEST_CLS = wire.FilterRequest
cdef object SHAPE_REQUEST_CLS = wire.ShapeRequest
cdef object FILTER_RESPONSE_CLS = wire.FilterResponse
cdef object SHAPE_RESPONSE_CLS = wire.ShapeResponse
cdef object ANTHROPIC_DIRECT_CLS = wire.AnthropicDirect
cdef object REQUEST_STARTED_CLS = wire.RequestStarted
cdef object AUTHN_COMPLETE_CLS = wire.AuthnComplete
cdef object UPSTREAM_CHOSEN_CLS = wire.UpstreamChosen
cdef object CHUNK_CLS = wire.Chunk
cdef object REQUEST_FINISHED_CLS = wire.RequestFinished
cdef object EVENT_ERROR_CLS = wire.Error
cdef tuple EVENT_CLASSES = (
    REQUEST_STARTED_CLS, AUTHN_COMPLETE_CLS, UPSTREAM_CHOSEN_CLS, CHUNK_CLS, REQUEST_FINISHED_CLS, EVENT_ERROR_CLS
)

cdef object RequestContext = host_types.RequestContext
cdef object Principal = host_types.Principal
cdef object UpstreamCandidate = host_types.UpstreamCandidate
cdef object AnthropicDirect = host_types.AnthropicDirect
cdef object FilterOutput = host_types.FilterOutput
cdef object ShapedRequest = host_types.ShapedRequest
cdef object ShapeOriginPolicy = host_types.ShapeOriginPolicy
cdef object SELECTED_UPSTREAM_ORIGIN = host_types.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN
cdef object WireBounds = host_types.WireBounds
cdef object DEFAULT_BOUNDS = _fallback.DEFAULT_BOUNDS
cdef object HOST_EVENTS = (
    host_types.RequestStarted,
    host_types.AuthnComplete,
    host_types.UpstreamChosen,
    host_types.Chunk,
    host_types.RequestFinished,
    host_types.ErrorEvent,
)
cdef object RATE_LIMITED = host_types.PerCandidateReason.RateLimited
cdef object INSUFFICIENT_QUOTA = host_types.PerCandidateReason.InsufficientQuota
cdef object UNHEALTHY = host_types.PerCandidateReason.Unhealthy
cdef object REJECTED_BY_PLUGIN = host_types.PerCandidateReason.RejectedByPlugin
cdef object _kind_text = host_rules.kind_text
cdef object _shape_url = host_rules.shape_url
cdef object _log = _fallback._log


class _Refused(Exception):
    """Internal: the fast path does not take this input; the fallback will say why."""


cdef inline object _refuse():
    raise _Refused()


# ==============================================================================
# Encoding
# ==============================================================================

cdef struct Out:
    char* base          # NULL during the size pass
    Py_ssize_t cur
    Py_ssize_t limit    # MAX_ARCHIVE when measuring; the measured size when writing


cdef struct Span:
    Py_ssize_t pos
    Py_ssize_t len


cdef inline int _grow(Out* o, Py_ssize_t n) except -1:
    # n and cur are both <= MAX_ARCHIVE here, so the sum cannot overflow. The write pass
    # never passes the measured size, even if a source changed since it was measured.
    if n > o.limit or o.cur + n > o.limit:
        _refuse()
    o.cur += n
    return 0


cdef inline int _pad(Out* o, Py_ssize_t align) except -1:
    cdef Py_ssize_t aligned = (o.cur + align - 1) & ~(align - 1)
    if aligned > o.limit:
        _refuse()
    if o.base != NULL and aligned > o.cur:
        memset(o.base + o.cur, 0, aligned - o.cur)
    o.cur = aligned
    return 0


cdef inline void _put_ptr(char* base, Py_ssize_t at, Py_ssize_t target, Py_ssize_t length) noexcept:
    cdef int32_t rel = <int32_t>(target - at)
    cdef uint32_t n = <uint32_t>length
    memcpy(base + at, &rel, 4)
    memcpy(base + at + 4, &n, 4)


cdef inline void _put_span(char* base, Py_ssize_t at, Span* sp) noexcept:
    _put_ptr(base, at, sp.pos, sp.len)


cdef inline uint32_t _code_point(int kind, const void* data, Py_ssize_t i) noexcept:
    if kind == CCLB_KIND1:
        return (<const uint8_t*>data)[i]
    if kind == CCLB_KIND2:
        return (<const uint16_t*>data)[i]
    return (<const uint32_t*>data)[i]


cdef Py_ssize_t _utf8_length(int kind, const void* data, Py_ssize_t n) except -2:
    """UTF-8 length of a non-ASCII str's code points; -1 for a lone surrogate."""
    cdef Py_ssize_t i, total = 0
    cdef uint32_t c
    for i in range(n):
        c = _code_point(kind, data, i)
        if c < 0x80:
            total += 1
        elif c < 0x800:
            total += 2
        elif c < 0x10000:
            if 0xD800 <= c <= 0xDFFF:
                return -1
            total += 3
        else:
            total += 4
    return total


cdef void _utf8_write(int kind, const void* data, Py_ssize_t n, char* out) noexcept:
    cdef Py_ssize_t i, j = 0
    cdef uint32_t c
    for i in range(n):
        c = _code_point(kind, data, i)
        if c < 0x80:
            out[j] = <char>c
            j += 1
        elif c < 0x800:
            out[j] = <char>(0xC0 | (c >> 6))
            out[j + 1] = <char>(0x80 | (c & 0x3F))
            j += 2
        elif c < 0x10000:
            out[j] = <char>(0xE0 | (c >> 12))
            out[j + 1] = <char>(0x80 | ((c >> 6) & 0x3F))
            out[j + 2] = <char>(0x80 | (c & 0x3F))
            j += 3
        else:
            out[j] = <char>(0xF0 | (c >> 18))
            out[j + 1] = <char>(0x80 | ((c >> 12) & 0x3F))
            out[j + 2] = <char>(0x80 | ((c >> 6) & 0x3F))
            out[j + 3] = <char>(0x80 | (c & 0x3F))
            j += 4


cdef int _put_str(Out* o, object s, Span* sp) except -1:
    """The UTF-8 bytes of a str at the cursor (rkyv: no alignment, even when empty)."""
    cdef Py_ssize_t n, nbytes
    cdef int kind
    cdef const void* data
    if not PyUnicode_Check(s):
        _refuse()
    CCLB_UNICODE_READY(s)
    n = PyUnicode_GET_LENGTH(s)
    data = PyUnicode_DATA(s)
    sp.pos = o.cur
    if PyUnicode_IS_ASCII(s):
        nbytes = n
        _grow(o, nbytes)
        if o.base != NULL:
            memcpy(o.base + sp.pos, data, nbytes)
    else:
        kind = PyUnicode_KIND(s)
        nbytes = _utf8_length(kind, data, n)
        if nbytes < 0:
            _refuse()
        _grow(o, nbytes)
        if o.base != NULL:
            _utf8_write(kind, data, n, o.base + sp.pos)
    sp.len = nbytes
    return 0


cdef int _put_raw(Out* o, const char* data, Py_ssize_t n, Span* sp) except -1:
    sp.pos = o.cur
    sp.len = n
    _grow(o, n)
    if o.base != NULL and n:
        memcpy(o.base + sp.pos, data, n)
    return 0


cdef int _put_bytes(Out* o, object b, Span* sp) except -1:
    """bytes, bytearray or a C-contiguous memoryview, copied at the cursor."""
    cdef Py_buffer view
    if PyBytes_Check(b):
        return _put_raw(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), sp)
    if PyByteArray_Check(b):
        return _put_raw(o, PyByteArray_AS_STRING(b), PyByteArray_GET_SIZE(b), sp)
    if PyMemoryView_Check(b):
        if not b.c_contiguous:
            _refuse()
        PyObject_GetBuffer(b, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            _put_raw(o, <const char*>view.buf, view.len, sp)
        finally:
            PyBuffer_Release(&view)
        return 0
    _refuse()


cdef inline uint64_t _u64(object v, uint64_t limit) except? 0xFFFFFFFFFFFFFFFF:
    cdef unsigned long long x
    if not PyLong_Check(v) or PyBool_Check(v):
        _refuse()
    try:
        x = PyLong_AsUnsignedLongLong(v)
    except OverflowError:
        _refuse()
    if x > limit:
        _refuse()
    return x


cdef inline tuple _fields(object v, object cls, Py_ssize_t count):
    """A struct value: its class or a plain tuple, with the right number of fields."""
    if (type(v) is not cls and type(v) is not tuple) or PyTuple_GET_SIZE(v) != count:
        _refuse()
    return <tuple>v


cdef inline object _item(tuple t, Py_ssize_t i):
    return <object>PyTuple_GET_ITEM(t, i)


cdef inline object _sequence(object v):
    """A Box<[T]> value: a tuple or a list as it is (no Python code runs between the
    two passes, so it cannot change; the write pass re-checks the length anyway)."""
    if type(v) is tuple or type(v) is list:
        return v
    if isinstance(v, (tuple, list)):
        return tuple(v)
    _refuse()


cdef inline Py_ssize_t _seq_len(object seq) noexcept:
    return PySequence_Fast_GET_SIZE(seq)


cdef inline object _seq_item(object seq, Py_ssize_t i):
    return <object>PySequence_Fast_GET_ITEM(seq, i)


# -- slices of the string-pair structs: Header and Claim (name/key: str, value: bytes)

cdef int _put_pair_slice(Out* o, object items, object cls, Span* sp) except -1:
    cdef object seq = _sequence(items)
    cdef Py_ssize_t i, n = _seq_len(seq), start, at
    cdef tuple pair
    cdef Span a, b
    cdef Out deps
    deps = o[0]
    for i in range(n):
        pair = _fields(_seq_item(seq, i), cls, 2)
        _put_str(o, _item(pair, 0), &a)
        _put_bytes(o, _item(pair, 1), &b)
    _pad(o, 4)
    start = o.cur
    _grow(o, n * 16)
    if o.base != NULL:
        memset(o.base + start, 0, n * 16)
        deps.base = NULL  # re-walk the dependencies to recover their positions
        for i in range(n):
            if i >= _seq_len(seq):
                _refuse()
            pair = _fields(_seq_item(seq, i), cls, 2)
            _put_str(&deps, _item(pair, 0), &a)
            _put_bytes(&deps, _item(pair, 1), &b)
            at = start + i * 16
            _put_span(o.base, at, &a)
            _put_span(o.base, at + 8, &b)
    sp.pos = start
    sp.len = n
    return 0


cdef int _put_reason_slice(Out* o, object items, Span* sp) except -1:
    cdef object seq = _sequence(items)
    cdef Py_ssize_t i, n = _seq_len(seq), start, at
    cdef tuple r
    cdef Span a, b, c
    cdef Out deps = o[0]
    for i in range(n):
        r = _fields(_seq_item(seq, i), REASON_CLS, 3)
        _put_str(o, _item(r, 0), &a)
        _put_str(o, _item(r, 1), &b)
        _put_str(o, _item(r, 2), &c)
    _pad(o, 4)
    start = o.cur
    _grow(o, n * REASON_SIZE)
    if o.base != NULL:
        memset(o.base + start, 0, n * REASON_SIZE)
        deps.base = NULL
        for i in range(n):
            if i >= _seq_len(seq):
                _refuse()
            r = _fields(_seq_item(seq, i), REASON_CLS, 3)
            _put_str(&deps, _item(r, 0), &a)
            _put_str(&deps, _item(r, 1), &b)
            _put_str(&deps, _item(r, 2), &c)
            at = start + i * REASON_SIZE
            _put_span(o.base, at, &a)
            _put_span(o.base, at + 8, &b)
            _put_span(o.base, at + 16, &c)
    sp.pos = start
    sp.len = n
    return 0


# -- candidates: wire values (tuples) or host UpstreamCandidate objects

cdef inline tuple _candidate(object c, bint host):
    """A candidate's 5 wire fields: a wire value, or a host UpstreamCandidate's precomputed tuple."""
    if host:
        if type(c) is not UpstreamCandidate:
            _refuse()
        return _fields(c.wire_fields, tuple, 5)
    return _fields(c, CANDIDATE_CLS, 5)


cdef int _put_candidates(Out* o, object items, bint host, Span* sp) except -1:
    cdef object seq = _sequence(items)
    cdef Py_ssize_t i, n = _seq_len(seq), start, at
    cdef tuple c
    cdef uint64_t observed
    cdef uint32_t tokens
    cdef Span a, b, k
    cdef Out deps = o[0]
    for i in range(n):
        c = _candidate(_seq_item(seq, i), host)
        _put_str(o, _item(c, 0), &a)
        _put_str(o, _item(c, 1), &b)
        _put_str(o, _item(c, 2), &k)
        _u64(_item(c, 3), 0xFFFFFFFFFFFFFFFF)
        _u64(_item(c, 4), 0xFFFFFFFF)
    _pad(o, CANDIDATE_ALIGN)
    start = o.cur
    _grow(o, n * CANDIDATE_SIZE)
    if o.base != NULL:
        memset(o.base + start, 0, n * CANDIDATE_SIZE)
        deps.base = NULL
        for i in range(n):
            if i >= _seq_len(seq):
                _refuse()
            c = _candidate(_seq_item(seq, i), host)
            _put_str(&deps, _item(c, 0), &a)
            _put_str(&deps, _item(c, 1), &b)
            _put_str(&deps, _item(c, 2), &k)
            at = start + i * CANDIDATE_SIZE
            _put_span(o.base, at + CAND_ID, &a)
            _put_span(o.base, at + CAND_NAME, &b)
            _put_span(o.base, at + CAND_KIND, &k)
            observed = _u64(_item(c, 3), 0xFFFFFFFFFFFFFFFF)
            tokens = <uint32_t>_u64(_item(c, 4), 0xFFFFFFFF)
            memcpy(o.base + at + CAND_OBSERVED, &observed, 8)
            memcpy(o.base + at + CAND_TOKENS, &tokens, 4)
    sp.pos = start
    sp.len = n
    return 0


# -- downstream headers of a host request: filtered, lowercased, raw values

cdef const char* _STRIPPED[4]
cdef Py_ssize_t _STRIPPED_LEN[4]
_STRIPPED[0] = b"authorization"; _STRIPPED_LEN[0] = 13
_STRIPPED[1] = b"x-api-key"; _STRIPPED_LEN[1] = 9
_STRIPPED[2] = b"host"; _STRIPPED_LEN[2] = 4
_STRIPPED[3] = b"proxy-authorization"; _STRIPPED_LEN[3] = 19


cdef inline uint8_t _lower(uint8_t c) noexcept:
    return c + 32 if 65 <= c <= 90 else c


cdef bint _equal_ignoring_case(const char* a, Py_ssize_t n, const char* lower_b, Py_ssize_t m) noexcept:
    cdef Py_ssize_t i
    if n != m:
        return False
    for i in range(n):
        if _lower(<uint8_t>a[i]) != <uint8_t>lower_b[i]:
            return False
    return True


cdef int _ascii_name(object name, const char** data, Py_ssize_t* n) except -1:
    cdef Py_ssize_t i
    if PyUnicode_Check(name):
        CCLB_UNICODE_READY(name)
        if not PyUnicode_IS_ASCII(name):
            _refuse()
        data[0] = <const char*>PyUnicode_DATA(name)
        n[0] = PyUnicode_GET_LENGTH(name)
        return 0
    if PyBytes_Check(name):
        data[0] = PyBytes_AS_STRING(name)
        n[0] = PyBytes_GET_SIZE(name)
    elif PyByteArray_Check(name):
        data[0] = PyByteArray_AS_STRING(name)
        n[0] = PyByteArray_GET_SIZE(name)
    else:
        _refuse()  # memoryview names and other types: the fallback handles or refuses them
    for i in range(n[0]):
        if <uint8_t>data[0][i] >= 0x80:
            _refuse()
    return 0


cdef bint _stripped(const char* name, Py_ssize_t n, bint cookie_redaction) noexcept:
    cdef int i
    for i in range(4):
        if _equal_ignoring_case(name, n, _STRIPPED[i], _STRIPPED_LEN[i]):
            return True
    return cookie_redaction and _equal_ignoring_case(name, n, b"cookie", 6)


cdef int _put_header_value(Out* o, object value, Span* sp) except -1:
    """A header value: bytes-like raw, or a str as Latin-1 (CPython's 1-byte storage is Latin-1)."""
    if PyUnicode_Check(value):
        CCLB_UNICODE_READY(value)
        if PyUnicode_KIND(value) != CCLB_KIND1:
            _refuse()
        return _put_raw(o, <const char*>PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value), sp)
    return _put_bytes(o, value, sp)


cdef inline tuple _pair(object p):
    if (type(p) is not tuple and type(p) is not list) or len(p) != 2:
        _refuse()
    return p if type(p) is tuple else tuple(p)


cdef int _put_host_headers(Out* o, object headers, bint cookie_redaction, Span* sp) except -1:
    cdef object seq = _sequence(headers)
    cdef Py_ssize_t i, j, n = _seq_len(seq), kept = 0, start, at
    cdef const char* name
    cdef Py_ssize_t name_len
    cdef tuple pair
    cdef Span a, b
    cdef Out deps = o[0]
    for i in range(n):
        pair = _pair(_seq_item(seq, i))
        _ascii_name(_item(pair, 0), &name, &name_len)
        if _stripped(name, name_len, cookie_redaction):
            continue
        a.pos = o.cur
        _grow(o, name_len)
        if o.base != NULL:
            for j in range(name_len):
                o.base[a.pos + j] = <char>_lower(<uint8_t>name[j])
        _put_header_value(o, _item(pair, 1), &b)
        kept += 1
    _pad(o, 4)
    start = o.cur
    _grow(o, kept * HEADER_SIZE)
    if o.base != NULL:
        memset(o.base + start, 0, kept * HEADER_SIZE)
        deps.base = NULL
        at = start
        for i in range(n):
            if i >= _seq_len(seq):
                _refuse()
            pair = _pair(_seq_item(seq, i))
            _ascii_name(_item(pair, 0), &name, &name_len)
            if _stripped(name, name_len, cookie_redaction):
                continue
            a.pos = deps.cur
            a.len = name_len
            deps.cur += name_len
            _put_header_value(&deps, _item(pair, 1), &b)
            _put_span(o.base, at, &a)
            _put_span(o.base, at + 8, &b)
            at += HEADER_SIZE
    sp.pos = start
    sp.len = kept
    return 0


# -- the request head shared by FilterRequest and ShapeRequest

cdef struct Head:
    Span request_id, method, path, query, headers, body, principal_id, principal_kind, claims
    bint has_query


cdef int _put_head(Out* o, object request_id, object method, object path, object query, object headers,
                   bint host, bint cookie_redaction, object body, object principal_id, object principal_kind,
                   object claims, Head* h) except -1:
    _put_str(o, request_id, &h.request_id)
    _put_str(o, method, &h.method)
    _put_str(o, path, &h.path)
    h.has_query = query is not None
    if h.has_query:
        _put_str(o, query, &h.query)
    if host:
        _put_host_headers(o, headers, cookie_redaction, &h.headers)
    else:
        _put_pair_slice(o, headers, HEADER_CLS, &h.headers)
    _put_bytes(o, body, &h.body)
    _put_str(o, principal_id, &h.principal_id)
    _put_str(o, principal_kind, &h.principal_kind)
    _put_pair_slice(o, claims, CLAIM_CLS, &h.claims)
    return 0


cdef void _write_head(char* base, Py_ssize_t root, Head* h) noexcept:
    _put_span(base, root + REQ_ID, &h.request_id)
    _put_span(base, root + REQ_METHOD, &h.method)
    _put_span(base, root + REQ_PATH, &h.path)
    if h.has_query:
        base[root + REQ_QUERY] = 1
        _put_span(base, root + REQ_QUERY + 4, &h.query)
    _put_span(base, root + REQ_HEADERS, &h.headers)
    _put_span(base, root + REQ_BODY, &h.body)
    _put_span(base, root + REQ_PRINCIPAL, &h.principal_id)
    _put_span(base, root + REQ_PRINCIPAL + 8, &h.principal_kind)
    _put_span(base, root + REQ_PRINCIPAL + 16, &h.claims)


# -- one root: a size pass and a write pass over the same walk

cdef enum RootKind:
    ROOT_FILTER_REQUEST = 0
    ROOT_SHAPE_REQUEST = 1
    ROOT_OBSERVE_EVENT = 2
    ROOT_FILTER_RESPONSE = 3
    ROOT_SHAPE_RESPONSE = 4


cdef struct Job:
    # What to encode. src holds borrowed references: the calling function's
    # arguments and locals (or the value's own tuple items) keep them alive.
    int root
    bint host               # sources are host objects (headers filtered, candidates host-typed)
    bint cookie_redaction
    int event_tag
    PyObject* src[10]
    Py_ssize_t size


cdef inline object _src(Job* job, int i):
    return <object>job.src[i]


cdef object _upstream_base_url(object upstream, bint host):
    """The base_url of an Upstream (host AnthropicDirect or wire variant); refuses others."""
    if host:
        if type(upstream) is not AnthropicDirect:
            _refuse()
        return upstream.base_url
    if type(upstream) is not ANTHROPIC_DIRECT_CLS:
        _refuse()
    return _item(<tuple>upstream, 0)


cdef int _walk(Job* job, Out* o) except -1:
    """Write (or, with o.base NULL, measure) the whole archive into o; sets job.size."""
    cdef Head h
    cdef Span s1, s2, s3, s4
    cdef Py_ssize_t root
    cdef tuple v
    if job.root == ROOT_FILTER_REQUEST or job.root == ROOT_SHAPE_REQUEST:
        _put_head(o, _src(job, 0), _src(job, 1), _src(job, 2), _src(job, 3), _src(job, 4), job.host,
                  job.cookie_redaction, _src(job, 5), _src(job, 6), _src(job, 7), _src(job, 8), &h)
        if job.root == ROOT_FILTER_REQUEST:
            _put_candidates(o, _src(job, 9), job.host, &s1)
        elif job.src[9] != NULL:  # a base_url (already unpacked from the upstream)
            _put_str(o, _src(job, 9), &s1)
        _pad(o, 4)
        root = o.cur
        _grow(o, FILTER_REQUEST_SIZE if job.root == ROOT_FILTER_REQUEST else SHAPE_REQUEST_SIZE)
        if o.base != NULL:
            memset(o.base + root, 0, o.cur - root)
            _write_head(o.base, root, &h)
            if job.root == ROOT_FILTER_REQUEST:
                _put_span(o.base, root + REQ_TAIL, &s1)
            elif job.src[9] != NULL:
                o.base[root + REQ_TAIL + UPSTREAM_BASE_URL] = 1
                _put_span(o.base, root + REQ_TAIL + UPSTREAM_BASE_URL + 4, &s1)
    elif job.root == ROOT_FILTER_RESPONSE:
        v = _fields(_src(job, 0), FILTER_RESPONSE_CLS, 1)
        _put_reason_slice(o, _item(v, 0), &s1)
        _pad(o, 4)
        root = o.cur
        _grow(o, FILTER_RESPONSE_SIZE)
        if o.base != NULL:
            _put_span(o.base, root, &s1)
    elif job.root == ROOT_SHAPE_RESPONSE:
        v = _fields(_src(job, 0), SHAPE_RESPONSE_CLS, 4)
        _put_str(o, _item(v, 0), &s1)
        _put_str(o, _item(v, 1), &s2)
        _put_pair_slice(o, _item(v, 2), HEADER_CLS, &s3)
        _put_bytes(o, _item(v, 3), &s4)
        _pad(o, 4)
        root = o.cur
        _grow(o, SHAPE_RESPONSE_SIZE)
        if o.base != NULL:
            _put_span(o.base, root + SRESP_URL, &s1)
            _put_span(o.base, root + SRESP_METHOD, &s2)
            _put_span(o.base, root + SRESP_HEADERS, &s3)
            _put_span(o.base, root + SRESP_BODY, &s4)
    else:
        _walk_event(job, o)
    job.size = o.cur
    return 0


cdef inline void _put_u64(char* base, Py_ssize_t at, uint64_t x) noexcept:
    memcpy(base + at, &x, 8)


cdef inline void _put_option_u64(char* base, Py_ssize_t at, object value) noexcept:
    cdef uint64_t x
    if value is not None:
        x = PyLong_AsUnsignedLongLong(value)  # range-checked in the size pass
        base[at] = 1
        memcpy(base + at + 8, &x, 8)


cdef int _walk_event(Job* job, Out* o) except -1:
    cdef int tag = job.event_tag
    cdef Span s1, s2, s3
    cdef Py_ssize_t root
    cdef uint16_t status
    cdef int i
    # Dependencies (strings) in field order; integers are range-checked here.
    if tag == 0:
        _put_str(o, _src(job, 0), &s1)
        if _src(job, 1) is not None:
            _put_str(o, _src(job, 1), &s2)
    elif tag == 1:
        _put_str(o, _src(job, 0), &s1)
        _put_str(o, _src(job, 1), &s2)
    elif tag == 2:
        if _src(job, 0) is not None:
            _put_str(o, _src(job, 0), &s1)
    elif tag == 3:
        for i in range(3):
            _u64(_src(job, i), 0xFFFFFFFFFFFFFFFF)
    elif tag == 4:
        _u64(_src(job, 0), 0xFFFF)
        for i in range(1, 5):
            if _src(job, i) is not None:
                _u64(_src(job, i), 0xFFFFFFFFFFFFFFFF)
        _u64(_src(job, 5), 0xFFFFFFFFFFFFFFFF)
    else:
        _put_str(o, _src(job, 0), &s1)
        _put_str(o, _src(job, 1), &s2)
        _put_str(o, _src(job, 2), &s3)
    _pad(o, EVENT_ALIGN)
    root = o.cur
    _grow(o, EVENT_SIZE)
    if o.base == NULL:
        return 0
    memset(o.base + root, 0, EVENT_SIZE)
    o.base[root] = <char>tag
    if tag == 0:
        _put_span(o.base, root + 4, &s1)
        if _src(job, 1) is not None:
            o.base[root + 12] = 1
            _put_span(o.base, root + 16, &s2)
    elif tag == 1:
        _put_span(o.base, root + 4, &s1)
        _put_span(o.base, root + 12, &s2)
    elif tag == 2:
        if _src(job, 0) is not None:
            o.base[root + 4 + UPSTREAM_BASE_URL] = 1
            _put_span(o.base, root + 4 + UPSTREAM_BASE_URL + 4, &s1)
    elif tag == 3:
        for i in range(3):
            _put_u64(o.base, root + 8 + 8 * i, PyLong_AsUnsignedLongLong(_src(job, i)))
    elif tag == 4:
        status = <uint16_t>PyLong_AsUnsignedLongLong(_src(job, 0))
        memcpy(o.base + root + 2, &status, 2)
        for i in range(4):
            _put_option_u64(o.base, root + 8 + 16 * i, _src(job, 1 + i))
        _put_u64(o.base, root + 72, PyLong_AsUnsignedLongLong(_src(job, 5)))
    else:
        _put_span(o.base, root + 4, &s1)
        _put_span(o.base, root + 12, &s2)
        _put_span(o.base, root + 20, &s3)
    return 0


cdef int _measure(Job* job) except -1:
    cdef Out o
    o.base = NULL
    o.cur = 0
    o.limit = MAX_ARCHIVE
    return _walk(job, &o)


cdef int _write(Job* job, char* base) except -1:
    """The write pass: exactly job.size bytes at base, or a refusal (nothing past them)."""
    cdef Py_ssize_t measured = job.size
    cdef Out o
    o.base = base
    o.cur = 0
    o.limit = measured
    _walk(job, &o)
    if job.size != measured:
        _refuse()
    return 0


cdef bytes _write_new(Job* job):
    """The measured job written into a new exact-size bytes object."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, job.size)
    _write(job, PyBytes_AS_STRING(out))
    return out


cdef int _write_into(Job* job, object buffer, object offset) except -1:
    """Write the measured job into the caller's buffer at offset; refuses what the fallback rejects."""
    cdef Py_buffer view
    cdef Py_ssize_t at
    if type(offset) is not int or offset < 0 or offset > 0x7FFFFFFFFFFFFFFF:
        _refuse()  # the fallback names what is wrong (a huge offset would overflow Py_ssize_t here)
    at = offset
    if at < 0 or at % 16:
        _refuse()
    try:
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    except (TypeError, BufferError, ValueError):
        _refuse()
    try:
        if at > view.len or job.size > view.len - at or not PyBuffer_IsContiguous(&view, b'C'):
            _refuse()
        _write(job, <char*>view.buf + at)
    finally:
        PyBuffer_Release(&view)
    return 0


cdef int _value_job(Job* job, object value) except -1:
    """Set up a job for a root wire value (its fields stay alive inside the value)."""
    cdef tuple t, p
    cdef object cls = type(value)
    cdef int i
    job.host = False
    job.cookie_redaction = False
    if cls is FILTER_REQUEST_CLS or cls is SHAPE_REQUEST_CLS:
        job.root = ROOT_FILTER_REQUEST if cls is FILTER_REQUEST_CLS else ROOT_SHAPE_REQUEST
        t = _fields(value, cls, 8)
        for i in range(6):
            job.src[i] = PyTuple_GET_ITEM(t, i)
        p = _fields(_item(t, 6), PRINCIPAL_CLS, 3)
        for i in range(3):
            job.src[6 + i] = PyTuple_GET_ITEM(p, i)
        if job.root == ROOT_FILTER_REQUEST:
            job.src[9] = PyTuple_GET_ITEM(t, 7)
        else:
            # The base_url is owned by the wire AnthropicDirect tuple inside the value.
            base_url = _upstream_base_url(_item(t, 7), False)
            job.src[9] = NULL if base_url is None else <PyObject*>base_url
    elif cls is FILTER_RESPONSE_CLS or cls is SHAPE_RESPONSE_CLS:
        job.root = ROOT_FILTER_RESPONSE if cls is FILTER_RESPONSE_CLS else ROOT_SHAPE_RESPONSE
        job.src[0] = <PyObject*>value
    else:
        job.root = ROOT_OBSERVE_EVENT
        for i in range(6):
            if cls is EVENT_CLASSES[i]:
                break
        else:
            _refuse()
        job.event_tag = i
        t = <tuple>value
        if i == 2:
            base_url = _upstream_base_url(_item(t, 0), False)
            job.src[0] = <PyObject*>base_url
        else:
            for i in range(PyTuple_GET_SIZE(t)):
                job.src[i] = PyTuple_GET_ITEM(t, i)
    return 0


def encode(value):
    """The archive rkyv 0.8's ``to_bytes`` produces for ``value`` (a root wire value)."""
    cdef Job job
    try:
        _value_job(&job, value)
        _measure(&job)
        return _write_new(&job)
    except _Refused:
        return _fallback.encode(value)


def encoded_size(value):
    """The exact length of ``encode(value)``, computed without writing anything."""
    cdef Job job
    try:
        _value_job(&job, value)
        _measure(&job)
        return job.size
    except _Refused:
        return _fallback.encoded_size(value)


def encode_into(value, buffer, offset=0):
    """Write ``encode(value)`` into ``buffer`` at ``offset`` (a multiple of 16); return its length."""
    cdef Job job
    try:
        _value_job(&job, value)
        _measure(&job)
        _write_into(&job, buffer, offset)
        return job.size
    except _Refused:
        return _fallback.encode_into(value, buffer, offset)


cdef int _request_job(Job* job, int root, object ctx, object principal, bint cookie_redaction) except -1:
    """Point the job at a host request's fields. The references are borrowed from the frozen
    RequestContext and Principal, which the caller's arguments keep alive for the call."""
    cdef tuple wire_principal
    cdef object value
    cdef int i
    if type(ctx) is not RequestContext or type(principal) is not Principal:
        _refuse()
    job.root = root
    job.host = True
    job.cookie_redaction = cookie_redaction
    value = ctx.request_id
    job.src[0] = <PyObject*>value
    value = ctx.method
    job.src[1] = <PyObject*>value
    value = ctx.path
    job.src[2] = <PyObject*>value
    value = ctx.query
    job.src[3] = <PyObject*>value
    value = ctx.headers
    job.src[4] = <PyObject*>value
    value = ctx.body
    job.src[5] = <PyObject*>value
    wire_principal = _fields(principal.wire_fields, tuple, 3)
    for i in range(3):
        job.src[6 + i] = PyTuple_GET_ITEM(wire_principal, i)
    return 0


cdef tuple _ROOT_NAMES = ("FilterRequest", "ShapeRequest", "ObserveEvent", "FilterResponse", "ShapeResponse")


cdef inline int _check_into(object into) except -1:
    """Refuse (the fallback names the argument) an ``into`` that is neither None nor callable."""
    if into is not None and not callable(into):
        _refuse()
    return 0


cdef inline int _check_flag(object flag) except -1:
    """Refuse a ``cookie_redaction`` that is not a bool (the fallback says so)."""
    if flag is not True and flag is not False:
        _refuse()
    return 0


cdef object _finish(Job* job, object into, str where):
    """Write a measured host job: a new bytes object, or where ``into(size)`` says."""
    if into is None:
        return _write_new(job)
    buffer, offset = _fallback.into_target(into, job.size, where)
    try:
        _write_into(job, buffer, offset)
    except _Refused:
        # The fallback names what is wrong with the target; anything else is a
        # request that changed during the callback (nothing was written past the size).
        _fallback.check_target(job.size, buffer, offset, _ROOT_NAMES[job.root], where + ".into")
        raise RuntimeError("the request changed while it was being encoded") from None
    return job.size


def encode_filter_request(ctx, principal, candidates, *, cookie_redaction=False, into=None):
    """The FilterRequest archive a filter plugin receives for this request.

    With ``into``, a callable taking the exact size and returning ``(buffer, offset)``,
    the archive is written there (offset a multiple of 16) and its size returned.
    """
    cdef Job job
    try:
        _check_flag(cookie_redaction)
        _check_into(into)
        _request_job(&job, ROOT_FILTER_REQUEST, ctx, principal, cookie_redaction)
        job.src[9] = <PyObject*>candidates
        _measure(&job)
    except _Refused:
        return _fallback.encode_filter_request(ctx, principal, candidates, cookie_redaction=cookie_redaction, into=into)
    return _finish(&job, into, "encode_filter_request")


def encode_shape_request(ctx, principal, upstream, *, cookie_redaction=False, into=None):
    """The ShapeRequest archive a shape plugin receives for this request and upstream
    (``into``: as for encode_filter_request)."""
    cdef Job job
    try:
        _check_flag(cookie_redaction)
        _check_into(into)
        _request_job(&job, ROOT_SHAPE_REQUEST, ctx, principal, cookie_redaction)
        base_url = _upstream_base_url(upstream, True)  # held by the frozen AnthropicDirect
        job.src[9] = NULL if base_url is None else <PyObject*>base_url
        _measure(&job)
    except _Refused:
        return _fallback.encode_shape_request(ctx, principal, upstream, cookie_redaction=cookie_redaction, into=into)
    return _finish(&job, into, "encode_shape_request")


def encode_observe_event(event, *, into=None):
    """The ObserveEvent archive an observe plugin receives for this host event
    (``into``: as for encode_filter_request)."""
    cdef Job job
    cdef object cls = type(event)
    cdef object f0 = None, f1 = None, f2 = None, f3 = None, f4 = None, f5 = None
    job.root = ROOT_OBSERVE_EVENT
    job.host = True
    try:
        _check_into(into)
        if cls is HOST_EVENTS[0]:
            job.event_tag = 0
            f0, f1 = event.request_id, event.downstream_user_agent
        elif cls is HOST_EVENTS[1]:
            job.event_tag = 1
            f0, f1 = event.principal_id, _kind_text(event.principal_kind)
        elif cls is HOST_EVENTS[2]:
            job.event_tag = 2
            f0 = _upstream_base_url(event.upstream, True)
        elif cls is HOST_EVENTS[3]:
            job.event_tag = 3
            f0, f1, f2 = event.batch_index, event.event_count, event.total_bytes
        elif cls is HOST_EVENTS[4]:
            job.event_tag = 4
            f0, f1, f2 = event.status, event.input_tokens, event.output_tokens
            f3, f4, f5 = event.cache_creation_input_tokens, event.cache_read_input_tokens, event.duration_ms
        elif cls is HOST_EVENTS[5]:
            job.event_tag = 5
            f0, f1, f2 = event.code, event.message, event.source
        else:
            _refuse()
        job.src[0] = <PyObject*>f0
        job.src[1] = <PyObject*>f1
        job.src[2] = <PyObject*>f2
        job.src[3] = <PyObject*>f3
        job.src[4] = <PyObject*>f4
        job.src[5] = <PyObject*>f5
        _measure(&job)
    except (_Refused, TypeError, ValueError):
        # TypeError/ValueError: kind_text on a bad kind; the fallback raises the canonical error.
        return _fallback.encode_observe_event(event, into=into)
    return _finish(&job, into, "encode_observe_event")


# ==============================================================================
# Decoding
# ==============================================================================

cdef struct In:
    const uint8_t* p
    Py_ssize_t n
    Py_ssize_t lo        # rkyv's validation window [lo, hi)
    Py_ssize_t hi


cdef inline int32_t _rd_i32(In* s, Py_ssize_t at) noexcept:
    cdef int32_t v
    memcpy(&v, s.p + at, 4)
    return v


cdef inline uint32_t _rd_u32(In* s, Py_ssize_t at) noexcept:
    cdef uint32_t v
    memcpy(&v, s.p + at, 4)
    return v


cdef inline uint64_t _rd_u64(In* s, Py_ssize_t at) noexcept:
    cdef uint64_t v
    memcpy(&v, s.p + at, 8)
    return v


cdef inline uint16_t _rd_u16(In* s, Py_ssize_t at) noexcept:
    cdef uint16_t v
    memcpy(&v, s.p + at, 2)
    return v


cdef int _enter(In* s, Py_ssize_t field, Py_ssize_t elem_size, Py_ssize_t align, Span* sp) except -1:
    """Check the pointee of the relative pointer at ``field`` against the window and its
    alignment. ``field`` lies inside an object already checked, so reading it is in bounds;
    count * elem_size < 2**38, so no sum below can overflow."""
    cdef Py_ssize_t target = field + _rd_i32(s, field)
    cdef Py_ssize_t count = _rd_u32(s, field + 4)
    cdef Py_ssize_t size = count * elem_size
    if target < s.lo or target > s.hi or size > s.hi - target:
        _refuse()
    if align > 1 and target % align:
        _refuse()
    sp.pos = target
    sp.len = count
    return 0


cdef bint _utf8_valid(const uint8_t* p, Py_ssize_t n) noexcept:
    """Strict UTF-8, as Rust's str::from_utf8: no overlongs, surrogates or code points past U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    cdef uint64_t word
    while i < n:
        if i + 8 <= n:  # ASCII fast path, 8 bytes at a time
            memcpy(&word, p + i, 8)
            if (word & 0x8080808080808080ULL) == 0:
                i += 8
                continue
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2:
            return False
        if c < 0xE0:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if c < 0xF0:
            if i + 2 >= n:
                return False
            c1 = p[i + 1]
            if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return False
            i += 3
            continue
        if c < 0xF5:
            if i + 3 >= n:
                return False
            c1 = p[i + 1]
            if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
                return False
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
                return False
            i += 4
            continue
        return False
    return True


cdef int _check_str(In* s, Py_ssize_t field, Span* sp) except -1:
    """A Box<str> pointee: in the window, strict UTF-8; moves the window past it."""
    _enter(s, field, 1, 1, sp)
    if not _utf8_valid(s.p + sp.pos, sp.len):
        _refuse()
    s.lo = sp.pos + sp.len
    return 0


cdef int _check_bytes(In* s, Py_ssize_t field, Span* sp) except -1:
    _enter(s, field, 1, 1, sp)
    s.lo = sp.pos + sp.len
    return 0


cdef inline object _str_at(In* s, Span* sp):
    return PyUnicode_DecodeUTF8(<const char*>s.p + sp.pos, sp.len, NULL)


cdef inline object _bytes_at(In* s, Span* sp):
    return PyBytes_FromStringAndSize(<const char*>s.p + sp.pos, sp.len)


cdef inline object _read_str(In* s, Py_ssize_t field):
    cdef Span sp
    _check_str(s, field, &sp)
    return _str_at(s, &sp)


cdef inline object _read_bytes(In* s, Py_ssize_t field):
    cdef Span sp
    _check_bytes(s, field, &sp)
    return _bytes_at(s, &sp)


cdef object _read_option_str(In* s, Py_ssize_t at):
    cdef uint8_t tag = s.p[at]
    if tag == 0:
        return None
    if tag != 1:
        _refuse()
    return _read_str(s, at + 4)


cdef object _read_option_u64(In* s, Py_ssize_t at):
    cdef uint8_t tag = s.p[at]
    if tag == 0:
        return None
    if tag != 1:
        _refuse()
    return PyLong_FromUnsignedLongLong(_rd_u64(s, at + 8))


cdef object _new_value(object cls, Py_ssize_t n):
    """An empty instance of a tuple subclass with n item slots (as tuple.__new__ makes it)."""
    cdef PyObject* raw = (<PyTypeObject_alloc*><PyObject*>cls).tp_alloc(<PyTypeObject*>cls, n)
    if raw == NULL:
        raise MemoryError()
    cdef object value = <object>raw
    Py_DECREF(value)  # <object> took a second reference
    return value


cdef inline void _set(object value, Py_ssize_t i, object item) noexcept:
    Py_INCREF(item)
    PyTuple_SET_ITEM(value, i, item)


cdef object _read_pairs(In* s, Py_ssize_t field, object cls):
    """A Box<[Header]> or Box<[Claim]>: (str, bytes) elements of 16 bytes."""
    cdef Span sp
    cdef Py_ssize_t i, at, saved_hi = s.hi
    cdef tuple items
    _enter(s, field, 16, 4, &sp)
    s.hi = sp.pos
    items = PyTuple_New(sp.len)
    for i in range(sp.len):
        at = sp.pos + 16 * i
        value = _new_value(cls, 2)
        _set(value, 0, _read_str(s, at))
        _set(value, 1, _read_bytes(s, at + 8))
        _set(items, i, value)
    s.lo = sp.pos + 16 * sp.len
    s.hi = saved_hi
    return items


cdef object _read_principal(In* s, Py_ssize_t at):
    value = _new_value(PRINCIPAL_CLS, 3)
    _set(value, 0, _read_str(s, at))
    _set(value, 1, _read_str(s, at + 8))
    _set(value, 2, _read_pairs(s, at + 16, CLAIM_CLS))
    return value


cdef object _read_candidates(In* s, Py_ssize_t field):
    cdef Span sp
    cdef Py_ssize_t i, at, saved_hi = s.hi
    cdef tuple items
    _enter(s, field, CANDIDATE_SIZE, CANDIDATE_ALIGN, &sp)
    s.hi = sp.pos
    items = PyTuple_New(sp.len)
    for i in range(sp.len):
        at = sp.pos + CANDIDATE_SIZE * i
        value = _new_value(CANDIDATE_CLS, 5)
        _set(value, 0, _read_str(s, at + CAND_ID))
        _set(value, 1, _read_str(s, at + CAND_NAME))
        _set(value, 2, _read_str(s, at + CAND_KIND))
        _set(value, 3, PyLong_FromUnsignedLongLong(_rd_u64(s, at + CAND_OBSERVED)))
        _set(value, 4, PyLong_FromUnsignedLongLong(_rd_u32(s, at + CAND_TOKENS)))
        _set(items, i, value)
    s.lo = sp.pos + CANDIDATE_SIZE * sp.len
    s.hi = saved_hi
    return items


cdef object _read_reasons(In* s, Py_ssize_t field):
    cdef Span sp
    cdef Py_ssize_t i, at, saved_hi = s.hi
    cdef tuple items
    _enter(s, field, REASON_SIZE, 4, &sp)
    s.hi = sp.pos
    items = PyTuple_New(sp.len)
    for i in range(sp.len):
        at = sp.pos + REASON_SIZE * i
        value = _new_value(REASON_CLS, 3)
        _set(value, 0, _read_str(s, at))
        _set(value, 1, _read_str(s, at + 8))
        _set(value, 2, _read_str(s, at + 16))
        _set(items, i, value)
    s.lo = sp.pos + REASON_SIZE * sp.len
    s.hi = saved_hi
    return items


cdef object _read_upstream(In* s, Py_ssize_t at):
    if s.p[at] != 0:
        _refuse()
    value = _new_value(ANTHROPIC_DIRECT_CLS, 1)
    _set(value, 0, _read_option_str(s, at + UPSTREAM_BASE_URL))
    return value


cdef object _read_request(In* s, Py_ssize_t root, bint shape):
    value = _new_value(SHAPE_REQUEST_CLS if shape else FILTER_REQUEST_CLS, 8)
    _set(value, 0, _read_str(s, root + REQ_ID))
    _set(value, 1, _read_str(s, root + REQ_METHOD))
    _set(value, 2, _read_str(s, root + REQ_PATH))
    _set(value, 3, _read_option_str(s, root + REQ_QUERY))
    _set(value, 4, _read_pairs(s, root + REQ_HEADERS, HEADER_CLS))
    _set(value, 5, _read_bytes(s, root + REQ_BODY))
    _set(value, 6, _read_principal(s, root + REQ_PRINCIPAL))
    _set(value, 7, _read_upstream(s, root + REQ_TAIL) if shape else _read_candidates(s, root + REQ_TAIL))
    return value


cdef object _read_event(In* s, Py_ssize_t root):
    cdef uint8_t tag = s.p[root]
    cdef int i
    if tag > 5:
        _refuse()
    value = _new_value(EVENT_CLASSES[tag], (2, 2, 1, 3, 6, 3)[tag])
    if tag == 0:
        _set(value, 0, _read_str(s, root + 4))
        _set(value, 1, _read_option_str(s, root + 12))
    elif tag == 1:
        _set(value, 0, _read_str(s, root + 4))
        _set(value, 1, _read_str(s, root + 12))
    elif tag == 2:
        _set(value, 0, _read_upstream(s, root + 4))
    elif tag == 3:
        for i in range(3):
            _set(value, i, PyLong_FromUnsignedLongLong(_rd_u64(s, root + 8 + 8 * i)))
    elif tag == 4:
        _set(value, 0, PyLong_FromUnsignedLongLong(_rd_u16(s, root + 2)))
        for i in range(4):
            _set(value, 1 + i, _read_option_u64(s, root + 8 + 16 * i))
        _set(value, 5, PyLong_FromUnsignedLongLong(_rd_u64(s, root + 72)))
    else:
        _set(value, 0, _read_str(s, root + 4))
        _set(value, 1, _read_str(s, root + 12))
        _set(value, 2, _read_str(s, root + 20))
    return value


cdef Py_ssize_t _enter_root(In* s, Py_ssize_t size, Py_ssize_t align) except -1:
    """The root is the last ``size`` bytes; its contents must lie before it."""
    cdef Py_ssize_t root = s.n - size if s.n > size else 0
    if root + size > s.n or root % align:
        _refuse()
    s.lo = 0
    s.hi = root
    return root


cdef object _read_root(In* s, int root_kind):
    cdef Py_ssize_t root
    cdef tuple v
    if root_kind == ROOT_FILTER_REQUEST:
        return _read_request(s, _enter_root(s, FILTER_REQUEST_SIZE, 4), False)
    if root_kind == ROOT_SHAPE_REQUEST:
        return _read_request(s, _enter_root(s, SHAPE_REQUEST_SIZE, 4), True)
    if root_kind == ROOT_OBSERVE_EVENT:
        return _read_event(s, _enter_root(s, EVENT_SIZE, EVENT_ALIGN))
    if root_kind == ROOT_FILTER_RESPONSE:
        root = _enter_root(s, FILTER_RESPONSE_SIZE, 4)
        value = _new_value(FILTER_RESPONSE_CLS, 1)
        _set(value, 0, _read_reasons(s, root))
        return value
    root = _enter_root(s, SHAPE_RESPONSE_SIZE, 4)
    value = _new_value(SHAPE_RESPONSE_CLS, 4)
    _set(value, 0, _read_str(s, root + SRESP_URL))
    _set(value, 1, _read_str(s, root + SRESP_METHOD))
    _set(value, 2, _read_pairs(s, root + SRESP_HEADERS, HEADER_CLS))
    _set(value, 3, _read_bytes(s, root + SRESP_BODY))
    return value


cdef class _Input:
    """The bytes of a decode argument, held for the duration of the call."""
    cdef Py_buffer view
    cdef bint has_view
    cdef In s

    cdef int open(self, object data) except -1:
        if PyBytes_Check(data):
            self.s.p = <const uint8_t*>PyBytes_AS_STRING(data)
            self.s.n = PyBytes_GET_SIZE(data)
            return 0
        try:
            PyObject_GetBuffer(data, &self.view, PyBUF_SIMPLE)
        except (TypeError, BufferError, ValueError):
            _refuse()
        self.has_view = True
        if not PyBuffer_IsContiguous(&self.view, b'C'):
            _refuse()
        self.s.p = <const uint8_t*>self.view.buf
        self.s.n = self.view.len
        return 0

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)


cdef dict _DECODE_ROOTS = {}
for _root_kind, _root in enumerate((schema.FILTER_REQUEST, schema.SHAPE_REQUEST, schema.OBSERVE_EVENT,
                                    schema.FILTER_RESPONSE, schema.SHAPE_RESPONSE)):
    for _key in (_root, _root.name, wire.class_for(_root)):
        _DECODE_ROOTS[_key] = _root_kind


def decode(type_, data):
    """Decode an archive of ``type_`` (a root type name, value class or schema type)."""
    cdef _Input source
    try:
        root_kind = _DECODE_ROOTS[type_]
    except Exception:  # not a known root, or not hashable (a writable memoryview raises ValueError)
        return _fallback.decode(type_, data)
    try:
        source = _Input()
        source.open(data)
        return _read_root(&source.s, root_kind)
    except Exception:
        # Invalid (or unusual) input: the fallback raises the canonical error.
        return _fallback.decode(type_, data)


# -- host level: answers straight to host objects ----------------------------------

cdef object _UUID = _uuid.UUID
cdef object _SAFE_UNKNOWN = _uuid.SafeUUID.unknown


cdef object _blank(object cls):
    """An instance of a slots class with its slots unset, as object.__new__ makes it."""
    cdef PyObject* raw = (<PyTypeObject_alloc*><PyObject*>cls).tp_alloc(<PyTypeObject*>cls, 0)
    if raw == NULL:
        raise MemoryError()
    cdef object obj = <object>raw
    Py_DECREF(obj)  # <object> took a second reference
    return obj


# Slot names, interned once; setting slots directly is what a frozen dataclass's
# own __init__ does (object.__setattr__), minus the Python-level call.
cdef object _INT = "int"
cdef object _IS_SAFE = "is_safe"
cdef object _KEPT_UPSTREAM_IDS = "kept_upstream_ids"
cdef object _REASON = "reason"
cdef object _PER_CANDIDATE_REASONS = "per_candidate_reasons"
cdef object _URL = "url"
cdef object _METHOD = "method"
cdef object _HEADERS = "headers"
cdef object _BODY = "body"


cdef object _make_uuid(const uint8_t* big_endian16):
    cdef object u = _blank(_UUID)
    PyObject_GenericSetAttr(u, _INT, cclb_u128(big_endian16))
    PyObject_GenericSetAttr(u, _IS_SAFE, _SAFE_UNKNOWN)
    return u


cdef object _make_filter_output(object kept, object reason, object rejected):
    cdef object out = _blank(FilterOutput)
    PyObject_GenericSetAttr(out, _KEPT_UPSTREAM_IDS, kept)
    PyObject_GenericSetAttr(out, _REASON, reason)
    PyObject_GenericSetAttr(out, _PER_CANDIDATE_REASONS, rejected)
    return out


cdef object _make_shaped_request(object url, object method, object headers, object body):
    cdef object out = _blank(ShapedRequest)
    PyObject_GenericSetAttr(out, _URL, url)
    PyObject_GenericSetAttr(out, _METHOD, method)
    PyObject_GenericSetAttr(out, _HEADERS, headers)
    PyObject_GenericSetAttr(out, _BODY, body)
    return out


cdef int8_t _HEX_VALUE[256]
memset(_HEX_VALUE, -1, 256)
for _i in range(10):
    _HEX_VALUE[48 + _i] = _i
for _i in range(6):
    _HEX_VALUE[97 + _i] = 10 + _i
    _HEX_VALUE[65 + _i] = 10 + _i


cdef inline bint _hex_bytes(const uint8_t* p, int count, uint8_t* out) noexcept:
    """count bytes from 2*count hex digits."""
    cdef int i, hi, lo
    for i in range(count):
        hi = _HEX_VALUE[p[2 * i]]
        lo = _HEX_VALUE[p[2 * i + 1]]
        if hi < 0 or lo < 0:
            return False
        out[i] = <uint8_t>((hi << 4) | lo)
    return True


cdef bint _parse_hyphenated(const uint8_t* p, uint8_t* out) noexcept:
    """8-4-4-4-12 hex digits."""
    return (
        p[8] == 45 and p[13] == 45 and p[18] == 45 and p[23] == 45
        and _hex_bytes(p, 4, out)
        and _hex_bytes(p + 9, 2, out + 4)
        and _hex_bytes(p + 14, 2, out + 6)
        and _hex_bytes(p + 19, 2, out + 8)
        and _hex_bytes(p + 24, 6, out + 10)
    )


cdef bint _parse_uuid(const uint8_t* p, Py_ssize_t n, uint8_t* out) noexcept:
    """The forms Rust's Uuid::parse_str takes: simple, hyphenated, {braced}, urn:uuid:."""
    if n == 32:
        return _hex_bytes(p, 16, out)
    if n == 36:
        return _parse_hyphenated(p, out)
    if n == 38:
        return p[0] == 123 and p[37] == 125 and _parse_hyphenated(p + 1, out)
    if n == 45:
        return memcmp(p, b"urn:uuid:", 9) == 0 and _parse_hyphenated(p + 9, out)
    return False


cdef bint _label_contains(const uint8_t* p, Py_ssize_t n, const char* needle, Py_ssize_t m) noexcept:
    """Does the label, with '-' read as '_' and ASCII lowercased, contain the needle?"""
    cdef Py_ssize_t i, j
    cdef uint8_t c
    for i in range(n - m + 1):
        for j in range(m):
            c = _lower(p[i + j])
            if c == 45:
                c = 95
            if c != <uint8_t>needle[j]:
                break
        else:
            return True
    return False


cdef object _label_reason(const uint8_t* p, Py_ssize_t n):
    if _label_contains(p, n, b"rate_limit", 10):
        return RATE_LIMITED
    if _label_contains(p, n, b"quota", 5):
        return INSUFFICIENT_QUOTA
    if _label_contains(p, n, b"unhealthy", 9):
        return UNHEALTHY
    return REJECTED_BY_PLUGIN


cdef inline Py_ssize_t _truncated(const uint8_t* p, Py_ssize_t n, Py_ssize_t cap) noexcept:
    """Bytes of a reason kept under the cap, backing off to a UTF-8 character boundary."""
    cdef Py_ssize_t end
    if n <= cap:
        return n
    end = cap
    while end > 0 and (p[end] & 0xC0) == 0x80:
        end -= 1
    return end


cdef inline Py_ssize_t _bound(object value) except -2:
    """A WireBounds field as a Py_ssize_t; huge values saturate (they bound nothing here)."""
    if type(value) is not int or value < 0:
        _refuse()
    return value if value < 0x7FFFFFFFFFFFFFFF else 0x7FFFFFFFFFFFFFFF


cdef object _filter_output(In* s, Py_ssize_t cap):
    cdef Py_ssize_t root = _enter_root(s, FILTER_RESPONSE_SIZE, 4)
    cdef Span results, id_, decision, reason
    cdef Py_ssize_t i, at, kept = 0, text_len = 0, cut, k, r
    cdef uint8_t raw[16]
    cdef char* text = NULL
    cdef tuple kept_ids, rejected
    _enter(s, root, REASON_SIZE, 4, &results)
    s.hi = results.pos
    # Pass 1: rkyv's checks for every string, the ids, and the size of the reason text.
    for i in range(results.len):
        at = results.pos + REASON_SIZE * i
        _check_str(s, at, &id_)
        _check_str(s, at + 8, &decision)
        _check_str(s, at + 16, &reason)
        if decision.len == 6 and memcmp(s.p + decision.pos, b"accept", 6) == 0:
            kept += 1
        if reason.len:
            text_len += (2 if text_len else 0) + id_.len + 2 + _truncated(s.p + reason.pos, reason.len, cap)
    # rkyv's checks passed; now the conversion, which may still refuse an invalid id.
    kept_ids = PyTuple_New(kept)
    rejected = PyTuple_New(results.len - kept)
    text = <char*>PyMem_Malloc(text_len + 1)
    if text == NULL:
        raise MemoryError()
    try:
        k = 0
        r = 0
        text_len = 0
        for i in range(results.len):
            at = results.pos + REASON_SIZE * i
            id_.pos = at + _rd_i32(s, at)
            id_.len = _rd_u32(s, at + 4)
            decision.pos = at + 8 + _rd_i32(s, at + 8)
            decision.len = _rd_u32(s, at + 12)
            reason.pos = at + 16 + _rd_i32(s, at + 16)
            reason.len = _rd_u32(s, at + 20)
            if not _parse_uuid(s.p + id_.pos, id_.len, raw):
                _refuse()
            if decision.len == 6 and memcmp(s.p + decision.pos, b"accept", 6) == 0:
                _set(kept_ids, k, _make_uuid(raw))
                k += 1
            else:
                _set(rejected, r, _label_reason(s.p + decision.pos, decision.len))
                r += 1
            if reason.len:
                if text_len:
                    memcpy(text + text_len, b"; ", 2)
                    text_len += 2
                memcpy(text + text_len, s.p + id_.pos, id_.len)
                text_len += id_.len
                memcpy(text + text_len, b": ", 2)
                text_len += 2
                cut = _truncated(s.p + reason.pos, reason.len, cap)
                memcpy(text + text_len, s.p + reason.pos, cut)
                text_len += cut
        joined = PyUnicode_DecodeUTF8(text, text_len, NULL)
    finally:
        PyMem_Free(text)
    return _make_filter_output(kept_ids, joined, rejected)


def decode_filter_output(data, bounds=DEFAULT_BOUNDS):
    """Convert a filter plugin's FilterResponse archive the way the reference host does.

    Raises FilterError (kind ``"runtime"``) for an oversized output, an invalid
    archive (the DecodeError is the ``__cause__``) or an invalid upstream_id.
    """
    cdef _Input source
    try:
        if bounds is None:
            bounds = DEFAULT_BOUNDS
        elif not isinstance(bounds, WireBounds):
            _refuse()
        source = _Input()
        source.open(data)
        if source.s.n > _bound(bounds.output_body_bytes):
            _refuse()
        return _filter_output(&source.s, _bound(bounds.reason_bytes))
    except Exception:
        return _fallback.decode_filter_output(data, bounds)


# RFC 9110 token characters: what http::Method and http::HeaderName accept.
cdef bint _TCHAR[256]
memset(_TCHAR, 0, sizeof(_TCHAR))
_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
for _c in range(256):
    _TCHAR[_c] = chr(_c) in _TOKEN_CHARS


cdef inline bint _is_tchar(uint8_t c) noexcept:
    return _TCHAR[c]


cdef bint _is_token(const uint8_t* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    if n == 0:
        return False
    for i in range(n):
        if not _is_tchar(p[i]):
            return False
    return True


cdef bint _is_header_value(const uint8_t* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = p[i]
        if (c < 32 and c != 9) or c == 127:
            return False
    return True


cdef const char* _DROPPED[12]
cdef Py_ssize_t _DROPPED_LEN[12]
# A private tuple owns the bytes the C pointers point into, for the module's lifetime.
cdef tuple _DROPPED_NAMES = tuple(name.encode("ascii") for name in sorted(host_rules.DROPPED_SHAPE_HEADERS))
cdef bytes _dropped_name
for _i in range(len(_DROPPED_NAMES)):
    _dropped_name = _DROPPED_NAMES[_i]
    _DROPPED[_i] = _dropped_name
    _DROPPED_LEN[_i] = len(_dropped_name)
if len(_DROPPED_NAMES) != 12 or host_rules.DROPPED_SHAPE_HEADER_PREFIX != "x-anthropic-":
    raise ImportError("cclb_wire._codec was built for another shape header drop list")


cdef bint _dropped(const uint8_t* p, Py_ssize_t n) noexcept:
    cdef int i
    for i in range(12):
        if _equal_ignoring_case(<const char*>p, n, _DROPPED[i], _DROPPED_LEN[i]):
            return True
    return n >= 12 and _equal_ignoring_case(<const char*>p, 12, b"x-anthropic-", 12)


cdef object _lower_ascii_str(const uint8_t* p, Py_ssize_t n):
    """A lowercase str of an ASCII token, written once."""
    cdef object text = PyUnicode_New(n, 127)
    cdef char* out = <char*>PyUnicode_DATA(text)
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = <char>_lower(p[i])
    return text


cdef object _shaped_request(In* s, object upstream, object origin_policy, object bounds):
    cdef Py_ssize_t root = _enter_root(s, SHAPE_RESPONSE_SIZE, 4)
    cdef Span url, method, headers, name, value, body
    cdef Py_ssize_t i, at, kept = 0, saved_hi
    cdef Py_ssize_t max_headers = _bound(bounds.max_headers)
    cdef Py_ssize_t value_cap = _bound(bounds.max_header_value_bytes)
    cdef tuple out_headers
    # rkyv's checks, in declaration order.
    _check_str(s, root + SRESP_URL, &url)
    _check_str(s, root + SRESP_METHOD, &method)
    _enter(s, root + SRESP_HEADERS, HEADER_SIZE, 4, &headers)
    saved_hi = s.hi
    s.hi = headers.pos
    for i in range(headers.len):
        at = headers.pos + HEADER_SIZE * i
        _check_str(s, at, &name)
        _check_bytes(s, at + 8, &value)
        if not _dropped(s.p + name.pos, name.len):
            if value.len > value_cap or name.len > 65535:
                _refuse()
            if not _is_token(s.p + name.pos, name.len) or not _is_header_value(s.p + value.pos, value.len):
                _refuse()
            kept += 1
    s.lo = headers.pos + HEADER_SIZE * headers.len
    s.hi = saved_hi
    _check_bytes(s, root + SRESP_BODY, &body)
    # The host rules, in the reference's order (everything refused here is re-judged by the fallback).
    if headers.len > max_headers:
        _refuse()
    href = _shape_url(_str_at(s, &url), upstream.origin, origin_policy is SELECTED_UPSTREAM_ORIGIN)
    if not _is_token(s.p + method.pos, method.len):
        _refuse()
    out_headers = PyTuple_New(kept)
    kept = 0
    for i in range(headers.len):
        at = headers.pos + HEADER_SIZE * i
        name.pos = at + _rd_i32(s, at)
        name.len = _rd_u32(s, at + 4)
        value.pos = at + 8 + _rd_i32(s, at + 8)
        value.len = _rd_u32(s, at + 12)
        if _dropped(s.p + name.pos, name.len):
            _log.debug("dropping shape-plugin output header %r per hop-by-hop/signer contract", _str_at(s, &name))
            continue
        pair = PyTuple_New(2)
        _set(pair, 0, _lower_ascii_str(s.p + name.pos, name.len))
        _set(pair, 1, _bytes_at(s, &value))
        _set(out_headers, kept, pair)
        kept += 1
    return _make_shaped_request(
        href, PyUnicode_FromStringAndSize(<const char*>s.p + method.pos, method.len), out_headers, _bytes_at(s, &body)
    )


def decode_shaped_request(data, upstream, *, origin_policy=ShapeOriginPolicy.UNRESTRICTED, bounds=DEFAULT_BOUNDS):
    """Convert a shape plugin's ShapeResponse archive the way the reference host does.

    Raises DialectError (kind ``"unsupported_request"``): oversized output,
    invalid archive, too many headers, an unparsable URL, a URL off the selected
    upstream's origin (under ``SELECTED_UPSTREAM_ORIGIN``), an invalid method,
    an over-long or invalid header. Hop-by-hop and signer-owned headers are dropped.
    """
    cdef _Input source
    cdef object policy
    try:
        if type(upstream) is not AnthropicDirect:
            _refuse()
        # Members pass as they are; strings are matched the one way the fallback does
        # (an unknown one raises here and again, canonically, in the fallback).
        policy = origin_policy if type(origin_policy) is ShapeOriginPolicy else _coerce_enum(
            ShapeOriginPolicy, origin_policy, "decode_shaped_request.origin_policy"
        )
        if bounds is None:
            bounds = DEFAULT_BOUNDS
        elif not isinstance(bounds, WireBounds):
            _refuse()
        source = _Input()
        source.open(data)
        if source.s.n > _bound(bounds.output_body_bytes):
            _refuse()
        return _shaped_request(&source.s, upstream, policy, bounds)
    except Exception:
        return _fallback.decode_shaped_request(data, upstream, origin_policy=origin_policy, bounds=bounds)


def _check_fast_constructors():
    """The slot-filling constructors must build what the classes' own constructors build."""
    raw = bytes(range(16))
    fast = _make_uuid(raw)
    slow = _UUID(bytes=raw)
    if fast != slow or hash(fast) != hash(slow) or str(fast) != str(slow) or fast.is_safe != slow.is_safe:
        raise ImportError("cclb_wire._codec: fast UUID construction does not match uuid.UUID")
    if _make_filter_output((slow,), "r", ()) != FilterOutput((slow,), "r", ()):
        raise ImportError("cclb_wire._codec: fast FilterOutput construction does not match")
    if _make_shaped_request("u", "m", (), b"") != ShapedRequest("u", "m", (), b""):
        raise ImportError("cclb_wire._codec: fast ShapedRequest construction does not match")


_check_fast_constructors()


def _stack_address():
    """Where the calling thread's stack is now: the address of a local of this C frame.
    The plugin host uses it to make sure a guest call has the native stack it may use."""
    cdef char marker = 0
    return <size_t><void*>&marker
