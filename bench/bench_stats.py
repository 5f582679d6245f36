"""What the per-slot call statistics cost a hook call, side by side.

Usage: python bench/bench_stats.py [--rounds N] [--quick]

Every adapter call (``FilterPlugin.filter``, ``UpstreamDialect.shape``,
``ObservabilityHook.observe``) reads a clock before the call and records into the
slot's counters after it. This measures exactly that pair, for the extension's C
counters and the pure-Python ones, against an empty loop, and the whole
``ObservabilityHook.observe`` call (REUSE_PER_THREAD, a Chunk) beside it. Rounds
interleave the contenders; the figure is the median over rounds of the per-call
time minus the empty loop's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cclb_wire as cw  # noqa: E402
from cclb_wire import host_stats  # noqa: E402


def loop_seconds(body: Callable[[int], None], calls: int) -> float:
    started = time.perf_counter()
    body(calls)
    return (time.perf_counter() - started) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds of fewer calls (a smoke run)")
    args = parser.parse_args()
    rounds, calls = (3, 20_000) if args.quick else (args.rounds, 200_000)

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    contenders: Dict[str, Callable[[int], None]] = {"empty loop": empty}
    if cw.BACKEND == "cython":
        from cclb_wire import _codec

        c_counters, c_clock = _codec.SlotCounters("observe", "bench"), _codec.monotonic_ns

        def c_record(n: int) -> None:
            for _ in range(n):
                c_counters.record_since(c_clock())

        contenders["C counters: clock + record"] = c_record
    py_counters, py_clock = host_stats.SlotCounters("observe", "bench"), time.perf_counter_ns

    def py_record(n: int) -> None:
        for _ in range(n):
            py_counters.record_since(py_clock())

    contenders["Python counters: clock + record"] = py_record

    host = cw.PluginHost(cw.HostConfig(instance_strategy="reuse_per_thread"))
    observe = host.register_observe("o", "observe", Path(cw.__file__).parent / "plugins" / "observe_counter.wasm")
    event = cw.Chunk(1, 1, 512)

    def observe_calls(n: int) -> None:
        for _ in range(n):
            observe.observe(event)

    contenders["ObservabilityHook.observe(Chunk)"] = observe_calls
    per_call: Dict[str, List[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        order = list(contenders.items())
        if round_index % 2:
            order.reverse()
        for name, body in order:
            per_call[name].append(loop_seconds(body, calls if "observe" not in name else calls // 20))
    host.close()
    base = statistics.median(per_call["empty loop"])
    print(f"backend {cw.BACKEND}, {rounds} rounds; per call, minus the empty loop ({base * 1e9:.0f} ns):")
    for name, samples in per_call.items():
        if name != "empty loop":
            print(f"  {name:<36} {(statistics.median(samples) - base) * 1e9:8.0f} ns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
