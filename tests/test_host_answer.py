"""Wire answer -> host conversion (HOST.md "Converting the answer", "Defaults").

Expected values come from the spec text (HOST.md, ccl-host-facts.md sections 3, 4, 7)
and from the WHATWG URL standard, never from running the library.
"""

import uuid

import pytest

import cclb_wire
from cclb_wire import (
    AnthropicDirect,
    DecodeError,
    DialectError,
    FilterError,
    FilterOutput,
    PerCandidateReason,
    ShapedRequest,
    ShapeOriginPolicy,
    WireBounds,
    wire,
)

U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"
U3 = "33333333-3333-3333-3333-333333333333"

# --------------------------------------------------------------------------- helpers


def filter_answer(*results):
    return cclb_wire.encode(wire.FilterResponse(tuple(wire.PerCandidateReason(*r) for r in results)))


def run_filter(*results, bounds=None):
    data = filter_answer(*results)
    if bounds is None:
        return cclb_wire.decode_filter_output(data)
    return cclb_wire.decode_filter_output(data, bounds)


def reason_with_cap(reason, cap):
    out = run_filter((U1, "reject", reason), bounds=WireBounds(reason_bytes=cap))
    return out.reason


def shape_answer(url="https://api.example.com/v1/messages", method="POST", headers=(), body=b""):
    return cclb_wire.encode(wire.ShapeResponse(url, method, tuple(wire.Header(n, v) for n, v in headers), body))


UPSTREAM = AnthropicDirect("https://api.example.com")


def run_shape(upstream=UPSTREAM, policy=None, bounds=None, **answer):
    data = shape_answer(**answer)
    kw = {}
    if policy is not None:
        kw["origin_policy"] = policy
    if bounds is not None:
        kw["bounds"] = bounds
    return cclb_wire.decode_shaped_request(data, upstream, **kw)


def assert_filter_runtime(excinfo):
    err = excinfo.value
    assert err.kind == "runtime"
    assert str(err) == f"filter runtime error: {err.reason}"
    return err.reason


def assert_unsupported(excinfo):
    err = excinfo.value
    assert err.kind == "unsupported_request"
    assert str(err) == f"unsupported request: {err.reason}"
    return err.reason


# --------------------------------------------------------------------------- defaults


def test_wire_bounds_defaults():
    b = WireBounds()
    assert b.output_body_bytes == 100 * 1024 * 1024
    assert b.max_headers == 100
    assert b.max_header_value_bytes == 8192
    assert b.reason_bytes == 256


# --------------------------------------------------------------------------- filter: seed


def test_seed_wire_to_host_splits_kept_and_rejected():
    """Reference test wire_to_host_splits_kept_and_rejected (facts §7)."""
    out = run_filter((U1, "accept", "top-K"), (U2, "rate-limit", "burst exceeded"))
    assert isinstance(out, FilterOutput)
    assert out.kept_upstream_ids == (uuid.UUID(U1),)
    assert out.per_candidate_reasons == (PerCandidateReason.RateLimited,)
    assert out.reason == f"{U1}: top-K; {U2}: burst exceeded"


# --------------------------------------------------------------------------- filter: labels


@pytest.mark.parametrize(
    "decision, expected",
    [
        ("rate-limit", PerCandidateReason.RateLimited),
        ("Rate-Limit", PerCandidateReason.RateLimited),
        ("RATE_LIMITED", PerCandidateReason.RateLimited),
        ("rate_limit", PerCandidateReason.RateLimited),
        ("upstream-Rate-Limit-hit", PerCandidateReason.RateLimited),
        ("rate-limit-quota-unhealthy", PerCandidateReason.RateLimited),  # first rule wins
        ("ratelimit", PerCandidateReason.RejectedByPlugin),  # no separator -> no "rate_limit"
        ("rate limit", PerCandidateReason.RejectedByPlugin),  # space is not replaced
        ("over-quota", PerCandidateReason.InsufficientQuota),
        ("QUOTA", PerCandidateReason.InsufficientQuota),
        ("insufficient_quota", PerCandidateReason.InsufficientQuota),
        ("quota-unhealthy", PerCandidateReason.InsufficientQuota),  # quota before unhealthy
        ("UNHEALTHY", PerCandidateReason.Unhealthy),
        ("upstream-unhealthy", PerCandidateReason.Unhealthy),
        ("un-healthy", PerCandidateReason.RejectedByPlugin),  # "un_healthy" has no "unhealthy"
        ("Accept", PerCandidateReason.RejectedByPlugin),  # accept detection is exact
        ("ACCEPT", PerCandidateReason.RejectedByPlugin),
        ("accept ", PerCandidateReason.RejectedByPlugin),
        ("accepted", PerCandidateReason.RejectedByPlugin),
        ("", PerCandidateReason.RejectedByPlugin),
        ("reject", PerCandidateReason.RejectedByPlugin),
        ("deny", PerCandidateReason.RejectedByPlugin),
    ],
)
def test_decision_label_mapping(decision, expected):
    out = run_filter((U1, decision, ""))
    assert out.kept_upstream_ids == ()
    assert out.per_candidate_reasons == (expected,)
    assert out.reason == ""


def test_accept_label_ignores_reason_text():
    out = run_filter((U1, "accept", "rate-limit soon, quota low, unhealthy"))
    assert out.kept_upstream_ids == (uuid.UUID(U1),)
    assert out.per_candidate_reasons == ()


def test_kept_ids_and_reasons_in_plugin_order():
    out = run_filter(
        (U3, "accept", ""),
        (U2, "quota", ""),
        (U1, "accept", ""),
        (U3, "unhealthy", ""),
        (U2, "accept", ""),
        (U1, "rate-limit", ""),
    )
    assert out.kept_upstream_ids == (uuid.UUID(U3), uuid.UUID(U1), uuid.UUID(U2))
    assert out.per_candidate_reasons == (
        PerCandidateReason.InsufficientQuota,
        PerCandidateReason.Unhealthy,
        PerCandidateReason.RateLimited,
    )


def test_empty_response():
    out = run_filter()
    assert out == FilterOutput((), "", ())


# --------------------------------------------------------------------------- filter: reason text


def test_reason_text_for_every_non_empty_reason():
    out = run_filter(
        (U1, "accept", "top-K"),
        (U2, "reject", ""),
        (U3, "over-quota", "no credits"),
        (U2, "accept", ""),
    )
    assert out.reason == f"{U1}: top-K; {U3}: no credits"


def test_reason_text_empty_when_no_reasons():
    assert run_filter((U1, "accept", ""), (U2, "reject", "")).reason == ""


def test_reason_text_uses_upstream_id_as_the_plugin_wrote_it():
    upper = U1.replace("1", "A")  # "AAAAAAAA-AAAA-..." a valid UUID in upper case
    out = run_filter((upper, "accept", "why"))
    assert out.kept_upstream_ids == (uuid.UUID(upper),)
    assert out.reason == f"{upper}: why"


@pytest.mark.parametrize(
    "reason, cap, kept",
    [
        # ASCII: 1 byte per char
        ("abcdef", 4, "abcd"),
        ("abcdef", 6, "abcdef"),
        ("abcdef", 7, "abcdef"),
        ("abcdef", 0, ""),
        # "aé" = 61 | C3 A9 (3 bytes)
        ("a\u00e9", 1, "a"),
        ("a\u00e9", 2, "a"),
        ("a\u00e9", 3, "a\u00e9"),
        ("\u00e9", 1, ""),
        # "a€b" = 61 | E2 82 AC | 62 (5 bytes)
        ("a\u20acb", 1, "a"),
        ("a\u20acb", 2, "a"),
        ("a\u20acb", 3, "a"),
        ("a\u20acb", 4, "a\u20ac"),
        ("a\u20acb", 5, "a\u20acb"),
        # "x😀y" = 78 | F0 9F 98 80 | 79 (6 bytes)
        ("x\U0001f600y", 1, "x"),
        ("x\U0001f600y", 2, "x"),
        ("x\U0001f600y", 3, "x"),
        ("x\U0001f600y", 4, "x"),
        ("x\U0001f600y", 5, "x\U0001f600"),
        ("x\U0001f600y", 6, "x\U0001f600y"),
        # mixed "é€😀" = C3 A9 | E2 82 AC | F0 9F 98 80 (9 bytes)
        ("\u00e9\u20ac\U0001f600", 2, "\u00e9"),
        ("\u00e9\u20ac\U0001f600", 4, "\u00e9"),
        ("\u00e9\u20ac\U0001f600", 5, "\u00e9\u20ac"),
        ("\u00e9\u20ac\U0001f600", 8, "\u00e9\u20ac"),
        ("\u00e9\u20ac\U0001f600", 9, "\u00e9\u20ac\U0001f600"),
    ],
)
def test_reason_truncated_at_utf8_boundary(reason, cap, kept):
    assert reason_with_cap(reason, cap) == f"{U1}: {kept}"


@pytest.mark.parametrize(
    "reason, kept",
    [
        ("a" * 256, "a" * 256),
        ("a" * 257, "a" * 256),
        ("a" * 1000, "a" * 256),
        ("a" * 255 + "\u00e9", "a" * 255),  # 257 bytes, cut inside é
        ("a" * 254 + "\u00e9", "a" * 254 + "\u00e9"),  # exactly 256 bytes
        ("a" * 254 + "\u20ac", "a" * 254),  # 257 bytes, cut after E2 82
        ("a" * 255 + "\u20ac", "a" * 255),  # 258 bytes, cut after E2
        ("a" * 253 + "\u20ac", "a" * 253 + "\u20ac"),  # exactly 256 bytes
        ("a" * 253 + "\U0001f600", "a" * 253),  # 257 bytes, cut after F0 9F 98
        ("a" * 254 + "\U0001f600", "a" * 254),  # 258 bytes, cut after F0 9F
        ("a" * 255 + "\U0001f600", "a" * 255),  # 259 bytes, cut after F0
        ("a" * 252 + "\U0001f600", "a" * 252 + "\U0001f600"),  # exactly 256 bytes
        ("\u00e9" * 200, "\u00e9" * 128),  # 400 bytes -> 256 = 128 whole chars
        ("\u20ac" * 100, "\u20ac" * 85),  # 300 bytes; 85*3 = 255 <= 256 < 258
    ],
)
def test_reason_truncated_with_default_cap(reason, kept):
    out = run_filter((U1, "reject", reason))
    assert out.reason == f"{U1}: {kept}"


def test_truncation_applies_to_accepted_and_each_reason_separately():
    out = run_filter(
        (U1, "accept", "abcdefgh"),
        (U2, "quota", "\u20ac\u20ac"),  # 6 bytes -> cap 4 keeps one €
        bounds=WireBounds(reason_bytes=4),
    )
    assert out.reason == f"{U1}: abcd; {U2}: \u20ac"
    assert out.kept_upstream_ids == (uuid.UUID(U1),)


# --------------------------------------------------------------------------- filter: upstream_id


@pytest.mark.parametrize(
    "text, expected",
    [
        (U1, U1),
        ("ABCDEF01-2345-6789-ABCD-EF0123456789", "abcdef01-2345-6789-abcd-ef0123456789"),
        ("aBcDeF01-2345-6789-abcd-ef0123456789", "abcdef01-2345-6789-abcd-ef0123456789"),
        ("11111111111111111111111111111111", U1),  # simple form
        ("{11111111-1111-1111-1111-111111111111}", U1),  # braced form
        ("urn:uuid:11111111-1111-1111-1111-111111111111", U1),  # urn form
    ],
)
def test_accepted_uuid_text_forms(text, expected):
    out = run_filter((text, "accept", ""))
    assert out.kept_upstream_ids == (uuid.UUID(expected),)


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "",
        "1111111-1111-1111-1111-111111111111",  # 35 chars
        "111111111-1111-1111-1111-111111111111",  # 37 chars
        "g1111111-1111-1111-1111-111111111111",  # not hex
        "1111-11111111-1111-1111-111111111111",  # hyphens misplaced
        "+1111111-1111-1111-1111-111111111111",  # sign
        " 1111111-1111-1111-1111-111111111111",  # leading space
        "{11111111-1111-1111-1111-111111111111",  # unbalanced brace
        "11111111-1111-1111-1111-111111111111 ",  # trailing space
    ],
)
def test_invalid_upstream_id_is_runtime_error(bad):
    with pytest.raises(FilterError) as excinfo:
        run_filter((U1, "accept", "ok"), (bad, "reject", "x"))
    reason = assert_filter_runtime(excinfo)
    assert reason.startswith(f"plugin returned invalid upstream_id `{bad}`")


# --------------------------------------------------------------------------- filter: size and decode


def test_filter_output_size_bound():
    data = filter_answer((U1, "accept", "top-K"), (U2, "rate-limit", "burst"))
    n = len(data)
    out = cclb_wire.decode_filter_output(data, WireBounds(output_body_bytes=n))
    assert out.kept_upstream_ids == (uuid.UUID(U1),)
    with pytest.raises(FilterError) as excinfo:
        cclb_wire.decode_filter_output(data, WireBounds(output_body_bytes=n - 1))
    reason = assert_filter_runtime(excinfo)
    assert reason == f"filter output {n} bytes exceeds wire_bounds.output_body_bytes ({n - 1})"


def test_filter_size_checked_before_decoding():
    garbage = b"\xff" * 100
    with pytest.raises(FilterError) as excinfo:
        cclb_wire.decode_filter_output(garbage, WireBounds(output_body_bytes=50))
    reason = assert_filter_runtime(excinfo)
    assert reason == "filter output 100 bytes exceeds wire_bounds.output_body_bytes (50)"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x02\x03",
        b"\xff\xff\xff\x7f\x01\x00\x00\x00",  # results pointer far out of range
        b"\x00\x00\x00\x00\x05\x00\x00\x00",  # 5 results at the root itself
    ],
)
def test_filter_invalid_archive(data):
    with pytest.raises(FilterError) as excinfo:
        cclb_wire.decode_filter_output(data)
    assert_filter_runtime(excinfo)
    assert isinstance(excinfo.value.__cause__, DecodeError)


def test_filter_invalid_utf8_in_archive():
    data = bytearray(filter_answer((U1, "accept", "zzzz")))
    i = bytes(data).index(b"zzzz")
    data[i] = 0xFF
    with pytest.raises(FilterError) as excinfo:
        cclb_wire.decode_filter_output(bytes(data))
    assert_filter_runtime(excinfo)
    assert isinstance(excinfo.value.__cause__, DecodeError)


# --------------------------------------------------------------------------- shape: basics


def test_shape_basic_conversion():
    body = b'{"model":"claude","messages":[]}\x00\xff'
    out = run_shape(
        url="https://api.example.com/v1/messages?beta=true",
        method="POST",
        headers=[("Content-Type", b"application/json"), ("anthropic-version", b"2023-06-01")],
        body=body,
    )
    assert isinstance(out, ShapedRequest)
    assert out == ShapedRequest(
        "https://api.example.com/v1/messages?beta=true",
        "POST",
        (("content-type", b"application/json"), ("anthropic-version", b"2023-06-01")),
        body,
    )


def test_shape_url_is_whatwg_serialized():
    out = run_shape(url="HTTPS://API.Example.COM:443")
    assert out.url == "https://api.example.com/"


def test_shape_empty_body_and_no_headers():
    out = run_shape(headers=(), body=b"")
    assert out.headers == () and out.body == b""


# --------------------------------------------------------------------------- shape: max_headers


def test_shape_max_headers_at_limit_ok_one_past_errors():
    three = [("x-a", b"1"), ("x-b", b"2"), ("x-c", b"3")]
    out = run_shape(headers=three, bounds=WireBounds(max_headers=3))
    assert out.headers == tuple(three)
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=three + [("x-d", b"4")], bounds=WireBounds(max_headers=3))
    reason = assert_unsupported(excinfo)
    assert reason == "shape plugin returned 4 headers, exceeds wire_bounds.max_headers (3)"


def test_shape_max_headers_default_100():
    hs = [(f"x-h{i}", b"v") for i in range(100)]
    assert len(run_shape(headers=hs).headers) == 100
    with pytest.raises(DialectError):
        run_shape(headers=hs + [("x-h100", b"v")])


def test_shape_max_headers_counts_dropped_headers():
    # the count is checked on the plugin's answer, before any header is dropped
    hs = [("connection", b"close"), ("host", b"h"), ("x-api-key", b"k"), ("te", b"trailers")]
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=hs, bounds=WireBounds(max_headers=3))
    assert assert_unsupported(excinfo) == "shape plugin returned 4 headers, exceeds wire_bounds.max_headers (3)"


def test_shape_max_headers_checked_before_url():
    with pytest.raises(DialectError) as excinfo:
        run_shape(url="not a url", headers=[("x-a", b"1"), ("x-b", b"2")], bounds=WireBounds(max_headers=1))
    assert assert_unsupported(excinfo) == "shape plugin returned 2 headers, exceeds wire_bounds.max_headers (1)"


# --------------------------------------------------------------------------- shape: url


@pytest.mark.parametrize("url", ["not a url", "", "/v1/messages", "https://", "http://[::1", "https://exa mple.com/", "://x"])
def test_shape_url_must_parse(url):
    for policy in (None, ShapeOriginPolicy.UNRESTRICTED, ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN):
        with pytest.raises(DialectError) as excinfo:
            run_shape(url=url, policy=policy)
        assert_unsupported(excinfo)


def test_shape_url_error_before_method_error():
    with pytest.raises(DialectError) as excinfo:
        run_shape(url="not a url", method="GE T")
    reason = assert_unsupported(excinfo)
    assert not reason.startswith("plugin returned invalid method")


SEL = ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN


@pytest.mark.parametrize(
    "base, url",
    [
        ("https://api.example.com", "https://api.example.com/v1/messages"),
        ("https://api.example.com", "https://api.example.com/other/path?q=1#frag"),
        ("https://api.example.com/prefix/", "https://api.example.com/v1/messages"),  # path differs
        ("https://api.example.com", "https://api.example.com:443/v1"),  # default port explicit
        ("https://api.example.com:443", "https://api.example.com/v1"),
        ("https://api.example.com", "https://api.example.com:0443/v1"),  # port parses to 443
        ("http://api.example.com:80", "http://api.example.com/"),
        ("https://api.example.com", "https://API.Example.COM/v1"),  # host case
        ("https://api.example.com", "HTTPS://api.example.com/"),  # scheme case
        ("https://b\u00fccher.example", "https://xn--bcher-kva.example/v1"),  # IDNA
        ("https://xn--bcher-kva.example", "https://B\u00dcCHER.example/v1"),
        ("https://api.example.com", "https://user:pw@api.example.com/v1"),  # userinfo
        ("https://api.example.com", "https://api.example.com\\@evil.test/"),  # "\" ends the host
        ("https://api.example.com", "https://evil.test%2F@api.example.com/"),  # userinfo "evil.test%2F"
        ("https://api.example.com", "https://api%2Eexample.com/v1"),  # host percent-decoded
        ("https://api.example.com", "  https://api.example.com/v1 "),  # C0/space trimmed
        ("https://api.example.com", "https://api.exa\nmple.com/v1"),  # tab/newline removed
        ("http://127.0.0.1:8080", "http://0x7f.1:8080/"),  # IPv4 parser
        ("http://127.0.0.1:8080", "http://2130706433:8080/"),
    ],
)
def test_shape_same_origin_accepted(base, url):
    out = run_shape(upstream=AnthropicDirect(base), policy=SEL, url=url)
    assert out.method == "POST"


@pytest.mark.parametrize(
    "base, url, actual, expected",
    [
        ("https://api.example.com", "http://api.example.com/v1", "http://api.example.com", "https://api.example.com"),
        (
            "https://api.example.com",
            "https://api.example.com:8443/v1",
            "https://api.example.com:8443",
            "https://api.example.com",
        ),
        ("https://api.example.com:8443", "https://api.example.com/v1", "https://api.example.com", "https://api.example.com:8443"),
        ("https://api.example.com", "https://evil.test/v1", "https://evil.test", "https://api.example.com"),
        (
            "https://api.example.com",
            "https://api.example.com.evil.test/",
            "https://api.example.com.evil.test",
            "https://api.example.com",
        ),
        ("https://api.example.com", "https://evil.test/api.example.com", "https://evil.test", "https://api.example.com"),
        ("https://api.example.com", "https://api.example.com@evil.test/", "https://evil.test", "https://api.example.com"),
        ("https://api.example.com", "https://evil.test\\@api.example.com/", "https://evil.test", "https://api.example.com"),
        ("https://api.example.com", "https://api.example.com%2F@evil.test/", "https://evil.test", "https://api.example.com"),
        ("https://api.example.com", "https://evil%2Etest/", "https://evil.test", "https://api.example.com"),
        ("https://api.example.com", "https://api.example.com./", "https://api.example.com.", "https://api.example.com"),
        (
            "https://b\u00fccher.example",
            "https://bucher.example/",
            "https://bucher.example",
            "https://xn--bcher-kva.example",
        ),
    ],
)
def test_shape_cross_origin_rejected(base, url, actual, expected):
    with pytest.raises(DialectError) as excinfo:
        run_shape(upstream=AnthropicDirect(base), policy=SEL, url=url)
    reason = assert_unsupported(excinfo)
    assert reason == f"shape plugin returned URL origin `{actual}` but selected upstream requires `{expected}`"


@pytest.mark.parametrize("url", ["https://api.example.com%2F.evil.test/", "https://api.example.com%40evil.test/"])
def test_shape_percent_encoded_forbidden_host_char_fails_to_parse(url):
    # the host is percent-decoded to contain "/" or "@", which WHATWG forbids in a host
    for policy in (None, SEL):
        with pytest.raises(DialectError):
            run_shape(policy=policy, url=url)


@pytest.mark.parametrize("url", ["https://evil.test/v1", "http://api.example.com:8080/", "https://api.example.com\\@evil.test/"])
def test_shape_unrestricted_allows_any_origin(url):
    assert run_shape(url=url).method == "POST"  # default policy
    assert run_shape(url=url, policy=ShapeOriginPolicy.UNRESTRICTED).method == "POST"


def test_shape_origin_policy_default_is_unrestricted():
    out = cclb_wire.decode_shaped_request(shape_answer(url="https://evil.test/"), UPSTREAM)
    assert out.url == "https://evil.test/"


@pytest.mark.parametrize("policy", ["selected_upstream_origin", "SELECTED_UPSTREAM_ORIGIN", "Selected_Upstream_Origin"])
def test_shape_origin_policy_as_a_string_enforces_the_origin(policy):
    # Before the fix, a string policy was silently ignored (the check compared with `is`)
    # and this exact call returned https://evil.example/steal.
    answer = shape_answer(url="https://evil.example/steal")
    with pytest.raises(DialectError) as excinfo:
        cclb_wire.decode_shaped_request(answer, AnthropicDirect("https://api.anthropic.com"), origin_policy=policy)
    assert assert_unsupported(excinfo) == (
        "shape plugin returned URL origin `https://evil.example` but selected upstream requires `https://api.anthropic.com`"
    )
    ok = shape_answer(url="https://api.anthropic.com/v1/messages")
    assert cclb_wire.decode_shaped_request(ok, AnthropicDirect("https://api.anthropic.com"), origin_policy=policy).url == (
        "https://api.anthropic.com/v1/messages"
    )


@pytest.mark.parametrize("policy", ["unrestricted", "UNRESTRICTED"])
def test_shape_origin_policy_unrestricted_string(policy):
    assert run_shape(url="https://evil.test/", policy=policy).url == "https://evil.test/"


@pytest.mark.parametrize("policy", ["selected", "", "strict", None, 1, True, ShapeOriginPolicy])
def test_shape_unknown_origin_policy_is_refused_not_ignored(policy):
    with pytest.raises(cclb_wire.InvalidInput) as excinfo:
        cclb_wire.decode_shaped_request(shape_answer(url="https://evil.test/"), UPSTREAM, origin_policy=policy)
    message = str(excinfo.value)
    assert message.startswith("decode_shaped_request.origin_policy: ")
    assert "'unrestricted'" in message and "'selected_upstream_origin'" in message


@pytest.mark.parametrize("bounds", [{}, 100, "default", WireBounds])
def test_bounds_must_be_wire_bounds(bounds):
    with pytest.raises(cclb_wire.InvalidInputType, match=r"^decode_shaped_request\.bounds: "):
        cclb_wire.decode_shaped_request(shape_answer(), UPSTREAM, bounds=bounds)
    with pytest.raises(cclb_wire.InvalidInputType, match=r"^decode_filter_output\.bounds: "):
        cclb_wire.decode_filter_output(filter_answer(), bounds)


def test_bounds_none_means_the_defaults():
    assert cclb_wire.decode_shaped_request(shape_answer(headers=[("x-a", b"v" * 8192)]), UPSTREAM, bounds=None).headers == (
        ("x-a", b"v" * 8192),
    )
    with pytest.raises(DialectError):
        cclb_wire.decode_shaped_request(shape_answer(headers=[("x-a", b"v" * 8193)]), UPSTREAM, bounds=None)
    assert cclb_wire.decode_filter_output(filter_answer((U1, "accept", "")), None).kept_upstream_ids == (uuid.UUID(U1),)


def test_shape_none_base_url_skips_origin_check():
    out = run_shape(upstream=AnthropicDirect(None), policy=SEL, url="https://evil.test:9999/x")
    assert out.url == "https://evil.test:9999/x"


def test_shape_origin_error_before_method_error():
    with pytest.raises(DialectError) as excinfo:
        run_shape(policy=SEL, url="https://evil.test/", method="GE T")
    assert assert_unsupported(excinfo).startswith("shape plugin returned URL origin `https://evil.test`")


# --------------------------------------------------------------------------- shape: method


@pytest.mark.parametrize("method", ["GET", "get", "PATCH", "PURGE", "M-SEARCH", "DELETE", "X" * 40, "!#$%&'*+-.^_`|~09azAZ"])
def test_shape_valid_methods(method):
    assert run_shape(method=method).method == method


@pytest.mark.parametrize("method", ["", "GE T", "GET\n", "(GET)", " GET", "GET/", "GET:", "G\u00c9T", "GET\x00", "{GET}", "GET\t"])
def test_shape_invalid_methods(method):
    with pytest.raises(DialectError) as excinfo:
        run_shape(method=method)
    assert assert_unsupported(excinfo).startswith(f"plugin returned invalid method `{method}`")


def test_shape_method_error_before_header_error():
    with pytest.raises(DialectError) as excinfo:
        run_shape(method="(GET)", headers=[("bad name", b"v")])
    assert assert_unsupported(excinfo).startswith("plugin returned invalid method `(GET)`")


# --------------------------------------------------------------------------- shape: headers


DROPPED = [
    "connection",
    "Connection",
    "keep-alive",
    "KEEP-ALIVE",
    "proxy-authenticate",
    "Proxy-Authenticate",
    "proxy-authorization",
    "PROXY-AUTHORIZATION",
    "te",
    "TE",
    "trailer",
    "Trailer",
    "transfer-encoding",
    "Transfer-Encoding",
    "upgrade",
    "UPGRADE",
    "host",
    "Host",
    "content-length",
    "Content-Length",
    "authorization",
    "Authorization",
    "x-api-key",
    "X-Api-Key",
    "x-anthropic-",
    "x-anthropic-beta",
    "X-Anthropic-Version",
    "X-ANTHROPIC-ORG-ID",
]


@pytest.mark.parametrize("name", DROPPED)
def test_shape_dropped_headers_vanish(name):
    out = run_shape(headers=[("accept", b"*/*"), (name, b"value"), ("x-last", b"1")])
    assert out.headers == (("accept", b"*/*"), ("x-last", b"1"))


@pytest.mark.parametrize(
    "name",
    ["anthropic-version", "anthropic-beta", "x-anthropic", "x-anthropicbeta", "tee", "trailers", "x-api-key2", "cookie", "hosts"],
)
def test_shape_near_miss_headers_kept(name):
    assert run_shape(headers=[(name, b"v")]).headers == ((name, b"v"),)


def test_shape_headers_kept_in_order_with_lowercase_names_and_duplicates():
    out = run_shape(
        headers=[
            ("Zeta", b"z"),
            ("Connection", b"close"),
            ("Alpha", b"a"),
            ("X-Dup", b"1"),
            ("x-dup", b"2"),
            ("X-Anthropic-Beta", b"secret"),
            ("mid", b"m"),
        ]
    )
    assert out.headers == (("zeta", b"z"), ("alpha", b"a"), ("x-dup", b"1"), ("x-dup", b"2"), ("mid", b"m"))


def test_shape_dropped_header_with_bad_value_is_silently_dropped():
    out = run_shape(headers=[("connection", b"bad\nvalue"), ("x-anthropic-key", b"\x00")], bounds=WireBounds(max_header_value_bytes=2))
    assert out.headers == ()


def test_shape_header_value_size_bound():
    b = WireBounds(max_header_value_bytes=10)
    assert run_shape(headers=[("x-big", b"v" * 10)], bounds=b).headers == (("x-big", b"v" * 10),)
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=[("x-big", b"v" * 11)], bounds=b)
    reason = assert_unsupported(excinfo)
    assert reason == "shape plugin header `x-big` value 11 bytes exceeds wire_bounds.max_header_value_bytes (10)"


def test_shape_header_value_size_default_8192():
    assert run_shape(headers=[("x-big", b"v" * 8192)]).headers[0][1] == b"v" * 8192
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=[("x-big", b"v" * 8193)])
    assert assert_unsupported(excinfo) == (
        "shape plugin header `x-big` value 8193 bytes exceeds wire_bounds.max_header_value_bytes (8192)"
    )


def test_shape_value_size_checked_before_name_validity():
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=[("bad name", b"v" * 5)], bounds=WireBounds(max_header_value_bytes=4))
    assert assert_unsupported(excinfo).startswith("shape plugin header `bad name` value 5 bytes exceeds")


@pytest.mark.parametrize("name", ["bad name", "bad:name", "", " x", "x\t", "a/b", "a@b", "(x)", "x{", "caf\u00e9", "x\x00", 'a"b'])
def test_shape_invalid_header_name(name):
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=[("x-ok", b"1"), (name, b"v")])
    assert assert_unsupported(excinfo).startswith(f"plugin returned invalid header name `{name}`")


@pytest.mark.parametrize("value", [b"a\nb", b"a\rb", b"\x00", b"a\x7f", b"\x1f", b"ok\r\n"])
def test_shape_invalid_header_value(value):
    with pytest.raises(DialectError) as excinfo:
        run_shape(headers=[("x-val", value)])
    assert assert_unsupported(excinfo).startswith("plugin returned invalid header value for `x-val`")


@pytest.mark.parametrize("value", [b"a\tb", b"\x80\xff", bytes(range(0x80, 0x100)), b"", b" padded ", b"\t", b"~!@#"])
def test_shape_valid_header_values(value):
    assert run_shape(headers=[("x-val", value)]).headers == (("x-val", value),)


def test_shape_body_copied_as_is():
    body = bytes(range(256)) * 3
    assert run_shape(body=body).body == body


# --------------------------------------------------------------------------- shape: size and decode


def test_shape_output_size_bound():
    data = shape_answer(headers=[("x-a", b"1")], body=b"payload")
    n = len(data)
    out = cclb_wire.decode_shaped_request(data, UPSTREAM, bounds=WireBounds(output_body_bytes=n))
    assert out.body == b"payload"
    with pytest.raises(DialectError) as excinfo:
        cclb_wire.decode_shaped_request(data, UPSTREAM, bounds=WireBounds(output_body_bytes=n - 1))
    assert assert_unsupported(excinfo) == f"shape output {n} bytes exceeds wire_bounds.output_body_bytes ({n - 1})"


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03", b"\xff\xff\xff\x7f" * 8])
def test_shape_invalid_archive(data):
    with pytest.raises(DialectError) as excinfo:
        cclb_wire.decode_shaped_request(data, UPSTREAM)
    assert_unsupported(excinfo)
    assert isinstance(excinfo.value.__cause__, DecodeError)


def test_shape_url_keeps_short_answers_only_and_never_a_refusal():
    from cclb_wire import host_rules

    host_rules._SHAPED_URLS.clear()
    origin = "https://api.example"
    assert host_rules.shape_url("HTTPS://API.example/v1/messages", origin, True) == "https://api.example/v1/messages"
    assert host_rules.shape_url("HTTPS://API.example/v1/messages", origin, True) == "https://api.example/v1/messages"
    with pytest.raises(DialectError, match="requires `https://other.example`"):  # the same URL, another upstream
        host_rules.shape_url("HTTPS://API.example/v1/messages", "https://other.example", True)
    with pytest.raises(DialectError, match="requires `https://other.example`"):  # a refusal is judged again
        host_rules.shape_url("HTTPS://API.example/v1/messages", "https://other.example", True)
    long_url = origin + "/v1/messages?q=" + "a" * host_rules.SHAPE_URL_CACHE_MAX_LENGTH
    assert host_rules.shape_url(long_url, origin, True) == long_url
    assert list(host_rules._SHAPED_URLS) == [("HTTPS://API.example/v1/messages", origin, True)]
    for i in range(host_rules.SHAPE_URL_CACHE_SIZE + 5):
        host_rules.shape_url(f"{origin}/v1/{i}", origin, True)
    assert len(host_rules._SHAPED_URLS) <= host_rules.SHAPE_URL_CACHE_SIZE
