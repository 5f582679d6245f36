"""Per-slot call statistics (``PluginHost.stats()``) and per-slot failure policies."""

from __future__ import annotations

import threading

import pytest

import cclb_wire as cw
from cclb_wire import host_stats
from cclb_wire.runtime import FailurePolicy, HostConfig, PluginHost

from test_runtime_hardening import CTX, PRINCIPAL, candidates, fixture, plugin, variant

COUNTER_CLASSES = [pytest.param(host_stats.SlotCounters, id="python")]
if cw.BACKEND == "cython":
    from cclb_wire import _codec

    COUNTER_CLASSES.append(pytest.param(_codec.SlotCounters, id="cython"))

UPSTREAM = cw.AnthropicDirect("https://api.example.com")


def test_bucket_bounds_are_powers_of_two_from_1024_ns():
    bounds = host_stats.LATENCY_BOUNDS_S
    assert bounds[0] == pytest.approx(1.024e-6)
    assert bounds[1] == pytest.approx(2.048e-6)
    assert bounds[-1] == pytest.approx(1.073741824)
    assert list(bounds) == sorted(bounds)


@pytest.mark.parametrize("counters_class", COUNTER_CLASSES)
def test_each_duration_lands_in_the_bucket_its_bound_names(counters_class):
    counters = counters_class("filter", "s")
    # (duration in ns, bucket): bucket i counts durations below 2**(10 + i) ns; 22 buckets.
    cases = [(0, 0), (1, 0), (1023, 0), (1024, 1), (2047, 1), (2048, 2), (1_000_000, 10),
             (2**30 - 1, 20), (2**30, 21), (86_400 * 10**9, 21), (-5, 0)]
    for elapsed, _ in cases:
        counters.record(elapsed)
    stats = counters.snapshot()
    expected = [0] * 22
    for _, bucket in cases:
        expected[bucket] += 1
    assert list(stats.latency_counts) == expected
    assert stats.calls == len(cases)
    assert stats.latency_sum_s == pytest.approx((sum(e for e, _ in cases if e > 0)) / 1e9)
    assert (stats.kind, stats.slot_key, stats.errors, stats.pass_throughs) == ("filter", "s", {}, 0)


@pytest.mark.parametrize("counters_class", COUNTER_CLASSES)
def test_errors_are_counted_by_class_and_pass_throughs_apart(counters_class):
    counters = counters_class("shape", "s")
    counters.record_error(5000, "PluginTimeout")
    counters.record_error(5000, "PluginTimeout")
    counters.record_error(100, "PluginTrap")
    counters.record(100)
    counters.record_pass_through()
    stats = counters.snapshot()
    assert stats.calls == 4
    assert stats.errors == {"PluginTimeout": 2, "PluginTrap": 1}
    assert stats.pass_throughs == 1
    assert sum(stats.latency_counts) == 4


@pytest.mark.parametrize("counters_class", COUNTER_CLASSES)
def test_no_count_is_lost_across_threads(counters_class):
    counters = counters_class("observe", "s")

    def hammer():
        for i in range(20_000):
            counters.record(i)
            if i % 100 == 0:
                counters.record_error(i, "PluginTrap")
                counters.record_pass_through()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = counters.snapshot()
    assert stats.calls == 4 * (20_000 + 200)
    assert stats.errors == {"PluginTrap": 800}
    assert stats.pass_throughs == 800
    assert sum(stats.latency_counts) == stats.calls


def test_the_host_counts_every_call_of_every_slot():
    with PluginHost() as host:
        filter_ = host.register_filter("f", "filter", plugin("cache_aware_filter"))
        shape = host.register_shape("s", "shape", plugin("shape_passthrough"))
        observe = host.register_observe("o", "observe", plugin("observe_counter"))
        for _ in range(3):
            filter_.filter(CTX, PRINCIPAL, candidates(2))
        shape.shape(CTX, UPSTREAM, PRINCIPAL)
        for index in range(5):
            observe.observe(cw.Chunk(index, 1, 10))
        stats = host.stats()
    assert set(stats) == {("filter", "f"), ("shape", "s"), ("observe", "o")}
    assert [stats[key].calls for key in (("filter", "f"), ("shape", "s"), ("observe", "o"))] == [3, 1, 5]
    for slot in stats.values():
        assert slot.errors == {} and slot.pass_throughs == 0
        assert sum(slot.latency_counts) == slot.calls
        assert 0 < slot.latency_sum_s < 5.0
    assert filter_.stats() == stats[("filter", "f")]


def test_failures_are_counted_by_typed_cause_and_policy_pass_throughs():
    with PluginHost(HostConfig(deadline_s=0.05, probe=False)) as host:
        trap = host.register_filter("trap", "t", fixture("unreachable"))
        spin = host.register_filter("spin", "s", fixture("infinite_loop"))
        with pytest.raises(cw.FilterError):
            trap.filter(CTX, PRINCIPAL, [])
        trap.filter_with_policy(CTX, PRINCIPAL, [])  # PASS_THROUGH: the host's default
        spin.filter_with_policy(CTX, PRINCIPAL, [])
        with pytest.raises(cw.InvalidInputType):
            trap.filter(CTX, PRINCIPAL, ["not a candidate"])  # the caller's error, counted too
        stats = host.stats()
    assert stats[("filter", "trap")].calls == 3
    assert stats[("filter", "trap")].errors == {"PluginTrap": 2, "InvalidInputType": 1}
    assert stats[("filter", "trap")].pass_throughs == 1
    assert stats[("filter", "spin")].errors == {"PluginTimeout": 1}
    assert stats[("filter", "spin")].pass_throughs == 1


def test_counters_outlive_swaps_and_unregistration():
    with PluginHost() as host:
        first = host.register_filter("f", "a", variant(1))
        first.filter(CTX, PRINCIPAL, [])
        second = host.register_filter("f", "b", variant(2))
        second.filter(CTX, PRINCIPAL, [])
        first.filter(CTX, PRINCIPAL, [])  # the old adapter calls the slot's new plugin
        host.unregister("filter", "f")
        with pytest.raises(cw.FilterError):
            first.filter(CTX, PRINCIPAL, [])
        stats = host.stats()[("filter", "f")]
    assert stats.calls == 4
    assert stats.errors == {"PluginError": 1}


def test_each_slot_has_its_own_failure_policy():
    config = HostConfig(deadline_s=0.05, probe=False, failure_policy="pass_through")
    with PluginHost(config) as host:
        default = host.register_filter("default", "t", fixture("unreachable"))
        closed = host.register_filter("closed", "t", fixture("unreachable"), failure_policy="FAIL_CLOSED")
        assert default.failure_policy is FailurePolicy.PASS_THROUGH
        assert closed.failure_policy is FailurePolicy.FAIL_CLOSED
        kept = default.filter_with_policy(CTX, PRINCIPAL, candidates(2))
        assert len(kept.kept_upstream_ids) == 2 and kept.reason.startswith("plugin failed; passed through:")
        with pytest.raises(cw.FilterError):
            closed.filter_with_policy(CTX, PRINCIPAL, candidates(2))
        # A registration states the policy again: the same content with None falls back to the config's.
        again = host.register_filter("closed", "t", fixture("unreachable"))
        assert again.failure_policy is closed.failure_policy is FailurePolicy.PASS_THROUGH


def test_a_fail_closed_host_with_a_pass_through_slot():
    config = HostConfig(deadline_s=0.05, probe=False, failure_policy=FailurePolicy.FAIL_CLOSED)
    with PluginHost(config) as host:
        shape = host.register_shape("lenient", "shape", plugin("shape_passthrough"), failure_policy="pass_through")
        host.unregister("shape", "lenient")
        assert shape.shape_with_policy(CTX, UPSTREAM, PRINCIPAL) is None  # empty slot: passed through
        observe = host.register_observe("o", "observe", plugin("observe_counter"), failure_policy="pass_through")
        assert observe.observe_with_policy(cw.Chunk(0, 1, 1)) is True
        host.unregister("observe", "o")
        assert observe.observe_with_policy(cw.Chunk(0, 1, 1)) is False
        strict = host.register_observe("o2", "observe", plugin("observe_counter"))
        host.unregister("observe", "o2")
        with pytest.raises(cw.ObservabilityError):
            strict.observe_with_policy(cw.Chunk(0, 1, 1))
        stats = host.stats()
    assert stats[("shape", "lenient")].pass_throughs == 1
    assert stats[("observe", "o")].calls == 2 and stats[("observe", "o")].pass_throughs == 1
    assert stats[("observe", "o2")].pass_throughs == 0 and stats[("observe", "o2")].errors == {"PluginError": 1}


def test_a_bad_failure_policy_is_refused_before_admission():
    with PluginHost() as host:
        with pytest.raises(cw.InvalidInput, match="register_filter.failure_policy"):
            host.register_filter("f", "a", plugin("cache_aware_filter"), failure_policy="sometimes")
        assert host.slot("filter", "f") is None
