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
from cpython.exc cimport PyErr_CheckSignals
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact, PyFloat_FromDouble
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


# The units, as msgpack splits its extension: each is compiled into this one module.
include "_encoder.pxi"
include "_decoder.pxi"
include "_generated.pxi"
include "_stats.pxi"  # before _hostcall.pxi: observe_many counts in C
include "_hostcall.pxi"
include "_ticker.pxi"
include "_mempool.pxi"


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
