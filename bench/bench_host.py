"""Benchmark a plugin call through cclb_wire's host against the alternatives, side by side.

Usage: python bench/bench_host.py [--rounds N] [--quick] [--out DIR]

Method: one process; every round runs every contender once, for a batch of calls
sized at start-up to take about the same time, one contender after the other (the
order reverses every other round); a contender's figure is the median over rounds of
its per-call time (or throughput), and every ratio is the median of the per-round
ratios, so a noisy neighbour slows both sides of a ratio alike. Prints the machine,
a table of medians, the ratios and the targets (PASS/FAIL; a FAIL does not change
the exit status), and writes DIR/bench_host.json and DIR/bench_host.png (the chart
needs matplotlib; without it the PNG is skipped with a note).

Only cclb_wire's public API is used, so the figures follow whatever call path the
installed cclb_wire has.

The request: a Claude Code /v1/messages filter request with 12 headers, a 1 KiB JSON
body, 4 claims (keep_k=2) and 8 candidates.

Guests (bench/guests/, assembled with wasmtime.wat2wasm at start-up):
  constant     constant_filter.wat: frees its input and answers a fixed 916-byte
               FilterResponse (8 results): the cost of a call without guest work
  cache-aware  the shipped cclb_wire/plugins/cache_aware_filter.wasm: reads and
               validates the request, ranks the 8 candidates, writes its answer
  rust-layout  the same source laid out as rustc lays out cc-lb's (Rust) plugins: a
               1 MiB stack first (its top at the 1 MiB mark), data and heap above it, 17
               pages; built at start-up by guests/build.py (build_rust_layout), which
               needs the pinned ziglang (in the bench extra)
  spin         spin_filter.wat: a counted loop, calibrated at start-up to ~2.5 ms a call
  observe      the shipped observe_counter.wasm, given a Chunk event
  extism       extism_filter.wat: an extism plugin with the constant guest's payloads

Contenders, for each of the constant, cache-aware and rust-layout guests:
  ours/reuse         PluginHost(HostConfig(instance_strategy=REUSE_PER_THREAD)), FilterPlugin.filter
  ours/fresh         PluginHost(HostConfig()): the default, a fresh instance per call, its
                     memory from the page-resetting pool where it serves
  ours/fresh, wasmtime's pool  the same with CCLB_WIRE_MEMORY_POOL=wasmtime (constant and
                     rust-layout guests; only where the page-resetting pool serves): the
                     pool before and after, in one run
  wasmtime-py/reuse  the steps of a host written with wasmtime-py's public API, one
                     Store and Instance reused: epoch deadline; encode_filter_request
                     straight into guest memory (into=: cc_lb_alloc through a Func
                     call, Memory.get_buffer_ptr); the hook (Func call); pointer and
                     size checks; decode_filter_output in place; cc_lb_free (Func call)
  wasmtime-py/fresh  the same with a new Store (limits set), Instance and exports lookup per call
                     (not for the rust-layout guest)
and:
  extism             extism's Python SDK, one Plugin reused: encode_filter_request, Plugin.call
                     (the plugin copies the archive in and answers the constant guest's
                     916 bytes), decode_filter_output of the output in place
  codec alone        encode_filter_request + decode_filter_output of the constant answer,
                     no guest: the floor of a round trip
  observe Chunk      ours/reuse, ObservabilityHook.observe(Chunk(...)) (an 80-byte archive:
                     an ObserveEvent is as large as its largest variant)
  observe Chunk [fresh]  the same through a fresh instance (the default strategy)
  sse event [fresh|reuse]  cc-lb 1.0: SseStream.events of one content_block_delta event
                     (~100 B of JSON) through the shipped tool_rename_shape_1_0.wasm, which
                     reads the event and answers Unchanged: a streamed event's round trip
  sse stream x500    a whole 500-event streamed answer through the same plugin: in one
                     InstanceScope (opened and closed per stream, as the proxy does), as
                     one fresh call then 499 calls of a reused instance (the target's
                     yardstick), and as 500 fresh calls (cc-lb's way)
  1 MiB filter       ours/reuse, constant guest, the request with a 1 MiB body
  1 MiB copy         one copy of the 1 MiB body into a preallocated bytearray (one memcpy)
  threads            ours/reuse from 1, 2 and 4 threads at once (cache-aware guest) and
                     from 1 and 2 threads (spin guest), each thread with its own
                     instance: calls per second over all threads
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import wasmtime

import cclb_wire as cw
from benchlib import HEADERS, calls_per_batch, seconds_per_call

HERE = Path(__file__).resolve().parent


def _load_guest_generator():
    """bench/guests/gen_guests.py: the guests' shared constants, and the check that the
    .wat files are current."""
    spec = importlib.util.spec_from_file_location("gen_guests", HERE / "guests" / "gen_guests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guests = _load_guest_generator()

SPIN_CALL_SECONDS = 0.0025
THREAD_COUNTS = (1, 2, 4)
SPIN_THREAD_COUNTS = (1, 2)
#: A threaded round lasts at least this long (~40 spin calls). Shorter rounds measure how
#: soon the kernel moves freshly woken threads to an idle core (a few ms here), not whether
#: the calls run in parallel: with one 2.5 ms spin call per thread, 2 threads measured
#: 1.0-1.3x of 1 thread; with 20 calls each, 1.9-2.0x.
THREAD_ROUND_SECONDS = 0.1
#: The wasmtime-py host's limits and deadline: our host's defaults (1 s of 10 ms epoch ticks, + 1).
MEMORY_LIMIT = 128 * 1024 * 1024
DEADLINE_TICKS = 101
OUTPUT_BOUND = cw.WireBounds().output_body_bytes

# --- the request ------------------------------------------------------------------------

CACHE_READ_TOKENS = (1024, 28672, 0, 12288, 32768, 4096, 16384, 8192)


def json_body(size: int) -> bytes:
    """A Messages API request body of exactly ``size`` bytes (valid JSON)."""
    head = (
        b'{"model":"claude-sonnet-4-5-20250929","max_tokens":32000,"stream":true,'
        b'"system":[{"type":"text","text":"You are Claude Code."}],'
        b'"messages":[{"role":"user","content":"'
    )
    tail = b'"}]}'
    sentence = b"Refactor the retry loop in client.py. "
    room = size - len(head) - len(tail)
    body = head + (sentence * (room // len(sentence) + 1))[:room] + tail
    assert len(body) == size
    return body


def filter_request(body: bytes) -> Tuple[cw.RequestContext, cw.Principal, List[cw.UpstreamCandidate]]:
    ctx = cw.RequestContext("3149ca30-efe9-448c-9b8b-b33b9225c533", "POST", "/v1/messages", "beta=true", HEADERS, body)
    principal = cw.Principal(
        "tenant-a", cw.PrincipalKind.API_KEY, {"scope": "inference", "tier": 2, "teams": ["infra", "ml"], "keep_k": 2}
    )
    candidates = [
        cw.UpstreamCandidate(upstream_id, f"anthropic-{index}", "anthropic_api_key", 1767225600 + index, cw.CacheScore(tokens))
        for index, (upstream_id, tokens) in enumerate(zip(guests.CANDIDATE_IDS, CACHE_READ_TOKENS))
    ]
    return ctx, principal, candidates


# --- the wasmtime-py public-API host ------------------------------------------------------


class WasmtimePublicHost:
    """What a cc-lb filter host does per call, written with wasmtime-py's public API only
    (the codec is cclb_wire's): with ``reuse``, one Store and Instance for every call and
    each output freed; without, a new Store, Instance and exports lookup per call."""

    def __init__(self, wasm: bytes, reuse: bool):
        config = wasmtime.Config()
        config.epoch_interruption = True  # a host needs a deadline; ours has one too
        self.engine = wasmtime.Engine(config)
        self.module = wasmtime.Module(self.engine, wasm)
        self.reused = self._instantiate() if reuse else None

    def _instantiate(self):
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=MEMORY_LIMIT, table_elements=65536, instances=1, tables=4, memories=1)
        store.set_epoch_deadline(DEADLINE_TICKS)
        exports = wasmtime.Instance(store, self.module, []).exports(store)
        return store, exports["memory"], exports["cc_lb_alloc"], exports["cc_lb_filter"], exports["cc_lb_free"]

    def filter(self, ctx: cw.RequestContext, principal: cw.Principal, candidates: Sequence[cw.UpstreamCandidate]) -> cw.FilterOutput:
        store, memory, alloc, hook, free = self.reused or self._instantiate()
        store.set_epoch_deadline(DEADLINE_TICKS)
        request_at = []

        def into(size: int):
            pointer = alloc(store, size, 16)
            if pointer == 0 or pointer % 16 or pointer + size > memory.data_len(store):
                raise RuntimeError(f"cc_lb_alloc answered a bad pointer {pointer}")
            request_at.append(pointer)
            return memory.get_buffer_ptr(store), pointer

        size = cw.encode_filter_request(ctx, principal, candidates, into=into)
        packed = hook(store, request_at[0], size) & 0xFFFFFFFFFFFFFFFF
        out_pointer, out_length = packed >> 32, packed & 0xFFFFFFFF
        if not out_pointer or not out_length or out_length > OUTPUT_BOUND or out_pointer + out_length > memory.data_len(store):
            raise RuntimeError(f"bad output ({out_pointer}, {out_length})")
        output = cw.decode_filter_output(memory.get_buffer_ptr(store, out_length, out_pointer))
        if self.reused:
            free(store, out_pointer, out_length, 16)
        return output


# --- timing -------------------------------------------------------------------------------


class ThreadGang:
    """``threads`` threads that each make ``calls`` calls of ``function`` when a round
    starts them; the round's sample is calls per second over all of them, from the
    common start to the last one done. The threads live as long as the gang, so each
    keeps its reused instance from round to round."""

    def __init__(self, function: Callable[[], object], threads: int):
        self.function = function
        self.threads = threads
        self.calls = 1
        self._start = threading.Barrier(threads + 1)
        self._done = threading.Barrier(threads + 1)
        self._stopping = False
        self._errors: List[BaseException] = []
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for worker in self._workers:
            worker.start()

    def _work(self) -> None:
        while True:
            self._start.wait()
            if self._stopping:
                return
            try:
                for _ in range(self.calls):
                    self.function()
            except BaseException as exc:  # reported by run(), on the main thread
                self._errors.append(exc)
            self._done.wait()

    def run(self, calls_per_thread: int) -> float:
        self.calls = calls_per_thread
        self._start.wait()
        started = time.perf_counter()
        self._done.wait()
        elapsed = time.perf_counter() - started
        if self._errors:
            raise self._errors[0]
        return self.threads * calls_per_thread / elapsed

    def close(self) -> None:
        self._stopping = True
        self._start.wait()
        for worker in self._workers:
            worker.join()


@dataclass
class Contender:
    name: str
    group: str
    #: "us" (median per-call time) or "calls/s" (throughput over all threads).
    unit: str
    #: One round's batch; returns the sample (seconds per call, or calls per second).
    run: Callable[[], float]


def per_call(name: str, group: str, function: Callable[[], object], batch_seconds: float) -> Contender:
    calls = calls_per_batch(function, batch_seconds)
    return Contender(name, group, "us", lambda: seconds_per_call(function, calls))


def threaded(name: str, group: str, function: Callable[[], object], threads: int, batch_seconds: float,
             gangs: List[ThreadGang]) -> Contender:
    # Every gang does the same total work per round, so a gang that does not scale
    # takes as long as one thread would.
    calls = max(1, calls_per_batch(function, max(batch_seconds, THREAD_ROUND_SECONDS)) // threads)
    gang = ThreadGang(function, threads)
    gangs.append(gang)
    gang.run(1)  # each thread makes its instance before the first round
    return Contender(name, group, "calls/s", lambda: gang.run(calls))


# --- set-up ---------------------------------------------------------------------------------


def shipped_plugin(name: str) -> bytes:
    return (resources.files("cclb_wire") / "plugins" / name).read_bytes()


def assemble(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def rust_layout_guest() -> bytes:
    """The shipped cache-aware filter's source built with rustc's memory layout (1 MiB stack
    first, 17 pages; guests/build.py's RUST_LAYOUT_LDFLAGS): cc-lb's plugins are Rust, and a
    fresh instance of that layout touches pages far above the first 256 KiB."""
    spec = importlib.util.spec_from_file_location("guest_build", HERE.parent / "guests" / "build.py")
    build_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_module)
    with tempfile.TemporaryDirectory(prefix="cclb-bench-guest-") as out:
        try:
            return build_module.build_rust_layout(Path(out)).read_bytes()
        except build_module.BuildError as exc:
            raise SystemExit(f"bench_host.py: cannot build the Rust-laid-out guest: {exc}") from None


def wasmtime_pool_fresh_host() -> Optional[cw.PluginHost]:
    """A default host whose FRESH memories come from wasmtime's pooling allocator, as before
    the page-resetting pool; None where that pool is not in use anyway."""
    from cclb_wire.runtime.pool import MEMORY_POOL_ENV, page_reset_pool

    if page_reset_pool() is None:
        return None
    previous = os.environ.get(MEMORY_POOL_ENV)
    os.environ[MEMORY_POOL_ENV] = "wasmtime"
    try:
        return cw.PluginHost(cw.HostConfig())
    finally:
        if previous is None:
            del os.environ[MEMORY_POOL_ENV]
        else:
            os.environ[MEMORY_POOL_ENV] = previous


def calibrate_spin(host: cw.PluginHost, request: tuple) -> Tuple[cw.FilterPlugin, int]:
    """Register the spin guest with a loop count that makes a call take ~SPIN_CALL_SECONDS:
    a few passes of scaling the count by target / measured (the call's fixed cost is tiny
    next to the loop; medians, because the cores are shared)."""
    wat = guests.load("spin_filter")
    iterations = guests.DEFAULT_SPIN_ITERATIONS
    for _ in range(3):
        plugin = host.register_filter("spin", "spin", assemble(guests.with_spin_iterations(wat, iterations)))
        plugin.filter(*request)
        seconds = float(np.median([seconds_per_call(lambda: plugin.filter(*request), 1) for _ in range(15)]))
        iterations = max(1, min((1 << 31) - 1, round(iterations * SPIN_CALL_SECONDS / seconds)))
    plugin = host.register_filter("spin", "spin", assemble(guests.with_spin_iterations(wat, iterations)))
    return plugin, iterations


def build(batch_seconds: float):
    """Every contender, checked to answer what ours answers; and what to close at the end."""
    request = filter_request(json_body(1024))
    big_request = filter_request(json_body(1 << 20))
    answer = guests.constant_answer()
    chunk = cw.Chunk(batch_index=7, event_count=1, total_bytes=64)

    reuse_host = cw.PluginHost(cw.HostConfig(instance_strategy=cw.InstanceStrategy.REUSE_PER_THREAD))
    fresh_host = cw.PluginHost(cw.HostConfig())
    wasmtime_pool_host = wasmtime_pool_fresh_host()
    wasm = {"constant": assemble(guests.load("constant_filter")), "cache-aware": shipped_plugin("cache_aware_filter.wasm"),
            "rust-layout": rust_layout_guest()}
    contenders: List[Contender] = []
    gangs: List[ThreadGang] = []
    reuse_plugins = {}

    def codec_alone() -> cw.FilterOutput:
        cw.encode_filter_request(*request)
        return cw.decode_filter_output(answer)

    contenders.append(per_call("codec alone", "constant", codec_alone, batch_seconds))
    for guest, module in wasm.items():
        reuse = reuse_plugins[guest] = reuse_host.register_filter(guest, guest, module)
        fresh = fresh_host.register_filter(guest, guest, module)
        others = [fresh]
        contenders += [
            per_call(f"ours/reuse [{guest}]", guest, lambda plugin=reuse: plugin.filter(*request), batch_seconds),
            per_call(f"ours/fresh [{guest}]", guest, lambda plugin=fresh: plugin.filter(*request), batch_seconds),
        ]
        if guest != "cache-aware" and wasmtime_pool_host is not None:  # before/after the page-resetting pool
            fresh_wasmtime_pool = wasmtime_pool_host.register_filter(guest, guest, module)
            others.append(fresh_wasmtime_pool)
            contenders.append(per_call(f"ours/fresh, wasmtime's pool [{guest}]", guest,
                                       lambda plugin=fresh_wasmtime_pool: plugin.filter(*request), batch_seconds))
        if guest != "rust-layout":
            public_reuse = WasmtimePublicHost(module, reuse=True)
            public_fresh = WasmtimePublicHost(module, reuse=False)
            others += [public_reuse, public_fresh]
            contenders += [
                per_call(f"wasmtime-py/reuse [{guest}]", guest, lambda host=public_reuse: host.filter(*request), batch_seconds),
                per_call(f"wasmtime-py/fresh [{guest}]", guest, lambda host=public_fresh: host.filter(*request), batch_seconds),
            ]
        expected = reuse.filter(*request)
        for other in others:
            assert other.filter(*request) == expected, f"{guest}: {type(other).__name__} answers otherwise"
        if guest == "constant":
            assert expected == cw.decode_filter_output(answer)
        if guest == "constant":
            extism_call = extism_contender(request, answer)
            if extism_call is not None:
                contenders.append(per_call("extism [constant]", guest, extism_call, batch_seconds))

    observe = reuse_host.register_observe("observe", "observe-counter", shipped_plugin("observe_counter.wasm"))
    contenders.append(per_call("observe Chunk [reuse]", "other", lambda: observe.observe(chunk), batch_seconds))
    fresh_observe = fresh_host.register_observe("observe", "observe-counter", shipped_plugin("observe_counter.wasm"))
    contenders.append(per_call("observe Chunk [fresh]", "other", lambda: fresh_observe.observe(chunk), batch_seconds))
    ctx, principal, _ = request
    upstream = cw.AnthropicDirect("https://api.anthropic.com")
    stream_head = cw.UpstreamResponse(200, [("content-type", "text/event-stream"), ("request-id", "req_011CVfake")])
    event = cw.SseEvent(
        "content_block_delta",
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Refactoring the retry loop now."}}',
    )
    streams = {}
    for strategy, plugin_host in (("reuse", reuse_host), ("fresh", fresh_host)):
        dialect = plugin_host.register_shape("sse", "tool-rename", shipped_plugin("tool_rename_shape_1_0.wasm"))
        stream = dialect.sse_stream(ctx, upstream, principal, stream_head)  # what a proxy holds per answer
        assert stream.events(event) == (event,) and not stream.transformed
        contenders.append(per_call(f"sse event [{strategy}]", "other", lambda s=stream: s.events(event), batch_seconds))
        streams[strategy] = (dialect, stream)
    fresh_dialect, fresh_stream = streams["fresh"]
    _, reused_stream = streams["reuse"]

    def stream_in_a_scope() -> None:
        with fresh_dialect.instance_scope() as scope:  # what the proxy does per streamed answer
            stream = fresh_dialect.sse_stream(ctx, upstream, principal, stream_head, scope)
            for _ in range(STREAM_EVENTS):
                stream.events(event)

    def fresh_then_reused() -> None:  # the yardstick: one fresh call, then reused calls
        fresh_stream.events(event)
        for _ in range(STREAM_EVENTS - 1):
            reused_stream.events(event)

    def fresh_each() -> None:  # cc-lb's way: a fresh instance per event
        for _ in range(STREAM_EVENTS):
            fresh_stream.events(event)

    contenders += [
        per_call(f"sse stream x{STREAM_EVENTS} [scope]", "other", stream_in_a_scope, batch_seconds),
        per_call(f"sse stream x{STREAM_EVENTS} [1 fresh + reuse]", "other", fresh_then_reused, batch_seconds),
        per_call(f"sse stream x{STREAM_EVENTS} [fresh each]", "other", fresh_each, batch_seconds),
    ]
    constant = reuse_plugins["constant"]
    assert constant.filter(*big_request) == constant.filter(*request)
    big_body = big_request[0].body
    # A memoryview's slice assignment is one memcpy; bytearray's own is about 2x slower here.
    copy_target = memoryview(bytearray(len(big_body)))

    def copy_body() -> None:
        copy_target[:] = big_body

    contenders.append(per_call("1 MiB filter [constant, reuse]", "other", lambda: constant.filter(*big_request), batch_seconds))
    contenders.append(per_call("1 MiB copy", "other", copy_body, batch_seconds))

    cache_aware = reuse_plugins["cache-aware"]
    for threads in THREAD_COUNTS:
        contenders.append(threaded(f"threads x{threads} [cache-aware]", "threads", lambda: cache_aware.filter(*request),
                                   threads, batch_seconds, gangs))
    spin, spin_iterations = calibrate_spin(reuse_host, request)
    for threads in SPIN_THREAD_COUNTS:
        contenders.append(threaded(f"threads x{threads} [spin]", "threads", lambda: spin.filter(*request),
                                   threads, batch_seconds, gangs))
    settings = {
        "request_bytes": len(cw.encode_filter_request(*request)),
        "answer_bytes": len(answer),
        "observe_event_bytes": len(cw.encode_observe_event(chunk)),
        "big_request_bytes": len(cw.encode_filter_request(*big_request)),
        "spin_iterations": spin_iterations,
        # where the default host's FRESH memories come from (README "The instance pool")
        "fresh_memory_pool": "page-resetting" if fresh_host.memory_pool_stats() is not None else "wasmtime",
    }
    hosts = (reuse_host, fresh_host) + ((wasmtime_pool_host,) if wasmtime_pool_host is not None else ())
    return contenders, gangs, hosts, settings


def extism_contender(request: tuple, answer: bytes) -> Optional[Callable[[], object]]:
    """encode -> extism Plugin.call -> decode, or None (with a note) without extism."""
    try:
        import extism
    except ImportError:
        print("note: extism is not installed (pip install '.[bench]'): the extism contender is skipped")
        return None
    plugin = extism.Plugin(assemble(guests.load("extism_filter")), wasi=False, functions=[])
    assert bytes(plugin.call("filter", cw.encode_filter_request(*request))) == answer

    def call() -> cw.FilterOutput:
        return cw.decode_filter_output(plugin.call("filter", cw.encode_filter_request(*request), parse=None))

    assert call() == cw.decode_filter_output(answer)
    return call


# --- the report -------------------------------------------------------------------------------


def machine() -> Dict[str, object]:
    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        pass

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "wasmtime": version("wasmtime"),
        "extism": version("extism"),
        "cclb_wire": f"{cw.__version__} ({cw.BACKEND} backend)",
        # Other work on shared cores shows here, and in the thread figures first.
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


#: Events of the streamed answers the scope contenders send through one shape slot.
STREAM_EVENTS = 500


@dataclass(frozen=True)
class Target:
    text: str
    #: Contender names: the target is the median of the per-round ratios numerator /
    #: denominator ("x"), or without a denominator the numerator's median (its unit).
    numerator: str
    denominator: Optional[str]
    at_most: Optional[float] = None
    at_least: Optional[float] = None


# Ratios are "how many times": time / time, or throughput / throughput for threads.
TARGETS = (
    Target("reuse, constant guest: round trip <= 1.5x codec alone", "ours/reuse [constant]", "codec alone", at_most=1.5),
    Target("reuse, constant guest: >= 10x faster than wasmtime-py reused",
           "wasmtime-py/reuse [constant]", "ours/reuse [constant]", at_least=10),
    Target("fresh, constant guest: <= 2x our reuse", "ours/fresh [constant]", "ours/reuse [constant]", at_most=2),
    Target("fresh, Rust-laid-out guest: <= 3x our reuse", "ours/fresh [rust-layout]", "ours/reuse [rust-layout]", at_most=3),
    Target("fresh, constant guest: >= 10x faster than wasmtime-py fresh",
           "wasmtime-py/fresh [constant]", "ours/fresh [constant]", at_least=10),
    Target("observe Chunk round trip, reuse: <= 3 us", "observe Chunk [reuse]", None, at_most=3.0),
    Target("cc-lb 1.0: a streamed event through a fresh transform <= 2x an observe Chunk through a fresh instance",
           "sse event [fresh]", "observe Chunk [fresh]", at_most=2),
    Target(f"a {STREAM_EVENTS}-event stream in one instance scope <= 1.3x one fresh call + {STREAM_EVENTS - 1} reused calls",
           f"sse stream x{STREAM_EVENTS} [scope]", f"sse stream x{STREAM_EVENTS} [1 fresh + reuse]", at_most=1.3),
    Target("reuse, constant guest: >= 5x faster than extism, same payload",
           "extism [constant]", "ours/reuse [constant]", at_least=5),
    Target("1 MiB body filter call <= 1.5x one copy of the body", "1 MiB filter [constant, reuse]", "1 MiB copy", at_most=1.5),
    Target("spin guest: 2 threads >= 1.5x the throughput of 1 thread", "threads x2 [spin]", "threads x1 [spin]", at_least=1.5),
)

RATIOS = (
    ("ours/reuse / codec alone [constant]", "ours/reuse [constant]", "codec alone"),
    ("ours/fresh / ours/reuse [constant]", "ours/fresh [constant]", "ours/reuse [constant]"),
    ("wasmtime-py/reuse / ours/reuse [constant]", "wasmtime-py/reuse [constant]", "ours/reuse [constant]"),
    ("wasmtime-py/fresh / ours/fresh [constant]", "wasmtime-py/fresh [constant]", "ours/fresh [constant]"),
    ("extism / ours/reuse [constant]", "extism [constant]", "ours/reuse [constant]"),
    ("ours/reuse / codec alone [cache-aware]", "ours/reuse [cache-aware]", "codec alone"),
    ("ours/fresh / ours/reuse [cache-aware]", "ours/fresh [cache-aware]", "ours/reuse [cache-aware]"),
    ("ours/fresh / ours/reuse [rust-layout]", "ours/fresh [rust-layout]", "ours/reuse [rust-layout]"),
    ("wasmtime's pool / page-resetting pool, fresh [rust-layout]", "ours/fresh, wasmtime's pool [rust-layout]",
     "ours/fresh [rust-layout]"),
    ("wasmtime's pool / page-resetting pool, fresh [constant]", "ours/fresh, wasmtime's pool [constant]",
     "ours/fresh [constant]"),
    ("wasmtime-py/reuse / ours/reuse [cache-aware]", "wasmtime-py/reuse [cache-aware]", "ours/reuse [cache-aware]"),
    ("wasmtime-py/fresh / ours/fresh [cache-aware]", "wasmtime-py/fresh [cache-aware]", "ours/fresh [cache-aware]"),
    ("1 MiB filter / 1 MiB copy", "1 MiB filter [constant, reuse]", "1 MiB copy"),
    ("sse event fresh / observe Chunk fresh", "sse event [fresh]", "observe Chunk [fresh]"),
    ("sse event reuse / observe Chunk reuse", "sse event [reuse]", "observe Chunk [reuse]"),
    ("sse event fresh / sse event reuse", "sse event [fresh]", "sse event [reuse]"),
    (f"sse stream x{STREAM_EVENTS}: scope / fresh each", f"sse stream x{STREAM_EVENTS} [scope]", f"sse stream x{STREAM_EVENTS} [fresh each]"),
    ("throughput x2 / x1 [cache-aware]", "threads x2 [cache-aware]", "threads x1 [cache-aware]"),
    ("throughput x4 / x1 [cache-aware]", "threads x4 [cache-aware]", "threads x1 [cache-aware]"),
    ("throughput x2 / x1 [spin]", "threads x2 [spin]", "threads x1 [spin]"),
)


def summarize(contenders: List[Contender], samples: Dict[str, List[float]]) -> Dict[str, dict]:
    summary = {}
    for contender in contenders:
        values = np.array(samples[contender.name]) * (1e6 if contender.unit == "us" else 1.0)
        summary[contender.name] = {
            "group": contender.group,
            "unit": contender.unit,
            "median": float(np.median(values)),
            "p10": float(np.percentile(values, 10)),
            "p90": float(np.percentile(values, 90)),
        }
    return summary


def ratio(samples: Dict[str, List[float]], numerator: str, denominator: str) -> Optional[float]:
    """The median of the per-round ratios, or None when a side was not measured."""
    if numerator not in samples or denominator not in samples:
        return None
    return float(np.median(np.array(samples[numerator]) / np.array(samples[denominator])))


def evaluate(target: Target, samples: Dict[str, List[float]], summary: Dict[str, dict]) -> dict:
    if target.denominator is None:
        measured = summary[target.numerator]["median"] if target.numerator in summary else None
    else:
        measured = ratio(samples, target.numerator, target.denominator)
    if measured is None:
        verdict = "SKIP"
    elif target.at_most is not None:
        verdict = "PASS" if measured <= target.at_most else "FAIL"
    else:
        verdict = "PASS" if measured >= target.at_least else "FAIL"
    unit = "x" if target.denominator is not None else f" {summary.get(target.numerator, {}).get('unit', '')}"
    return {"target": target.text, "measured": measured, "unit": unit, "at_most": target.at_most,
            "at_least": target.at_least, "verdict": verdict}


def print_report(info: dict, settings: dict, summary: Dict[str, dict], ratios: Dict[str, float], verdicts: List[dict]) -> None:
    load = info["load_average_at_start"]
    print(f"machine: {info['platform']}; {info['cpu']}; {info['cores']} cores ({info['usable_cores']} usable)"
          + (f"; load average {load[0]:.2f} at start" if load else ""))
    print(f"python {info['python']}, wasmtime {info['wasmtime']}, extism {info['extism']}, cclb_wire {info['cclb_wire']}")
    print(f"request {settings['request_bytes']} B (1 KiB body, 8 candidates), constant answer {settings['answer_bytes']} B, "
          f"observe event {settings['observe_event_bytes']} B, 1 MiB request {settings['big_request_bytes']} B, "
          f"spin loop {settings['spin_iterations']} iterations ({settings['spin_call_ms']:.2f} ms a call on 1 thread); "
          f"{settings['rounds']} rounds\n")
    print(f"{'contender':44s} {'median':>11s} {'p10':>11s} {'p90':>11s}")
    group = None
    for name, row in summary.items():
        if row["group"] != group:
            group = row["group"]
            print(f"[{group}]")
        unit = " us" if row["unit"] == "us" else " /s"
        print(f"  {name:42s} {row['median']:11.2f}{unit} {row['p10']:8.2f}{unit} {row['p90']:8.2f}{unit}")
    print("\nratios (median of per-round ratios; times for calls, throughputs for threads):")
    for label, value in ratios.items():
        print(f"  {label:58s} {value:7.2f}x")
    print("\ntargets:")
    for verdict in verdicts:
        bound = f"<= {verdict['at_most']:g}" if verdict["at_most"] is not None else f">= {verdict['at_least']:g}"
        measured = "n/a" if verdict["measured"] is None else f"{verdict['measured']:.2f}{verdict['unit']}"
        print(f"  {verdict['verdict']}  {verdict['target']:62s} measured {measured} (target {bound})")


def write_chart(path: Path, summary: Dict[str, dict], speedups: Dict[str, float]) -> None:
    """Left: per-call medians (log scale), coloured by guest. Right: each thread gang's
    throughput relative to one thread of the same guest."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed (pip install '.[bench]'): {path.name} not written")
        return
    colours = {"constant": "tab:blue", "cache-aware": "tab:orange", "other": "tab:green"}
    rows = [(name, row) for name, row in summary.items() if row["unit"] == "us"][::-1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [3, 2]})
    medians = [row["median"] for _, row in rows]
    errors = np.array([[row["median"] - row["p10"], row["p90"] - row["median"]] for _, row in rows]).T
    left.barh([name for name, _ in rows], medians, xerr=errors, ecolor="gray", capsize=2,
              color=[colours.get(row["group"], "tab:gray") for _, row in rows])
    for position, (_, row) in enumerate(rows):  # past the error bar, so they never overlap
        left.text(row["p90"] * 1.08, position, f"{row['median']:.1f}", va="center", fontsize=7)
    left.set_xscale("log")
    left.set_xlim(right=max(row["p90"] for _, row in rows) * 2)
    left.set_xlabel("us per call (median, p10-p90; log scale)")
    left.tick_params(axis="y", labelsize=8)
    names = list(speedups)[::-1]
    bars = right.barh(names, [speedups[name] for name in names],
                      color=["tab:orange" if "cache-aware" in name else "tab:purple" for name in names])
    right.bar_label(bars, labels=[f"{speedups[name]:.2f}x, {summary[name]['median']:.0f}/s" for name in names],
                    padding=3, fontsize=7)
    right.axvline(1.0, color="gray", linewidth=0.8)
    right.set_xlim(0, max(max(speedups.values()) * 1.35, max(THREAD_COUNTS)))
    right.set_xlabel("throughput relative to 1 thread (median of per-round ratios)")
    right.tick_params(axis="y", labelsize=8)
    figure.suptitle("cclb_wire plugin host: one process, contenders interleaved per round")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 61; 5 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, short batches")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where to write bench_host.json and .png")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 61)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    batch_seconds = 0.01 if args.quick else 0.05

    info = machine()
    try:
        contenders, gangs, hosts, settings = build(batch_seconds)
    except guests.StaleGuest as exc:
        sys.exit(f"bench_host: {exc}")
    settings.update(rounds=rounds, batch_seconds=batch_seconds)
    samples: Dict[str, List[float]] = {contender.name: [] for contender in contenders}
    try:
        for round_index in range(rounds):
            order = contenders if round_index % 2 == 0 else contenders[::-1]  # no contender always first
            for contender in order:
                samples[contender.name].append(contender.run())
    finally:
        for gang in gangs:
            gang.close()
        for host in hosts:
            host.close()

    summary = summarize(contenders, samples)
    settings["spin_call_ms"] = 1e3 / summary["threads x1 [spin]"]["median"]
    ratios = {label: value for label, a, b in RATIOS if (value := ratio(samples, a, b)) is not None}
    verdicts = [evaluate(target, samples, summary) for target in TARGETS]
    print_report(info, settings, summary, ratios, verdicts)

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "method": "one process; contenders interleaved per round (order reversed every other round); "
        "medians over rounds of per-call times (us) or throughputs (calls/s); ratios are medians of per-round ratios",
        "settings": settings,
        "results": summary,
        "ratios": ratios,
        "targets": verdicts,
        "samples": {  # per round, in the contender's unit
            contender.name: [value * (1e6 if contender.unit == "us" else 1.0) for value in samples[contender.name]]
            for contender in contenders
        },
    }
    (args.out / "bench_host.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    speedups = {
        name: ratio(samples, name, f"threads x1 [{guest}]")
        for name, row in summary.items() if row["unit"] == "calls/s"
        for guest in [name[name.index("[") + 1 : -1]]
    }
    write_chart(args.out / "bench_host.png", summary, speedups)
    print(f"\nwrote {args.out / 'bench_host.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
