"""InstanceScope: one instance that a stream's calls share, released on close, on a failed
call and when the scope is collected; two open scopes never share an instance, and what
one stream leaves in its instance is not seen by the next.

The observe guest answers "nothing" (0) the first time it runs in an instance and an
invalid answer (pointer 0, length 8: PluginOutputError) once it finds the global an
earlier call set: so a call's outcome says whether its instance was fresh."""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire.runtime import HostConfig, InstanceScope, PluginHost

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "hostile"))
import gen_fixtures  # noqa: E402  (the hostile fixtures' WAT toolkit)

EVENT = cw.RequestStarted("req_1", None)


def observe_guest(name: str, description: str, hook_body: str, globals_: str = "") -> bytes:
    """An observe plugin whose hook runs ``hook_body`` (an i64 answer) over one page of memory."""
    parts = [
        *([globals_] if globals_ else []),
        '  (memory (export "memory") 1)',
        (gen_fixtures.bump_allocator(1024) + gen_fixtures.NOOP_FREE).rstrip(),
        gen_fixtures.hook_func("$hook", "cc_lb_observe", hook_body),
    ]
    hooks = {"observe": {"wire_version": 1, "description": description, "usage": "Tests only."}}
    customs = [("cc_lb.plugin.v1", gen_fixtures.metadata(hooks)), ("cc_lb.schema.observe.v1", gen_fixtures.fingerprints()["observe"])]
    return wasmtime.wat2wasm(gen_fixtures.module_text(name, description, parts, customs))


def stateful_observe() -> bytes:
    body = """(if (result i64) (global.get $seen)
      (then (i64.const 8))  ;; an earlier call in this instance: an invalid answer
      (else (global.set $seen (i32.const 1)) (i64.const 0)))"""
    return observe_guest("stateful-observe", "Remembers its instance.", body, "  (global $seen (mut i32) (i32.const 0))")


GUEST = stateful_observe()


def spinning_observe() -> bytes:
    return observe_guest("spinning-observe", "Spins.", f"{gen_fixtures.SPIN} (i64.const 0)")


def host(pool_size: int = 8) -> PluginHost:
    # The breaker off: the state-finding calls fail on purpose, again and again.
    return PluginHost(HostConfig(pool_size=pool_size, breaker_failures=0))


def outcome(slot, scope=None) -> str:
    try:
        slot.observe(EVENT, scope)
        return "fresh"
    except cw.ObservabilityError as exc:
        return type(exc.__cause__).__name__


def test_calls_in_a_scope_share_its_instance_and_the_next_scope_starts_fresh():
    with host() as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        assert [outcome(slot) for _ in range(3)] == ["fresh"] * 3  # unscoped: a fresh instance each
        with slot.instance_scope() as scope:
            assert scope.holds_instance and scope.plugin == "stateful"
            assert outcome(slot, scope) == "fresh"
            assert outcome(slot, scope) == "PluginOutputError"  # the same instance: it found its state
            assert not scope.holds_instance  # a failed instance is released ...
            assert outcome(slot, scope) == "fresh"  # ... and the scope's next call opens a fresh one
        with slot.instance_scope() as following:
            assert outcome(slot, following) == "fresh"  # nothing of the last stream's state
        assert slot.stats().calls == 7


def test_two_open_scopes_never_share_an_instance():
    with host() as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        first, second = slot.instance_scope(), slot.instance_scope()
        assert [outcome(slot, first), outcome(slot, second)] == ["fresh", "fresh"]
        assert [outcome(slot, first), outcome(slot, second)] == ["PluginOutputError"] * 2
        first.close()
        second.close()


def test_a_scope_holds_a_pool_slot_until_it_is_closed():
    with host(pool_size=1) as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        scope = slot.instance_scope()
        assert outcome(slot) == "PluginPoolSaturated"  # the pool's one slot is the scope's
        scope.close()
        assert not scope.holds_instance and outcome(slot) == "fresh"
        with pytest.raises(cw.InvalidInput, match=r"^scope: observe: the instance scope can't take this call: it is closed"):
            slot.observe(EVENT, scope)


def test_an_abandoned_scope_releases_its_instance_when_collected():
    with host(pool_size=1) as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        scope = slot.instance_scope()
        assert outcome(slot, scope) == "fresh"
        del scope  # a stream dropped mid-way, never closed
        gc.collect()
        assert outcome(slot) == "fresh"


def test_a_failed_call_gives_the_pool_slot_back_while_the_scope_stays_open():
    with host(pool_size=1) as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        with slot.instance_scope() as scope:
            assert [outcome(slot, scope), outcome(slot, scope)] == ["fresh", "PluginOutputError"]
            assert outcome(slot) == "fresh"  # the scope's failed instance no longer holds the slot


def test_a_scope_is_refused_by_another_slot_and_a_non_scope_is_a_type_error():
    with host() as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        other = plugins.register_observe("p", "stateful", GUEST)
        with slot.instance_scope() as scope:
            with pytest.raises(cw.InvalidInput, match=r"^observe\.scope: the scope was opened by slot \('observe', 'o'\)"):
                other.observe(EVENT, scope)
        with pytest.raises(cw.InvalidInputType, match=r"^observe\.scope: expected a cclb_wire\.runtime\.InstanceScope"):
            slot.observe(EVENT, "scope")
        assert isinstance(scope, InstanceScope)


def test_a_scope_keeps_the_plugin_it_opened_with_across_a_swap():
    with host() as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        with slot.instance_scope() as scope:
            assert outcome(slot, scope) == "fresh"
            plugins.register_observe("o", "swapped", GUEST)  # the slot now holds another plugin
            assert scope.plugin == "stateful"
            assert outcome(slot, scope) == "PluginOutputError"  # still the stream's own instance
        assert outcome(slot) == "fresh"


def _sse_events():
    blocks = [("message_start", {"type": "message_start"}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "tool_use", "id": "t", "name": "Bash", "input": {}}}),
              ("ping", {"type": "ping"}),
              ("message_stop", {"type": "message_stop"})]
    return [cw.SseEvent(name, json.dumps(data).encode()) for name, data in blocks]


def test_a_stream_through_a_scope_transforms_each_event_as_fresh_calls_do():
    shape = (resources.files("cclb_wire") / "plugins" / "tool_rename_shape_1_0.wasm").read_bytes()
    ctx = cw.RequestContext("r", "POST", "/v1/messages", body=b"{}")
    upstream = cw.AnthropicDirect("https://api.anthropic.com")
    principal = cw.Principal("p")
    answer = cw.UpstreamResponse(200, [("content-type", "text/event-stream")])
    with host() as plugins:
        dialect = plugins.register_shape("s", "rename", shape)
        fresh = dialect.sse_stream(ctx, upstream, principal, answer)
        expected = [fresh.events(event) for event in _sse_events()]
        with dialect.instance_scope() as scope:
            pinned = dialect.sse_stream(ctx, upstream, principal, answer, scope)
            assert [pinned.events(event) for event in _sse_events()] == expected
        assert b'"name": "bash"' in expected[1][0].data and expected[2] == ()  # renamed back; the ping dropped
        assert dialect.stats().calls == 2 * len(_sse_events()) and not dialect.stats().errors


def test_calls_in_one_scope_must_not_overlap():
    outcomes = []
    with PluginHost(HostConfig(probe=False, deadline_s=30.0, breaker_failures=0)) as plugins:
        slot = plugins.register_observe("o", "spin", spinning_observe())
        scope = slot.instance_scope()
        thread = threading.Thread(target=lambda: outcomes.append(outcome(slot, scope)))
        thread.start()
        while plugins._gate.active == 0:  # the premise: the first call is in the scope's instance
            time.sleep(0.001)
        with pytest.raises(cw.InvalidInput, match=r"^scope: observe: .* another call is in it"):
            slot.observe(EVENT, scope)
        with pytest.raises(cw.InvalidInput, match=r"^scope: the instance scope is in a call: close it once the call returns"):
            scope.close()
    thread.join(20)  # closing the host ended the spinning call
    assert outcomes == ["PluginTimeout"]


# --- observe_batch: one call for a run of events, as observe_with_policy one by one -----


def run_events(batch: bool, policy: str, breaker: int, scoped: bool, events: list) -> tuple:
    """(what the calls answered or raised, the slot's stats, the pass-throughs), from a new host."""
    with PluginHost(HostConfig(pool_size=8, breaker_failures=breaker, breaker_cooldown_s=60)) as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST, failure_policy=policy)
        scope = slot.instance_scope() if scoped else None
        try:
            if batch:
                answered = slot.observe_batch(events, scope)
            else:
                answered = sum(slot.observe_with_policy(event, scope) for event in events)
        except cw.CclbWireError as exc:
            answered = (type(exc).__name__, type(exc.__cause__).__name__, str(exc))
        finally:
            if scope is not None:
                scope.close()
        stats = slot.stats()
        return answered, stats.calls, stats.errors, stats.pass_throughs


@pytest.mark.parametrize("scoped", [True, False], ids=["scope", "fresh"])
@pytest.mark.parametrize("breaker", [0, 2])
@pytest.mark.parametrize("policy", ["pass_through", "fail_closed"])
@pytest.mark.parametrize("bad", [False, True], ids=["events", "a_bad_one"])
def test_a_batch_answers_and_counts_as_the_calls_one_by_one(policy, breaker, scoped, bad):
    events: list = [cw.RequestStarted(f"req_{i}", None) for i in range(7)]
    if bad:
        events[4] = cw.Principal("not an event")
    assert run_events(True, policy, breaker, scoped, events) == run_events(False, policy, breaker, scoped, events)


def test_a_batch_in_a_scope_runs_in_its_instance_and_drops_what_fails():
    """In one instance the guest answers badly from its second call: the failed instance is
    released and the next event opens a fresh one, so every other event is taken."""
    answered, calls, errors, passed = run_events(True, "pass_through", 0, True, [EVENT] * 5)
    assert (answered, calls, errors, passed) == (3, 5, {"PluginOutputError": 2}, 2)
    # FAIL_CLOSED: the second event's failure ends the batch; the rest are not observed.
    answered, calls, errors, passed = run_events(True, "fail_closed", 0, True, [EVENT] * 5)
    assert answered[:2] == ("ObservabilityError", "PluginOutputError")
    assert (calls, errors, passed) == (2, {"PluginOutputError": 1}, 0)


def test_a_bad_event_in_a_batch_is_the_callers_error():
    answered, calls, errors, passed = run_events(True, "pass_through", 0, False, [EVENT, "not an event", EVENT])
    assert answered[0] == "InvalidInputType" and "expected a cclb_wire observe event" in answered[2]
    assert (calls, errors, passed) == (2, {"InvalidInputType": 1}, 0)  # the third never ran


def test_a_batch_without_a_scope_runs_the_plugin_the_slot_holds_at_each_call():
    """Another thread empties the slot mid-batch: the later events find it empty, as the
    same calls one by one would (found by review: the batch kept the first plugin)."""
    events = [cw.RequestStarted(f"req_{i}", None) for i in range(20000)]
    with PluginHost(HostConfig(pool_size=8)) as plugins:
        slot = plugins.register_observe("o", "counter", (resources.files("cclb_wire.plugins") / "observe_counter.wasm").read_bytes())

        def empty_the_slot() -> None:
            while slot.stats().calls < 200:
                time.sleep(0.0005)
            plugins.unregister("observe", "o")

        thread = threading.Thread(target=empty_the_slot)
        thread.start()
        taken = slot.observe_batch(events)
        thread.join()
        stats = slot.stats()
    assert 200 <= taken < len(events) and stats.calls == len(events)
    assert stats.errors == {"PluginError": len(events) - taken} == {"PluginError": stats.pass_throughs}


def slow_observe(iterations: int) -> bytes:
    body = f"""(local.set $in_ptr (i32.const {iterations}))
      (loop $spin (local.set $in_ptr (i32.sub (local.get $in_ptr) (i32.const 1))) (br_if $spin (local.get $in_ptr)))
      (i64.const 0)"""
    return observe_guest("slow-observe", "Slow.", body)


def test_a_signal_handler_that_raises_stops_a_batch_between_two_calls():
    """Ctrl-C during a long batch: raised before the next event, as between two calls from
    Python (found by review: the C loop ran the whole batch first)."""
    import signal

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted()

    events = [cw.RequestStarted(f"req_{i}", None) for i in range(400)]
    with PluginHost(HostConfig(pool_size=4, deadline_s=5)) as plugins:
        slot = plugins.register_observe("o", "slow", slow_observe(2_000_000))
        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            with slot.instance_scope() as scope:
                timer = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
                timer.start()
                with pytest.raises(Interrupted):
                    slot.observe_batch(events, scope)
                timer.join()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        stats = slot.stats()
    # Between two calls (the extension's loop) or inside one's Python (the ctypes path,
    # counted there as that call's error, as observe() counts it): never after the batch.
    assert 0 < stats.calls < len(events) and stats.errors in ({}, {"Interrupted": 1})


def test_a_batch_of_something_not_iterable_is_the_callers_error():
    with host() as plugins:
        slot = plugins.register_observe("o", "stateful", GUEST)
        with pytest.raises(cw.InvalidInputType, match=r"^ObservabilityHook\.observe_batch\.events: expected an iterable"):
            slot.observe_batch(None)  # type: ignore[arg-type]
