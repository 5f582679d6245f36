"""The Cython backend against the pure-Python fallback: identical bytes, values and errors.

The extension hands anything it refuses to the fallback, so "identical" alone could
hide a fast path that refuses everything; ``fast_path_only`` makes any hand-over
fail the test for inputs the fast path must serve itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tracemalloc
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cclb_wire
from cclb_wire import _fallback, jsonvalue, schema, wire
from strategies import ROOT_VALUES
from vectorlib import read_jsonl

try:
    from cclb_wire import _codec
except ImportError:  # pragma: no cover - only in a pure build asked for on purpose
    if os.environ.get("CCLB_WIRE_PUREPYTHON", "") in ("", "0"):
        raise
    pytest.skip("pure-Python build requested (CCLB_WIRE_PUREPYTHON); no extension to compare", allow_module_level=True)

ROOTS = sorted(schema.ROOT_TYPES)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FALLBACK_ENTRY_POINTS = tuple(_fallback.__all__)  # every public function the extension may hand over


@contextlib.contextmanager
def fast_path_only():
    saved = {name: getattr(_fallback, name) for name in FALLBACK_ENTRY_POINTS}

    def refuse(*args, **kwargs):
        raise AssertionError("the Cython fast path handed this input to the fallback")

    try:
        for name in FALLBACK_ENTRY_POINTS:
            setattr(_fallback, name, refuse)
        yield
    finally:
        for name, function in saved.items():
            setattr(_fallback, name, function)


def outcome(function, *args, **kwargs):
    """('ok', result) or ('error', class, kind, message, offset, path, cause class)."""
    try:
        return ("ok", function(*args, **kwargs))
    except Exception as error:  # compared field by field between the backends
        cause = type(error.__cause__) if error.__cause__ is not None else None
        return (
            "error",
            type(error),
            getattr(error, "kind", None),
            str(error),
            getattr(error, "offset", None),
            getattr(error, "path", None),
            cause,
        )


def test_compiled_layouts_match_the_schema():
    for name, (size, align, offsets) in _codec.compiled_layouts().items():
        t = schema.ALL_TYPES[name]
        assert (t.size, t.align) == (size, align)
        if isinstance(t, schema.StructType):
            assert tuple(f.offset for f in t.fields) == offsets
        else:
            assert {v.name: tuple(f.offset for f in v.fields) for v in t.variants} == offsets


def test_backend_selection_picks_the_extension_by_default():
    if os.environ.get("CCLB_WIRE_PUREPYTHON", "") in ("", "0"):
        assert cclb_wire.BACKEND == "cython"
        assert cclb_wire.encode is _codec.encode
    else:
        assert cclb_wire.BACKEND == "python"


VALID = list(read_jsonl("valid.jsonl")) + list(read_jsonl("mutation_bases.jsonl"))
INVALID = list(read_jsonl("invalid.jsonl"))


@pytest.mark.parametrize("entry", VALID, ids=lambda e: e["name"])
def test_valid_vectors_on_the_fast_path(entry):
    value = jsonvalue.from_json_value(schema.ROOT_TYPES[entry["type"]], entry["value"])
    data = bytes.fromhex(entry["hex"])
    buffer = bytearray(len(data) + 16)
    with fast_path_only():
        assert _codec.encode(value) == data
        assert _codec.encoded_size(value) == len(data)
        assert _codec.encode_into(value, buffer, 16) == len(data)
        assert _codec.decode(entry["type"], data) == value
    assert bytes(buffer[16:]) == data


def test_corpus_outcomes_identical():
    mismatches = []
    for entry in INVALID:
        data = bytes.fromhex(entry["hex"])
        expected = outcome(_fallback.decode, entry["type"], data)
        if outcome(_codec.decode, entry["type"], data) != expected:
            mismatches.append(entry["name"])
        if entry["rkyv_ok"]:
            with fast_path_only():
                assert _codec.decode(entry["type"], data) == expected[1], entry["name"]
    assert mismatches == []


@pytest.mark.parametrize("root", ROOTS)
@SETTINGS
@given(data=st.data())
def test_random_values_identical_bytes_on_the_fast_path(root, data):
    value = data.draw(ROOT_VALUES[root])
    expected = _fallback.encode(value)
    with fast_path_only():
        assert _codec.encode(value) == expected
        assert _codec.encoded_size(value) == len(expected)
        assert _codec.decode(root, expected) == value


@pytest.mark.parametrize("root", ROOTS)
@SETTINGS
@given(data=st.data())
def test_mutated_bytes_identical_outcomes(root, data):
    archive = bytearray(_fallback.encode(data.draw(ROOT_VALUES[root])))
    for _ in range(data.draw(st.integers(1, 6))):
        archive[data.draw(st.integers(0, len(archive) - 1))] = data.draw(st.integers(0, 255))
    archive = bytes(archive[: data.draw(st.integers(0, len(archive)))]) if data.draw(st.booleans()) else bytes(archive)
    assert outcome(_codec.decode, root, archive) == outcome(_fallback.decode, root, archive)
    assert outcome(_codec.decode_filter_output, archive) == outcome(_fallback.decode_filter_output, archive)
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    policy = cclb_wire.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN
    assert outcome(_codec.decode_shaped_request, archive, upstream, origin_policy=policy) == outcome(
        _fallback.decode_shaped_request, archive, upstream, origin_policy=policy
    )


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), root=st.sampled_from(ROOTS))
def test_random_bytes_identical_outcomes(data, root):
    assert outcome(_codec.decode, root, data) == outcome(_fallback.decode, root, data)


@pytest.mark.parametrize(
    "value",
    [
        wire.Chunk(-1, 0, 0),
        wire.Chunk(True, 0, 0),
        wire.Chunk(0, 1 << 64, 0),
        wire.RequestFinished(65536, None, None, None, None, 0),
        wire.Error("a", "lone \ud800", "c"),
        wire.FilterResponse((wire.Header("a", b"b"),)),
        wire.FilterResponse([("a", "b", 3)]),
        wire.ShapeResponse("u", "m", (("h", "not bytes"),), b""),
        wire.ShapeResponse("u", "m", (), memoryview(bytes(8))[::2]),
        wire.Header("not", b"a root"),
        "not a value",
    ],
    ids=repr,
)
def test_encode_errors_identical(value):
    assert outcome(_codec.encode, value) == outcome(_fallback.encode, value)
    assert outcome(_codec.encoded_size, value) == outcome(_fallback.encoded_size, value)


@pytest.mark.parametrize("offset", [0, 8, 16, -16, 4096, "16"])
@pytest.mark.parametrize("buffer_kind", ["bytearray", "bytes", "small", "memoryview-strided"])
def test_encode_into_errors_identical(offset, buffer_kind):
    value = wire.FilterResponse((wire.PerCandidateReason("i", "accept", "r"),))
    make = {
        "bytearray": lambda: bytearray(256),
        "bytes": lambda: bytes(256),
        "small": lambda: bytearray(8),
        "memoryview-strided": lambda: memoryview(bytearray(512))[::2],
    }[buffer_kind]
    a, b = make(), make()
    assert outcome(_codec.encode_into, value, a, offset) == outcome(_fallback.encode_into, value, b, offset)
    assert bytes(a) == bytes(b)


# --- host level ------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(["Content-Type", "authorization", "X-Api-Key", "host", "Cookie", "x-a", "User-Agent", "ÄB"])
HEADER_VALUES = st.one_of(st.binary(max_size=30), st.text(max_size=10), st.text(alphabet="é\u00ff", max_size=3))
HEADERS = st.lists(
    st.tuples(st.one_of(HEADER_NAMES, HEADER_NAMES.map(lambda n: n.encode("utf-8"))), HEADER_VALUES), max_size=8
)
# Claims a Principal accepts (ints in i64/u64, no lone surrogates): the rest is refused when
# the Principal is built (tests/test_host_request.py), before any backend sees it.
SENDABLE_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
CLAIMS = st.dictionaries(
    SENDABLE_TEXT, st.one_of(st.integers(-(2**63), 2**64 - 1), SENDABLE_TEXT, st.floats(), st.none()), max_size=4
)
CANDIDATES = st.lists(
    st.builds(
        cclb_wire.UpstreamCandidate,
        st.uuids(),
        st.text(max_size=10),
        st.sampled_from(["anthropic_api_key", cclb_wire.UpstreamKind.ANTHROPIC_OAUTH]),
        st.integers(0, 2**64 - 1),
        st.one_of(st.none(), st.builds(cclb_wire.CacheScore, st.integers(0, 2**32 - 1))),
    ),
    max_size=5,
)
def _with_raw_headers(ctx, headers):
    # RequestContext refuses non-ASCII names and non-Latin-1 str values when it is built;
    # headers set behind its back must still be refused by both encoders, identically.
    object.__setattr__(ctx, "headers", tuple(headers))
    return ctx


CONTEXTS = st.builds(
    _with_raw_headers,
    st.builds(
        cclb_wire.RequestContext,
        st.text(max_size=12),
        st.sampled_from(["POST", "GET"]),
        st.text(max_size=20),
        st.one_of(st.none(), st.text(max_size=10)),
        st.just(()),
        st.binary(max_size=300),
    ),
    HEADERS,
)
PRINCIPALS = st.builds(cclb_wire.Principal, st.text(max_size=8), st.sampled_from(["api_key", cclb_wire.PrincipalKind.OAUTH_SUBJECT, None]), CLAIMS)


@SETTINGS
@given(ctx=CONTEXTS, principal=PRINCIPALS, candidates=CANDIDATES, redact=st.booleans())
def test_host_requests_identical(ctx, principal, candidates, redact):
    args = (ctx, principal, candidates)
    assert outcome(_codec.encode_filter_request, *args, cookie_redaction=redact) == outcome(
        _fallback.encode_filter_request, *args, cookie_redaction=redact
    )
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    assert outcome(_codec.encode_shape_request, ctx, principal, upstream, cookie_redaction=redact) == outcome(
        _fallback.encode_shape_request, ctx, principal, upstream, cookie_redaction=redact
    )


def test_realistic_host_request_on_the_fast_path():
    ctx = cclb_wire.RequestContext(
        "req-1", "POST", "/v1/messages", "beta=true",
        [(b"Content-Type", b"application/json"), ("Authorization", "Bearer x"), ("x-b", "caf\u00e9")], b"{}"
    )
    principal = cclb_wire.Principal("t", cclb_wire.PrincipalKind.API_KEY, {"scope": "inference", "n": 1.5})
    candidates = [cclb_wire.UpstreamCandidate(uuid.UUID(int=7), "u", "anthropic_api_key", 5, cclb_wire.CacheScore(9))]
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    expected_filter = _fallback.encode_filter_request(ctx, principal, candidates, cookie_redaction=True)
    expected_shape = _fallback.encode_shape_request(ctx, principal, upstream)
    events = [
        cclb_wire.RequestStarted("r", "ua"),
        cclb_wire.AuthnComplete("p", cclb_wire.PrincipalKind.API_KEY),
        cclb_wire.UpstreamChosen(upstream),
        cclb_wire.Chunk(1, 2, 3),
        cclb_wire.RequestFinished(200, 1, None, 3, None, 9),
        cclb_wire.ErrorEvent("c", "m", "s"),
    ]
    expected_events = [_fallback.encode_observe_event(e) for e in events]
    with fast_path_only():
        assert _codec.encode_filter_request(ctx, principal, candidates, cookie_redaction=True) == expected_filter
        assert _codec.encode_shape_request(ctx, principal, upstream) == expected_shape
        assert [_codec.encode_observe_event(e) for e in events] == expected_events


DECISIONS = st.sampled_from(["accept", "Accept", "rate-limit", "over_QUOTA", "unhealthy", "no", "", "ratelimit"])
IDS = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex.upper()), st.uuids().map(lambda u: "{%s}" % u), st.text(max_size=5))
REASONS = st.text(max_size=300)


@SETTINGS
@given(results=st.lists(st.tuples(IDS, DECISIONS, REASONS), max_size=8), cap=st.integers(0, 300))
def test_filter_outputs_identical(results, cap):
    data = _fallback.encode(wire.FilterResponse(tuple(wire.PerCandidateReason(*r) for r in results)))
    bounds = cclb_wire.WireBounds(reason_bytes=cap)
    expected = outcome(_fallback.decode_filter_output, data, bounds)
    assert outcome(_codec.decode_filter_output, data, bounds) == expected
    if expected[0] == "ok":
        with fast_path_only():
            assert _codec.decode_filter_output(data, bounds) == expected[1]


SHAPE_HEADER_NAMES = st.sampled_from(["content-type", "Connection", "X-Anthropic-Beta", "host", "bad name", "", "x-ok", "é"])
SHAPE_URLS = st.sampled_from(["https://api.anthropic.com/v1/messages", "https://evil.test/", "not a url", "https://API.anthropic.com:443/x"])


@SETTINGS
@given(
    url=SHAPE_URLS,
    method=st.sampled_from(["POST", "get", "", "GE T"]),
    headers=st.lists(st.tuples(SHAPE_HEADER_NAMES, st.binary(max_size=12)), max_size=6),
    body=st.binary(max_size=50),
    policy=st.sampled_from(list(cclb_wire.ShapeOriginPolicy)),
    max_headers=st.integers(0, 6),
    value_cap=st.integers(0, 12),
)
def test_shaped_requests_identical(url, method, headers, body, policy, max_headers, value_cap):
    data = _fallback.encode(wire.ShapeResponse(url, method, tuple(wire.Header(*h) for h in headers), body))
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    bounds = cclb_wire.WireBounds(max_headers=max_headers, max_header_value_bytes=value_cap)
    expected = outcome(_fallback.decode_shaped_request, data, upstream, origin_policy=policy, bounds=bounds)
    assert outcome(_codec.decode_shaped_request, data, upstream, origin_policy=policy, bounds=bounds) == expected
    if expected[0] == "ok":
        with fast_path_only():
            assert _codec.decode_shaped_request(data, upstream, origin_policy=policy, bounds=bounds) == expected[1]


# --- allocation ---------------------------------------------------------------------


def _traced_allocations(function, *args):
    function(*args)  # warm caches
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        result = function(*args)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ignore_tracemalloc = [tracemalloc.Filter(False, tracemalloc.__file__)]  # the snapshots' own bookkeeping
    after, before = after.filter_traces(ignore_tracemalloc), before.filter_traces(ignore_tracemalloc)
    grown = [stat for stat in after.compare_to(before, "lineno") if stat.size_diff > 0]
    return result, sum(stat.size_diff for stat in grown)


def test_encode_allocates_only_its_output_and_encode_into_nothing():
    ctx = cclb_wire.RequestContext("r", "POST", "/v1/messages", None, [(b"content-type", b"application/json")] * 12, b"x" * 4096)
    principal = cclb_wire.Principal("t", "api_key", {"a": 1, "b": "x", "c": [1, 2]})
    candidates = [cclb_wire.UpstreamCandidate(uuid.UUID(int=i), "u", "k", 1, None) for i in range(8)]
    result, allocated = _traced_allocations(_codec.encode_filter_request, ctx, principal, candidates)
    assert allocated == sys.getsizeof(result)  # the output bytes object, nothing else
    value = _codec.decode("FilterRequest", result)
    buffer = bytearray(len(result) + 16)
    written, allocated = _traced_allocations(_codec.encode_into, value, buffer, 16)
    assert written == len(result)
    assert allocated == sys.getsizeof(written)  # only the returned int (ints past 256 are objects)


# --- writing straight into a caller's buffer (guest memory) -------------------------


@pytest.mark.parametrize("backend", [_codec, _fallback], ids=["cython", "python"])
def test_host_encoders_write_where_into_says(backend):
    ctx = cclb_wire.RequestContext("r", "POST", "/v1/messages", None, [("content-type", "application/json")], b"{}")
    principal = cclb_wire.Principal("t", "api_key", {"k": 1})
    candidates = [cclb_wire.UpstreamCandidate(uuid.UUID(int=3), "u", "k", 1, None)]
    memory = bytearray(b"\xcc" * 4096)
    asked = []

    def into(size):
        asked.append(size)
        return memory, 1024

    written = backend.encode_filter_request(ctx, principal, candidates, into=into)
    expected = _fallback.encode_filter_request(ctx, principal, candidates)
    assert asked == [len(expected)] and written == len(expected)
    assert bytes(memory[1024 : 1024 + written]) == expected
    assert memory[:1024] == b"\xcc" * 1024 and memory[1024 + written :] == b"\xcc" * (4096 - 1024 - written)
    event = cclb_wire.Chunk(1, 2, 3)
    assert backend.encode_observe_event(event, into=lambda size: (memory, 0)) == 80
    assert bytes(memory[:80]) == _fallback.encode_observe_event(event)


@pytest.mark.parametrize("backend", [_codec, _fallback], ids=["cython", "python"])
def test_into_target_errors(backend):
    ctx = cclb_wire.RequestContext("r", "GET", "/", None, (), b"")
    principal = cclb_wire.Principal("t")
    with pytest.raises(ValueError, match="multiple of 16"):
        backend.encode_filter_request(ctx, principal, [], into=lambda size: (bytearray(256), 8))
    with pytest.raises(ValueError, match="needs"):
        backend.encode_filter_request(ctx, principal, [], into=lambda size: (bytearray(16), 0))


def test_a_request_changed_during_the_callback_never_overruns():
    ctx = cclb_wire.RequestContext("r", "GET", "/", None, (), b"")
    principal = cclb_wire.Principal("t")
    candidates = [cclb_wire.UpstreamCandidate(uuid.UUID(int=1), "u", "k", 1, None)]
    memory = bytearray(b"\xcc" * 4096)

    def into(size):
        candidates.extend(candidates * 10)  # another thread, say, while the guest allocates
        return memory, 0

    with pytest.raises(cclb_wire.InvalidInput, match="changed while it was being encoded"):
        _codec.encode_filter_request(ctx, principal, candidates, into=into)
    measured = len(_fallback.encode_filter_request(ctx, principal, candidates[:1]))
    assert memory[measured:] == b"\xcc" * (4096 - measured)  # nothing written past the measured size
