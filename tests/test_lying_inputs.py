"""Inputs that lie, and inputs that change under the encoder (issue 14, items 10 and 11).

Item 10: a bytearray body resized between the size pass and the write pass (by an
``into`` callback, or by another thread while the guest allocates) is the caller's
error, ``InvalidInput``, with one message on both backends and both call paths, never
a bare RuntimeError or ValueError.

Item 11: int, str and bytes subclasses whose methods lie (comparisons, ``__len__``,
``encode``, ``__bytes__``, ``__int__``, ``__hash__``...) are judged and kept by the
value they really hold: the host types store plain objects, the checks compare plain
values, and the wire-level encoders of both backends refuse an out-of-range value with
the same ``EncodeError``, never ``struct.error`` or ``OverflowError``.

Each test runs on the loaded backend (the suite runs once per backend); the tests that
compare the backends call the extension and the fallback side by side.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import cclb_wire as cw
from cclb_wire import _fallback, wire
from cclb_wire.runtime import HostConfig, PluginHost

try:
    from cclb_wire import _codec
except ImportError:  # pragma: no cover - a pure build asked for on purpose
    _codec = None

TESTS = Path(__file__).resolve().parent
U16, U32, U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1
UP = uuid.UUID("7d444840-9dc0-11d1-b245-5ffdce74fad2")


# --- liars --------------------------------------------------------------------------------


def _always(answer):
    return lambda self, *args, **kwargs: answer


class LyingInt(int):
    """Every comparison says yes; its int(), str() and hash lie too."""

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = _always(True)
    __ne__ = _always(False)
    __int__ = __index__ = _always(7)
    __str__ = __repr__ = _always("7")
    __format__ = _always("7")
    __hash__ = _always(7)


class LyingFloat(float):
    __lt__ = __le__ = __gt__ = __ge__ = _always(True)


class LyingStr(str):
    """Says it is empty, ASCII, equal to anything, and encodes to something else."""

    __len__ = _always(0)
    __eq__ = _always(True)
    __ne__ = _always(False)
    __lt__ = __gt__ = _always(False)

    def __hash__(self):  # not the hash of its text, and one per text
        return hash(("lie", str.__str__(self)))
    __str__ = __format__ = _always("lie")
    encode = _always(b"x-lie")
    isascii = _always(True)
    lower = _always("x-lie")


class LyingBytes(bytes):
    __len__ = _always(0)
    __bytes__ = _always(b"x-lie")
    __eq__ = _always(True)
    __hash__ = _always(12345)  # a dict never merges it with the bytes it holds
    isascii = _always(True)
    lower = _always(b"x-lie")
    decode = _always("x-lie")


class LyingByteArray(bytearray):
    __len__ = _always(0)


class LyingList(list):
    __len__ = _always(0)


class LyingUUID(uuid.UUID):
    __str__ = _always('x","admin":true,"y":"x')
    __format__ = __str__


class LyingDatetime(datetime.datetime):
    year = property(_always(1))


def _request(**fields):
    defaults = {"request_id": "r-1", "method": "POST", "path": "/v1/messages", "query": None, "headers": (), "body": b"{}"}
    defaults.update(fields)
    return cw.RequestContext(**defaults)


PRINCIPAL = cw.Principal("tenant")


def _candidate(**fields):
    defaults = {"upstream_id": UP, "name": "up", "kind": "anthropic_api_key", "observed_at_unix_secs": 1767225600}
    defaults.update(fields)
    return cw.UpstreamCandidate(**defaults)


def _backends():
    """(name, module) of each codec in this process: the extension (when built) and the fallback."""
    found = [("fallback", _fallback)]
    if _codec is not None:
        found.insert(0, ("cython", _codec))
    return found


def _outcome(function, *args, **kwargs):
    try:
        return ("ok", function(*args, **kwargs))
    except Exception as error:  # compared between the backends, class and message
        return ("error", type(error), str(error))


def _same_on_both_backends(name, *args, **kwargs):
    """Call ``name`` on the extension and on the fallback; both must agree. Returns the outcome."""
    outcomes = {backend: _outcome(getattr(module, name), *args, **kwargs) for backend, module in _backends()}
    assert len(set(map(repr, outcomes.values()))) == 1, outcomes
    return outcomes["fallback"]


# ==========================================================================================
# Item 10: a request that changes while it is being encoded
# ==========================================================================================


def _resizing_into(body: bytearray, delta: int):
    """An ``into`` callback that resizes ``body`` (after it was measured) by ``delta`` bytes."""

    def into(size):
        if delta > 0:
            body.extend(b"+" * delta)
        else:
            del body[delta:]
        return bytearray(size + 4096), 0

    return into


ENCODERS = {
    "FilterRequest": lambda api, ctx, into: api.encode_filter_request(ctx, PRINCIPAL, [_candidate()], into=into),
    "ShapeRequest": lambda api, ctx, into: api.encode_shape_request(ctx, PRINCIPAL, cw.AnthropicDirect(None), into=into),
}


@pytest.mark.parametrize("delta", [256, -256], ids=["grown", "shrunk"])
@pytest.mark.parametrize("root", sorted(ENCODERS))
def test_a_body_resized_by_the_into_callback_is_the_callers_invalid_input(root, delta):
    body = bytearray(b"b" * 1024)
    ctx = _request(body=body)
    with pytest.raises(cw.InvalidInput) as caught:
        ENCODERS[root](cw, ctx, _resizing_into(body, delta))
    assert isinstance(caught.value, cw.CclbWireError) and not isinstance(caught.value, RuntimeError)
    assert caught.value.field == root
    assert "changed while it was being encoded" in str(caught.value)
    assert "resized" in caught.value.detail


@pytest.mark.parametrize("delta", [256, -256], ids=["grown", "shrunk"])
@pytest.mark.parametrize("root", sorted(ENCODERS))
def test_both_backends_word_a_resized_body_alike(root, delta):
    if _codec is None:
        pytest.skip("no extension built: nothing to compare the fallback with")
    outcomes = []
    for _, module in _backends():
        body = bytearray(b"b" * 1024)
        outcomes.append(_outcome(ENCODERS[root], module, _request(body=body), _resizing_into(body, delta)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == ("error", cw.InvalidInput)


def test_a_body_unchanged_by_the_into_callback_is_encoded_as_usual():
    # The control: the same callback shape, without the resize, writes the archive.
    body = bytearray(b"b" * 1024)
    target = bytearray(8192)
    size = cw.encode_filter_request(_request(body=body), PRINCIPAL, [], into=lambda n: (target, 0))
    assert cw.decode(wire.FilterRequest, bytes(target[:size])).body == bytes(body)


# A filter guest whose cc_lb_alloc spins for about a millisecond: the window (the GIL is
# released while guest code runs) in which another thread resizes the body.
RACE = """
import json, os, sys, threading, uuid
import wasmtime
import cclb_wire as cw
from cclb_wire.runtime import PluginHost

wat = open({fixture!r}).read()
locals_ = "(local $p i32) (local $end i32)"
assert wat.count(locals_) == 1, "valid_minimal.wat changed: update this test's guest"
spin = (" (local $spin i32) (local.set $spin (i32.const 3000000))"
        " (loop $wait (local.set $spin (i32.sub (local.get $spin) (i32.const 1))) (br_if $wait (local.get $spin)))")
wasm = wasmtime.wat2wasm(wat.replace(locals_, locals_ + spin))

body = bytearray(b"b" * 1024)
filler = b"+" * 4096
ctx = cw.RequestContext("r-1", "POST", "/v1/messages", None, (), body)
principal = cw.Principal("tenant")
candidates = [cw.UpstreamCandidate(uuid.UUID(int=1), "up", "anthropic_api_key", 0)]
stop = threading.Event()

def resize():
    length = 0
    while not stop.is_set():
        length = (length + 16) % 4096
        body[1024:] = filler[:length]  # one operation: the body is never mid-resize

outcomes = []
with PluginHost() as host:
    adapter = host.register_filter("s", "spin-alloc", wasm, failure_policy="PASS_THROUGH")
    native = getattr(host.slot("filter", "s"), "native", None) is not None
    resizer = threading.Thread(target=resize, daemon=True)
    resizer.start()
    try:
        for _ in range({calls}):
            try:
                adapter.filter_with_policy(ctx, principal, candidates)
                outcomes.append(["ok"])
            except Exception as exc:
                outcomes.append([type(exc).__name__, isinstance(exc, cw.InvalidInput), getattr(exc, "field", ""), str(exc)])
                if sum(1 for row in outcomes if row[0] != "ok") >= 3:
                    break
    finally:
        stop.set()
        resizer.join()
print(json.dumps({{"backend": cw.BACKEND, "native": native, "outcomes": outcomes}}))
"""


def _run_race(native_calls: bool) -> dict:
    env = dict(os.environ)
    env.pop("CCLB_WIRE_NATIVE_CALLS", None)
    # The child imports the very package under test here, wherever it was imported from.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(cw.__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    if not native_calls:
        env["CCLB_WIRE_NATIVE_CALLS"] = "0"
    code = textwrap.dedent(RACE).format(fixture=str(TESTS / "fixtures" / "hostile" / "valid_minimal.wat"), calls=300)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=TESTS, env=env, check=False
    )
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", ["native", "ctypes"])
def test_a_body_resized_by_another_thread_during_a_call_is_invalid_input_under_pass_through(path):
    if path == "native" and cw.BACKEND != "cython":
        pytest.skip("the native call path needs the extension")
    report = _run_race(native_calls=path == "native")
    assert report["backend"] == cw.BACKEND and report["native"] == (path == "native"), report
    failures = [row for row in report["outcomes"] if row[0] != "ok"]
    # A race, but a wide one: the resize lands while the guest allocates in about a third of
    # the calls. Up to 300 calls, so not seeing it at all means the test is not testing.
    assert failures, f"the resize never landed between measuring and writing in {len(report['outcomes'])} calls"
    # Whatever the timing, the failure is the caller's InvalidInput (not passed through: it is
    # not the plugin's), worded as the encoder words it when an into callback resizes the body.
    assert {(name, is_invalid_input, field) for name, is_invalid_input, field, _ in failures} == {
        ("InvalidInput", True, "FilterRequest")
    }, failures
    body = bytearray(b"b" * 1024)
    with pytest.raises(cw.InvalidInput) as expected:
        cw.encode_filter_request(_request(body=body), PRINCIPAL, [], into=_resizing_into(body, 256))
    assert {message for *_, message in failures} == {str(expected.value)}


# ==========================================================================================
# Item 11: lying ints
# ==========================================================================================


INT_FIELDS = [
    # (class, field, maximum, build(value))
    ("CacheScore", "predicted_cache_read_tokens", U32, lambda v: cw.CacheScore(v)),
    ("UpstreamCandidate", "observed_at_unix_secs", U64, lambda v: _candidate(observed_at_unix_secs=v)),
    ("Chunk", "batch_index", U64, lambda v: cw.Chunk(v, 0, 0)),
    ("Chunk", "event_count", U64, lambda v: cw.Chunk(0, v, 0)),
    ("Chunk", "total_bytes", U64, lambda v: cw.Chunk(0, 0, v)),
    ("RequestFinished", "status", U16, lambda v: cw.RequestFinished(v)),
    ("RequestFinished", "input_tokens", U64, lambda v: cw.RequestFinished(200, input_tokens=v)),
    ("RequestFinished", "output_tokens", U64, lambda v: cw.RequestFinished(200, output_tokens=v)),
    ("RequestFinished", "cache_creation_input_tokens", U64, lambda v: cw.RequestFinished(200, cache_creation_input_tokens=v)),
    ("RequestFinished", "cache_read_input_tokens", U64, lambda v: cw.RequestFinished(200, cache_read_input_tokens=v)),
    ("RequestFinished", "duration_ms", U64, lambda v: cw.RequestFinished(200, duration_ms=v)),
    ("WireBounds", "output_body_bytes", U64, lambda v: cw.WireBounds(output_body_bytes=v)),
    ("WireBounds", "max_headers", U64, lambda v: cw.WireBounds(max_headers=v)),
    ("WireBounds", "max_header_value_bytes", U64, lambda v: cw.WireBounds(max_header_value_bytes=v)),
    ("WireBounds", "reason_bytes", U64, lambda v: cw.WireBounds(reason_bytes=v)),
]
INT_IDS = [f"{cls}.{field}" for cls, field, _, _ in INT_FIELDS]


@pytest.mark.parametrize("cls, field, maximum, build", INT_FIELDS, ids=INT_IDS)
def test_a_lying_int_out_of_range_is_refused_naming_its_field(cls, field, maximum, build):
    with pytest.raises(cw.InvalidInput) as caught:
        build(LyingInt(maximum + 1))
    assert caught.value.field == f"{cls}.{field}"
    assert str(maximum + 1) in caught.value.detail  # the value it holds, not what its str() says


@pytest.mark.parametrize("cls, field, maximum, build", INT_FIELDS, ids=INT_IDS)
def test_a_lying_int_in_range_is_kept_as_the_plain_int_it_holds(cls, field, maximum, build):
    value = build(LyingInt(maximum))
    stored = getattr(value, field)
    assert type(stored) is int and int.__repr__(stored) == str(maximum)
    assert value == build(maximum)


@pytest.mark.parametrize(
    "event",
    [
        lambda: cw.RequestFinished(LyingInt(70000)),
        lambda: cw.RequestFinished(200, duration_ms=LyingInt(1 << 64)),
        lambda: cw.Chunk(LyingInt(1 << 64), 1, 1),
    ],
    ids=["status", "duration_ms", "chunk"],
)
def test_a_lying_int_never_reaches_the_encoder_of_an_observe_event(event):
    # Before: accepted, then struct.error / OverflowError out of encode_observe_event.
    with pytest.raises(cw.InvalidInput):
        cw.encode_observe_event(event())


def test_a_lying_int_never_escapes_observe_with_policy_as_a_struct_error():
    wasm = (Path(cw.__file__).parent / "plugins" / "observe_counter.wasm").read_bytes()
    with PluginHost() as host:
        hook = host.register_observe("o", "counter", wasm, failure_policy="PASS_THROUGH")
        with pytest.raises(cw.InvalidInput) as caught:
            hook.observe_with_policy(cw.RequestFinished(LyingInt(70000)))
        assert caught.value.field == "RequestFinished.status"
        # A lying int that holds an in-range value is an ordinary event.
        assert hook.observe_with_policy(cw.RequestFinished(LyingInt(200))) is True


def test_a_lying_cache_score_attribute_is_checked_again_by_the_candidate():
    class LyingScore(cw.CacheScore):
        __slots__ = ()

        def __post_init__(self):  # skips the check, then reads another value than it holds
            pass

        def __getattribute__(self, name):
            return 1 << 40 if name == "predicted_cache_read_tokens" else super().__getattribute__(name)

    with pytest.raises(cw.InvalidInput) as caught:
        _candidate(cache_score=LyingScore(1))
    assert caught.value.field.startswith("UpstreamCandidate.cache_score")


def test_a_lying_float_timestamp_out_of_range_is_refused():
    with pytest.raises(cw.InvalidInput) as caught:
        _candidate(observed_at_unix_secs=LyingFloat(1e30))
    assert caught.value.field == "UpstreamCandidate.observed_at_unix_secs"


def test_a_host_config_checks_the_int_a_lying_int_holds():
    with pytest.raises(cw.InvalidInput) as caught:
        HostConfig(pool_size=LyingInt(1 << 70))
    assert caught.value.field == "HostConfig.pool_size"


WIRE_INTS = [
    ("RequestFinished.status", lambda v: wire.ObserveEvent.RequestFinished(v, None, None, None, None, 0)),
    ("RequestFinished.input_tokens", lambda v: wire.ObserveEvent.RequestFinished(200, v, None, None, None, 0)),
    ("RequestFinished.duration_ms", lambda v: wire.ObserveEvent.RequestFinished(200, None, None, None, None, v)),
    ("Chunk.batch_index", lambda v: wire.ObserveEvent.Chunk(v, 0, 0)),
    (
        "candidates[0].observed_at_unix_secs",
        lambda v: wire.FilterRequest(
            "r", "GET", "/", None, (), b"", wire.Principal("p", "k", ()),
            (wire.UpstreamCandidate(str(UP), "up", "k", v, 0),),
        ),
    ),
    (
        "candidates[0].predicted_cache_read_tokens",
        lambda v: wire.FilterRequest(
            "r", "GET", "/", None, (), b"", wire.Principal("p", "k", ()),
            (wire.UpstreamCandidate(str(UP), "up", "k", 0, v),),
        ),
    ),
]
WIRE_LIMITS = {"RequestFinished.status": U16, "candidates[0].predicted_cache_read_tokens": U32}


@pytest.mark.parametrize("path, build", WIRE_INTS, ids=[path for path, _ in WIRE_INTS])
def test_a_lying_int_in_a_wire_value_is_an_encode_error_on_both_backends(path, build):
    value = build(LyingInt(WIRE_LIMITS.get(path, U64) + 1))
    for function in ("encode", "encoded_size"):
        outcome = _same_on_both_backends(function, value)
        assert outcome[:2] == ("error", cw.EncodeError), outcome
        assert path in outcome[2]
    with pytest.raises(cw.EncodeError) as caught:
        cw.encode_into(value, bytearray(4096))
    assert caught.value.path.endswith(path)


@pytest.mark.parametrize("path, build", WIRE_INTS, ids=[path for path, _ in WIRE_INTS])
def test_a_lying_int_in_range_in_a_wire_value_encodes_the_int_it_holds(path, build):
    limit = WIRE_LIMITS.get(path, U64)
    assert _same_on_both_backends("encode", build(LyingInt(limit))) == ("ok", cw.encode(build(limit)))


# ==========================================================================================
# Item 11: lying str and bytes
# ==========================================================================================


def _sent(ctx, principal=PRINCIPAL, candidates=()):
    """The FilterRequest a plugin receives, the same from both backends."""
    outcome = _same_on_both_backends("encode_filter_request", ctx, principal, list(candidates))
    assert outcome[0] == "ok", outcome
    return cw.decode(wire.FilterRequest, outcome[1])


@pytest.mark.parametrize("field", ["request_id", "method", "path", "query"])
def test_a_lying_str_request_field_is_kept_and_sent_as_the_text_it_holds(field):
    ctx = _request(**{field: LyingStr("é-text")})
    assert type(getattr(ctx, field)) is str and str.__eq__(getattr(ctx, field), "é-text")
    assert getattr(_sent(ctx), field) == "é-text"


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda s: cw.RequestStarted(s), "request_id"),
        (lambda s: cw.RequestStarted("r", s), "downstream_user_agent"),
        (lambda s: cw.AuthnComplete(s, "api_key"), "principal_id"),
        (lambda s: cw.ErrorEvent(s, "m", "s"), "code"),
        (lambda s: cw.ErrorEvent("c", s, "s"), "message"),
        (lambda s: cw.ErrorEvent("c", "m", s), "source"),
        (lambda s: cw.Principal(s), "id"),
        (lambda s: _candidate(name=s), "name"),
    ],
    ids=["started.request_id", "started.user_agent", "authn.principal_id", "error.code", "error.message",
         "error.source", "principal.id", "candidate.name"],
)
def test_a_lying_str_field_is_stored_as_a_plain_str(build, field):
    value = build(LyingStr("é-text"))
    stored = getattr(value, field)
    assert type(stored) is str and str.__eq__(stored, "é-text")


@pytest.mark.parametrize(
    "event",
    [
        lambda s: cw.RequestStarted(s, s),
        lambda s: cw.AuthnComplete(s, s),
        lambda s: cw.ErrorEvent(s, s, s),
        lambda s: cw.UpstreamChosen(cw.AnthropicDirect(s)),
    ],
    ids=["started", "authn", "error", "chosen"],
)
def test_an_event_of_lying_strs_encodes_as_the_text_they_hold_on_both_backends(event):
    text = "https://example.com/é"
    expected = _same_on_both_backends("encode_observe_event", event(text))
    assert expected[0] == "ok"
    assert _same_on_both_backends("encode_observe_event", event(LyingStr(text))) == expected


def test_lying_kinds_are_sent_as_the_text_they_hold():
    principal = cw.Principal("tenant", LyingStr("api_key"))
    candidate = _candidate(kind=LyingStr("anthropic_oauth"))
    sent = _sent(_request(), principal, [candidate])
    assert sent.principal.kind == "api_key" and sent.candidates[0].kind == "anthropic_oauth"
    assert type(principal.wire_fields[1]) is str and type(candidate.wire_fields[2]) is str


@pytest.mark.parametrize("name_class", [LyingStr, LyingBytes], ids=["str", "bytes"])
@pytest.mark.parametrize("credential", ["authorization", "x-api-key", "proxy-authorization", "host"])
def test_a_lying_header_name_cannot_smuggle_a_credential_to_the_plugin(name_class, credential):
    raw = credential if name_class is LyingStr else credential.encode()
    ctx = _request(headers=[(name_class(raw), b"secret"), ("x-kept", "v")])
    sent = _sent(ctx)
    assert [(h.name, h.value) for h in sent.headers] == [("x-kept", b"v")]


def test_lying_header_names_and_values_are_stored_as_what_they_hold():
    ctx = _request(headers=[(LyingStr("X-A"), LyingStr("va")), (LyingBytes(b"X-B"), LyingBytes(b"vb")),
                            (b"x-c", bytearray(b"vc"))])
    assert [tuple(map(type, pair)) for pair in ctx.headers] == [(str, str), (bytes, bytes), (bytes, bytes)]
    assert [(str.__str__(n) if isinstance(n, str) else bytes(n), v) for n, v in ctx.headers] == [
        ("X-A", "va"), (b"X-B", b"vb"), (b"x-c", b"vc")
    ]
    assert [(h.name, h.value) for h in _sent(ctx).headers] == [("x-a", b"va"), ("x-b", b"vb"), ("x-c", b"vc")]


@pytest.mark.parametrize("body_class", [LyingBytes, LyingByteArray], ids=["bytes", "bytearray"])
def test_a_lying_body_is_kept_and_sent_as_the_bytes_it_holds(body_class):
    ctx = _request(body=body_class(b"the whole body"))
    assert type(ctx.body) is bytes and bytes.__eq__(ctx.body, b"the whole body")
    assert _sent(ctx).body == b"the whole body"


def test_a_lying_query_in_bytes_is_decoded_from_the_bytes_it_holds():
    assert _request(query=LyingBytes(b"k=v")).query == "k=v"


def test_a_lying_uuid_is_kept_and_sent_as_the_uuid_it_holds():
    candidate = _candidate(upstream_id=LyingUUID(int=UP.int))
    assert type(candidate.upstream_id) is uuid.UUID and candidate.upstream_id == UP
    assert _sent(_request(), PRINCIPAL, [candidate]).candidates[0].upstream_id == str(UP)


def test_a_lying_upstream_id_str_is_parsed_from_the_text_it_holds():
    assert _candidate(upstream_id=LyingStr(str(UP))).upstream_id == UP


def test_a_lying_base_url_is_parsed_from_the_text_it_holds():
    upstream = cw.AnthropicDirect(LyingStr("https://api.example.com"))
    assert type(upstream.base_url) is str and upstream.base_url == "https://api.example.com/"


def _claim(value):
    """The JSON bytes a single claim is sent as."""
    return dict(cw.Principal("p", claims={"c": value}).wire_fields[2])["c"]


@pytest.mark.parametrize(
    "liar, plain",
    [
        (LyingStr('say "hi"\n'), 'say "hi"\n'),
        (LyingStr("nothing to escape"), "nothing to escape"),
        (LyingInt(5), 5),
        (LyingUUID(int=UP.int), str(UP)),
        (
            LyingDatetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            "2026-01-02T03:04:05Z",
        ),
        ({LyingStr("k"): [LyingStr("v"), LyingInt(1)]}, {"k": ["v", 1]}),
    ],
    ids=["str", "plain-str", "int", "uuid", "datetime", "nested"],
)
def test_a_lying_claim_value_is_sent_as_the_json_of_what_it_holds(liar, plain):
    assert json.loads(_claim(liar)) == plain


def test_a_lying_claim_int_out_of_the_json_range_is_refused():
    with pytest.raises(cw.InvalidInput) as caught:
        _claim(LyingInt(1 << 70))
    assert caught.value.field == "Principal.claims['c']"


def test_two_claim_keys_with_one_text_are_refused_not_both_sent():
    claims = {"role": "user", LyingStr("role"): "admin"}
    assert len(claims) == 2  # the liar's hash keeps it apart from the real key
    with pytest.raises(cw.InvalidInput) as caught:
        cw.Principal("p", claims=claims)
    assert caught.value.field == "Principal.claims['role']"
    with pytest.raises(cw.InvalidInput):
        cw.Principal("p", claims={"nested": claims})


def test_claim_keys_are_ordered_by_the_text_they_hold():
    keys = [key for key, _ in cw.Principal("p", claims={LyingStr("b"): 1, "a": 2, LyingStr("c"): 3}).wire_fields[2]]
    assert keys == ["a", "b", "c"] and all(type(key) is str for key in keys)


WIRE_STRS = [
    ("str", lambda s, b, items: wire.ObserveEvent.Error(s, s, s), lambda: wire.ObserveEvent.Error("é-t", "é-t", "é-t")),
    (
        "bytes",
        lambda s, b, items: wire.ShapeResponse("https://x/", "GET", (wire.Header("a", b),), b),
        lambda: wire.ShapeResponse("https://x/", "GET", (wire.Header("a", b"body"),), b"body"),
    ),
    (
        "list",
        lambda s, b, items: wire.FilterResponse(items),
        lambda: wire.FilterResponse((wire.PerCandidateReason("id", "accept", ""),)),
    ),
]


@pytest.mark.parametrize("kind, build, plain", WIRE_STRS, ids=[kind for kind, _, _ in WIRE_STRS])
def test_lying_strs_bytes_and_lists_in_wire_values_encode_as_what_they_hold(kind, build, plain):
    value = build(
        LyingStr("é-t"),
        LyingBytes(b"body") if kind == "bytes" else b"",
        LyingList([wire.PerCandidateReason("id", "accept", "")]),
    )
    expected = cw.encode(plain())
    for function in ("encode", "encoded_size"):
        outcome = _same_on_both_backends(function, value)
        assert outcome == ("ok", expected if function == "encode" else len(expected))
    assert _same_on_both_backends("encode", build(LyingStr("é-t"), LyingByteArray(b"body"), [])) == _same_on_both_backends(
        "encode", build("é-t", bytearray(b"body"), [])
    )
