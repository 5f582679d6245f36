"""The error contract, walked over the whole public API.

"Every bad input to every public function, constructor and CLI command raises a
``CclbWireError`` subclass. It may also be a ``ValueError`` or ``TypeError`` where that
helps, as ``WireError`` is. The message names the field."

``TABLE`` lists, for every public callable of ``cclb_wire.__all__`` and every one of its
parameters, bad values: a wrong type, out of range, and hostile nesting (100,000-deep
lists, dicts and JSON text). ``test_the_table_covers_the_public_api`` fails when a new
entry point (or a new parameter) is not in the table or in the commented exclusions, so
nothing new can skip the contract. The names each case expects come from the contract
(``function.parameter``, ``Class.field``), not from running the code.
"""

from __future__ import annotations

import argparse

import datetime
import enum
import inspect
import io
import math
import sys
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import cclb_wire as cw
from cclb_wire import _fallback, cli, wire

try:
    from cclb_wire import _codec
except ImportError:  # pragma: no cover - a pure-Python build asked for on purpose
    _codec = None

DEEP = 100_000


def deep_list(depth: int = DEEP) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def deep_dict(depth: int = DEEP) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


DEEP_JSON_ARRAY = "[" * DEEP + "]" * DEEP
DEEP_JSON_OBJECT = '{"a":' * DEEP + "1" + "}" * DEEP


def strided_buffer() -> memoryview:
    return memoryview(bytearray(512))[::2]


# --- valid arguments, one parameter of which each case replaces -------------------------

UPSTREAM = cw.AnthropicDirect("https://api.anthropic.com")
CTX = cw.RequestContext("req-1", "POST", "/v1/messages", None, [("content-type", "application/json")], b"{}")
PRINCIPAL = cw.Principal("tenant-a", cw.PrincipalKind.API_KEY, {"scope": "inference"})
RESPONSE = cw.UpstreamResponse(200, [("content-type", "application/json")], b"{}")
CANDIDATE = cw.UpstreamCandidate(uuid.UUID(int=1), "primary", "anthropic_api_key", 1_767_225_600, cw.CacheScore(5))
CHUNK = wire.Chunk(1, 2, 3)
FILTER_ANSWER = cw.encode(wire.FilterResponse((wire.PerCandidateReason(str(uuid.UUID(int=1)), "accept", "ok"),)))
SHAPE_ANSWER = cw.encode(wire.ShapeResponse("https://api.anthropic.com/v1/messages", "POST", (), b"{}"))

VALID: Dict[str, Callable[[], Dict[str, Any]]] = {
    "encode": lambda: {"value": CHUNK},
    "encoded_size": lambda: {"value": CHUNK},
    "encode_into": lambda: {"value": CHUNK, "buffer": bytearray(256), "offset": 16},
    "decode": lambda: {"type_": "FilterResponse", "data": FILTER_ANSWER},
    "encode_json": lambda: {"type_name": "FilterResponse", "obj": '{"results": []}'},
    "decode_json": lambda: {"type_name": "FilterResponse", "data": FILTER_ANSWER},
    "encode_filter_request": lambda: {
        "ctx": CTX, "principal": PRINCIPAL, "candidates": [CANDIDATE], "cookie_redaction": False, "into": None,
    },
    "encode_shape_request": lambda: {
        "ctx": CTX, "principal": PRINCIPAL, "upstream": UPSTREAM, "cookie_redaction": False, "into": None,
    },
    "encode_observe_event": lambda: {"event": cw.Chunk(1, 2, 3), "into": None},
    "decode_filter_output": lambda: {"data": FILTER_ANSWER, "bounds": cw.WireBounds()},
    "decode_shaped_request": lambda: {
        "data": SHAPE_ANSWER, "upstream": UPSTREAM, "origin_policy": cw.ShapeOriginPolicy.UNRESTRICTED, "bounds": None,
    },
    "RequestContext": lambda: {
        "request_id": "r", "method": "POST", "path": "/v1/messages", "query": None, "headers": (), "body": b"",
        "thread_id": None, "service_tier": None, "canonical_model_id": None, "cache_pricing": None,
    },
    "Principal": lambda: {"id": "p", "kind": "api_key", "claims": {}},
    "CacheScore": lambda: {
        "predicted_cache_read_tokens": 1, "predicted_cache_creation_tokens_5m": 0, "predicted_cache_creation_tokens_1h": 0,
        "predicted_uncached_input_tokens": 0,
    },
    "UpstreamCandidate": lambda: {
        "upstream_id": uuid.UUID(int=1), "name": "n", "kind": "anthropic_api_key", "observed_at_unix_secs": 0,
        "cache_score": None, "plan_capacity_ratio": 1.0, "organization_type": "", "rate_limit_tier": "", "seat_tier": "",
    },
    "CachePricing": lambda: {
        "status": "unknown", "input_micros_per_million": None, "cache_creation_5m_micros_per_million": None,
        "cache_creation_1h_micros_per_million": None, "cache_read_micros_per_million": None,
    },
    "UpstreamResponse": lambda: {"status": 200, "headers": (), "body": b""},
    "SseEvent": lambda: {"event": "ping", "data": b""},
    "AnthropicDirect": lambda: {"base_url": "https://api.anthropic.com"},
    "RequestStarted": lambda: {"request_id": "r", "downstream_user_agent": None},
    "AuthnComplete": lambda: {"principal_id": "p", "principal_kind": "api_key"},
    "UpstreamChosen": lambda: {"upstream": UPSTREAM},
    "Chunk": lambda: {"batch_index": 0, "event_count": 0, "total_bytes": 0},
    "RequestFinished": lambda: {
        "status": 200, "input_tokens": None, "output_tokens": None, "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None, "duration_ms": 0,
    },
    "ErrorEvent": lambda: {"code": "c", "message": "m", "source": "s"},
    "WireBounds": lambda: {"output_body_bytes": 1, "max_headers": 1, "max_header_value_bytes": 1, "reason_bytes": 1},
}

# The functions whose two backends (cclb_wire._codec and cclb_wire._fallback) are walked
# separately too, so their errors must match message for message.
CODEC_FUNCTIONS = tuple(_fallback.__all__)


@dataclass(frozen=True)
class Bad:
    """One bad value for one parameter.

    ``kind``: ``"type"`` (the error must also be a TypeError) or ``"value"`` (a ValueError
    and not a TypeError). ``names``: text the message must contain (the field). ``starts``:
    the message must start with ``names`` (InvalidInput's ``"{field}: {detail}"``); without
    it, ``names`` is a wire path inside the message (``cannot encode Chunk.batch_index: ...``)."""

    label: str
    make: Callable[[], Any]
    kind: str
    names: str
    starts: bool = True


def T(label: str, make: Callable[[], Any], names: str, starts: bool = True) -> Bad:
    return Bad(label, make, "type", names, starts)


def V(label: str, make: Callable[[], Any], names: str, starts: bool = True) -> Bad:
    return Bad(label, make, "value", names, starts)


def returns(value: Any) -> Callable[[], Callable[[int], Any]]:
    """An ``into`` callback answering ``value`` (made lazily)."""
    return lambda: (lambda size: value() if callable(value) else value)


def _wrong_types(field: str, *extra: Bad) -> List[Bad]:
    """The usual wrong-type values for a str/int/object parameter."""
    return [
        T("object", object, field),
        T("deep-list", deep_list, field),
        T("deep-dict", deep_dict, field),
        *extra,
    ]


def _str_field(field: str, optional: bool = False) -> List[Bad]:
    bads = _wrong_types(field, T("int", lambda: 42, field), T("bytes", lambda: b"text", field))
    if not optional:
        bads.append(T("none", lambda: None, field))
    return bads


def _int_field(field: str, maximum: int, optional: bool = False) -> List[Bad]:
    bads = _wrong_types(
        field,
        T("str", lambda: "5", field),
        T("float", lambda: 1.5, field),
        T("bool", lambda: True, field),
        V("negative", lambda: -1, field),
        V("past-max", lambda: maximum + 1, field),
    )
    if not optional:
        bads.append(T("none", lambda: None, field))
    return bads


def _kind_field(field: str) -> List[Bad]:
    return _wrong_types(field, T("int", lambda: 42, field), T("float", lambda: 3.5, field), T("bytes", lambda: b"api_key", field))


U64 = 2**64 - 1


def _claim(label: str, value: Callable[[], Any], kind: str, key: str = "k") -> Bad:
    return Bad(label, lambda: {key: value()}, kind, f"Principal.claims[{key!r}]")


def _naive_datetime() -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, 12, 0)


def _wire_value_cases(where: str) -> List[Bad]:
    field = f"{where}.value"
    return [
        T("int", lambda: 42, field),
        T("none", lambda: None, field),
        T("str", lambda: "FilterResponse", field),
        T("deep-list", deep_list, field),
        T("deep-dict", deep_dict, field),
        T("non-root-struct", lambda: wire.Header("a", b"b"), field),
        T("host-event", lambda: cw.Chunk(1, 2, 3), field),
        # fields inside a root value: the message names the wire path
        T("deep-list-field", lambda: wire.FilterResponse(deep_list()), "FilterResponse.results[0]", starts=False),
        T("wrong-field-type", lambda: wire.Chunk("1", 0, 0), "Chunk.batch_index", starts=False),
        V("field-out-of-range", lambda: wire.Chunk(-1, 0, 0), "Chunk.batch_index", starts=False),
        V("u16-out-of-range", lambda: wire.RequestFinished(70000, None, None, None, None, 0), "RequestFinished.status", starts=False),
        V("lone-surrogate", lambda: wire.Error("c", "\ud800", "s"), "Error.message", starts=False),
    ]


def _type_arg(where: str, param: str) -> List[Bad]:
    field = f"{where}.{param}"
    return [
        T("unknown-name", lambda: "Nope", field),
        T("not-a-root", lambda: "Header", field),
        T("non-root-class", lambda: wire.Header, field),
        T("int", lambda: 42, field),
        T("none", lambda: None, field),
        T("deep-list", deep_list, field),
        T("deep-dict", deep_dict, field),
        T("deep-json-text", lambda: DEEP_JSON_ARRAY, field),
        T("writable-memoryview", lambda: memoryview(bytearray(b"x")), field),  # unhashable: ValueError on lookup
        T("double-memoryview", lambda: memoryview(b"abcdabcd").cast("d"), field),
    ]


def _readable(field: str) -> List[Bad]:
    return [
        T("str", lambda: "not bytes", field),
        T("int", lambda: 42, field),
        T("none", lambda: None, field),
        T("deep-list", deep_list, field),
        T("deep-dict", deep_dict, field),
        T("non-contiguous", strided_buffer, field),
        T("numpy-strided", lambda: np.zeros(64, dtype=np.uint8)[::2], field),
    ]


def _into(where: str) -> List[Bad]:
    field = f"{where}.into"
    return [
        T("int", lambda: 42, field),
        T("str", lambda: "buffer", field),
        T("deep-list", deep_list, field),
        T("returns-int", returns(42), field),
        T("returns-triple", returns((bytearray(4096), 0, 0)), field),
        T("returns-deep-list", returns(deep_list), field),
        T("returns-read-only", returns((bytes(4096), 0)), f"{field}.buffer"),
        T("returns-non-buffer", returns((42, 0)), f"{field}.buffer"),
        T("returns-str-offset", returns((bytearray(4096), "0")), f"{field}.offset"),
        V("returns-unaligned", returns((bytearray(4096), 8)), f"{field}.offset"),
        V("returns-negative", returns((bytearray(4096), -16)), f"{field}.offset"),
        V("returns-too-small", returns((bytearray(16), 0)), f"{field}.buffer"),
    ]


def _request_args(where: str) -> Dict[str, List[Bad]]:
    return {
        "ctx": _wrong_types(
            f"{where}.ctx", T("none", lambda: None, f"{where}.ctx"), T("principal", lambda: PRINCIPAL, f"{where}.ctx"),
            T("wire-request", lambda: cw.decode("FilterRequest", cw.encode_filter_request(CTX, PRINCIPAL, [])), f"{where}.ctx"),
        ),
        "principal": _wrong_types(
            f"{where}.principal", T("none", lambda: None, f"{where}.principal"),
            T("dict", lambda: {"id": "p"}, f"{where}.principal"),
            T("wire-principal", lambda: wire.Principal("p", "api_key", ()), f"{where}.principal"),
        ),
        "cookie_redaction": _wrong_types(
            f"{where}.cookie_redaction", T("str", lambda: "yes", f"{where}.cookie_redaction"),
            T("int", lambda: 1, f"{where}.cookie_redaction"), T("none", lambda: None, f"{where}.cookie_redaction"),
        ),
        "into": _into(where),
    }


TABLE: Dict[str, Dict[str, List[Bad]]] = {
    # --- codec ---------------------------------------------------------------------------
    "encode": {"value": _wire_value_cases("encode")},
    "encoded_size": {"value": _wire_value_cases("encoded_size")},
    "encode_into": {
        "value": _wire_value_cases("encode_into"),
        "buffer": [
            T("read-only-bytes", lambda: bytes(256), "encode_into.buffer"),
            T("int", lambda: 42, "encode_into.buffer"),
            T("none", lambda: None, "encode_into.buffer"),
            T("str", lambda: "buffer", "encode_into.buffer"),
            T("deep-list", deep_list, "encode_into.buffer"),
            T("non-contiguous", strided_buffer, "encode_into.buffer"),
            V("too-small", lambda: bytearray(32), "encode_into.buffer"),
        ],
        "offset": [
            V("unaligned", lambda: 8, "encode_into.offset"),
            V("negative", lambda: -16, "encode_into.offset"),
            V("past-the-end", lambda: 2**70, "encode_into.offset"),
            T("str", lambda: "16", "encode_into.offset"),
            T("float", lambda: 16.0, "encode_into.offset"),
            T("bool", lambda: False, "encode_into.offset"),
            T("none", lambda: None, "encode_into.offset"),
            T("deep-list", deep_list, "encode_into.offset"),
        ],
    },
    "decode": {"type_": _type_arg("decode", "type_"), "data": _readable("decode.data")},
    "encode_json": {
        "type_name": _type_arg("encode_json", "type_name"),
        "obj": [
            V("not-json", lambda: "{nope", "encode_json.obj"),
            V("deep-json-array", lambda: DEEP_JSON_ARRAY, "encode_json.obj"),
            V("deep-json-object", lambda: DEEP_JSON_OBJECT, "encode_json.obj"),
            V("deep-json-bytes", lambda: DEEP_JSON_ARRAY.encode(), "encode_json.obj"),
            V("deep-inside-valid-prefix", lambda: '{"results": ' + DEEP_JSON_ARRAY + "}", "encode_json.obj"),
            V("not-decodable", lambda: b"\xff\xfe\x00", "encode_json.obj"),
            # a parsed value of the wrong shape: the message names the wire type (the root)
            T("int", lambda: 42, "FilterResponse", starts=False),
            T("deep-list", deep_list, "FilterResponse", starts=False),
            V("deep-dict", deep_dict, "FilterResponse", starts=False),
            T("deep-list-in-field", lambda: {"results": deep_list()}, "FilterResponse.results[0]", starts=False),
        ],
    },
    "decode_json": {"type_name": _type_arg("decode_json", "type_name"), "data": _readable("decode_json.data")},
    # --- host level functions ---------------------------------------------------------------
    "encode_filter_request": {
        **_request_args("encode_filter_request"),
        "candidates": [
            T("int", lambda: 42, "encode_filter_request.candidates"),
            T("none", lambda: None, "encode_filter_request.candidates"),
            T("str", lambda: "abc", "encode_filter_request.candidates"),
            T("wrong-item", lambda: [CANDIDATE, 42], "encode_filter_request.candidates[1]"),
            T("wire-candidate", lambda: [wire.UpstreamCandidate("id", "n", "k", 0, 0)], "encode_filter_request.candidates[0]"),
            T("deep-list", deep_list, "encode_filter_request.candidates[0]"),
            T("deep-dict", deep_dict, "encode_filter_request.candidates[0]"),
        ],
    },
    "encode_shape_request": {
        **_request_args("encode_shape_request"),
        "upstream": _wrong_types(
            "encode_shape_request.upstream",
            T("none", lambda: None, "encode_shape_request.upstream"),
            T("url-str", lambda: "https://api.anthropic.com", "encode_shape_request.upstream"),
            T("wire-upstream", lambda: wire.AnthropicDirect("https://api.anthropic.com/"), "encode_shape_request.upstream"),
        ),
    },
    "encode_observe_event": {
        "event": _wrong_types(
            "encode_observe_event.event",
            T("none", lambda: None, "encode_observe_event.event"),
            T("wire-event", lambda: wire.Chunk(1, 2, 3), "encode_observe_event.event"),
            T("dict", lambda: {"Chunk": {}}, "encode_observe_event.event"),
        ),
        "into": _into("encode_observe_event"),
    },
    "decode_filter_output": {
        "data": _readable("decode_filter_output.data"),
        "bounds": _wrong_types(
            "decode_filter_output.bounds",
            T("dict", lambda: {}, "decode_filter_output.bounds"),
            T("int", lambda: 100, "decode_filter_output.bounds"),
            T("class", lambda: cw.WireBounds, "decode_filter_output.bounds"),
        ),
    },
    "decode_shaped_request": {
        "data": _readable("decode_shaped_request.data"),
        "upstream": _wrong_types(
            "decode_shaped_request.upstream",
            T("none", lambda: None, "decode_shaped_request.upstream"),
            T("url-str", lambda: "https://api.anthropic.com", "decode_shaped_request.upstream"),
        ),
        "origin_policy": [
            V("unknown-str", lambda: "selected", "decode_shaped_request.origin_policy"),
            V("empty-str", lambda: "", "decode_shaped_request.origin_policy"),
            V("deep-json-text", lambda: DEEP_JSON_ARRAY, "decode_shaped_request.origin_policy"),
            T("int", lambda: 1, "decode_shaped_request.origin_policy"),
            T("bool", lambda: True, "decode_shaped_request.origin_policy"),
            T("none", lambda: None, "decode_shaped_request.origin_policy"),
            T("enum-class", lambda: cw.ShapeOriginPolicy, "decode_shaped_request.origin_policy"),
            V("other-str-enum", lambda: cw.PrincipalKind.API_KEY, "decode_shaped_request.origin_policy"),
            T("deep-list", deep_list, "decode_shaped_request.origin_policy"),
        ],
        "bounds": _wrong_types(
            "decode_shaped_request.bounds",
            T("dict", lambda: {"max_headers": 1}, "decode_shaped_request.bounds"),
            T("int", lambda: 100, "decode_shaped_request.bounds"),
        ),
    },
    # --- host types ---------------------------------------------------------------------------
    "RequestContext": {
        **{name: _str_field(f"RequestContext.{name}", optional=True) for name in ("thread_id", "service_tier", "canonical_model_id")},
        "cache_pricing": _wrong_types(
            "RequestContext.cache_pricing",
            T("dict", lambda: {"status": "known"}, "RequestContext.cache_pricing"),
            T("wire-summary", lambda: wire.CachePricingSummary("known", None, None, None, None), "RequestContext.cache_pricing"),
        ),
        "request_id": _str_field("RequestContext.request_id"),
        "method": _str_field("RequestContext.method"),
        "path": _str_field("RequestContext.path"),
        "query": _wrong_types(
            "RequestContext.query",
            T("int", lambda: 42, "RequestContext.query"),
            V("bytes-not-utf8", lambda: b"q=\xff", "RequestContext.query"),
        ),
        "headers": [
            T("int", lambda: 42, "RequestContext.headers"),
            T("str", lambda: "content-type: x", "RequestContext.headers"),
            T("bytes", lambda: b"content-type: x", "RequestContext.headers"),
            T("triple", lambda: [("a", "1"), ("b", "2"), ("c", "3", "x")], "RequestContext.headers[2]"),
            T("single", lambda: [("a",)], "RequestContext.headers[0]"),
            T("not-a-pair", lambda: [("a", "1"), 42], "RequestContext.headers[1]"),
            V("non-ascii-name", lambda: [("a", "1"), ("b", "2"), ("x-caf\u00e9", "v")], "RequestContext.headers[2]"),
            V("non-ascii-bytes-name", lambda: [(b"x-caf\xc3\xa9", b"v")], "RequestContext.headers[0]"),
            V("non-latin1-value", lambda: [("a", "1"), ("b", "2"), ("x-euro", "\u20ac")], "RequestContext.headers[2]"),
            T("int-name", lambda: [(1, "v")], "RequestContext.headers[0]"),
            T("int-value", lambda: [("n", 1)], "RequestContext.headers[0]"),
            T("none-value", lambda: {"n": None}, "RequestContext.headers[0]"),
            T("deep-list", deep_list, "RequestContext.headers[0]"),
            T("deep-dict", deep_dict, "RequestContext.headers[0]"),
        ],
        "body": _wrong_types(
            "RequestContext.body",
            T("str", lambda: "text", "RequestContext.body"),
            T("int", lambda: 42, "RequestContext.body"),
            T("none", lambda: None, "RequestContext.body"),
            T("non-contiguous", strided_buffer, "RequestContext.body"),
        ),
    },
    "Principal": {
        "id": _str_field("Principal.id"),
        "kind": _kind_field("Principal.kind"),
        "claims": [
            T("list-of-pairs", lambda: [("a", 1)], "Principal.claims"),
            T("int", lambda: 42, "Principal.claims"),
            T("str", lambda: "a=1", "Principal.claims"),
            T("int-key", lambda: {1: "v"}, "Principal.claims[1]"),
            _claim("set", lambda: {1, 2}, "type"),
            _claim("object", object, "type"),
            _claim("bytes", lambda: b"x", "type"),
            _claim("nested-int-key", lambda: {"n": {1: 2}}, "type"),
            _claim("naive-datetime", _naive_datetime, "type"),
            _claim("date", lambda: datetime.date(2026, 1, 1), "type"),
            _claim("past-u64", lambda: 2**64, "value"),
            _claim("below-i64", lambda: -(2**63) - 1, "value"),
            _claim("lone-surrogate", lambda: "\ud800", "value"),
            _claim("deep-list", deep_list, "value"),
            _claim("deep-dict", deep_dict, "value"),
            _claim("nested-deep", lambda: {"x": [deep_list()]}, "value"),
            V("deep-dict-claims", deep_dict, "Principal.claims['a']"),
        ],
    },
    "CacheScore": {
        name: _int_field(f"CacheScore.{name}", 2**32 - 1)
        for name in (
            "predicted_cache_read_tokens", "predicted_cache_creation_tokens_5m", "predicted_cache_creation_tokens_1h",
            "predicted_uncached_input_tokens",
        )
    },
    "CachePricing": {
        "status": _str_field("CachePricing.status"),
        **{
            name: _int_field(f"CachePricing.{name}", U64, optional=True)
            for name in (
                "input_micros_per_million", "cache_creation_5m_micros_per_million", "cache_creation_1h_micros_per_million",
                "cache_read_micros_per_million",
            )
        },
    },
    "UpstreamResponse": {
        "status": _int_field("UpstreamResponse.status", 0xFFFF),
        "headers": [
            T("int", lambda: 42, "UpstreamResponse.headers"),
            T("single", lambda: [("a",)], "UpstreamResponse.headers[0]"),
            V("non-ascii-name", lambda: [("x-caf\u00e9", "v")], "UpstreamResponse.headers[0]"),
            T("deep-list", deep_list, "UpstreamResponse.headers[0]"),
        ],
        "body": _wrong_types("UpstreamResponse.body", T("str", lambda: "text", "UpstreamResponse.body")),
    },
    "SseEvent": {
        "event": _str_field("SseEvent.event"),
        "data": _wrong_types("SseEvent.data", T("str", lambda: "text", "SseEvent.data"), T("none", lambda: None, "SseEvent.data")),
    },
    "UpstreamCandidate": {
        "upstream_id": _wrong_types(
            "UpstreamCandidate.upstream_id",
            V("not-a-uuid", lambda: "not-a-uuid", "UpstreamCandidate.upstream_id"),
            V("empty", lambda: "", "UpstreamCandidate.upstream_id"),
            V("deep-json-text", lambda: DEEP_JSON_ARRAY, "UpstreamCandidate.upstream_id"),
            T("int", lambda: 42, "UpstreamCandidate.upstream_id"),
            T("none", lambda: None, "UpstreamCandidate.upstream_id"),
            T("bytes", lambda: uuid.UUID(int=1).bytes, "UpstreamCandidate.upstream_id"),
        ),
        "name": _str_field("UpstreamCandidate.name"),
        "kind": _kind_field("UpstreamCandidate.kind"),
        "observed_at_unix_secs": [
            V("negative", lambda: -1, "UpstreamCandidate.observed_at_unix_secs"),
            V("negative-float", lambda: -0.5, "UpstreamCandidate.observed_at_unix_secs"),
            V("past-u64", lambda: 2**64, "UpstreamCandidate.observed_at_unix_secs"),
            V("float-past-u64", lambda: 2.0**64, "UpstreamCandidate.observed_at_unix_secs"),
            V("nan", lambda: math.nan, "UpstreamCandidate.observed_at_unix_secs"),
            V("inf", lambda: math.inf, "UpstreamCandidate.observed_at_unix_secs"),
            T("str", lambda: "1767225600", "UpstreamCandidate.observed_at_unix_secs"),
            T("none", lambda: None, "UpstreamCandidate.observed_at_unix_secs"),
            T("bool", lambda: True, "UpstreamCandidate.observed_at_unix_secs"),
            T("datetime", lambda: datetime.datetime.now(datetime.timezone.utc), "UpstreamCandidate.observed_at_unix_secs"),
            T("deep-list", deep_list, "UpstreamCandidate.observed_at_unix_secs"),
        ],
        "cache_score": _wrong_types(
            "UpstreamCandidate.cache_score",
            T("int", lambda: 5, "UpstreamCandidate.cache_score"),
            T("dict", lambda: {"predicted_cache_read_tokens": 5}, "UpstreamCandidate.cache_score"),
        ),
        "plan_capacity_ratio": _wrong_types(
            "UpstreamCandidate.plan_capacity_ratio",
            T("str", lambda: "0.5", "UpstreamCandidate.plan_capacity_ratio"),
            T("none", lambda: None, "UpstreamCandidate.plan_capacity_ratio"),
            T("bool", lambda: True, "UpstreamCandidate.plan_capacity_ratio"),
            V("int-past-float", lambda: 10**400, "UpstreamCandidate.plan_capacity_ratio"),
        ),
        **{name: _str_field(f"UpstreamCandidate.{name}") for name in ("organization_type", "rate_limit_tier", "seat_tier")},
    },
    "AnthropicDirect": {
        "base_url": [
            V("not-a-url", lambda: "not a url", "AnthropicDirect.base_url"),
            V("empty", lambda: "", "AnthropicDirect.base_url"),
            V("relative", lambda: "/v1/messages", "AnthropicDirect.base_url"),
            V("deep-json-text", lambda: DEEP_JSON_ARRAY, "AnthropicDirect.base_url"),
            T("bytes", lambda: b"https://api.anthropic.com", "AnthropicDirect.base_url"),
            T("int", lambda: 42, "AnthropicDirect.base_url"),
            T("deep-list", deep_list, "AnthropicDirect.base_url"),
            T("deep-dict", deep_dict, "AnthropicDirect.base_url"),
        ],
    },
    "RequestStarted": {
        "request_id": _str_field("RequestStarted.request_id"),
        "downstream_user_agent": _str_field("RequestStarted.downstream_user_agent", optional=True),
    },
    "AuthnComplete": {
        "principal_id": _str_field("AuthnComplete.principal_id"),
        "principal_kind": _kind_field("AuthnComplete.principal_kind"),
    },
    "UpstreamChosen": {
        "upstream": _wrong_types(
            "UpstreamChosen.upstream",
            T("none", lambda: None, "UpstreamChosen.upstream"),
            T("url-str", lambda: "https://api.anthropic.com", "UpstreamChosen.upstream"),
            T("wire-upstream", lambda: wire.AnthropicDirect(None), "UpstreamChosen.upstream"),
        ),
    },
    "Chunk": {name: _int_field(f"Chunk.{name}", U64) for name in ("batch_index", "event_count", "total_bytes")},
    "RequestFinished": {
        "status": _int_field("RequestFinished.status", 65535),
        **{
            name: _int_field(f"RequestFinished.{name}", U64, optional=True)
            for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        },
        "duration_ms": _int_field("RequestFinished.duration_ms", U64),
    },
    "ErrorEvent": {name: _str_field(f"ErrorEvent.{name}") for name in ("code", "message", "source")},
    "WireBounds": {
        name: _int_field(f"WireBounds.{name}", U64)
        for name in ("output_body_bytes", "max_headers", "max_header_value_bytes", "reason_bytes")
    },
}

# --- the plugin host (cclb_wire.runtime) ----------------------------------------------------


def _number_field(field: str, *too_big: float, optional: bool = False) -> List[Bad]:
    bads = _wrong_types(
        field,
        T("str", lambda: "1", field),
        T("bool", lambda: True, field),
        V("inf", lambda: math.inf, field),
        V("nan", lambda: math.nan, field),
        V("zero", lambda: 0, field),
        V("negative", lambda: -1.0, field),
        V("int-past-float", lambda: 10**400, field),
        *(V(f"big-{value}", lambda value=value: value, field) for value in too_big),
    )
    if not optional:
        bads.append(T("none", lambda: None, field))
    return bads


def _enum_field(field: str) -> List[Bad]:
    return _wrong_types(
        field, V("unknown", lambda: "nope", field), V("empty", lambda: "", field), V("dashes", lambda: "fail-closed", field),
        T("int", lambda: 1, field), T("none", lambda: None, field),
    )


def _bool_field(field: str) -> List[Bad]:
    return _wrong_types(field, T("int", lambda: 1, field), T("str", lambda: "yes", field), T("none", lambda: None, field))


def _host_config_defaults() -> Dict[str, Any]:
    import dataclasses

    default = cw.HostConfig()
    return {f.name: getattr(default, f.name) for f in dataclasses.fields(cw.HostConfig)}


VALID["HostConfig"] = _host_config_defaults
VALID["PluginHost"] = lambda: {"config": None}
GIB = 1 << 30
TABLE["HostConfig"] = {
    "bounds": _wrong_types("HostConfig.bounds", T("none", lambda: None, "HostConfig.bounds"), T("int", lambda: 5, "HostConfig.bounds")),
    "origin_policy": _enum_field("HostConfig.origin_policy"),
    "cookie_redaction": _bool_field("HostConfig.cookie_redaction"),
    "failure_policy": _enum_field("HostConfig.failure_policy"),
    "deadline_s": _number_field("HostConfig.deadline_s", 1e9, optional=True),
    "fuel": _int_field("HostConfig.fuel", 2**63 - 1, optional=True) + [V("zero", lambda: 0, "HostConfig.fuel"), V("u64", lambda: 2**64, "HostConfig.fuel")],
    "memory_limit_bytes": _int_field("HostConfig.memory_limit_bytes", 4 * GIB) + [T("float-literal", lambda: 128e6, "HostConfig.memory_limit_bytes")],
    "table_elements_limit": _int_field("HostConfig.table_elements_limit", 1 << 26),
    "max_tables": _int_field("HostConfig.max_tables", 1024),
    "max_wasm_stack": _int_field("HostConfig.max_wasm_stack", 4 * 1024 * 1024) + [V("zero", lambda: 0, "HostConfig.max_wasm_stack")],
    "instance_strategy": _enum_field("HostConfig.instance_strategy"),
    "epoch_tick_s": _number_field("HostConfig.epoch_tick_s", 2),
    "module_cache_dir": _wrong_types(
        "HostConfig.module_cache_dir",
        T("int", lambda: 5, "HostConfig.module_cache_dir"),
        V("nul-in-path", lambda: "/tmp/a\0b", "HostConfig.module_cache_dir"),
        T("broken-fspath", lambda: BrokenPath(), "HostConfig.module_cache_dir"),
    ),
    "module_cache_size": _int_field("HostConfig.module_cache_size", 1024),
    "pool_size": _int_field("HostConfig.pool_size", 4096),
    "max_module_bytes": _int_field("HostConfig.max_module_bytes", 1 << 30) + [V("under-8", lambda: 7, "HostConfig.max_module_bytes")],
    "compile_timeout_s": _number_field("HostConfig.compile_timeout_s", 3601, optional=True),
    "probe": _bool_field("HostConfig.probe"),
    "breaker_failures": _int_field("HostConfig.breaker_failures", 1_000_000),
    "breaker_cooldown_s": _number_field("HostConfig.breaker_cooldown_s", 86401),
}
TABLE["PluginHost"] = {
    "config": _wrong_types(
        "PluginHost.config", T("dict", lambda: {"deadline_s": 1.0}, "PluginHost.config"), T("int", lambda: 1, "PluginHost.config"),
    ),
}

# Names in cclb_wire.__all__ that the table leaves out on purpose.
EXCLUDED = {
    # not callable: constants and modules
    "BACKEND": "a constant",
    "WIRE_VERSION": "a constant",
    "FINGERPRINTS": "a constant (a dict)",
    "schema": "a module: layouts and descriptors, no input from users",
    "wire": "a module of generated namedtuple value classes; the codec checks their fields (see encode's cases)",
    # enums: calling one is a member lookup (ValueError by design); the API takes them via coerce_enum
    "PrincipalKind": "an enum",
    "UpstreamKind": "an enum",
    "PerCandidateReason": "an enum (an output)",
    "ShapeOriginPolicy": "an enum; the string forms are in decode_shaped_request's cases",
    # outputs: built by the library from validated archives, never from user input
    "FilterOutput": "an output of decode_filter_output",
    "ShapedRequest": "an output of decode_shaped_request",
    "FailurePolicy": "an enum; its string forms are in HostConfig's cases",
    "InstanceStrategy": "an enum; its string forms are in HostConfig's cases",
    # made by PluginHost.register_*, never by users; their methods are walked in METHOD_TABLE
    "FilterPlugin": "an adapter made by PluginHost.register_filter",
    "UpstreamDialect": "an adapter made by PluginHost.register_shape",
    "ObservabilityHook": "an adapter made by PluginHost.register_observe",
    "SlotStats": "an output of PluginHost.stats",
    "MemoryPoolStats": "an output of PluginHost.memory_pool_stats",
    "ResponseTransform": "an output of UpstreamDialect.transform_response",
    "SseTransform": "an output of UpstreamDialect.transform_sse_event",
    "SseAction": "an enum (an output)",
    # the exception classes themselves
    **{
        name: "an exception class"
        for name in (
            "CclbWireError", "InvalidInput", "InvalidInputType", "WireError", "DecodeError", "PointerOutOfRange",
            "UnalignedPointer", "InvalidUtf8", "InvalidDiscriminant", "EncodeError", "EncodeTypeError", "FilterError",
            "DialectError", "TransformError", "ObservabilityError", "PluginError", "PluginRejected", "PluginTimeout", "PluginOutOfFuel",
            "PluginPoolSaturated", "PluginCircuitOpen",
            "PluginMemoryLimit", "PluginResourceLimit", "PluginTrap", "PluginOutputError",
        )
    },
}

def _parameters(name: str) -> List[str]:
    """The parameters of a public callable, from its Python signature (the fallback's for
    the codec functions: the extension's have the very same)."""
    target = getattr(_fallback, name) if name in CODEC_FUNCTIONS else getattr(cw, name)
    return [p for p in inspect.signature(target).parameters]


def test_the_table_covers_the_public_api():
    public = set(cw.__all__)
    for name in cw.__all__:
        if name in EXCLUDED:
            continue
        assert name in TABLE, f"cclb_wire.{name} is public but has no row in the error-contract TABLE"
    assert set(TABLE) <= public, "the TABLE names something that is not public"
    assert set(EXCLUDED) <= public, "a stale exclusion"
    assert not set(TABLE) & set(EXCLUDED)
    for name in TABLE:
        assert set(TABLE[name]) == set(_parameters(name)), f"cclb_wire.{name}: a parameter without bad values"
        assert set(VALID[name]()) == set(_parameters(name))
        for bads in TABLE[name].values():
            assert {bad.kind for bad in bads} <= {"type", "value"}
            assert any(bad.kind == "type" for bad in bads), f"cclb_wire.{name}: no wrong-type case"


ADAPTERS_AND_OUTPUTS = (
    "FilterOutput", "ShapedRequest", "SlotStats", "MemoryPoolStats", "FilterPlugin", "UpstreamDialect", "ObservabilityHook",
    "ResponseTransform", "SseTransform",
)


def test_every_exclusion_is_an_exception_enum_output_or_not_callable():
    for name, why in EXCLUDED.items():
        value = getattr(cw, name)
        assert why
        if isinstance(value, type):
            assert issubclass(value, (BaseException, enum.Enum)) or name in ADAPTERS_AND_OUTPUTS, name
        else:
            assert not callable(value), name


CASES = [
    pytest.param(name, param, bad, id=f"{name}.{param}-{bad.label}")
    for name, params in TABLE.items()
    for param, bads in params.items()
    for bad in bads
]


def _call(target: Callable, name: str, param: str, bad: Bad) -> None:
    arguments = VALID[name]()
    arguments[param] = bad.make()
    target(**arguments)


def _check(error: BaseException, bad: Bad) -> None:
    assert isinstance(error, cw.CclbWireError)
    message = str(error)
    if bad.starts:
        assert message.startswith(bad.names), message[:300]
        if isinstance(error, cw.InvalidInput):
            assert error.field.startswith(bad.names)
        else:  # encode(42) and friends: an EncodeTypeError, as the codec's type errors are
            assert isinstance(error, cw.EncodeTypeError)
    else:
        assert bad.names in message, message[:300]
    assert "\n" not in message
    if bad.kind == "type":
        assert isinstance(error, TypeError), f"{type(error).__name__}: {message[:200]}"
    else:
        assert isinstance(error, ValueError) and not isinstance(error, TypeError), f"{type(error).__name__}: {message[:200]}"


def test_the_table_has_many_cases():
    assert len(CASES) >= 300


def test_the_valid_arguments_are_valid():
    for name, make in VALID.items():
        getattr(cw, name)(**make())


@pytest.mark.parametrize("name, param, bad", CASES)
def test_bad_input_raises_a_cclb_wire_error_naming_the_field(name, param, bad):
    # pytest.raises lets anything but a CclbWireError (RecursionError, AttributeError, a
    # bare TypeError ...) through, which fails the test.
    with pytest.raises(cw.CclbWireError) as caught:
        _call(getattr(cw, name), name, param, bad)
    _check(caught.value, bad)


CODEC_CASES = [case for case in CASES if case.values[0] in CODEC_FUNCTIONS]


@pytest.mark.skipif(_codec is None, reason="no extension to compare")
@pytest.mark.parametrize("name, param, bad", CODEC_CASES)
def test_both_backends_raise_the_same_error(name, param, bad):
    outcomes = []
    for backend in (_codec, _fallback):
        with pytest.raises(cw.CclbWireError) as caught:
            _call(getattr(backend, name), name, param, bad)
        _check(caught.value, bad)
        outcomes.append((type(caught.value), str(caught.value)))
    assert outcomes[0] == outcomes[1]


# --- values that bypass construction still meet the encoders' own checks ------------------


def _bypassed(obj: Any, **fields: Any) -> Any:
    for key, value in fields.items():
        object.__setattr__(obj, key, value)
    return obj


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: cw.encode_filter_request(_bypassed(cw.RequestContext("r", "GET", "/"), headers=(("a", "b", "c"),)), PRINCIPAL, []),
         "RequestContext.headers[0]"),
        (lambda: cw.encode_filter_request(_bypassed(cw.RequestContext("r", "GET", "/"), request_id=42), PRINCIPAL, []),
         "FilterRequest.request_id"),
        (lambda: cw.encode_shape_request(_bypassed(cw.RequestContext("r", "GET", "/"), body="text"), PRINCIPAL, UPSTREAM),
         "ShapeRequest.body"),
        (lambda: cw.encode_observe_event(_bypassed(cw.Chunk(1, 2, 3), batch_index=-1)), "ObserveEvent.Chunk.batch_index"),
        (lambda: cw.encode_observe_event(_bypassed(cw.RequestFinished(200), status=70000)), "ObserveEvent.RequestFinished.status"),
        (lambda: cw.encode_observe_event(_bypassed(cw.AuthnComplete("p", "k"), principal_kind=42)), "AuthnComplete.principal_kind"),
        (lambda: cw.encode_observe_event(_bypassed(cw.UpstreamChosen(UPSTREAM), upstream="x")), "UpstreamChosen.upstream"),
    ],
    ids=["header-triple", "request-id", "body-str", "chunk", "status", "authn-kind", "chosen-upstream"],
)
def test_the_encoders_still_check_what_bypasses_construction(make, names):
    with pytest.raises(cw.CclbWireError) as caught:
        make()
    assert names in str(caught.value)


# --- the shape-origin hole, through every form of the policy ------------------------------


@pytest.mark.parametrize("policy", [cw.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN, "selected_upstream_origin", "SELECTED_UPSTREAM_ORIGIN"])
def test_origin_policy_strings_enforce_the_origin(policy):
    answer = cw.encode(wire.ShapeResponse("https://evil.example/steal", "POST", (), b""))
    with pytest.raises(cw.DialectError, match="selected upstream requires `https://api.anthropic.com`"):
        cw.decode_shaped_request(answer, cw.AnthropicDirect("https://api.anthropic.com"), origin_policy=policy)


# --- the plugin host's methods and its adapters' calls ----------------------------------------

PLUGINS = resources.files("cclb_wire") / "plugins"


class BrokenPath:
    """An os.PathLike whose __fspath__ fails the way a buggy one does."""

    def __fspath__(self) -> str:
        raise ValueError("no path here")


class BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/plugin.wasm"


def _wasm_arg(field: str) -> List[Bad]:
    return _wrong_types(
        field,
        T("int", lambda: 42, field),
        T("none", lambda: None, field),
        V("missing-path", lambda: "/nonexistent/plugin.wasm", field),
        V("directory", lambda: ".", field),
        V("nul-in-path", lambda: "/tmp/a\0b", field),
        T("broken-fspath", BrokenPath, field),
        T("bytes-fspath", BytesPath, field),
    )


def _slot_kind(field: str) -> List[Bad]:
    return _wrong_types(field, V("unknown", lambda: "transform", field), V("empty", lambda: "", field), T("int", lambda: 1, field))


def _plugin_bytes(name: str) -> bytes:
    return (PLUGINS / f"{name}.wasm").read_bytes()


# method -> (valid arguments, {parameter: bad values}). Adapter calls name the codec's
# parameter (``encode_filter_request.ctx``): the message must contain the parameter's name.
METHOD_TABLE: Dict[str, Tuple[Callable[[], Dict[str, Any]], Dict[str, List[Bad]]]] = {
    **{
        f"register_{hook}": (
            lambda hook=hook, plugin=plugin: {"slot_key": "s", "name": "n", "wasm": _plugin_bytes(plugin), "failure_policy": None},
            {
                "slot_key": _str_field(f"register_{hook}.slot_key"),
                "name": _str_field(f"register_{hook}.name"),
                "wasm": _wasm_arg(f"register_{hook}.wasm"),
                "failure_policy": _wrong_types(
                    f"register_{hook}.failure_policy",
                    V("unknown", lambda: "sometimes", f"register_{hook}.failure_policy"),
                    T("int", lambda: 1, f"register_{hook}.failure_policy"),
                ),
            },
        )
        for hook, plugin in (("filter", "cache_aware_filter"), ("shape", "shape_passthrough"), ("observe", "observe_counter"))
    },
    **{
        method: (
            lambda: {"kind": "filter", "slot_key": "s"},
            {"kind": _slot_kind(f"{method}.kind"), "slot_key": _str_field(f"{method}.slot_key")},
        )
        for method in ("unregister", "slot")
    },
    "close": (
        lambda: {"timeout": None},
        {"timeout": [bad for bad in _number_field("PluginHost.close.timeout", 1e9, optional=True) if bad.label != "zero"]},
    ),
    "filter": (
        lambda: {"ctx": CTX, "principal": PRINCIPAL, "candidates": [CANDIDATE]},
        {
            "ctx": [T("int", lambda: 1, "ctx", False), T("deep-list", deep_list, "ctx", False)],
            "principal": [T("str", lambda: "p", "principal", False), T("deep-dict", deep_dict, "principal", False)],
            "candidates": [T("int", lambda: 1, "candidates", False), T("deep-list", deep_list, "candidates", False)],
        },
    ),
    "filter_with_policy": (
        lambda: {"ctx": CTX, "principal": PRINCIPAL, "candidates": [CANDIDATE]},
        {
            "ctx": [T("int", lambda: 1, "ctx", False)],
            "principal": [T("none", lambda: None, "principal", False)],
            "candidates": [T("int", lambda: 1, "candidates", False), T("deep-list", deep_list, "candidates", False)],
        },
    ),
    "shape": (
        lambda: {"ctx": CTX, "upstream": UPSTREAM, "principal": PRINCIPAL},
        {
            "ctx": [T("none", lambda: None, "ctx", False)],
            "upstream": [T("str", lambda: "https://api.anthropic.com", "upstream", False), T("deep-list", deep_list, "upstream", False)],
            "principal": [T("int", lambda: 1, "principal", False)],
        },
    ),
    "shape_with_policy": (
        lambda: {"ctx": CTX, "upstream": UPSTREAM, "principal": PRINCIPAL},
        {"upstream": [T("none", lambda: None, "upstream", False)]},
    ),
    **{
        method: (
            lambda method=method: {"ctx": CTX, "upstream": UPSTREAM, "principal": PRINCIPAL, "response": RESPONSE,
                                   **({"scope": None} if method == "sse_stream" else {})},
            {
                "ctx": [T("none", lambda: None, "ctx", False)],
                "upstream": [T("str", lambda: "https://api.anthropic.com", "upstream", False)],
                "principal": [T("int", lambda: 1, "principal", False)],
                "response": [T("tuple", lambda: (200, (), b""), "response", False), T("deep-list", deep_list, "response", False)],
                **({"scope": [T("str", lambda: "scope", "sse_stream.scope"), T("int", lambda: 1, "sse_stream.scope")]}
                   if method == "sse_stream" else {}),
            },
        )
        for method in ("transform_response", "transform_response_with_policy", "sse_stream")
    },
    "transform_sse_event": (
        lambda: {"ctx": CTX, "upstream": UPSTREAM, "principal": PRINCIPAL, "response": RESPONSE, "event": cw.SseEvent("ping", b"")},
        {
            "response": [T("none", lambda: None, "response", False)],
            "event": [T("wire-event", lambda: wire.SseEvent("ping", b""), "event", False), T("str", lambda: "ping", "event", False)],
        },
    ),
    "observe": (
        lambda: {"event": cw.Chunk(1, 2, 3), "scope": None},
        {"event": [T("int", lambda: 1, "event", False), T("wire-chunk", lambda: wire.Chunk(1, 2, 3), "event", False),
                   T("deep-dict", deep_dict, "event", False)],
         "scope": [T("str", lambda: "scope", "observe.scope"), T("int", lambda: 1, "observe.scope")]},
    ),
    "observe_with_policy": (
        lambda: {"event": cw.Chunk(1, 2, 3), "scope": None},
        {"event": [T("int", lambda: 1, "event", False), T("wire-chunk", lambda: wire.Chunk(1, 2, 3), "event", False)],
         "scope": [T("str", lambda: "scope", "observe.scope")]},
    ),
    "observe_batch": (
        lambda: {"events": [cw.Chunk(1, 2, 3)], "scope": None},
        {"events": [T("int", lambda: 1, "ObservabilityHook.observe_batch.events"), T("int-item", lambda: [1], "event", False),
                    T("wire-chunk-item", lambda: [wire.Chunk(1, 2, 3)], "event", False),
                    T("deep-list", deep_list, "event", False)],
         "scope": [T("str", lambda: "scope", "observe.scope")]},
    ),
}

METHOD_CASES = [
    pytest.param(method, param, bad, id=f"{method}.{param}-{bad.label}")
    for method, (_, params) in METHOD_TABLE.items()
    for param, bads in params.items()
    for bad in bads
]


@pytest.fixture(scope="module")
def host():
    with cw.PluginHost(cw.HostConfig()) as plugin_host:
        yield plugin_host


def _method(plugin_host: Any, method: str) -> Callable[..., Any]:
    """The bound method: the host's own, or a live adapter's."""
    if method in ("filter", "filter_with_policy"):
        return getattr(plugin_host.register_filter("f", "cache-aware", _plugin_bytes("cache_aware_filter")), method)
    if method in ("shape", "shape_with_policy"):
        return getattr(plugin_host.register_shape("s", "passthrough", _plugin_bytes("shape_passthrough")), method)
    if method in ("transform_response", "transform_response_with_policy", "transform_sse_event", "sse_stream"):
        return getattr(plugin_host.register_shape("s10", "tool-rename", _plugin_bytes("tool_rename_shape_1_0")), method)
    if method in ("observe", "observe_with_policy", "observe_batch"):
        return getattr(plugin_host.register_observe("o", "counter", _plugin_bytes("observe_counter")), method)
    if method == "close":
        return cw.PluginHost().close  # a host of its own: the shared one stays open
    return getattr(plugin_host, method)


def test_the_method_table_covers_every_public_method():
    from cclb_wire import runtime

    owners = (runtime.PluginHost, runtime.FilterPlugin, runtime.UpstreamDialect, runtime.ObservabilityHook)
    public = {
        name
        for owner in owners
        for name, member in vars(owner).items()
        if callable(member) and not name.startswith("_") and inspect.signature(member).parameters.keys() - {"self"}
    }
    assert public == set(METHOD_TABLE), public ^ set(METHOD_TABLE)
    for method, (valid, params) in METHOD_TABLE.items():
        owner = next(o for o in owners if method in vars(o))
        assert set(params) <= set(valid()) == set(inspect.signature(vars(owner)[method]).parameters) - {"self"}, method


def test_the_method_arguments_are_valid(host):
    for method, (valid, _) in METHOD_TABLE.items():
        _method(host, method)(**valid())


@pytest.mark.parametrize("method, param, bad", METHOD_CASES)
def test_bad_input_to_a_host_method_names_the_parameter(host, method, param, bad):
    arguments = METHOD_TABLE[method][0]()
    arguments[param] = bad.make()
    with pytest.raises(cw.CclbWireError) as caught:
        _method(host, method)(**arguments)
    _check(caught.value, bad)


# --- the CLI: one line on stderr, a non-zero exit, never a traceback ------------------------



def _leb128(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def module_with_metadata(payload: bytes) -> bytes:
    """A wasm module holding only a ``cc_lb.plugin.v1`` custom section (binary format: magic,
    version, section id 0, size, name length, name, payload)."""
    name = b"cc_lb.plugin.v1"
    body = _leb128(len(name)) + name + payload
    return b"\0asm\x01\0\0\0" + b"\x00" + _leb128(len(body)) + body


DEEP_METADATA = b"[" * 50_000 + b"]" * 50_000


def test_deep_metadata_is_an_admission_rejection_not_a_recursion_error():
    from cclb_wire.runtime.wasm_module import inspect_plugin

    inspection = inspect_plugin(module_with_metadata(DEEP_METADATA))
    assert inspection.metadata is None
    problems = inspection.problems_for("filter")
    assert any(problem.startswith("invalid `cc_lb.plugin.v1` metadata JSON") for problem in problems)
    with pytest.raises(cw.PluginRejected, match="invalid `cc_lb.plugin.v1` metadata JSON"):
        inspection.check("filter", "deep")


def run_cli(argv: List[str], capsys, monkeypatch, stdin: bytes = b"") -> Tuple[int, str]:
    class Stdin:
        buffer = io.BytesIO(stdin)

    monkeypatch.setattr(sys, "stdin", Stdin())
    capsys.readouterr()
    code = cli.main(argv)
    return code, capsys.readouterr().err


def _request_file(tmp_path, content) -> str:
    path = tmp_path / "request.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


FILTER_PLUGIN = str(PLUGINS / "cache_aware_filter.wasm")
OBSERVE_PLUGIN = str(PLUGINS / "observe_counter.wasm")

def call_request(hook: str, content: Any, plugin: str = FILTER_PLUGIN) -> Callable[[Any], Tuple[List[str], bytes]]:
    """``cclb-wire call PLUGIN --hook HOOK --request FILE`` with FILE holding ``content``."""
    return lambda d: (["call", plugin, "--hook", hook, "--request", _request_file(d, content)], b"")


CLI_CASES: List[Tuple[str, Callable[[Any], Tuple[List[str], bytes]], Optional[str]]] = [
    # (id, build(tmp_path) -> (argv, stdin), text the line must contain)
    ("call-json-list", call_request("filter", "[]"), "$"),
    ("call-principal-str", call_request("filter", '{"principal": "x"}'), "$.principal"),
    ("call-deep-json", call_request("filter", "[" * 50_000 + "]" * 50_000), "deeper than"),
    ("call-deep-object-json", call_request("filter", '{"a":' * 50_000 + "1" + "}" * 50_000), "deeper than"),
    ("call-bad-uuid", call_request("filter", '{"candidates": [{"upstream_id": "x"}]}'), "$.candidates[0].upstream_id"),
    ("call-candidate-no-id", call_request("filter", '{"candidates": [{}]}'), "$.candidates[0]"),
    ("call-candidates-object", call_request("filter", '{"candidates": {}}'), "$.candidates"),
    ("call-header-triple", call_request("filter", '{"request": {"headers": [["a", "b", "c"]]}}'), "$.request.headers[0]"),
    ("call-header-bad-hex", call_request("filter", '{"request": {"headers": [["a", {"hex": "zz"}]]}}'), "$.request.headers[0][1]"),
    ("call-body-number", call_request("filter", '{"request": {"body": 5}}'), "$.request.body"),
    ("call-method-number", call_request("filter", '{"request": {"method": 5}}'), "$.request.method"),
    ("call-claim-too-big", call_request("filter", '{"principal": {"claims": {"n": 18446744073709551616}}}'), "$.principal.claims['n']"),
    ("call-bad-base-url", call_request("shape", '{"upstream": {"base_url": "nope"}}'), "$.upstream.base_url"),
    ("call-event-bad-int", call_request("observe", '{"event": {"Chunk": {"batch_index": -1, "event_count": 1, "total_bytes": 1}}}', OBSERVE_PLUGIN), "$.event.Chunk.batch_index"),
    ("call-event-unknown-field", call_request("observe", '{"event": {"Chunk": {"bogus": 1}}}', OBSERVE_PLUGIN), "$.event.Chunk.bogus"),
    ("call-event-missing", call_request("observe", "{}", OBSERVE_PLUGIN), "$.event"),
    ("call-not-utf8", call_request("filter", b"\xff\xfe\x00"), "request"),
    ("call-missing-request", lambda d: (["call", FILTER_PLUGIN, "--hook", "filter", "--request", str(d / "missing.json")], b""), "missing.json"),
    ("call-missing-plugin", lambda d: (["call", str(d / "missing.wasm"), "--hook", "filter", "--request", _request_file(d, "{}")], b""), "missing.wasm"),
    ("call-deep-metadata", lambda d: (["call", _write(d, "deep.wasm", module_with_metadata(DEEP_METADATA)), "--hook", "filter", "--request", _request_file(d, '{"request": {}, "principal": {}, "candidates": []}')], b""), "metadata JSON"),
    ("call-bad-deadline", lambda d: (["call", FILTER_PLUGIN, "--hook", "filter", "--request", _request_file(d, "{}"), "--deadline", "-1"], b""), "deadline"),
    ("encode-deep-json", lambda d: (["encode", "--type", "FilterResponse"], b"[" * 50_000 + b"]" * 50_000), "stdin"),
    ("encode-deep-inside", lambda d: (["encode", "--type", "FilterResponse"], b'{"results": ' + b"[" * 50_000), "stdin"),
    ("encode-not-json", lambda d: (["encode", "--type", "FilterResponse"], b"{nope"), "not valid JSON"),
    ("encode-wrong-shape", lambda d: (["encode", "--type", "FilterResponse"], b"[]"), "FilterResponse"),
    ("encode-empty", lambda d: (["encode", "--type", "ShapeResponse"], b""), "stdin"),
    ("decode-bad-hex", lambda d: (["decode", "--type", "FilterResponse", "--hex"], b"zz"), "hex"),
    ("decode-bad-archive", lambda d: (["decode", "--type", "FilterResponse"], b"\x00\x01"), "FilterResponse"),
    ("inspect-missing", lambda d: (["inspect", str(d / "missing.wasm")], b""), "missing.wasm"),
    ("inspect-directory", lambda d: (["inspect", str(d)], b""), "cannot read"),
    ("inspect-garbage", lambda d: (["inspect", _write(d, "garbage.wasm", b"garbage")], b""), "admission rejected"),
    ("inspect-deep-metadata", lambda d: (["inspect", _write(d, "deep.wasm", module_with_metadata(DEEP_METADATA))], b""), "metadata JSON"),
    ("usage-no-command", lambda d: ([], b""), "error"),
    ("usage-unknown-command", lambda d: (["bogus"], b""), "bogus"),
    ("usage-not-a-root-type", lambda d: (["decode", "--type", "Header"], b""), "Header"),
    ("usage-call-without-hook", lambda d: (["call", FILTER_PLUGIN, "--request", "x.json"], b""), "--hook"),
    ("usage-bad-indent", lambda d: (["decode", "--type", "FilterResponse", "--indent", "x"], b""), "--indent"),
    ("usage-huge-indent", lambda d: (["decode", "--type", "FilterResponse", "--indent", "9" * 20], b""), "--indent"),
    ("usage-negative-indent", lambda d: (["decode", "--type", "FilterResponse", "--indent", "-1"], b""), "--indent"),
    ("usage-unknown-sample", lambda d: (["sample", "Nope"], b""), "Nope"),
    ("sample-extra-argument", lambda d: (["sample", "FilterResponse", "extra"], b""), "extra"),
    ("demo-unknown-option", lambda d: (["demo", "--bogus"], b""), "--bogus"),
    ("schema-extra-argument", lambda d: (["schema", "extra"], b""), "extra"),
]


def test_every_cli_command_has_a_bad_input_case():
    # A new subcommand of the parser fails this until it has a case above.
    (commands,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    covered = {case_id.split("-")[0] for case_id, _, _ in CLI_CASES}
    assert set(commands.choices) <= covered, set(commands.choices) - covered


def _write(directory, name: str, content: bytes) -> str:
    path = directory / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("build, contains", [pytest.param(b, c, id=i) for i, b, c in CLI_CASES])
def test_cli_failure_is_one_line_and_a_non_zero_exit(build, contains, tmp_path, capsys, monkeypatch):
    argv, stdin = build(tmp_path)
    code, err = run_cli(argv, capsys, monkeypatch, stdin)
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err[:500]
    assert lines[0].startswith("cclb-wire")
    assert contains in lines[0], lines[0][:500]


def test_cli_success_still_exits_zero(capsys, monkeypatch):
    code, err = run_cli(["sample", "FilterResponse"], capsys, monkeypatch)
    assert (code, err) == (0, "")
    code, err = run_cli(["--help"], capsys, monkeypatch)  # argparse's exit(0) becomes a return
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    "argv, stdin",
    [
        (["encode", "--type", "FilterResponse"], b" " * 2048),
        (["decode", "--type", "FilterResponse"], b"\0" * 2048),
    ],
    ids=["encode", "decode"],
)
def test_cli_input_is_bounded(argv, stdin, capsys, monkeypatch):
    # `cclb-wire encode < /dev/zero` must end with an error, not eat memory forever.
    monkeypatch.setattr(cli, "MAX_INPUT_BYTES", 1024)
    code, err = run_cli(argv, capsys, monkeypatch, stdin)
    assert code == 1 and err.splitlines() == ["cclb-wire: stdin: larger than 1024 bytes"]


def test_cli_request_and_plugin_files_are_bounded(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "MAX_INPUT_BYTES", 1024)
    big = _write(tmp_path, "big.json", b" " * 2048)
    code, err = run_cli(["call", FILTER_PLUGIN, "--hook", "filter", "--request", big], capsys, monkeypatch)
    assert code == 1 and "larger than 1024 bytes" in err and len(err.splitlines()) == 1
    code, err = run_cli(["inspect", FILTER_PLUGIN], capsys, monkeypatch)  # the 8 KiB plugin
    assert code == 1 and "larger than 1024 bytes" in err and len(err.splitlines()) == 1


def test_cli_with_stdin_closed_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    capsys.readouterr()
    assert cli.main(["encode", "--type", "FilterRequest"]) == 1
    assert capsys.readouterr().err.splitlines() == ["cclb-wire: stdin: is closed"]


def test_cli_output_the_terminal_cannot_encode_is_escaped():
    import os
    import subprocess

    environment = dict(os.environ, PYTHONIOENCODING="ascii")
    result = subprocess.run(
        [sys.executable, "-m", "cclb_wire", "demo"], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "\\xb5s" in result.stdout  # µs, escaped
