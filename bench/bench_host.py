"""Benchmark a plugin call: fresh vs reused instance, against wasmtime-py's public call.

Usage: python bench/bench_host.py [--rounds N] [--out DIR]

One process, contenders interleaved per round, medians of per-call times. Prints
the medians and ratios and writes DIR/bench_host.json.
  filter/fresh      PluginHost filter call, a new store and instance per call (default)
  filter/reuse      the same with InstanceStrategy.REUSE_PER_THREAD
  wasmtime Func()   one call of a trivial (i32, i32) -> i64 export through wasmtime-py's
                    public Func.__call__ (the floor the host's raw call path avoids)
  raw call          the same trivial export through the raw call path the host uses
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import sys
import time
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import wasmtime
from wasmtime import _bindings, _ffi

import cclb_wire as cw

TRIVIAL = (
    '(module (memory (export "memory") 1) (func (export "f") (param i32 i32) (result i64) '
    "local.get 0 i64.extend_i32_u i64.const 32 i64.shl local.get 1 i64.extend_i32_u i64.or))"
)


def contenders():
    wasm = (resources.files("cclb_wire") / "plugins" / "cache_aware_filter.wasm").read_bytes()
    ctx = cw.RequestContext(
        "3149ca30-efe9-448c-9b8b-b33b9225c533", "POST", "/v1/messages", None,
        [("content-type", "application/json"), ("anthropic-version", "2023-06-01"), ("user-agent", "claude-cli/2.0.14")],
        b'{"model":"claude-sonnet-4-5","max_tokens":32000,"messages":[]}',
    )
    principal = cw.Principal("tenant-a", cw.PrincipalKind.API_KEY, {"keep_k": 2})
    candidates = [
        cw.UpstreamCandidate(uuid.UUID(int=i + 1), f"up-{i}", "anthropic_api_key", 1767225600, cw.CacheScore(t))
        for i, t in enumerate([1024, 28672, 0, 12288])
    ]
    fresh_host = cw.PluginHost(cw.HostConfig())
    reuse_host = cw.PluginHost(cw.HostConfig(instance_strategy=cw.InstanceStrategy.REUSE_PER_THREAD))
    fresh = fresh_host.register_filter("bench", "cache-aware", wasm)
    reuse = reuse_host.register_filter("bench", "cache-aware", wasm)
    assert fresh.filter(ctx, principal, candidates) == reuse.filter(ctx, principal, candidates)

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wasmtime.wat2wasm(TRIVIAL)), [])
    func = instance.exports(store)["f"]
    args = (_ffi.wasmtime_val_raw_t * 2)()
    context, func_ref = store._context(), ctypes.byref(func._func)
    trap = ctypes.POINTER(_ffi.wasm_trap_t)()
    trap_ref = ctypes.byref(trap)
    call = _bindings._wasmtime_func_call_unchecked

    def raw():
        args[0].i32 = 5
        args[1].i32 = 7
        if call(context, func_ref, args, 2, trap_ref) or trap:
            raise RuntimeError("trap")
        return args[0].i64

    return {
        "filter/fresh": lambda: fresh.filter(ctx, principal, candidates),
        "filter/reuse": lambda: reuse.filter(ctx, principal, candidates),
        "wasmtime Func()": lambda: func(store, 5, 7),
        "raw call": raw,
    }, (fresh_host, reuse_host)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", type=int, default=200, help="calls per contender per round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    functions, hosts = contenders()
    samples = {name: [] for name in functions}
    for round_index in range(args.rounds):
        order = list(functions) if round_index % 2 == 0 else list(reversed(functions))
        for name in order:
            function = functions[name]
            started = time.perf_counter()
            for _ in range(args.calls):
                function()
            samples[name].append((time.perf_counter() - started) / args.calls)
    for host in hosts:
        host.close()
    medians = {name: float(np.median(values)) * 1e6 for name, values in samples.items()}
    for name, value in medians.items():
        print(f"{name:18s} {value:9.2f} µs/call   x{value / medians['raw call']:.1f} of the raw call")
    print(f"\nwasmtime-py Func() / raw call path: {medians['wasmtime Func()'] / medians['raw call']:.1f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "method": "same process, contenders interleaved per round; medians of per-round per-call times",
        "median_us": medians,
    }
    (args.out / "bench_host.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
