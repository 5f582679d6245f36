"""The cc-lb 1.0 contract in the host: admission by fingerprint, the 1.0 rules, noop hooks,
the 1.0 filter beside a 0.2 one, and the transform hooks with their failure policies.

Guests: the shipped 1.0 plugins (C, guests/plugins/*_1_0.c) and the hostile 1.0 fixtures
(tests/fixtures/hostile_1_0, whose README gives the verdict each must get). CI also runs
this module on the ctypes call path (CCLB_WIRE_NATIVE_CALLS=0)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire import PluginRejected, TransformError
from cclb_wire.runtime import HostConfig, InstanceStrategy, PluginHost
from test_runtime import candidates, plugin

HOSTILE_1_0 = Path(__file__).resolve().parent / "fixtures" / "hostile_1_0"
UPSTREAM = cw.AnthropicDirect("https://api.anthropic.com")
PRINCIPAL = cw.Principal("user-1", "api_key", {"keep_k": 2})


def fixture(name: str) -> bytes:
    return wasmtime.wat2wasm((HOSTILE_1_0 / f"{name}.wat").read_text())


CTX = cw.RequestContext(
    "req-1", "POST", "/v1/messages", None,
    [("content-type", "application/json"), ("authorization", "Bearer secret")],
    b'{"model":"claude-sonnet-4-5","tools":[{"name":"bash","input_schema":{}}]}',
    thread_id="thread-7", service_tier="priority", canonical_model_id="claude-sonnet-4-5",
    cache_pricing=cw.CachePricing("known", 3_000_000, 3_750_000, 6_000_000, 300_000),
)
JSON_RESPONSE = cw.UpstreamResponse(
    200,
    [("content-type", "application/json"), ("content-encoding", "identity"), ("content-length", "58")],
    b'{"content":[{"type":"tool_use","name":"Bash","input":{}}]}',
)
STREAM = cw.UpstreamResponse(200, [("content-type", "text/event-stream")])


@pytest.fixture(params=[InstanceStrategy.FRESH, InstanceStrategy.REUSE_PER_THREAD], ids=lambda s: s.value)
def host(request):
    with PluginHost(HostConfig(instance_strategy=request.param, deadline_s=0.5)) as h:
        yield h


# --- admission: the contract comes from the fingerprints ----------------------------------------


@pytest.mark.parametrize(
    "name, kind, contract, hooks",
    [
        ("cache_aware_filter", "filter", "0.2", ("filter",)),
        ("shape_passthrough", "shape", "0.2", ("shape",)),
        ("cache_aware_filter_1_0", "filter", "1.0", ("filter",)),
        ("tool_rename_shape_1_0", "shape", "1.0", ("shape", "transform_response", "transform_sse_event")),
        ("noop_transforms_1_0", "shape", "1.0", ("shape",)),  # noop hooks are never called
    ],
)
def test_each_plugin_speaks_the_contract_of_its_fingerprints(name, kind, contract, hooks):
    inspection = cw.runtime.wasm_module.inspect_plugin(plugin(name))
    assert inspection.problems == ()
    assert inspection.contract is cw.schema.CONTRACTS[contract]
    assert inspection.active_hooks == hooks


REFUSED_1_0 = {
    "shape_without_transform_sse_event": "a cc-lb 1.0 `shape` plugin must also declare `transform_sse_event`",
    "transforms_without_shape": "hook `transform_response` is declared without `shape`",
    "transform_hooks_without_mode": 'hook `transform_response` needs an explicit "mode" beside `shape`',
    "filter_noop": 'hook `filter` cannot be "noop" under the cc-lb 1.0 contract',
    "shape_noop": 'hook `shape` cannot be "noop" under the cc-lb 1.0 contract',
    "noop_transform_missing_export": "missing required function export `cc_lb_transform_sse_event`",
    "noop_transform_missing_fingerprint": "missing `cc_lb.schema.transform_response.v1` custom section",
    "filter_interim_fingerprint": (
        "`cc_lb.schema.filter.v1` fingerprint e2ddd9c3418f5b5aabd0e2b5e156c31adef6b8d60592ee71f0019baad095d98d is refused"
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED_1_0))
def test_the_1_0_rules_refuse_at_admission_with_one_line(name):
    kind = "filter" if name.startswith("filter") else "shape"
    with PluginHost(HostConfig()) as h:
        register = h.register_filter if kind == "filter" else h.register_shape
        with pytest.raises(PluginRejected) as caught:
            register("s", name, fixture(name))
    message = str(caught.value)
    assert REFUSED_1_0[name] in message
    assert "\n" not in message


def test_the_refused_interim_fingerprint_names_what_is_expected():
    with PluginHost(HostConfig()) as h, pytest.raises(PluginRejected) as caught:
        h.register_filter("s", "interim", fixture("filter_interim_fingerprint"))
    message = str(caught.value)
    assert "049219a32497f8439572bab29c8d38cf1fde52c6d3085081c09dab3a73fa382e (cc-lb 0.2)" in message
    assert "f20f669542349c002acd04b2308ff0d83899bf0cb5a17b818c1d938adda52834 (cc-lb 1.0)" in message


def test_hooks_of_two_contracts_in_one_plugin_are_refused():
    # A 1.0 filter's fingerprint beside a 0.2 observe hook: no one contract has both.
    filter_1_0 = cw.schema.CONTRACT_1_0.fingerprints["filter"]
    observe_0_2 = cw.schema.CONTRACT_0_2.fingerprints["observe"]
    hooks = [
        cw.runtime.wasm_module.HookInfo("filter", 1, "d", "u", "cc_lb_filter", "(i32, i32) -> i64", filter_1_0),
        cw.runtime.wasm_module.HookInfo("observe", 1, "d", "u", "cc_lb_observe", "(i32, i32) -> i64", observe_0_2),
    ]
    problems: list = []
    assert cw.runtime.wasm_module._contract_of(tuple(hooks), problems) is None
    assert problems == ["hooks of different contracts in one plugin (`filter` is cc-lb 1.0, `observe` is cc-lb 0.2)"]


# --- filters: 0.2 and 1.0 side by side, each in its own layout ---------------------------------


def test_a_0_2_and_a_1_0_filter_serve_one_request_side_by_side(host):
    old = host.register_filter("old", "cache-aware-0.2", plugin("cache_aware_filter"))
    new = host.register_filter("new", "cache-aware-1.0", plugin("cache_aware_filter_1_0"))
    cands = candidates(5, 50, 20)
    old_out = old.filter(CTX, PRINCIPAL, cands)
    new_out = new.filter(CTX, PRINCIPAL, cands)
    # 0.2 gets the claims (keep_k 2); cc-lb 1.0 sends its filter no claims (keep_k defaults to 1).
    assert old_out.kept_upstream_ids == (uuid.UUID(int=2), uuid.UUID(int=3))
    assert new_out.kept_upstream_ids == (uuid.UUID(int=2),)
    # The 1.0 guest read service_tier and the cache-read price from the 1.0 layout.
    assert "tier=priority cache_read=300000" in new_out.reason
    assert "tier=" not in old_out.reason


def test_a_1_0_filter_without_routing_fields_gets_the_defaults(host):
    new = host.register_filter("new", "cache-aware-1.0", plugin("cache_aware_filter_1_0"))
    ctx = cw.RequestContext("req-2", "POST", "/v1/messages", None, [], b"{}")
    out = new.filter(ctx, PRINCIPAL, candidates(1, 2))
    assert out.kept_upstream_ids == (uuid.UUID(int=2),)
    assert "tier=" not in out.reason and "cache_read=" not in out.reason


def test_the_1_0_filter_request_is_the_golden_layout():
    # Built by the host from host objects, it decodes as the 1.0 root with every field in place.
    cands = [
        cw.UpstreamCandidate(uuid.UUID(int=9), "up", "anthropic_oauth", 7, cw.CacheScore(1, 2, 3, 4), 0.75, "team", "tier_4", "max")
    ]
    value = cw.host_1_0.filter_request(CTX, PRINCIPAL, cands)
    decoded = cw.decode(cw.wire.FilterRequest10, cw.encode(value))
    assert (decoded.thread_id, decoded.service_tier, decoded.canonical_model_id) == ("thread-7", "priority", "claude-sonnet-4-5")
    assert tuple(decoded.cache_pricing) == ("known", 3_000_000, 3_750_000, 6_000_000, 300_000)
    assert [h.name for h in decoded.headers] == ["content-type"]  # credentials stripped as in 0.2
    assert decoded.principal.claims == ()
    assert tuple(decoded.candidates[0]) == (str(uuid.UUID(int=9)), "up", "anthropic_oauth", 7, 1, 2, 3, 4, 0.75, "team", "tier_4", "max")


# --- shape and the transforms ---------------------------------------------------------------------


def test_the_1_0_shape_renames_tools_up_and_the_transforms_map_them_back(host):
    dialect = host.register_shape("s", "tool-rename", plugin("tool_rename_shape_1_0"))
    shaped = dialect.shape(CTX, UPSTREAM, PRINCIPAL)
    assert b'"name":"Bash"' in shaped.body and b'"name":"bash"' not in shaped.body
    result = dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE)
    assert result.replaced and result.status is None and result.headers is None
    sent = result.apply(JSON_RESPONSE)
    assert sent.body == b'{"content":[{"type":"tool_use","name":"bash","input":{}}]}'
    assert sent.status == 200
    assert sent.headers == (("content-type", "application/json"),)  # a replaced body drops encoding and length
    stream = dialect.sse_stream(CTX, UPSTREAM, PRINCIPAL, STREAM)
    event = cw.SseEvent("content_block_start", b'{"content_block":{"type":"tool_use","name":"Bash"}}')
    assert stream.events(event) == (cw.SseEvent("content_block_start", b'{"content_block":{"type":"tool_use","name":"bash"}}'),)
    assert stream.events(cw.SseEvent("ping", b"{}")) == ()  # the guest drops pings
    assert stream.events(cw.SseEvent("message_stop", b"{}")) == (cw.SseEvent("message_stop", b"{}"),)
    assert dialect.stats().calls == 5 and dialect.stats().errors == {}


def test_an_answer_with_nothing_to_change_is_unchanged(host):
    dialect = host.register_shape("s", "tool-rename", plugin("tool_rename_shape_1_0"))
    plain = cw.UpstreamResponse(200, [("content-type", "application/json")], b'{"content":[]}')
    assert dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, plain) is cw.host_types.UNCHANGED_RESPONSE
    assert dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, plain).apply(plain) is plain


@pytest.mark.parametrize("name", ["noop_transforms_1_0", "shape_passthrough"])
def test_noop_hooks_and_0_2_shape_plugins_answer_unchanged_without_a_call(host, name):
    dialect = host.register_shape("s", name, plugin(name))
    assert dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE) is cw.host_types.UNCHANGED_RESPONSE
    assert dialect.transform_sse_event(CTX, UPSTREAM, PRINCIPAL, STREAM, cw.SseEvent("ping", b"")).action is cw.SseAction.UNCHANGED
    assert dialect.stats().calls == 0  # nothing entered the guest


def test_a_noop_hook_is_never_entered_even_when_it_would_trap(host):
    dialect = host.register_shape("s", "noop-trap", fixture("control_noop_transforms_trap"))
    assert dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE).replaced is False
    assert dialect.stats().calls == 0


# --- hostile transform answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, hook",
    [
        ("transform_response_bad_tag", "transform_response"),
        ("transform_sse_event_bad_tag", "transform_sse_event"),
        ("transform_sse_event_huge_count", "transform_sse_event"),
        ("transform_sse_event_len_zero", "transform_sse_event"),
    ],
)
def test_bad_transform_answers_fail_the_probe(name, hook):
    with PluginHost(HostConfig()) as h, pytest.raises(PluginRejected) as caught:
        h.register_shape("s", name, fixture(name))
    assert f"runtime probe failed for hook {hook}" in str(caught.value)


def _unprobed(name: str, **config):
    h = PluginHost(HostConfig(probe=False, **config))
    return h, h.register_shape("s", name, fixture(name))


def test_a_bad_tag_is_a_typed_error_and_fails_open_when_buffered():
    h, dialect = _unprobed("transform_response_bad_tag")
    with h:
        with pytest.raises(TransformError) as caught:
            dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE)
        assert caught.value.kind == "invalid_output"
        assert isinstance(caught.value.__cause__, cw.InvalidDiscriminant)
        assert dialect.transform_response_with_policy(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE).apply(JSON_RESPONSE) is JSON_RESPONSE
        assert dialect.stats().pass_throughs == 1


@pytest.mark.parametrize("name, status", [("transform_response_status_42", 42), ("transform_response_status_1000", 1000)])
def test_a_status_outside_100_to_999_is_refused(name, status):
    h, dialect = _unprobed(name)
    with h, pytest.raises(TransformError) as caught:
        dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE)
    assert caught.value.kind == "invalid_output"
    assert f"status {status} is not a valid HTTP status code (100..999)" in str(caught.value)


@pytest.mark.parametrize("name, status", [("transform_response_status_100", 100), ("transform_response_status_999", 999)])
def test_the_status_bounds_are_accepted_and_keep_the_upstream_body(name, status):
    h, dialect = _unprobed(name)
    with h:
        sent = dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE).apply(JSON_RESPONSE)
    assert sent.status == status
    assert sent.body == JSON_RESPONSE.body and sent.headers == JSON_RESPONSE.headers  # a kept body keeps its encoding


def test_trailing_zeros_after_an_answer_read_as_unchanged():
    h, dialect = _unprobed("transform_response_trailing_zeros")
    with h:
        assert dialect.transform_response(CTX, UPSTREAM, PRINCIPAL, JSON_RESPONSE).replaced is False


def test_an_event_over_the_output_bound_is_refused_before_it_is_read():
    h, dialect = _unprobed("transform_sse_event_data_16mib", bounds=cw.WireBounds(output_body_bytes=16 << 20))
    with h, pytest.raises(TransformError) as caught:
        dialect.transform_sse_event(CTX, UPSTREAM, PRINCIPAL, STREAM, cw.SseEvent("x", b"y"))
    assert caught.value.kind == "runtime"
    assert isinstance(caught.value.__cause__, cw.PluginOutputError)


def test_a_16_mib_event_passes_under_the_default_bounds():
    h, dialect = _unprobed("transform_sse_event_data_16mib", memory_limit_bytes=64 << 20)
    with h:
        result = dialect.transform_sse_event(CTX, UPSTREAM, PRINCIPAL, STREAM, cw.SseEvent("x", b"y"))
    assert result.action is cw.SseAction.REPLACE
    assert [(e.event, len(e.data)) for e in result.events] == [("big", (16 << 20) + 1)]


# --- the stream's failure policy: open until something transformed was sent -------------------------


def test_a_stream_fails_open_until_a_transformed_event_was_sent(host):
    dialect = host.register_shape("s", "tool-rename", plugin("tool_rename_shape_1_0"))
    stream = dialect.sse_stream(CTX, UPSTREAM, PRINCIPAL, STREAM)
    boom = TransformError.runtime("guest trapped")
    answers = iter([boom, cw.SseTransform(cw.SseAction.DROP), boom])

    def flaky(*args):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    # The stream's one call into its dialect (the seam a failing guest would go through).
    dialect._transform_call = flaky
    first = cw.SseEvent("message_start", b"{}")
    assert stream.events(first) == (first,)  # failed before anything transformed: the event as it came
    assert stream.failures == 1 and not stream.transformed
    assert stream.events(cw.SseEvent("ping", b"")) == ()  # the plugin dropped it: the stream is transformed now
    assert stream.transformed
    with pytest.raises(TransformError):
        stream.events(cw.SseEvent("content_block_delta", b"{}"))  # too late to fail open
    assert dialect.stats().pass_throughs == 1


def test_a_replaced_event_whose_name_has_a_line_end_is_refused():
    bounds = cw.WireBounds()
    answer = cw.wire.TransformSseEventResult.Replace((cw.wire.SseEvent("a\nevent: injected", b"x"),))
    with pytest.raises(TransformError, match="has a line end") as caught:
        cw.host_1_0.sse_transform(answer, bounds)
    assert caught.value.kind == "invalid_output"
    fine = cw.wire.TransformSseEventResult.Replace((cw.wire.SseEvent("content_block_delta", b"a\nb"),))
    assert cw.host_1_0.sse_transform(fine, bounds).events == (cw.SseEvent("content_block_delta", b"a\nb"),)


# --- host input that could not be sent is refused where it is made, naming the field ----------


def _context(**fields):
    base = dict(request_id="r", method="POST", path="/v1/messages", query=None, headers=[], body=b"{}")
    return cw.RequestContext(**{**base, **fields})


@pytest.mark.parametrize("field", ["request_id", "method", "path", "thread_id", "service_tier", "canonical_model_id"])
def test_a_lone_surrogate_in_a_context_string_is_refused_naming_the_field(field):
    with pytest.raises(cw.InvalidInput, match=rf"^RequestContext\.{field}: a str with a lone surrogate \('\\ud800' at index 2\)"):
        _context(**{field: "ab\ud800"})
    assert getattr(_context(**{field: "ab\u00e9"}), field) == "ab\u00e9"  # any other non-ASCII text is kept


@pytest.mark.parametrize("name, why", [("a\ud800", "lone surrogate"), ("a\nb", "line end"), ("a\rb", "line end")])
def test_an_sse_event_name_that_could_not_be_written_is_refused(name, why):
    with pytest.raises(cw.InvalidInput, match=rf"^SseEvent\.event: .*{why}"):
        cw.SseEvent(name, b"x")


@pytest.mark.parametrize(
    "header, why",
    [(("x-a", "v\r\nset-cookie: a=b"), "control byte"), ((b"x-a", b"v\nx"), "control byte"), ((b"x-a", b"v\0"), "control byte"),
     (("x a", "v"), "invalid header name"), ((b"", b"v"), "invalid header name")],
)
def test_an_upstream_response_header_that_could_not_be_sent_is_refused(header, why):
    with pytest.raises(cw.InvalidInput, match=rf"^UpstreamResponse\.headers\[1\]: .*{why}"):
        cw.UpstreamResponse(200, [("content-type", "text/plain"), header])
    assert cw.UpstreamResponse(200, [("x-a", "tab\tand latin-1 \u00e9")]).wire_headers == (("x-a", b"tab\tand latin-1 \xe9"),)


@pytest.mark.parametrize("ratio", [float("nan"), float("inf"), float("-inf"), -0.5, -1])
def test_a_plan_capacity_ratio_that_is_not_a_finite_non_negative_number_is_refused(ratio):
    with pytest.raises(cw.InvalidInput, match=r"^UpstreamCandidate\.plan_capacity_ratio: .* out of range"):
        cw.UpstreamCandidate(uuid.uuid4(), "a", "api_key", 0, plan_capacity_ratio=ratio)
    assert cw.UpstreamCandidate(uuid.uuid4(), "a", "api_key", 0, plan_capacity_ratio=2).plan_capacity_ratio == 2.0
