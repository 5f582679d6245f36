# Included by _codec.pyx: encoding (a size pass, then one write pass).


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
    ROOT_GENERATED = 5      # a root of _generated.pxi; Job.generated says which


cdef struct Job:
    # What to encode. src holds borrowed references: the calling function's
    # arguments and locals (or the value's own tuple items) keep them alive.
    int root
    bint host               # sources are host objects (headers filtered, candidates host-typed)
    bint cookie_redaction
    int event_tag
    int generated
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
    elif job.root == ROOT_GENERATED:
        _gwalk(job.generated, o, _src(job, 0))
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


#: value class -> index of its root in _generated.pxi (an enum root: each variant class);
#: filled by _generated.pxi
cdef dict _GENERATED_ENCODE = {}


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
            generated = _GENERATED_ENCODE.get(cls)
            if generated is None:
                _refuse()
            job.root = ROOT_GENERATED
            job.generated = generated
            job.src[0] = <PyObject*>value
            return 0
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
        raise _fallback.changed_error(_ROOT_NAMES[job.root]) from None
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


cdef tuple _host_event_job(Job* job, object event):
    """Point the job at a host event's fields; the returned tuple owns them (keep it alive
    until the job is written). Refuses an unknown event class."""
    cdef object cls = type(event)
    cdef tuple fields
    cdef int i
    job.root = ROOT_OBSERVE_EVENT
    job.host = True
    if cls is HOST_EVENTS[0]:
        job.event_tag = 0
        fields = (event.request_id, event.downstream_user_agent, None, None, None, None)
    elif cls is HOST_EVENTS[1]:
        job.event_tag = 1
        fields = (event.principal_id, _kind_text(event.principal_kind), None, None, None, None)
    elif cls is HOST_EVENTS[2]:
        job.event_tag = 2
        fields = (_upstream_base_url(event.upstream, True), None, None, None, None, None)
    elif cls is HOST_EVENTS[3]:
        job.event_tag = 3
        fields = (event.batch_index, event.event_count, event.total_bytes, None, None, None)
    elif cls is HOST_EVENTS[4]:
        job.event_tag = 4
        fields = (event.status, event.input_tokens, event.output_tokens,
                  event.cache_creation_input_tokens, event.cache_read_input_tokens, event.duration_ms)
    elif cls is HOST_EVENTS[5]:
        job.event_tag = 5
        fields = (event.code, event.message, event.source, None, None, None)
    else:
        _refuse()
    for i in range(6):
        job.src[i] = PyTuple_GET_ITEM(fields, i)
    return fields


def encode_observe_event(event, *, into=None):
    """The ObserveEvent archive an observe plugin receives for this host event
    (``into``: as for encode_filter_request)."""
    cdef Job job
    cdef tuple fields
    try:
        _check_into(into)
        fields = _host_event_job(&job, event)
        _measure(&job)
    except (_Refused, TypeError, ValueError):
        # TypeError/ValueError: kind_text on a bad kind; the fallback raises the canonical error.
        return _fallback.encode_observe_event(event, into=into)
    return _finish(&job, into, "encode_observe_event")
