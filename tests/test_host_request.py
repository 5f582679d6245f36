"""Host -> wire request building (HOST.md "Building the request", "Defaults").

Every expected value below is derived from the spec text (HOST.md, WIRE-V1.md,
ccl-host-facts.md sections 1 and 7), never from running the library.
"""

import datetime
import enum
import functools
import http
import uuid

import pytest

import cclb_wire
from cclb_wire import (
    AnthropicDirect,
    AuthnComplete,
    CacheScore,
    Chunk,
    ErrorEvent,
    Principal,
    PrincipalKind,
    RequestContext,
    RequestFinished,
    RequestStarted,
    UpstreamCandidate,
    UpstreamChosen,
    wire,
)

# --------------------------------------------------------------------------- helpers


def ctx(headers=(), *, request_id="req-1", method="POST", path="/v1/messages", query=None, body=b""):
    return RequestContext(request_id=request_id, method=method, path=path, query=query, headers=headers, body=body)


PRINCIPAL = Principal("tenant-a", PrincipalKind.API_KEY, {})


def filter_req(context, principal=PRINCIPAL, candidates=(), **kw):
    data = cclb_wire.encode_filter_request(context, principal, candidates, **kw)
    assert isinstance(data, (bytes, bytearray, memoryview))
    return cclb_wire.decode("FilterRequest", bytes(data))


def shape_req(context, principal=PRINCIPAL, upstream=None, **kw):
    if upstream is None:
        upstream = AnthropicDirect("https://api.anthropic.com")
    data = cclb_wire.encode_shape_request(context, principal, upstream, **kw)
    return cclb_wire.decode("ShapeRequest", bytes(data))


def hdrs(decoded):
    """Headers of a decoded request as plain (name, value) pairs."""
    return [(h.name, h.value) for h in decoded.headers]


def claims_of(principal):
    req = filter_req(ctx(), principal)
    return [(c.key, c.value) for c in req.principal.claims]


def claim_json(value):
    """The claim bytes for a single claim {"k": value}."""
    got = claims_of(Principal("p", "api_key", {"k": value}))
    assert len(got) == 1 and got[0][0] == "k"
    return got[0][1]


def observe(event):
    return cclb_wire.decode("ObserveEvent", bytes(cclb_wire.encode_observe_event(event)))


# --------------------------------------------------------------------------- seed test (reference)


def test_seed_host_to_wire_strips_auth_headers():
    """Reference test host_to_wire_strips_auth_headers (facts §7)."""
    context = RequestContext(
        request_id="req-123",
        method="POST",
        path="/v1/messages",
        query=None,
        headers=[("content-type", "application/json"), ("authorization", "Bearer secret")],
        body=b'{"msg":"hi"}',
    )
    principal = Principal("tenant-a", PrincipalKind.API_KEY, {"scope": "inference"})
    req = filter_req(context, principal, [], cookie_redaction=False)
    assert req.request_id == "req-123"
    assert req.method == "POST"
    assert req.path == "/v1/messages"
    assert len(req.headers) == 1, "authorization must be filtered out"
    assert req.headers[0].name == "content-type"
    assert req.principal.id == "tenant-a"
    assert req.principal.kind == "api_key"
    assert [c.key for c in req.principal.claims] == ["scope"]
    # full picture of the same request
    assert req == wire.FilterRequest(
        "req-123",
        "POST",
        "/v1/messages",
        None,
        (wire.Header("content-type", b"application/json"),),
        b'{"msg":"hi"}',
        wire.Principal("tenant-a", "api_key", (wire.Claim("scope", b'"inference"'),)),
        (),
    )


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "name",
    [
        "authorization",
        "AUTHORIZATION",
        "Authorization",
        "x-api-key",
        "X-Api-Key",
        "X-API-KEY",
        "host",
        "Host",
        "HOST",
        "proxy-authorization",
        "Proxy-Authorization",
        "PROXY-AUTHORIZATION",
        b"Authorization",
        b"x-api-key",
        b"HOST",
        b"Proxy-Authorization",
    ],
)
def test_credential_headers_are_stripped(name):
    context = ctx([("accept", "*/*"), (name, "secret"), ("x-trace", "1")])
    expected = [("accept", b"*/*"), ("x-trace", b"1")]
    assert hdrs(filter_req(context)) == expected
    assert hdrs(shape_req(context)) == expected


@pytest.mark.parametrize(
    "name",
    ["x-authorization", "authorization2", "x-api-key-id", "hostname", "proxy-authenticate", "api-key", "cookie"],
)
def test_near_miss_header_names_are_kept(name):
    context = ctx([(name, "v")])
    assert hdrs(filter_req(context)) == [(name, b"v")]


def test_header_names_are_lowercased():
    context = ctx([("Content-Type", "application/json"), (b"X-Custom-Header", b"v"), ("ACCEPT", "*/*")])
    assert hdrs(filter_req(context)) == [
        ("content-type", b"application/json"),
        ("x-custom-header", b"v"),
        ("accept", b"*/*"),
    ]


def test_header_order_and_duplicates_kept():
    context = ctx(
        [
            ("x-b", "1"),
            ("X-A", "2"),
            ("authorization", "Bearer s"),
            ("x-b", "3"),
            ("X-B", "4"),
            ("x-a", "5"),
        ]
    )
    assert hdrs(filter_req(context)) == [
        ("x-b", b"1"),
        ("x-a", b"2"),
        ("x-b", b"3"),
        ("x-b", b"4"),
        ("x-a", b"5"),
    ]


def test_headers_from_a_mapping_keep_its_order():
    context = ctx({"Zeta": "z", "Authorization": "Bearer x", "alpha": "a"})
    assert hdrs(filter_req(context)) == [("zeta", b"z"), ("alpha", b"a")]


def test_header_values_are_raw_bytes_even_non_utf8():
    raw = b"\xff\xfe\x80 \x00abc\xc3("
    context = ctx([("x-bin", raw), (b"x-bytes-name", b"plain")])
    assert hdrs(filter_req(context)) == [("x-bin", raw), ("x-bytes-name", b"plain")]


def test_str_header_values_are_latin1():
    # "café" in Latin-1 is 63 61 66 E9 (not the UTF-8 C3 A9)
    context = ctx([("x-name", "caf\u00e9"), ("x-top", "\u00ff\u0080")])
    assert hdrs(filter_req(context)) == [("x-name", b"caf\xe9"), ("x-top", b"\xff\x80")]


def test_non_latin1_str_header_value_is_rejected():
    with pytest.raises(cclb_wire.InvalidInput, match=r"^RequestContext\.headers\[1\]: .*Latin-1") as caught:
        ctx([("x-ok", "1"), ("x-euro", "\u20ac")])
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, TypeError)


def test_non_ascii_header_name_is_rejected():
    with pytest.raises(cclb_wire.InvalidInput, match=r"^RequestContext\.headers\[0\]: .*not ASCII"):
        ctx([("x-caf\u00e9", "v")])
    with pytest.raises(cclb_wire.InvalidInput, match=r"^RequestContext\.headers\[2\]: "):
        ctx([("a", "1"), ("b", "2"), (b"x-caf\xc3\xa9", b"v")])


@pytest.mark.parametrize("pair", [("a", "b", "c"), ("a",), "ab", 42, None])
def test_header_that_is_not_a_pair_is_rejected(pair):
    with pytest.raises(cclb_wire.InvalidInputType, match=r"^RequestContext\.headers\[2\]: "):
        ctx([("a", "1"), ("b", "2"), pair])


@pytest.mark.parametrize("name, value", [(1, "v"), ("n", 1), ("n", None), (None, b"v")])
def test_header_name_and_value_types(name, value):
    with pytest.raises(cclb_wire.InvalidInputType, match=r"^RequestContext\.headers\[0\]: "):
        ctx([(name, value)])


def test_headers_set_behind_the_constructor_are_still_checked_by_the_encoder():
    context = ctx()
    object.__setattr__(context, "headers", (("x-ok", "1"), ("x-euro", "\u20ac")))
    with pytest.raises(cclb_wire.InvalidInput, match=r"^RequestContext\.headers\[1\]: "):
        cclb_wire.encode_filter_request(context, PRINCIPAL, [])


def test_no_headers_gives_empty_tuple():
    assert filter_req(ctx()).headers == ()


@pytest.mark.parametrize("name", ["cookie", "Cookie", "COOKIE", b"Cookie", b"cOoKiE"])
def test_cookie_kept_by_default_and_stripped_with_redaction(name):
    context = ctx([("accept", "*/*"), (name, "session=abc"), ("x-end", "1")])
    kept = [("accept", b"*/*"), ("cookie", b"session=abc"), ("x-end", b"1")]
    stripped = [("accept", b"*/*"), ("x-end", b"1")]
    assert hdrs(filter_req(context)) == kept
    assert hdrs(filter_req(context, cookie_redaction=False)) == kept
    assert hdrs(filter_req(context, cookie_redaction=True)) == stripped
    assert hdrs(shape_req(context)) == kept
    assert hdrs(shape_req(context, cookie_redaction=True)) == stripped


def test_cookie_redaction_only_strips_cookie():
    context = ctx([("set-cookie", "a=1"), ("cookie2", "b=2"), ("Authorization", "x")])
    assert hdrs(filter_req(context, cookie_redaction=True)) == [("set-cookie", b"a=1"), ("cookie2", b"b=2")]


# --------------------------------------------------------------------------- principal kind


@pytest.mark.parametrize(
    "kind, text",
    [
        (PrincipalKind.API_KEY, "api_key"),
        (PrincipalKind.OAUTH_SUBJECT, "oauth_subject"),
        (PrincipalKind.INTERNAL_KEY, "internal_key"),
        (PrincipalKind.WORKLOAD_IDENTITY, "workload_identity"),
        (PrincipalKind.SUBSCRIPTION_BEARER, "subscription_bearer"),
        ("api_key", "api_key"),
        ("custom_kind", "custom_kind"),
        (None, "unknown"),
    ],
)
def test_principal_kind_text(kind, text):
    req = filter_req(ctx(), Principal("p-1", kind, {}))
    assert req.principal == wire.Principal("p-1", text, ())


def test_principal_kind_defaults_to_unknown():
    assert filter_req(ctx(), Principal("p-1")).principal.kind == "unknown"


def test_principal_kind_from_foreign_enum_uses_its_value():
    class MyKind(enum.Enum):
        SERVICE = "service_account"

    assert filter_req(ctx(), Principal("p-1", MyKind.SERVICE)).principal.kind == "service_account"


def test_principal_kind_in_shape_request():
    req = shape_req(ctx(), Principal("p-9", PrincipalKind.OAUTH_SUBJECT, {"a": 1}))
    assert req.principal == wire.Principal("p-9", "oauth_subject", (wire.Claim("a", b"1"),))


# --------------------------------------------------------------------------- claims


def test_claim_keys_sorted():
    principal = Principal("p", "api_key", {"b": 1, "a": 2, "c": 3, "B": 4, "\u00e9": 5, "z": 6})
    # byte order of the UTF-8 keys: "B" (0x42) < "a" < "b" < "c" < "z" < "é" (0xC3 0xA9)
    assert claims_of(principal) == [("B", b"4"), ("a", b"2"), ("b", b"1"), ("c", b"3"), ("z", b"6"), ("\u00e9", b"5")]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("inference", b'"inference"'),
        ("", b'""'),
        (42, b"42"),
        (0, b"0"),
        (-7, b"-7"),
        (True, b"true"),
        (False, b"false"),
        (None, b"null"),
        ([], b"[]"),
        ({}, b"{}"),
        ([1, "x", None, True], b'[1,"x",null,true]'),
        ({"b": [1, 2], "a": "s"}, b'{"a":"s","b":[1,2]}'),
        ({"z": 1, "a": {"y": 2, "b": {"d": 4, "c": 3}}}, b'{"a":{"b":{"c":3,"d":4},"y":2},"z":1}'),
        ([{"b": 1, "a": 2}], b'[{"a":2,"b":1}]'),
    ],
)
def test_claim_values_compact_json(value, expected):
    assert claim_json(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        # é = U+00E9 -> C3 A9; € = U+20AC -> E2 82 AC; 😀 = U+1F600 -> F0 9F 98 80
        ("h\u00e9llo", b'"h\xc3\xa9llo"'),
        ("\u20ac5", b'"\xe2\x82\xac5"'),
        ("\U0001f600", b'"\xf0\x9f\x98\x80"'),
        ({"\u00e9": "\u20ac"}, b'{"\xc3\xa9":"\xe2\x82\xac"}'),
    ],
)
def test_claim_non_ascii_is_raw_utf8(value, expected):
    assert claim_json(value) == expected


def test_claim_string_escapes_like_serde_json():
    # serde_json escapes " \ and control chars (\b \f \n \r \t short forms, others \u00XX
    # lowercase hex); it leaves "/" and DEL (0x7f) alone.
    value = 'a"b\\c\n\t\r\x08\x0c\x01\x1f\x7f/'
    assert claim_json(value) == b'"a\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f/"'


@pytest.mark.parametrize(
    "value, expected",
    [
        (1.0, b"1.0"),
        (1e20, b"1e20"),
        (1e-7, b"1e-7"),
        (0.0001, b"0.0001"),
        (1e16, b"1e16"),
        (123.456, b"123.456"),
        (0.0, b"0.0"),
        (-0.0, b"-0.0"),
        (-1.5, b"-1.5"),
        (0.1, b"0.1"),
        (100.0, b"100.0"),
        (1e15, b"1000000000000000.0"),  # 16 integer digits still printed in full
        (1e-5, b"0.00001"),
        (1e-6, b"1e-6"),
        (2.5e-5, b"0.000025"),
        (1.5e20, b"1.5e20"),
        (1.2345678901234568e17, b"1.2345678901234568e17"),
        (1.234e-7, b"1.234e-7"),
        (5e-324, b"5e-324"),
        (1.7976931348623157e308, b"1.7976931348623157e308"),
    ],
)
def test_claim_floats_like_serde_json_ryu(value, expected):
    assert claim_json(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_claim_non_finite_float_is_null(value):
    assert claim_json(value) == b"null"


def test_floats_nested_in_claims():
    assert claim_json({"x": [1e20, 0.5, float("nan")]}) == b'{"x":[1e20,0.5,null]}'


# A claim that cannot be sent is refused when the Principal is built, naming the claim;
# it is never dropped silently (the policy: "logged ... or rejected").


@pytest.mark.parametrize(
    "bad, type_problem, why",
    [
        ({1, 2}, True, "set"),
        (object(), True, "object"),
        ([1, object()], True, "[1]"),
        ({"inner": {3}}, True, "['inner']"),
        (b"bytes", True, "bytes"),
        ({"k": {1: "int key"}}, True, "object key 1"),
        (datetime.datetime(2026, 1, 1, 12, 0), True, "naive datetime"),
        (datetime.date(2026, 1, 1), True, "date"),
        (2**64, False, "i64/u64"),
        (-(2**63) - 1, False, "i64/u64"),
        (["lone \ud800 surrogate"], False, "surrogate"),
        (functools.reduce(lambda inner, _: [inner], range(65), 0), False, "deeper than 64"),
    ],
    ids=["set", "object", "nested-object", "nested-set", "bytes", "int-key", "naive-datetime", "date", "u64+1", "i64-1", "surrogate", "depth-65"],
)
def test_unsendable_claim_is_rejected_naming_it(bad, type_problem, why):
    with pytest.raises(cclb_wire.InvalidInput) as caught:
        Principal("p", "api_key", {"a": 1, "bad": bad, "z": "ok"})
    error = caught.value
    assert error.field == "Principal.claims['bad']"
    assert str(error).startswith("Principal.claims['bad']: ") and why in str(error)
    assert isinstance(error, TypeError) is type_problem
    assert isinstance(error, cclb_wire.CclbWireError) and isinstance(error, ValueError)


def test_self_containing_claim_is_rejected_not_a_recursion_error():
    loop = []
    loop.append(loop)
    with pytest.raises(cclb_wire.InvalidInput, match=r"Principal\.claims\['loop'\].*deeper than 64"):
        Principal("p", "api_key", {"loop": loop})


def test_claim_nested_64_deep_is_sent():
    value = functools.reduce(lambda inner, _: [inner], range(64), 0)
    assert claim_json(value) == b"[" * 64 + b"0" + b"]" * 64


@pytest.mark.parametrize("key", [1, None, ("a",)])
def test_non_str_claim_key_is_rejected(key):
    with pytest.raises(cclb_wire.InvalidInputType, match=r"Principal\.claims\["):
        Principal("p", "api_key", {key: 1})


def test_claims_must_be_a_mapping():
    with pytest.raises(cclb_wire.InvalidInputType, match=r"^Principal\.claims: "):
        Principal("p", "api_key", [("a", 1)])


def test_i64_and_u64_bounds_are_sent():
    assert claim_json(-(2**63)) == b"-9223372036854775808"
    assert claim_json(2**64 - 1) == b"18446744073709551615"


@pytest.mark.parametrize(
    "value, expected",
    [
        # serde's Uuid: hyphenated, lowercase
        (uuid.UUID("AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"), b'"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"'),
        # chrono DateTime serde = to_rfc3339_opts(SecondsFormat::AutoSi, use_z = true):
        # Z for a zero offset, 0/3/6 fractional digits as needed, +HH:MM otherwise
        (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), b'"2026-01-02T03:04:05Z"'),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=datetime.timezone.utc), b'"2026-01-02T03:04:05.250Z"'),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=datetime.timezone.utc), b'"2026-01-02T03:04:05.001Z"'),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.timezone.utc), b'"2026-01-02T03:04:05.123456Z"'),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, 100, tzinfo=datetime.timezone.utc), b'"2026-01-02T03:04:05.000100Z"'),
        (
            datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=9))),
            b'"2026-01-02T03:04:05+09:00"',
        ),
        (
            datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone(-datetime.timedelta(hours=5, minutes=30))),
            b'"1999-12-31T23:59:59-05:30"',
        ),
        (datetime.datetime(5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc), b'"0005-06-07T08:09:10Z"'),
        ({"when": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)}, b'{"when":"2026-01-01T00:00:00Z"}'),
    ],
)
def test_uuid_and_aware_datetime_claims(value, expected):
    assert claim_json(value) == expected


def test_no_claims():
    assert filter_req(ctx(), Principal("p", "api_key", {})).principal.claims == ()


# --------------------------------------------------------------------------- candidates


def test_candidates_mapping():
    id1 = uuid.UUID("AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE")
    id2 = uuid.UUID("0123456789abcdef0123456789ABCDEF")
    cands = [
        UpstreamCandidate(id1, "primary", "anthropic_api_key", 1_700_000_000, CacheScore(1234)),
        UpstreamCandidate(id2, "backup", "anthropic_oauth", 0),
    ]
    req = filter_req(ctx(), PRINCIPAL, cands)
    assert req.candidates == (
        wire.UpstreamCandidate(
            "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "primary", "anthropic_api_key", 1_700_000_000, 1234
        ),
        wire.UpstreamCandidate("01234567-89ab-cdef-0123-456789abcdef", "backup", "anthropic_oauth", 0, 0),
    )


def test_candidate_order_kept_and_large_values():
    ids = [uuid.UUID(int=i) for i in (3, 1, 2)]
    cands = [UpstreamCandidate(u, f"n{k}", "anthropic_api_key", 2**64 - 1, CacheScore(2**32 - 1)) for k, u in enumerate(ids)]
    req = filter_req(ctx(), PRINCIPAL, cands)
    assert [c.upstream_id for c in req.candidates] == [
        "00000000-0000-0000-0000-000000000003",
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000002",
    ]
    assert [c.name for c in req.candidates] == ["n0", "n1", "n2"]
    assert all(c.observed_at_unix_secs == 2**64 - 1 for c in req.candidates)
    assert all(c.predicted_cache_read_tokens == 2**32 - 1 for c in req.candidates)


def test_cache_score_zero_is_zero():
    cand = UpstreamCandidate(uuid.UUID(int=7), "n", "anthropic_api_key", 5, CacheScore(0))
    assert filter_req(ctx(), PRINCIPAL, [cand]).candidates[0].predicted_cache_read_tokens == 0


# --------------------------------------------------------------------------- other request fields


@pytest.mark.parametrize("query", [None, "", "a=b", "x=1&y=%20&z"])
def test_query_passed_through(query):
    assert filter_req(ctx(query=query)).query == query
    assert shape_req(ctx(query=query)).query == query


@pytest.mark.parametrize(
    "query_string, expected",
    [
        (b"", None),  # ASGI: no query at all
        (b"a=b", "a=b"),
        (b"x=1&y=%20&z", "x=1&y=%20&z"),
        (bytearray(b"k=v"), "k=v"),
        (b"q=caf\xc3\xa9", "q=caf\u00e9"),  # UTF-8 bytes decoded
    ],
)
def test_query_takes_asgi_query_string_bytes(query_string, expected):
    context = ctx(query=query_string)
    assert context.query == expected
    assert filter_req(context).query == expected


def test_query_bytes_must_be_utf8():
    with pytest.raises(cclb_wire.InvalidInput, match=r"^RequestContext\.query: .*UTF-8"):
        ctx(query=b"q=\xff")


def test_observed_at_takes_time_time_floats_truncated():
    stamp = 1_767_225_600.987
    candidate = UpstreamCandidate(uuid.UUID(int=1), "n", "anthropic_api_key", stamp)
    assert candidate.observed_at_unix_secs == 1_767_225_600 and type(candidate.observed_at_unix_secs) is int
    assert filter_req(ctx(), PRINCIPAL, [candidate]).candidates[0].observed_at_unix_secs == 1_767_225_600
    assert UpstreamCandidate(uuid.UUID(int=1), "n", "k", 0.999).observed_at_unix_secs == 0


@pytest.mark.parametrize("stamp", [-1, -0.5, float("nan"), float("inf"), 2.0**64, 2**64, True])
def test_observed_at_out_of_range(stamp):
    with pytest.raises(cclb_wire.InvalidInput, match=r"^UpstreamCandidate\.observed_at_unix_secs: "):
        UpstreamCandidate(uuid.UUID(int=1), "n", "k", stamp)


def test_candidate_id_and_cache_score_are_checked():
    with pytest.raises(cclb_wire.InvalidInput, match=r"^UpstreamCandidate\.upstream_id: 'not-a-uuid'") as caught:
        UpstreamCandidate("not-a-uuid", "n", "k", 0)
    assert not isinstance(caught.value, TypeError)
    with pytest.raises(cclb_wire.InvalidInputType, match=r"^UpstreamCandidate\.cache_score: "):
        UpstreamCandidate(uuid.UUID(int=1), "n", "k", 0, cache_score=5)
    with pytest.raises(cclb_wire.InvalidInput, match=r"^CacheScore\.predicted_cache_read_tokens: "):
        CacheScore(2**32)
    assert UpstreamCandidate("00000000-0000-0000-0000-000000000001", "n", "k", 0).upstream_id == uuid.UUID(int=1)


def test_invalid_base_url_names_the_field():
    with pytest.raises(cclb_wire.InvalidInput, match=r"^AnthropicDirect\.base_url: "):
        AnthropicDirect("not a url")


def test_scalar_fields_and_body():
    body = b'\x00\xff{"model":"claude"}\x80'
    context = ctx(request_id="r-\u00e9", method="PATCH", path="/v1/messages/count_tokens", body=body)
    req = filter_req(context)
    assert (req.request_id, req.method, req.path, req.body) == ("r-\u00e9", "PATCH", "/v1/messages/count_tokens", body)


def test_default_body_is_empty():
    assert filter_req(RequestContext("r", "GET", "/")).body == b""


# --------------------------------------------------------------------------- shape request


def test_shape_request_full():
    context = ctx(
        [("Content-Type", "application/json"), ("X-Api-Key", "sk-secret"), ("anthropic-version", "2023-06-01")],
        request_id="req-9",
        query="beta=true",
        body=b"{}",
    )
    principal = Principal("tenant-b", PrincipalKind.INTERNAL_KEY, {"tier": "gold"})
    req = shape_req(context, principal, AnthropicDirect("https://api.anthropic.com"))
    assert req == wire.ShapeRequest(
        "req-9",
        "POST",
        "/v1/messages",
        "beta=true",
        (wire.Header("content-type", b"application/json"), wire.Header("anthropic-version", b"2023-06-01")),
        b"{}",
        wire.Principal("tenant-b", "internal_key", (wire.Claim("tier", b'"gold"'),)),
        wire.AnthropicDirect("https://api.anthropic.com/"),
    )


@pytest.mark.parametrize(
    "base_url, serialized",
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/"),
        ("HTTPS://API.Anthropic.COM", "https://api.anthropic.com/"),
        ("https://api.anthropic.com:443", "https://api.anthropic.com/"),
        ("https://example.test:8443", "https://example.test:8443/"),
        ("https://example.test/v1", "https://example.test/v1"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
    ],
)
def test_shape_upstream_base_url_serialized(base_url, serialized):
    upstream = AnthropicDirect(base_url)
    assert upstream.base_url == serialized
    assert shape_req(ctx(), PRINCIPAL, upstream).upstream == wire.AnthropicDirect(serialized)


def test_shape_upstream_without_base_url():
    assert AnthropicDirect().base_url is None
    assert shape_req(ctx(), PRINCIPAL, AnthropicDirect(None)).upstream == wire.AnthropicDirect(None)


def test_anthropic_direct_serialized_equals_unserialized():
    assert AnthropicDirect("https://api.anthropic.com") == AnthropicDirect("https://api.anthropic.com/")


# --------------------------------------------------------------------------- observe events


@pytest.mark.parametrize(
    "event, expected",
    [
        (RequestStarted("req-1"), wire.RequestStarted("req-1", None)),
        (RequestStarted("req-1", "cc-lb-probe/1.0"), wire.RequestStarted("req-1", "cc-lb-probe/1.0")),
        (AuthnComplete("p-1", PrincipalKind.API_KEY), wire.AuthnComplete("p-1", "api_key")),
        (AuthnComplete("p-2", PrincipalKind.OAUTH_SUBJECT), wire.AuthnComplete("p-2", "oauth_subject")),
        (AuthnComplete("p-3", "workload_identity"), wire.AuthnComplete("p-3", "workload_identity")),
        (
            UpstreamChosen(AnthropicDirect("https://api.anthropic.com")),
            wire.UpstreamChosen(wire.AnthropicDirect("https://api.anthropic.com/")),
        ),
        (UpstreamChosen(AnthropicDirect()), wire.UpstreamChosen(wire.AnthropicDirect(None))),
        (Chunk(3, 10, 4096), wire.Chunk(3, 10, 4096)),
        (Chunk(2**64 - 1, 0, 2**64 - 1), wire.Chunk(2**64 - 1, 0, 2**64 - 1)),
        (
            RequestFinished(200, 10, 20, 5, 7, 1500),
            wire.RequestFinished(200, 10, 20, 5, 7, 1500),
        ),
        (RequestFinished(429), wire.RequestFinished(429, None, None, None, None, 0)),
        (
            RequestFinished(http.HTTPStatus.SERVICE_UNAVAILABLE, output_tokens=2**64 - 1, duration_ms=9),
            wire.RequestFinished(503, None, 2**64 - 1, None, None, 9),
        ),
        (RequestFinished(http.HTTPStatus.OK, 0, 0, 0, 0, 0), wire.RequestFinished(200, 0, 0, 0, 0, 0)),
        (ErrorEvent("upstream_timeout", "timed out after 30s", "shape"), wire.Error("upstream_timeout", "timed out after 30s", "shape")),
    ],
)
def test_observe_events_map_one_to_one(event, expected):
    got = observe(event)
    assert type(got) is type(expected)
    assert got == expected


def test_observe_status_is_plain_int():
    got = observe(RequestFinished(http.HTTPStatus.NOT_FOUND))
    assert got.status == 404
    assert type(got.status) is int
