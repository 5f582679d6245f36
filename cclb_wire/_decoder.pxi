# Included by _codec.pyx: decoding with rkyv's access rules, and host-level answers.


cdef enum:
    GENERATED_ROOT_KIND = 100  # root kinds from here on are _generated.pxi's roots


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
    if root_kind >= GENERATED_ROOT_KIND:
        return _gread_root(s, root_kind - GENERATED_ROOT_KIND)
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
        _DECODE_ROOTS[_key] = _root_kind# (_generated.pxi adds its roots.)


def decode(type_, data):
    """Decode an archive of ``type_`` (a root type name, value class or schema type)."""
    cdef _Input source
    try:
        root_kind = _DECODE_ROOTS[type_]
    except Exception:  # not a known root, or not hashable (a writable memoryview raises ValueError)
        return _fallback.decode(type_, data)
    cdef In raw
    try:
        if PyBytes_Check(data):  # no buffer to hold: read the bytes object in place
            raw.p = <const uint8_t*>PyBytes_AS_STRING(data)
            raw.n = PyBytes_GET_SIZE(data)
            return _read_root(&raw, root_kind)
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
