"""/metrics: the proxy's own request metrics and the plugin host's per-slot stats.

Everything lives in one custom registry (not prometheus_client's global one), so two
proxies in one process (the tests) never collide.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import cclb_wire as cw

#: Hook work per request is microseconds normally, up to the deadline at worst.
HOOK_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 1.0)


class PluginStatsCollector(Collector):
    """Reads ``host.stats()`` at scrape time: nothing is copied per call."""

    def __init__(self, host: cw.PluginHost) -> None:
        self._host = host

    def collect(self) -> Iterator[Metric]:
        labels = ["kind", "slot"]
        calls = CounterMetricFamily("cclb_plugin_calls", "Hook calls, failures included.", labels=labels)
        errors = CounterMetricFamily("cclb_plugin_errors", "Failed hook calls by error class.", labels=labels + ["error"])
        passed = CounterMetricFamily(
            "cclb_plugin_pass_throughs", "Failures the slot's failure policy passed through.", labels=labels
        )
        latency = HistogramMetricFamily("cclb_plugin_call_seconds", "Hook call duration.", labels=labels)
        trips = CounterMetricFamily(
            "cclb_plugin_breaker_trips", "Times the slot's circuit breaker opened (calls then fail fast).", labels=labels
        )
        for (kind, slot), stats in sorted(self._host.stats().items()):
            calls.add_metric([kind, slot], stats.calls)
            for error, count in sorted(stats.errors.items()):
                errors.add_metric([kind, slot, error], count)
            passed.add_metric([kind, slot], stats.pass_throughs)
            trips.add_metric([kind, slot], stats.breaker_trips)
            # SlotStats counts per bucket; Prometheus buckets are cumulative, ending in +Inf.
            buckets, total = [], 0
            for bound, count in zip(stats.latency_bounds_s + (float("inf"),), stats.latency_counts):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            latency.add_metric([kind, slot], buckets, stats.latency_sum_s)
        yield from (calls, errors, passed, latency, trips)


class ProxyMetrics:
    def __init__(self, host: cw.PluginHost) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cclb_proxy_requests", "Requests answered, by status.", ["status"], registry=r)
        self.duration = Histogram(
            "cclb_proxy_request_seconds", "Request duration, to the last byte streamed.", registry=r
        )
        self.hook_time = Histogram(
            "cclb_proxy_hook_seconds", "Time spent in hook calls per request (all hooks).", buckets=HOOK_BUCKETS, registry=r
        )
        self.chunks = Counter("cclb_proxy_chunks_streamed", "Response chunks streamed to clients.", registry=r)
        self.attempts = Counter(
            "cclb_proxy_upstream_attempts",
            "Requests sent to an upstream, by how it went: answered, timeout, unreachable, or a retried status.",
            ["upstream", "outcome"], registry=r,
        )
        self.reloads = Counter(
            "cclb_proxy_plugin_reloads", "Plugin reloads by slot and result (swapped, unchanged, failed).",
            ["hook", "result"], registry=r,
        )
        r.register(PluginStatsCollector(host))
