"""Per-slot call statistics of a PluginHost: counters and a latency histogram.

Each slot has one ``SlotCounters`` for its lifetime (it survives swaps and
unregistration, so nothing recorded is lost). Recording must cost well under a
microsecond: the extension has a C twin of ``SlotCounters`` (``_codec.SlotCounters``)
with the same methods; this pure-Python one serves the fallback backend.

Latency buckets are powers of two in nanoseconds, so a recording finds its bucket
with ``int.bit_length`` instead of a search: bucket ``i`` counts calls that took
less than ``2 ** (LATENCY_MIN_BITS + i)`` ns (about 1 µs up to about 1.07 s); one
last bucket counts the slower ones.
"""

from __future__ import annotations

import threading
from time import perf_counter_ns
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

__all__ = ["SlotStats", "MemoryPoolStats", "LATENCY_BOUNDS_S", "LATENCY_MIN_BITS", "LATENCY_BUCKETS"]

#: The first bucket's bound is 2**LATENCY_MIN_BITS ns (1.024 µs).
LATENCY_MIN_BITS = 10
#: Finite buckets; the last finite bound is 2**30 ns (1.07 s).
LATENCY_BUCKETS = 21
#: The finite bucket bounds, in seconds, ascending.
LATENCY_BOUNDS_S: Tuple[float, ...] = tuple(2 ** (LATENCY_MIN_BITS + i) / 1e9 for i in range(LATENCY_BUCKETS))


@dataclass(frozen=True)
class SlotStats:
    """A snapshot of one slot's hook calls since the host started.

    ``calls`` counts every call of the slot's adapter, failures included. ``errors``
    maps the class name of what a failed call raised (``PluginTimeout``,
    ``PluginTrap``, ``InvalidInput``, ...) to its count. ``pass_throughs`` counts
    failures the failure policy passed through. ``latency_counts`` holds one count
    per bucket of ``latency_bounds_s`` (not cumulative) plus one last count for calls
    slower than the last bound; ``latency_sum_s`` is the total time of all calls.
    Calls refused by an open circuit count as calls with the error ``PluginCircuitOpen``.
    """

    kind: str
    slot_key: str
    calls: int
    errors: Mapping[str, int]
    pass_throughs: int
    latency_bounds_s: Tuple[float, ...]
    latency_counts: Tuple[int, ...]
    latency_sum_s: float
    #: How many times the slot's circuit breaker opened (``HostConfig.breaker_failures``).
    breaker_trips: int = 0


def latency_bucket(elapsed_ns: int) -> int:
    """The bucket index of a call that took ``elapsed_ns`` nanoseconds."""
    index = max(elapsed_ns, 0).bit_length() - LATENCY_MIN_BITS
    if index < 0:
        return 0
    return index if index < LATENCY_BUCKETS else LATENCY_BUCKETS


@dataclass(frozen=True)
class MemoryPoolStats:
    """A snapshot of the page-resetting memory pool a host's FRESH instances take their
    memories from (``PluginHost.memory_pool_stats()``; README "Fresh instances").

    A freed memory is reset by zeroing the pages the instance wrote, which stay resident for
    the next instance, up to ``keep_resident_bytes`` per slot; past that the rest of the
    memory is given back to the kernel (a ``decommit``). Resident pages an earlier reset
    zeroed that this instance left alone are given back too (``pages_released``). So each
    of ``slots_used`` holds at most ``keep_resident_bytes`` of RSS between calls."""

    #: Memories the pool can hold at once (HostConfig.pool_size).
    slots: int
    #: Slots handed out at least once.
    slots_used: int
    #: Memories alive now.
    in_use: int
    #: Memories handed out since the host started.
    memories: int
    #: Memories reset after use.
    resets: int
    #: Pages those resets zeroed in place (kept resident).
    pages_zeroed: int
    #: Resident pages found zero already (an earlier instance's, zeroed before), given back.
    pages_released: int
    #: Resets that also gave pages back to the kernel.
    decommits: int
    #: Memories refused (every slot in use: PluginPoolSaturated; larger than a slot) and
    #: growths refused (past a slot).
    refused: int
    #: Dirty bytes a slot keeps resident across a reset.
    keep_resident_bytes: int


class SlotCounters:
    """One slot's counters (pure Python; the extension's twin is ``_codec.SlotCounters``).

    ``record`` and ``record_error`` take the call's duration in nanoseconds
    (``time.perf_counter_ns`` differences). Safe to use from many threads.
    """

    __slots__ = ("kind", "slot_key", "_lock", "_calls", "_pass_throughs", "_sum_ns", "_buckets", "_errors")

    def __init__(self, kind: str, slot_key: str) -> None:
        self.kind = kind
        self.slot_key = slot_key
        self._lock = threading.Lock()
        self._calls = 0
        self._pass_throughs = 0
        self._sum_ns = 0
        self._buckets: List[int] = [0] * (LATENCY_BUCKETS + 1)
        self._errors: Dict[str, int] = {}

    def record(self, elapsed_ns: int, error: Optional[str] = None) -> None:
        """Count a call that succeeded (``error`` None) or raised (the class name of what
        it raised)."""
        index = latency_bucket(elapsed_ns)
        with self._lock:
            self._calls += 1
            self._sum_ns += max(elapsed_ns, 0)
            self._buckets[index] += 1
            if error is not None:
                self._errors[error] = self._errors.get(error, 0) + 1

    def record_error(self, elapsed_ns: int, error: str) -> None:
        """Count a call that raised; ``error`` is the class name of what it raised."""
        self.record(elapsed_ns, error)

    def record_since(self, started_ns: int) -> None:
        """``record`` for a call that started at ``time.perf_counter_ns()`` == started_ns."""
        elapsed_ns = perf_counter_ns() - started_ns
        index = latency_bucket(elapsed_ns)
        with self._lock:  # the hot path: record()'s body inlined
            self._calls += 1
            self._sum_ns += max(elapsed_ns, 0)
            self._buckets[index] += 1

    def record_error_since(self, started_ns: int, error: str) -> None:
        """``record_error`` for a call that started at started_ns."""
        self.record(perf_counter_ns() - started_ns, error)

    def record_pass_through(self) -> None:
        """Count a failure the failure policy passed through."""
        with self._lock:
            self._pass_throughs += 1

    def snapshot(self) -> SlotStats:
        """The counters now, as a SlotStats."""
        with self._lock:
            return SlotStats(
                self.kind,
                self.slot_key,
                self._calls,
                dict(self._errors),
                self._pass_throughs,
                LATENCY_BOUNDS_S,
                tuple(self._buckets),
                self._sum_ns / 1e9,
            )
