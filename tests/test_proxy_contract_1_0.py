"""The example proxy with cc-lb 1.0 plugins, end to end on loopback: a 1.0 filter that reads
the routing fields, a 1.0 shape plugin whose transforms map tool names back in buffered
and streamed answers, and a 0.2 observe plugin in the third slot, all in one config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

import cclb_wire as cw
from test_proxy_e2e import PLUGINS, PROXY_KEY, SECONDARY, check_stream, parse_sse, proxy_app, start_proxy, upstream, write_config  # noqa: F401

TOOLS = [{"name": "bash", "description": "Run a command", "input_schema": {"type": "object"}}]
PRICES = {"input": 3_000_000, "cache_creation_5m": 3_750_000, "cache_creation_1h": 6_000_000, "cache_read": 300_000}


def config_1_0(tmp_path: Path, upstream_url: str) -> Path:
    path = write_config(
        tmp_path, upstream_url,
        filter_wasm=PLUGINS / "cache_aware_filter_1_0.wasm", shape_wasm=PLUGINS / "tool_rename_shape_1_0.wasm",
    )
    config = json.loads(path.read_text())
    config["server"]["thread_id_header"] = "x-claude-code-session-id"
    config["prices"] = {"claude-sonnet-4-5": {f"{k}_micros_per_million": v for k, v in PRICES.items()}}
    config["upstreams"][1].update(plan_capacity_ratio=0.5, rate_limit_tier="tier_4", predicted_cache_creation_tokens_5m=12)
    path.write_text(json.dumps(config))
    return path


def body(stream: bool = False) -> Dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream, "service_tier": "priority",
            "tools": TOOLS, "messages": [{"role": "user", "content": "ls"}]}


def test_each_slot_speaks_its_plugins_contract(tmp_path, upstream, start_proxy):
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    contracts = {hook: adapter.contract for hook, adapter in proxy.proxy.adapters.items()}
    assert contracts == {"filter": "1.0", "shape": "1.0", "observe": "0.2"}


def test_a_buffered_answer_is_mapped_back_while_the_upstream_sees_the_renamed_tool(tmp_path, upstream, start_proxy):
    fake, server = upstream
    path = config_1_0(tmp_path, server.url)
    config = json.loads(path.read_text())
    config["host"]["pool_size"] = proxy_app.PREPARE_MIN_POOL  # instances are opened ahead
    path.write_text(json.dumps(config))
    proxy = start_proxy(path)
    filtered = []
    adapter = proxy.proxy.adapters["filter"]
    real_filter = adapter.filter_with_policy
    adapter.filter_with_policy = lambda *args: filtered.append(real_filter(*args)) or filtered[-1]
    answer = proxy.post(body(), **{"x-claude-code-session-id": "session-42"})
    assert answer.status_code == 200, answer.text
    sent = json.loads(fake.received[-1].body)
    assert [t["name"] for t in sent["tools"]] == ["Bash"]  # renamed on the way up
    assert answer.json()["content"][1] == {"type": "tool_use", "id": "toolu_fake", "name": "bash", "input": {}}
    assert int(answer.headers["content-length"]) == len(answer.content)
    # The 1.0 filter got the routing fields, and its guest read the tier and the price.
    (ctx,) = proxy.contexts
    assert (ctx.thread_id, ctx.service_tier, ctx.canonical_model_id) == ("session-42", "priority", "claude-sonnet-4-5")
    assert ctx.cache_pricing == cw.CachePricing("known", *PRICES.values())
    assert "tier=priority cache_read=300000" in filtered[0].reason
    # Usage is read from the upstream's bytes, before the transform; the 0.2 observe slot saw it all.
    finished = proxy.events[-1]
    assert (finished.input_tokens, finished.output_tokens) == (17, 5)
    stats = proxy.stats("observe")
    assert stats.calls == len(proxy.events) and not stats.errors
    assert proxy.stats("shape").calls == 2 and not proxy.stats("shape").errors  # shape + transform_response
    # The request ended after its transform_response call, so the shape instance opened
    # ahead is the next request's (the call would have taken one opened before it).
    native = proxy.proxy.adapters["shape"]._loaded().native
    assert native is None or native.has_prepared


def test_a_buffered_transform_whose_read_raises_still_ends_its_request(tmp_path, upstream, start_proxy):
    """A bug while the answer is read whole (here: the read raises) must not leave the
    request unaccounted for or its observe instance open (found by review)."""
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    proxy.proxy._read_whole = broken
    samples = len(proxy.proxy.hook_samples)
    answer = proxy.client.post("/v1/messages", content=json.dumps(body()).encode(), headers={"x-api-key": PROXY_KEY})
    assert answer.status_code == 500
    assert len(proxy.proxy.hook_samples) == samples + 1 and proxy.proxy._open_scopes == 0


def test_a_streamed_answer_is_mapped_back_event_by_event(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    answer = proxy.post(body(stream=True))
    assert answer.status_code == 200
    # Exactly the upstream's stream with the tool named as the client named it: every
    # other event byte for byte, the event ids kept on the replaced one.
    assert check_stream(answer.content, 5, tool="bash") is None
    assert b'"name":"Bash"' not in answer.content
    assert [t["name"] for t in json.loads(fake.received[-1].body)["tools"]] == ["Bash"]
    assert proxy.events[-1].output_tokens == 5
    events = len(parse_sse(answer.content))
    assert proxy.stats("shape").calls == 1 + events and not proxy.stats("shape").errors


def test_a_failing_buffered_transform_sends_the_upstreams_answer(tmp_path, upstream, start_proxy):
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    shape = proxy.proxy.adapters["shape"]

    def broken(*args: Any) -> None:
        raise cw.TransformError.runtime("injected failure")

    shape.transform_response = broken
    answer = proxy.post(body())
    assert answer.status_code == 200
    assert answer.json()["content"][1]["name"] == "Bash"  # failed open: the upstream's answer as it came
    assert proxy.stats("shape").pass_throughs == 1


def test_a_stream_fails_open_before_and_ends_with_an_error_after_a_transformed_event(tmp_path, upstream, start_proxy):
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    shape = proxy.proxy.adapters["shape"]
    real = shape._transform_call  # the one call a stream makes per event (where a guest would fail)
    calls = []

    def flaky(hook: str, args: Any, head: Any, event: cw.SseEvent, scope: Any = None) -> cw.SseTransform:
        calls.append(event.event)
        if len(calls) == 1:
            raise cw.TransformError.runtime("injected before anything was transformed")
        result = real(hook, args, head, event, scope)
        if event.event == "content_block_stop" and b'"index":1' in event.data:
            raise cw.TransformError.runtime("injected after the tool_use event")
        return result

    shape._transform_call = flaky
    answer = proxy.post(body(stream=True))
    events = parse_sse(answer.content.split(b"event: error")[0])
    names = [name for _, name, _ in events]
    # The first event failed open (sent as it came); the tool_use start was transformed;
    # the failure after it ended the stream with an error event, before message_stop.
    assert names[0] == "message_start"
    assert any(data.get("content_block", {}).get("name") == "bash" for _, _, data in events)
    assert b"event: error" in answer.content and b"message_stop" not in answer.content
    error = json.loads(answer.content.split(b"event: error\ndata: ")[1].split(b"\n")[0])
    assert error["error"]["type"] == "api_error" and "failed mid-stream" in error["error"]["message"]
    assert any(isinstance(e, cw.ErrorEvent) and e.code == "transform_failed" for e in proxy.events)


def test_a_model_json_has_but_utf8_does_not_is_left_unset(tmp_path, upstream, start_proxy):
    # JSON admits a lone surrogate ("\ud800"); the wire cannot carry it: the routing field
    # is left unset and the request is served (it was a 500 with a traceback).
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    answer = proxy.post({**body(), "model": "\ud800", "service_tier": "\udfff"})
    assert answer.status_code == 200
    (ctx,) = proxy.contexts
    assert (ctx.canonical_model_id, ctx.service_tier, ctx.cache_pricing) == (None, None, None)


def _spy_scopes(proxy: Any) -> Dict[str, list]:
    """Each slot's opened instance scopes, and the scope each observe call ran in."""
    seen: Dict[str, list] = {"observe": [], "shape": [], "calls": []}
    for hook in ("observe", "shape"):
        adapter = proxy.proxy.adapters[hook]

        def opened(adapter: Any = adapter, real: Any = adapter.instance_scope, hook: str = hook) -> Any:
            seen[hook].append(real())
            return seen[hook][-1]

        adapter.instance_scope = opened
    observe = proxy.proxy.adapters["observe"]
    real_observe, real_batch = observe.observe_with_policy, observe.observe_batch
    in_batch = []  # off the extension's path, a batch calls observe_with_policy for each event

    def one(event: Any, scope: Any = None) -> bool:
        if not in_batch:
            seen["calls"].append((type(event).__name__, scope))
        return real_observe(event, scope)  # type: ignore[no-any-return]

    def batch(events: Any, scope: Any = None) -> int:  # the events a request held back
        seen["calls"].extend((type(event).__name__, scope) for event in events)
        in_batch.append(True)
        try:
            return real_batch(events, scope)  # type: ignore[no-any-return]
        finally:
            in_batch.pop()

    observe.observe_with_policy = one

    observe.observe_batch = batch
    return seen


def test_a_requests_events_and_a_streams_transforms_each_run_in_one_instance_released_at_the_end(tmp_path, upstream,
                                                                                                   start_proxy):
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    seen = _spy_scopes(proxy)
    for _ in range(2):
        answer = proxy.post(body(stream=True))
        assert answer.status_code == 200 and check_stream(answer.content, 5, tool="bash") is None
    observe_scopes, shape_scopes = seen["observe"], seen["shape"]
    assert len(observe_scopes) == len(shape_scopes) == 2  # one per request and slot
    assert observe_scopes[0] is not observe_scopes[1] and shape_scopes[0] is not shape_scopes[1]
    names = [name for name, _ in seen["calls"]]
    assert names.count("RequestStarted") == 2 and names.count("Chunk") > 4
    # Every event of a request, from RequestStarted to RequestFinished, ran in its request's instance.
    first = sum(1 for _, scope in seen["calls"] if scope is observe_scopes[0])  # streams may differ in chunks
    assert [scope for _, scope in seen["calls"]] == [observe_scopes[0]] * first + [observe_scopes[1]] * (len(names) - first)
    assert names[0] == names[first] == "RequestStarted" and names[first - 1] == names[-1] == "RequestFinished"
    assert not any(scope.holds_instance for scope in observe_scopes + shape_scopes)  # released when each request ended
    assert proxy.proxy._open_scopes == 0
    assert not proxy.stats("shape").errors and not proxy.stats("observe").errors


def test_a_stream_that_gets_no_instance_of_its_own_runs_each_call_fresh(tmp_path, upstream, start_proxy, caplog):
    _, server = upstream
    proxy = start_proxy(config_1_0(tmp_path, server.url))
    shape = proxy.proxy.adapters["shape"]

    def full_pool() -> Any:
        raise cw.PluginPoolSaturated("instantiate: the pool is full (test)", plugin="rename", hook="transform_sse_event")

    def full_pool_for_observe() -> Any:
        raise cw.PluginPoolSaturated("instantiate: the pool is full (test)", plugin="counter", hook="observe")

    shape.instance_scope = full_pool
    proxy.proxy.adapters["observe"].instance_scope = full_pool_for_observe
    answer = proxy.post(body(stream=True))
    assert answer.status_code == 200 and check_stream(answer.content, 5, tool="bash") is None  # still transformed
    assert sorted(r.getMessage() for r in caplog.records if "fresh instances" in r.getMessage()) == [
        "observe slot: a request's observe events run in fresh instances (plugin 'counter' hook observe: instantiate: the pool is full (test))",
        "shape slot: a stream's calls run in fresh instances (plugin 'rename' hook transform_sse_event: instantiate: the pool is full (test))",
    ]


@pytest.mark.parametrize("observe_policy", ["pass_through", "fail_closed"])
def test_streams_hold_at_most_half_the_pool(tmp_path, upstream, start_proxy, caplog, observe_policy):
    _, server = upstream
    path = config_1_0(tmp_path, server.url)
    config = json.loads(path.read_text())
    config["host"]["pool_size"] = 2  # one instance for scopes, one for the calls that need a fresh one
    config["plugins"]["observe"]["failure_policy"] = observe_policy
    path.write_text(json.dumps(config))
    proxy = start_proxy(path)
    seen = _spy_scopes(proxy)
    answer = proxy.post(body(stream=True))
    assert answer.status_code == 200 and check_stream(answer.content, 5, tool="bash") is None
    warned = any("scopes hold half the pool already: 1 instances" in r.getMessage() for r in caplog.records)
    if observe_policy == "fail_closed":  # each event observed as it happens: the observe scope opens first
        assert len(seen["observe"]) == 1 and seen["shape"] == []  # and takes the half; the stream runs fresh
        assert warned
    else:  # the events held back are observed once the stream ended and gave its scope back
        assert len(seen["observe"]) == len(seen["shape"]) == 1 and not warned
    assert not proxy.stats("shape").errors and not proxy.stats("observe").errors  # nothing starved
    assert proxy.proxy._open_scopes == 0
