"""Per-slot call counters: the extension's, in C, when it loaded (a call's recording then
costs ~100 ns), else Python's; and the clock they measure against."""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any, Callable, Tuple

from ..host_stats import SlotCounters as _PySlotCounters


def _counters_and_clock() -> Tuple[Any, Callable[[], int]]:
    from .. import BACKEND

    if BACKEND == "cython":
        from .. import _codec

        return _codec.SlotCounters, _codec.monotonic_ns
    return _PySlotCounters, perf_counter_ns


new_slot_counters, clock_ns = _counters_and_clock()
