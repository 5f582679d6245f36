"""The per-slot circuit breaker (HostConfig.breaker_failures / breaker_cooldown_s)."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire.runtime import HostConfig, PluginHost
from cclb_wire.runtime.breaker import Breaker

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
CTX = cw.RequestContext("r", "POST", "/v1/messages")
PRINCIPAL = cw.Principal("p")


def test_the_breaker_opens_after_n_failures_and_a_probe_decides():
    breaker = Breaker("s", threshold=2, cooldown_s=0.05)
    breaker.before_call("p", "filter")
    breaker.failed()
    breaker.before_call("p", "filter")  # one failure: still closed
    breaker.failed()
    with pytest.raises(cw.PluginCircuitOpen):
        breaker.before_call("p", "filter")
    assert breaker.trips == 1
    time.sleep(0.06)  # past the cool-down (a premise: nothing measures this sleep)
    breaker.before_call("p", "filter")  # the probe
    with pytest.raises(cw.PluginCircuitOpen, match="a probe call is running"):
        breaker.before_call("p", "filter")  # one probe at a time
    breaker.failed()  # the probe failed: open again at once
    with pytest.raises(cw.PluginCircuitOpen):
        breaker.before_call("p", "filter")
    assert breaker.trips == 2
    time.sleep(0.06)
    breaker.before_call("p", "filter")
    breaker.succeeded()  # the probe succeeded: closed, the count starts over
    breaker.before_call("p", "filter")
    breaker.failed()
    breaker.before_call("p", "filter")
    assert breaker.trips == 2


def test_a_threshold_of_zero_never_opens():
    breaker = Breaker("s", threshold=0, cooldown_s=1.0)
    for _ in range(100):
        breaker.before_call("p", "filter")
        breaker.failed()
    assert breaker.trips == 0


def test_a_looping_plugin_costs_n_deadlines_then_fails_fast_under_its_policy():
    loop = wasmtime.wat2wasm((HOSTILE / "infinite_loop.wat").read_text())
    with PluginHost(HostConfig(deadline_s=0.05, probe=False, breaker_failures=2, breaker_cooldown_s=60)) as host:
        slot = host.register_filter("s", "loop", loop)
        causes = []
        for _ in range(6):
            try:
                slot.filter(CTX, PRINCIPAL, [])
            except cw.FilterError as exc:
                causes.append(type(exc.__cause__).__name__)
        assert causes == ["PluginTimeout", "PluginTimeout"] + ["PluginCircuitOpen"] * 4
        # Under pass_through the open circuit passes through like any failure.
        out = slot.filter_with_policy(CTX, PRINCIPAL, [])
        assert "circuit is open" in out.reason
        stats = host.stats()[("filter", "s")]
        assert stats.breaker_trips == 1 and stats.errors == {"PluginTimeout": 2, "PluginCircuitOpen": 5}


def test_a_callers_bad_argument_does_not_count():
    loop = wasmtime.wat2wasm((HOSTILE / "infinite_loop.wat").read_text())
    with PluginHost(HostConfig(deadline_s=0.05, probe=False, breaker_failures=1)) as host:
        slot = host.register_filter("s", "loop", loop)
        for _ in range(3):
            with pytest.raises(cw.InvalidInputType):
                slot.filter("not a context", PRINCIPAL, [])  # type: ignore[arg-type]
        with pytest.raises(cw.FilterError) as caught:
            slot.filter(CTX, PRINCIPAL, [])
        assert isinstance(caught.value.__cause__, cw.PluginTimeout)  # the circuit was still closed


@pytest.mark.parametrize("value, kind", [(-1, "value"), ("5", "type"), (True, "type")])
def test_breaker_settings_are_checked(value, kind):
    error = cw.InvalidInputType if kind == "type" else cw.InvalidInput
    with pytest.raises(error, match="HostConfig.breaker_failures"):
        HostConfig(breaker_failures=value)


def test_pass_through_warnings_are_rate_limited_per_slot(caplog):
    trap = wasmtime.wat2wasm((HOSTILE / "unreachable.wat").read_text())
    with PluginHost(HostConfig(probe=False, breaker_failures=0)) as host:
        slot = host.register_filter("s", "trap", trap)
        with caplog.at_level("WARNING", logger="cclb_wire.runtime"):
            for _ in range(50):
                slot.filter_with_policy(CTX, PRINCIPAL, [])
        warnings = [r for r in caplog.records if "passing through" in r.getMessage()]
        assert len(warnings) == 1  # 50 failures in well under WARNING_INTERVAL_S
        assert host.stats()[("filter", "s")].pass_throughs == 50  # nothing lost from the counts


def test_a_bad_argument_is_the_callers_error_even_while_the_circuit_is_open():
    loop = wasmtime.wat2wasm((HOSTILE / "infinite_loop.wat").read_text())
    with PluginHost(HostConfig(deadline_s=0.05, probe=False, breaker_failures=1, breaker_cooldown_s=60)) as host:
        slot = host.register_filter("s", "loop", loop)
        with pytest.raises(cw.FilterError):
            slot.filter(CTX, PRINCIPAL, [])  # opens the circuit
        with pytest.raises(cw.FilterError) as caught:
            slot.filter(CTX, PRINCIPAL, [])
        assert isinstance(caught.value.__cause__, cw.PluginCircuitOpen)
        with pytest.raises(cw.InvalidInputType, match=r"candidates\[0\]"):
            slot.filter(CTX, PRINCIPAL, ["not a candidate"])  # type: ignore[list-item]


def test_a_probe_that_ends_in_the_callers_error_lets_the_next_call_probe():
    from importlib import resources

    shape = (resources.files("cclb_wire") / "plugins" / "tool_rename_shape_1_0.wasm").read_bytes()
    config = HostConfig(breaker_failures=1, breaker_cooldown_s=0.05, memory_limit_bytes=4 << 20)
    with PluginHost(config) as host:
        dialect = host.register_shape("s", "rename", shape)
        upstream = cw.AnthropicDirect("https://api.anthropic.com")
        stream = cw.UpstreamResponse(200, [("content-type", "text/event-stream")])
        with pytest.raises(cw.TransformError):  # an event over the memory limit: opens the circuit
            dialect.transform_sse_event(CTX, upstream, PRINCIPAL, stream, cw.SseEvent("x", b"a" * (8 << 20)))
        time.sleep(0.06)  # past the cool-down (a premise)
        unsendable = cw.SseEvent("x", b"{}")
        object.__setattr__(unsendable, "event", "\ud800")  # behind the constructor's check: the encoder refuses it
        with pytest.raises(cw.EncodeError):  # the probe's own argument is bad: no verdict on the plugin
            dialect.transform_sse_event(CTX, upstream, PRINCIPAL, stream, unsendable)
        assert not host._breakers[("shape", "s")].probing
        ping = dialect.transform_sse_event(CTX, upstream, PRINCIPAL, stream, cw.SseEvent("ping", b"{}"))
        assert ping.action is cw.SseAction.DROP  # the next call probed the plugin, and closed the circuit


def test_a_full_pool_is_the_hosts_failure_not_the_plugins():
    """The pool's one slot is held (an instance scope of another slot): the filter's calls
    fail with PluginPoolSaturated, yet its breaker (one failure trips it) stays closed, and
    the first call after the slot is free runs the plugin."""
    filter_wasm = (resources.files("cclb_wire") / "plugins" / "cache_aware_filter.wasm").read_bytes()
    observe_wasm = (resources.files("cclb_wire") / "plugins" / "observe_counter.wasm").read_bytes()
    with PluginHost(HostConfig(pool_size=1, breaker_failures=1, breaker_cooldown_s=60)) as host:
        keep = host.register_filter("f", "cache-aware", filter_wasm)
        observe = host.register_observe("o", "counter", observe_wasm)
        scope = observe.instance_scope()  # holds the pool's only slot
        for _ in range(3):
            with pytest.raises(cw.FilterError) as caught:
                keep.filter(CTX, PRINCIPAL, [])
            assert isinstance(caught.value.__cause__, cw.PluginPoolSaturated)
        scope.close()
        assert keep.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()
        assert keep.stats().breaker_trips == 0
