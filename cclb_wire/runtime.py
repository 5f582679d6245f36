"""Running cc-lb V1 plugins under wasmtime: admission, slots, calls, limits.

``PluginHost`` registers plugins into slots (``register_filter`` / ``register_shape``
/ ``register_observe``) and returns adapters that behave like the reference
host's: ``FilterPlugin.filter`` -> FilterOutput, ``UpstreamDialect.shape`` ->
ShapedRequest, ``ObservabilityHook.observe``. Where the reference has holes, this
host adds a per-call deadline (epoch interruption), optional fuel, limits on guest
memory, tables and the wasm stack, each with its own error class, and it checks the
output size before reading anything.

This module is the policy layer: configuration, admission, slots, strategies,
limits, the typed errors and the failure policy. The per-call machinery lives in the
extension (``_codec.NativePlugin``: one C call allocates in the guest, encodes the
request straight into guest memory, calls the hook with the GIL released, checks and
decodes the answer in place), or, under the pure-Python backend, in its ctypes twin
(``_ctypes_calls``). ``wasmtime`` is imported only when a host is created.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import enum
import itertools
import logging
import math
import os
import re
import tempfile
import threading
import time
from time import perf_counter_ns
import uuid
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

import blake3

from . import decode, encode, wire
from ._validate import check_bool, check_int, check_number, coerce_enum, type_name
from .errors import (
    DecodeError,
    DialectError,
    FilterError,
    InvalidInput,
    InvalidInputType,
    ObservabilityError,
    PluginError,
    PluginMemoryLimit,
    PluginOutOfFuel,
    PluginOutputError,
    PluginPoolSaturated,
    PluginRejected,
    PluginResourceLimit,
    PluginTimeout,
    PluginTrap,
)
from .host_types import (
    AnthropicDirect,
    FilterOutput,
    ObserveEventInput,
    Principal,
    RequestContext,
    ShapedRequest,
    ShapeOriginPolicy,
    UpstreamCandidate,
    WireBounds,
)
from ._ctypes_calls import CallGate, Instance, Wasmtime, call_filter, call_observe, call_shape
from ._ctypes_calls import trap_text as _trap_text
from .host_stats import SlotCounters as _PySlotCounters
from .host_stats import SlotStats
from .wasm_module import HOOK_EXPORTS, PluginInspection, inspect_plugin
from .wasm_rewrite import GROW_REFUSED_EXPORT, START_EXPORT, WasmRewriteError, instrument_memory_grow

__all__ = [
    "FailurePolicy",
    "InstanceStrategy",
    "HostConfig",
    "PluginHost",
    "FilterPlugin",
    "UpstreamDialect",
    "ObservabilityHook",
    "SlotStats",
    "PROBE_SAMPLES",
]

_log = logging.getLogger("cclb_wire.runtime")


def _slot_counters_class() -> Tuple[Any, Callable[[], int]]:
    """The counters and the clock they measure against: the extension's, in C, when it
    loaded (a call's recording then costs ~100 ns), else Python's."""
    from . import BACKEND

    if BACKEND == "cython":
        from . import _codec

        return _codec.SlotCounters, _codec.monotonic_ns
    return _PySlotCounters, perf_counter_ns


_SlotCounters, _clock_ns = _slot_counters_class()

WASM_PAGE = 65536
#: wasm32 addresses at most 65536 pages.
MAX_MEMORY_BYTES = 65536 * WASM_PAGE
#: Largest wasm stack we allow: it lives on the calling thread's native stack
#: (8 MiB by default on Linux), next to the interpreter's own frames.
MAX_WASM_STACK = 4 * 1024 * 1024
MIN_WASM_STACK = 16 * 1024
#: Longest per-call deadline we accept (a day): longer is a typo, not a policy.
MAX_DEADLINE_S = 86400.0
#: Most epoch ticks one deadline may span: close() advances the epoch this far at most.
MAX_DEADLINE_TICKS = 100_000
#: wasmtime keeps fuel in an i64.
MAX_FUEL = (1 << 63) - 1
HOOK_KINDS = tuple(HOOK_EXPORTS)
#: Largest instance pool: its address space is reserved up front.
MAX_POOL_SIZE = 4096
#: Guard pages after each pooled memory: wasmtime checks bounds explicitly, since a slot
#: reserves only the memory limit, not 4 GiB.
POOL_MEMORY_GUARD = 64 * 1024
#: The first bytes of a pooled memory are reset with memset, the rest with madvise: a page
#: fault on the next call costs more than zeroing the stack and small heap a plugin uses
#: (256 KiB measured best for both bench guests; 64 KiB cost cache_aware_filter 1.5x).
POOL_KEEP_RESIDENT = 256 * 1024


class FailurePolicy(enum.Enum):
    """What the ``*_with_policy`` calls do when a plugin fails.

    PASS_THROUGH (the reference's default): the failure is a no-op. The filter keeps
    every candidate, shape answers ``None``, meaning "send the request to the
    upstream unchanged", and observe drops the event. FAIL_CLOSED: the error is
    raised (the example proxy answers 502). Pick it when the plugin enforces authz or
    tenant policy. Set for the host (``HostConfig.failure_policy``) or per slot
    (``register_*(failure_policy=...)``); both also take the values as strings, in
    any case.
    """

    PASS_THROUGH = "pass_through"
    FAIL_CLOSED = "fail_closed"


class InstanceStrategy(enum.Enum):
    """FRESH (default, the reference's): a new store and instance for every call, so plugins
    are stateless. REUSE_PER_THREAD: one instance per thread and plugin, reused; outputs
    are freed with ``cc_lb_free``, and the instance is discarded after any trap or error,
    and when its plugin leaves the slot."""

    FRESH = "fresh"
    REUSE_PER_THREAD = "reuse_per_thread"


@dataclass(frozen=True)
class HostConfig:
    """Settings of a PluginHost (defaults are the reference host's, plus our limits).

    Every field is checked here, at construction: a bad value raises ``InvalidInput``
    (``InvalidInputType`` for a wrong type) naming the field. Enum fields also take
    their values as strings in any case (``failure_policy="FAIL_CLOSED"``), as config
    files and environment variables give them.
    """

    bounds: WireBounds = field(default_factory=WireBounds)
    origin_policy: ShapeOriginPolicy = ShapeOriginPolicy.UNRESTRICTED
    cookie_redaction: bool = False
    failure_policy: FailurePolicy = FailurePolicy.PASS_THROUGH
    #: Wall-clock limit per hook call and per instantiation (epoch interruption), in
    #: seconds: at most a day, and at most 100,000 ticks of ``epoch_tick_s``. None: no
    #: deadline (then nothing can interrupt a guest).
    deadline_s: Optional[float] = 1.0
    #: Fuel per hook call (1 .. 2**63-1); None: fuel metering off.
    fuel: Optional[int] = None
    #: Guest linear memory limit per store (default 2048 pages); a refused grow that
    #: ends in a trap is PluginMemoryLimit.
    memory_limit_bytes: int = 128 * 1024 * 1024
    #: Elements per table (funcref tables: 8 bytes each); more is PluginResourceLimit.
    table_elements_limit: int = 65536
    #: Tables per instance; more is PluginResourceLimit.
    max_tables: int = 4
    #: The wasm stack, 16 KiB .. 4 MiB: it runs on the calling thread's own stack.
    max_wasm_stack: int = 1024 * 1024
    instance_strategy: InstanceStrategy = InstanceStrategy.FRESH
    #: FRESH instances come from a pool of this many slots (0: no pool, each store maps
    #: its own memory). A slot reserves ``memory_limit_bytes`` + 64 KiB of address space
    #: for its memory plus ``max_tables`` x ``table_elements_limit`` x 8 bytes for its
    #: tables (~130 MiB by default), and no RSS until a guest touches it. It bounds the
    #: FRESH calls and admissions running at once; one more fails at once with
    #: PluginPoolSaturated.
    pool_size: int = 32
    #: How often the deadline ticker advances the engine's epoch, in (0, 1] seconds.
    epoch_tick_s: float = 0.01
    #: Where compiled modules are kept between processes (None: in memory only). Compiled
    #: code is loaded from there as it is: use a directory only this service can write.
    module_cache_dir: Optional[Union[str, Path]] = None
    #: Compiled modules that no slot uses, kept for quick swaps back (an LRU).
    module_cache_size: int = 4
    #: Call every declared hook once with the canonical sample at admission (HOST.md).
    #: Turn it off only to study a misbehaving module in tests or tools.
    probe: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.bounds, WireBounds):
            raise InvalidInputType("HostConfig.bounds", f"expected a WireBounds, got {type_name(self.bounds)}")
        put("origin_policy", coerce_enum(ShapeOriginPolicy, self.origin_policy, "HostConfig.origin_policy"))
        put("failure_policy", coerce_enum(FailurePolicy, self.failure_policy, "HostConfig.failure_policy"))
        put("instance_strategy", coerce_enum(InstanceStrategy, self.instance_strategy, "HostConfig.instance_strategy"))
        check_bool(self.cookie_redaction, "HostConfig.cookie_redaction")
        check_bool(self.probe, "HostConfig.probe")
        if self.deadline_s is not None:
            put("deadline_s", check_number(self.deadline_s, "HostConfig.deadline_s", 0.0, MAX_DEADLINE_S, open_minimum=True))
        if self.fuel is not None:
            check_int(self.fuel, "HostConfig.fuel", 1, MAX_FUEL)
        check_int(self.memory_limit_bytes, "HostConfig.memory_limit_bytes", WASM_PAGE, MAX_MEMORY_BYTES)
        check_int(self.table_elements_limit, "HostConfig.table_elements_limit", 0, 1 << 26)
        check_int(self.max_tables, "HostConfig.max_tables", 0, 1024)
        check_int(self.max_wasm_stack, "HostConfig.max_wasm_stack", MIN_WASM_STACK, MAX_WASM_STACK)
        put("epoch_tick_s", check_number(self.epoch_tick_s, "HostConfig.epoch_tick_s", 0.0, 1.0, open_minimum=True))
        if self.deadline_s is not None and self.deadline_s / self.epoch_tick_s > MAX_DEADLINE_TICKS:
            # close() interrupts calls in flight by advancing the epoch past every deadline.
            raise InvalidInput(
                "HostConfig.deadline_s",
                f"{self.deadline_s} s is more than {MAX_DEADLINE_TICKS} ticks of epoch_tick_s={self.epoch_tick_s}; "
                f"raise epoch_tick_s to at least {self.deadline_s / MAX_DEADLINE_TICKS:g}",
            )
        if self.module_cache_dir is not None:
            put("module_cache_dir", Path(_path_text(self.module_cache_dir, "HostConfig.module_cache_dir")))
        check_int(self.module_cache_size, "HostConfig.module_cache_size", 0, 1024)
        check_int(self.pool_size, "HostConfig.pool_size", 0, MAX_POOL_SIZE)


def _path_text(path: Any, field: str) -> str:
    """A str or os.PathLike argument as text: InvalidInput(Type) naming ``field`` otherwise,
    including a NUL byte, which no file system takes."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputType(field, f"expected a str, a path or None, got {type_name(path)}")
    try:
        text = os.fspath(path)
    except (TypeError, ValueError) as exc:
        raise InvalidInputType(field, f"not a usable path: {exc}") from None
    if not isinstance(text, str):
        raise InvalidInputType(field, f"expected a text path, got {type_name(text)}")
    if "\0" in text:
        raise InvalidInput(field, "a path cannot contain a NUL character")
    return text


def _probe_request(shape: bool) -> Any:
    head = (
        "probe-req-1",
        "POST",
        "/v1/messages",
        None,
        (wire.Header("content-type", b"application/json"),),
        b'{"model":"claude-3-haiku-20240307","messages":[]}',
        wire.Principal("probe-principal", "api_key", ()),
    )
    if shape:
        return wire.ShapeRequest(*head, wire.AnthropicDirect("https://example.test"))
    return wire.FilterRequest(*head, ())


#: The canonical probe samples of HOST.md, as archives.
PROBE_SAMPLES: Dict[str, bytes] = {
    "filter": encode(_probe_request(False)),
    "shape": encode(_probe_request(True)),
    "observe": encode(wire.RequestStarted("probe-req-1", "cc-lb-probe/1.0")),
}


# ==============================================================================
# wasmtime plumbing (imported lazily)
# ==============================================================================


_WASMTIME: Optional[Wasmtime] = None
_WASMTIME_LOCK = threading.Lock()


def _wt() -> Wasmtime:
    global _WASMTIME
    if _WASMTIME is None:
        with _WASMTIME_LOCK:
            if _WASMTIME is None:
                wt = Wasmtime()
                _bind_native(wt)
                _WASMTIME = wt
    return _WASMTIME


# --- the deadline ticker: one thread per tick interval, shared by every host --------------


class _Ticker:
    """Advances the epoch of every engine registered with it, every ``tick`` seconds.

    Hosts with the same tick share one ticker thread; the thread stops when its last
    engine leaves. After ``fork()`` the child starts its own thread (threads do not
    survive a fork), so deadlines hold there too.
    """

    def __init__(self, tick: float):
        self.tick = tick
        self.engines: List[Any] = []
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cclb-wire-epoch-{self.tick}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Ticks are scheduled on absolute times, so small delays in waking do not add up.
        # After a stall (a loaded machine, a starved thread) the missed ticks are skipped,
        # never made up in a burst: a burst would end the deadline of a call that started
        # a moment before it. A deadline may run long under load, never short.
        stop, engines = self._stop, self.engines
        next_tick = time.monotonic() + self.tick
        while True:
            if stop.wait(max(0.0, next_tick - time.monotonic())):
                return
            for engine in tuple(engines):
                engine.increment_epoch()
            next_tick += self.tick
            now = time.monotonic()
            if next_tick < now:  # stalled for more than a tick: skip what was missed
                next_tick = now + self.tick

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


_TICKERS: Dict[float, _Ticker] = {}
_TICKERS_LOCK = threading.Lock()


def _tick_engine(engine: Any, tick: float) -> None:
    with _TICKERS_LOCK:
        ticker = _TICKERS.get(tick)
        if ticker is None:
            ticker = _TICKERS[tick] = _Ticker(tick)
        ticker.engines.append(engine)


def _untick_engine(engine: Any, tick: float) -> None:
    """Called once per host, by close() or when the host is collected (weakref.finalize)."""
    with _TICKERS_LOCK:
        ticker = _TICKERS.get(tick)
        if ticker is None:
            return
        ticker.engines[:] = [e for e in ticker.engines if e is not engine]
        if ticker.engines:
            return
        del _TICKERS[tick]
    ticker.stop()


def _no_ticker() -> None:
    """The release of a host without a deadline: it never had a ticker."""


#: Hosts alive in this process, for the fork handler.
_HOSTS: "weakref.WeakSet[PluginHost]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread survives: no ticker runs, no call is in flight, and any
    # lock another thread held stays held forever. Start over with fresh ones.
    global _TICKERS_LOCK
    _TICKERS_LOCK = threading.Lock()
    for ticker in _TICKERS.values():
        ticker._start()
    for host in list(_HOSTS):
        host._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- the calling thread's native stack --------------------------------------------------
#
# Guest code runs on the calling thread's own stack, and wasmtime only bounds it by
# max_wasm_stack below the point of entry: on a thread whose stack is smaller (macOS
# gives secondary threads 512 KiB; threading.stack_size() can ask for less) a deep guest
# runs into the guard page and the process dies. So a call refuses threads too small.

#: Room kept for the host's own frames (interpreter, ctypes, wasmtime) above the guest's.
STACK_HEADROOM = 256 * 1024
_THREAD_STACK = threading.local()


def _native_stack_bounds() -> Optional[Tuple[int, int]]:
    """(lowest address, size) of the calling thread's stack, where the platform tells
    (Linux, macOS); None elsewhere."""
    import sys

    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
        if sys.platform.startswith("linux"):
            attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on glibc x86_64
            if libc.pthread_getattr_np(ctypes.c_void_p(libc.pthread_self()), attr) != 0:
                return None
            base, size = ctypes.c_void_p(), ctypes.c_size_t()
            failed = libc.pthread_attr_getstack(attr, ctypes.byref(base), ctypes.byref(size))
            libc.pthread_attr_destroy(attr)
            return None if failed or not base.value else (base.value, size.value)
        if sys.platform == "darwin":
            libc.pthread_get_stacksize_np.restype = ctypes.c_size_t
            libc.pthread_get_stacksize_np.argtypes = [ctypes.c_void_p]
            libc.pthread_get_stackaddr_np.restype = ctypes.c_void_p  # the top: stacks grow down
            libc.pthread_get_stackaddr_np.argtypes = [ctypes.c_void_p]
            thread = libc.pthread_self()
            size = int(libc.pthread_get_stacksize_np(thread))
            return int(libc.pthread_get_stackaddr_np(thread)) - size, size
    except (OSError, AttributeError, TypeError):
        pass
    return None


def _thread_stack() -> Optional[Tuple[int, int]]:
    """The calling thread's stack bounds, looked up once per thread."""
    try:
        return _THREAD_STACK.bounds  # type: ignore[no-any-return]
    except AttributeError:
        bounds = _THREAD_STACK.bounds = _native_stack_bounds()
        return bounds


def _stack_pointer_reader() -> Optional[Callable[[], int]]:
    """The extension's reading of the current stack address; without the extension the
    host can only compare the thread's whole stack size."""
    from . import BACKEND

    if BACKEND != "cython":
        return None
    from . import _codec

    return getattr(_codec, "_stack_address", None)


_STACK_ADDRESS = _stack_pointer_reader()


def _engine_config(wt: Wasmtime, config: HostConfig) -> Any:
    engine_config = wt.wasmtime.Config()
    engine_config.max_wasm_stack = config.max_wasm_stack
    # wasmtime aborts the process if max_wasm_stack exceeds the (unused) async stack size.
    wt.async_stack_size_set(engine_config.ptr(), max(2 * 1024 * 1024, config.max_wasm_stack + 256 * 1024))
    # wasmtime's compile thread pool does not survive fork(): a child that compiles with it
    # hangs forever. Plugins are small and compiled once, so compile on the calling thread.
    engine_config.parallel_compilation = False
    if _pooled(config):
        _use_instance_pool(wt, engine_config, config)
    engine_config.epoch_interruption = config.deadline_s is not None
    engine_config.consume_fuel = config.fuel is not None
    # Exactly the proposals the memory.grow rewrite decodes (wasm_rewrite.py); a module
    # that uses another one is refused at admission instead of rewritten wrongly.
    for feature in ("simd", "relaxed_simd", "bulk_memory", "reference_types", "multi_value", "tail_call"):
        setattr(engine_config, f"wasm_{feature}", True)
    for feature in (
        "threads", "multi_memory", "memory64", "exceptions", "gc", "function_references",
        "stack_switching", "custom_page_sizes", "wide_arithmetic", "component_model",
    ):
        setattr(engine_config, f"wasm_{feature}", False)
    return engine_config


#: Address space wasmtime maps for a pool beyond its memories and tables (instances,
#: guard regions), allowed for when checking that the pool fits.
POOL_OVERHEAD_BYTES = 64 * 1024 * 1024


def _pooled(config: HostConfig) -> bool:
    """Whether instances come from the pool: FRESH instances, unless pool_size is 0."""
    return config.instance_strategy is InstanceStrategy.FRESH and config.pool_size > 0


def _pool_tables(config: HostConfig) -> int:
    """Tables per pool slot: ``max_tables``, and at least one (wasmtime's pool needs it)."""
    return max(config.max_tables, 1)


def _pool_reservation(config: HostConfig) -> Tuple[int, int]:
    """Bytes of address space the instance pool reserves: (memories, tables)."""
    memories = config.pool_size * (config.memory_limit_bytes + POOL_MEMORY_GUARD)
    tables = config.pool_size * _pool_tables(config) * config.table_elements_limit * 8
    return memories, tables


def _check_pool_fits(config: HostConfig) -> None:
    """Reserve (and release) the pool's address space before wasmtime does: wasmtime's C API
    aborts the process when its reservation fails (``ulimit -v``, or a pool larger than the
    address space), where this raises PluginResourceLimit."""
    import mmap

    memories, tables = _pool_reservation(config)
    if os.name == "nt":  # pragma: no cover - Windows reserves lazily; no ulimit -v there
        return
    reserved = []
    try:
        for size in (memories, tables, POOL_OVERHEAD_BYTES):
            if size:
                reserved.append(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0))
    except (OSError, OverflowError, ValueError) as exc:
        raise PluginResourceLimit(
            f"cannot reserve address space for the instance pool: {memories} bytes for its memories and "
            f"{tables} for its tables ({exc}); lower HostConfig.pool_size, memory_limit_bytes or "
            "table_elements_limit, or set pool_size=0 for no pool"
        ) from None
    finally:
        for region in reserved:
            region.close()


def _c_function(dll: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    """A function of libwasmtime wasmtime-py has no binding for, typed for ctypes."""
    function = getattr(dll, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


def _use_instance_pool(wt: Wasmtime, engine_config: Any, config: HostConfig) -> None:
    """Instantiate from wasmtime's pooling allocator: memories and tables are reserved once
    for ``pool_size`` instances and reset (copy-on-write) when a store is dropped."""
    dll = wt.dll
    c_u32, c_u64, c_size, c_void_p = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p
    pool = _c_function(dll, "wasmtime_pooling_allocation_config_new", c_void_p)()
    settings = (
        ("total_core_instances", c_u32, config.pool_size),
        ("total_memories", c_u32, config.pool_size),
        ("total_tables", c_u32, config.pool_size * _pool_tables(config)),
        ("max_memories_per_module", c_u32, 1),
        ("max_tables_per_module", c_u32, _pool_tables(config)),
        ("table_elements", c_size, config.table_elements_limit),
        ("max_memory_size", c_size, config.memory_limit_bytes),
        ("linear_memory_keep_resident", c_size, POOL_KEEP_RESIDENT),
        ("total_stacks", c_u32, 0),
        ("total_gc_heaps", c_u32, 0),
        ("total_component_instances", c_u32, 0),
    )
    try:
        for name, kind, value in settings:
            _c_function(dll, f"wasmtime_pooling_allocation_config_{name}_set", None, c_void_p, kind)(pool, value)
        config_ptr = ctypes.cast(engine_config.ptr(), c_void_p)
        for name, value in (("memory_reservation", config.memory_limit_bytes), ("memory_guard_size", POOL_MEMORY_GUARD)):
            _c_function(dll, f"wasmtime_config_{name}_set", None, c_void_p, c_u64)(config_ptr, value)
        # The strategy copies the settings.
        _c_function(dll, "wasmtime_pooling_allocation_strategy_set", None, c_void_p, c_void_p)(config_ptr, pool)
    finally:
        _c_function(dll, "wasmtime_pooling_allocation_config_delete", None, c_void_p)(pool)


@dataclass
class _Loaded:
    """One admitted plugin: its compiled module, ready to instantiate."""

    name: str
    kind: str
    content_hash: bytes
    plugin_id: uuid.UUID
    instance_pre: Any
    inspection: PluginInspection
    hooks: Tuple[str, ...]
    #: The compiled module and its cache key (content and engine settings).
    module: Any = None
    module_key: bytes = b""
    #: Whether the module had a start function (exported by the rewrite as START_EXPORT).
    has_start: bool = False
    #: Reused instances (REUSE_PER_THREAD). They hold no reference back to this object,
    #: so they die with it when the plugin leaves its slot.
    local: threading.local = field(default_factory=threading.local)
    #: The extension's call path for this plugin (None: the ctypes path).
    native: Any = None
    #: Builds the typed errors of this plugin's calls, for both call paths.
    faults: Any = None


class _Engine:
    """What every call needs from its host: the engine, the limits, the deadline. Holds no
    slots and no host, so instances that keep it create no reference cycles."""

    __slots__ = ("wt", "engine", "config", "deadline_ticks", "reuse", "pooled")

    def __init__(self, wt: Wasmtime, engine: Any, config: HostConfig):
        self.wt = wt
        self.engine = engine
        self.config = config
        # The deadline passes after this many ticks; +1 because the first tick may come at once.
        self.deadline_ticks = (
            math.ceil(config.deadline_s / config.epoch_tick_s) + 1 if config.deadline_s is not None else 0
        )
        self.reuse = config.instance_strategy is InstanceStrategy.REUSE_PER_THREAD
        self.pooled = _pooled(config)

    def check_thread_stack(self, plugin: str, hook: str) -> None:
        """Refuse to enter guest code where the thread's stack cannot hold max_wasm_stack:
        what is left below the current frame (with the extension), else the whole stack."""
        bounds = _thread_stack()
        if bounds is None:
            return
        base, size = bounds
        left = _STACK_ADDRESS() - base if _STACK_ADDRESS is not None else size
        if left < self.stack_needed:
            raise _Faults(self, plugin).stack(hook, left, size)

    @property
    def stack_needed(self) -> int:
        return self.config.max_wasm_stack + STACK_HEADROOM


def _instantiate_failure(engine: _Engine, exc: BaseException, plugin: str, hook: str) -> PluginError:
    """A typed error for a failed instantiation (start function, limits, host memory)."""
    where = {"plugin": plugin, "hook": hook, "phase": "instantiate"}
    wasmtime = engine.wt.wasmtime
    if isinstance(exc, wasmtime.Trap):
        return _trap_failure(engine, exc, "instantiate", where, grow_refused=False)
    message = _trap_text(str(exc))
    lowered = message.lower()
    if "maximum concurrent limit" in lowered:
        return PluginPoolSaturated(
            f"instantiate: every slot of the instance pool is in use (HostConfig.pool_size = {engine.config.pool_size})",
            **where,
        )
    if "memory minimum size" in lowered:
        return PluginMemoryLimit(
            f"instantiate: {message} (HostConfig.memory_limit_bytes = {engine.config.memory_limit_bytes})", **where
        )
    if "table minimum size" in lowered:
        return PluginResourceLimit(
            f"instantiate: {message} (HostConfig.table_elements_limit = {engine.config.table_elements_limit})", **where
        )
    if "resource limit exceeded" in lowered:
        return PluginResourceLimit(f"instantiate: {message} (HostConfig.max_tables = {engine.config.max_tables})", **where)
    if any(word in lowered for word in ("allocate", "mmap", "memfd", "reserve", "out of memory")):
        return PluginResourceLimit(f"instantiate: the host could not reserve memory: {message}", **where)
    return PluginError(f"instantiate: {message}", **where)


def _pool_limit_failure(engine: _Engine, message: str, plugin: str, hook: str) -> Optional[PluginError]:
    """The typed limit behind a module the instance pool cannot hold (wasmtime checks the
    pool's limits when it compiles), or None for any other compile failure."""
    if "does not fit in pooling allocator" not in message:
        return None
    detail = re.sub(r"^\d+: ", "", _trap_text(message))  # the last cause, without its chain number
    where = {"plugin": plugin, "hook": hook, "phase": "compile"}
    config = engine.config
    if message.startswith("module memory"):
        return PluginMemoryLimit(f"compile: {detail} (HostConfig.memory_limit_bytes = {config.memory_limit_bytes})", **where)
    if "count of" in detail:
        return PluginResourceLimit(f"compile: {detail} (HostConfig.max_tables = {config.max_tables})", **where)
    return PluginResourceLimit(f"compile: {detail} (HostConfig.table_elements_limit = {config.table_elements_limit})", **where)


def _trap_failure(engine: _Engine, trap: Any, phase: str, where: Dict[str, str], *, grow_refused: bool) -> PluginError:
    code = trap.trap_code
    message = _trap_text(trap.message)
    name = engine.wt.trap_names.get(getattr(code, "value", code), "unknown") if code is not None else "unknown"
    return _classify(engine, name, message, phase, where, grow_refused=grow_refused)


#: How guests fail after memory.grow answered -1: a panic or abort (Rust's OOM handler,
#: C's assert) is ``unreachable``; using memory that was never granted is an out-of-bounds
#: access. A division by zero or a stack overflow after a refused grow is still a bug.
_OUT_OF_MEMORY_TRAPS = frozenset({"unreachable", "memory_out_of_bounds"})


def _classify(
    engine: _Engine, name: str, message: str, phase: str, where: Dict[str, str], *, grow_refused: bool
) -> PluginError:
    config = engine.config
    if name == "interrupt":
        if config.deadline_s is None:
            return PluginTimeout(f"{phase}: interrupted (the host is closing)", **where)
        return PluginTimeout(f"{phase}: exceeded the {config.deadline_s} s deadline", **where)
    if name == "out_of_fuel":
        return PluginOutOfFuel(f"{phase}: used up its {config.fuel} units of fuel", **where)
    if grow_refused and name in _OUT_OF_MEMORY_TRAPS:
        return PluginMemoryLimit(
            f"{phase}: the guest failed after memory.grow was refused at the "
            f"{config.memory_limit_bytes}-byte limit ({message})",
            **where,
        )
    return PluginTrap(f"{phase}: {message}", trap_code=name, **where)


def _closed_error(plugin: str, hook: str) -> PluginError:
    return PluginError("the host is closed", plugin=plugin, hook=hook)


class _Faults:
    """The typed error of every way a call can fail, for one plugin: both call paths (the
    extension's and the ctypes one) build their errors here, so they word them alike.
    ``trap`` and ``error`` are wasmtime pointers (ctypes pointers or addresses, 0 for none)
    whose ownership passes to the wasmtime-py object made of them."""

    __slots__ = ("engine", "plugin")

    def __init__(self, engine: _Engine, plugin: str):
        self.engine = engine
        self.plugin = plugin

    def _wrap(self, trap: Any, error: Any) -> Any:
        wt = self.engine.wt
        if trap:
            return wt.wasmtime.Trap._from_ptr(ctypes.cast(trap, ctypes.POINTER(wt.ffi.wasm_trap_t)))
        return wt.wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(wt.ffi.wasmtime_error_t)))

    def call(self, phase: str, hook: str, trap: Any, error: Any, refused: bool) -> PluginError:
        """Guest code trapped or failed during ``phase``."""
        where = {"plugin": self.plugin, "hook": hook, "phase": phase}
        failure = self._wrap(trap, error)
        if trap:
            return _trap_failure(self.engine, failure, phase, where, grow_refused=refused)
        return _classify(self.engine, "error", _trap_text(str(failure)), phase, where, grow_refused=refused)

    def instantiate(self, hook: str, trap: Any, error: Any) -> PluginError:
        """Instantiation failed (pointers, from the native path); the error's __cause__ is
        the wasmtime exception, as ``raise ... from`` sets it on the ctypes path."""
        failure = self._wrap(trap, error)
        typed = self.instantiation(hook, failure)
        typed.__cause__ = failure
        return typed

    def instantiation(self, hook: str, exc: BaseException) -> PluginError:
        return _instantiate_failure(self.engine, exc, self.plugin, hook)

    def missing_export(self, hook: str, name: str) -> PluginError:
        return PluginError(f"instantiate: export `{name}` is missing", plugin=self.plugin, hook=hook)

    def alloc(self, hook: str, size: int, pointer: int, memory_size: int, refused: bool) -> PluginError:
        """cc_lb_alloc answered null, a misaligned pointer or one outside guest memory."""
        where = {"plugin": self.plugin, "hook": hook, "phase": "cc_lb_alloc"}
        limit = self.engine.config.memory_limit_bytes
        if pointer == 0:
            if refused or size > limit:
                return PluginMemoryLimit(f"cc_lb_alloc: no room for the {size}-byte request under the {limit}-byte limit", **where)
            return PluginTrap(f"cc_lb_alloc: guest returned null pointer for {size}-byte allocation", trap_code="null_pointer", **where)
        if pointer % 16:
            return PluginOutputError(f"cc_lb_alloc: returned pointer {pointer}, not aligned to 16 as asked", **where)
        return PluginOutputError(
            f"cc_lb_alloc: returned [{pointer}..{pointer + size}) outside guest memory ({memory_size} bytes)", **where
        )

    def output(self, hook: str, pointer: int, length: int, memory_size: int) -> Optional[PluginError]:
        """What is wrong with the hook's (pointer, length) answer, checked in this order; None if nothing."""
        export = HOOK_EXPORTS[hook]
        where = {"plugin": self.plugin, "hook": hook, "phase": export}
        if pointer == 0 or length == 0:
            return PluginOutputError(
                f"{export}: guest returned invalid (ptr={pointer}, len={length}); only observe may return (0, 0)", **where
            )
        bound = self.engine.config.bounds.output_body_bytes
        if length > bound:  # checked before anything is read
            return PluginOutputError(f"{export}: output of {length} bytes exceeds wire_bounds.output_body_bytes ({bound})", **where)
        end = pointer + length
        if end > 0xFFFFFFFF:
            return PluginOutputError(f"{export}: guest output ptr+len overflows ({pointer} + {length})", **where)
        if end > memory_size:
            return PluginOutputError(f"{export}: guest output [{pointer}..{end}) out of bounds (memory size {memory_size})", **where)
        return None

    def stack(self, hook: str, left: int, size: int) -> PluginResourceLimit:
        config = self.engine.config
        return PluginResourceLimit(
            f"the calling thread has {left // 1024} KiB of stack left (of {size // 1024} KiB), less than "
            f"HostConfig.max_wasm_stack ({config.max_wasm_stack // 1024} KiB) + {STACK_HEADROOM // 1024} KiB: "
            "call plugins from threads with a larger stack (threading.stack_size), not deep in recursion, "
            "or lower max_wasm_stack",
            plugin=self.plugin, hook=hook, phase="enter",
        )

    def closed(self, hook: str) -> PluginError:
        return _closed_error(self.plugin, hook)


# --- which call path: the extension's, or ctypes ------------------------------------------

#: Set to 0 to use the ctypes call path even where the extension could take the calls.
NATIVE_CALLS_ENV = "CCLB_WIRE_NATIVE_CALLS"
_NATIVE: Optional[Any] = None  # the extension, bound to libwasmtime; None: the ctypes path
_NATIVE_REASON = "not bound yet"
_NATIVE_LOCK = threading.Lock()


def _bind_native(wt: Wasmtime) -> None:
    """Bind the extension's call path to the libwasmtime wasmtime-py loaded, once. Where it
    cannot (the pure-Python backend, another wasmtime, a missing symbol), calls take the
    ctypes path; a mismatch also warns, naming the reason."""
    global _NATIVE, _NATIVE_REASON
    from . import BACKEND

    if BACKEND != "cython":
        _NATIVE_REASON = "the pure-Python backend is loaded"
        return
    if os.environ.get(NATIVE_CALLS_ENV, "") == "0":
        _NATIVE_REASON = f"{NATIVE_CALLS_ENV}=0"
        return
    from . import _codec

    def layout(struct: Any) -> Tuple[int, Dict[str, int]]:
        return ctypes.sizeof(struct), {name: getattr(struct, name).offset for name, *_ in struct._fields_}

    layouts = {name: layout(getattr(wt.ffi, name)) for name in _codec._WASMTIME_LAYOUTS if hasattr(wt.ffi, name)}
    addresses = {}
    for symbol in _codec._WASMTIME_SYMBOLS:
        try:
            addresses[symbol] = ctypes.cast(getattr(wt.dll, symbol), ctypes.c_void_p).value
        except AttributeError:
            addresses[symbol] = None
    try:
        _codec.bind_wasmtime(wt.version, addresses, layouts)
    except RuntimeError as exc:
        _NATIVE_REASON = str(exc)
        warnings.warn(f"cclb_wire: plugin calls take the slower ctypes path: {exc}", RuntimeWarning, stacklevel=3)
        return
    _NATIVE = _codec
    _NATIVE_REASON = ""


def _new_gate() -> Any:
    if _NATIVE is not None:
        return _NATIVE.CallGate(threading.Condition())
    return CallGate(threading.Condition())


# ==============================================================================
# The host
# ==============================================================================


_AdapterT = TypeVar("_AdapterT", bound="_Adapter")


class PluginHost:
    """Loads cc-lb V1 plugins into slots and runs them under limits.

    ``register_*`` admits a module (inspection, the memory.grow rewrite, compile,
    instantiation under the limits, probe of every declared hook) and puts it in a
    slot. Registering other content for the same slot swaps it atomically (calls in
    flight keep the plugin they started with); registering the same content again
    changes nothing. Registrations for one slot take effect in the order they were
    called: one that finishes after a newer one never replaces it. ``close()`` stops
    the host (see there); a host that is dropped without ``close()`` releases its
    ticker when it is collected.
    """

    def __init__(self, config: Optional[HostConfig] = None):
        if config is None:
            config = HostConfig()
        elif not isinstance(config, HostConfig):
            raise InvalidInputType("PluginHost.config", f"expected a HostConfig or None, got {type_name(config)}")
        self.config = config
        wt = _wt()
        #: Gives the engine back to its ticker: at close(), or when the host is collected.
        self._release: Callable[[], Any] = _no_ticker
        self._start_engine()
        self._engine_key = (
            f"wasmtime {wt.version}; stack {config.max_wasm_stack}; "
            f"epoch {config.deadline_s is not None}; fuel {config.fuel is not None}; grow-rewrite 1; "
            f"pool {config.memory_limit_bytes if _pooled(config) else 0}"
        )
        #: Compiled modules no slot may use any more, most recent last (an LRU).
        self._spare_modules: "collections.OrderedDict[bytes, Any]" = collections.OrderedDict()
        self._slots: Dict[Tuple[str, str], _Loaded] = {}
        #: The ticket of the last registration or unregistration applied to each slot.
        self._slot_tickets: Dict[Tuple[str, str], int] = {}
        #: Each slot's failure policy, as its last applied registration gave it (None: the config's).
        self._slot_policies: Dict[Tuple[str, str], Optional[FailurePolicy]] = {}
        #: Each slot's call counters, from its first registration on (they outlive swaps).
        self._counters: Dict[Tuple[str, str], Any] = {}
        self._tickets = itertools.count(1)
        self._lock = threading.Lock()  # the slots and their tickets
        #: Calls and registrations in flight; close() shuts it and waits for them.
        self._gate: Any = _new_gate()
        self._cache_dir = Path(config.module_cache_dir) if config.module_cache_dir is not None else None
        _HOSTS.add(self)

    def _start_engine(self) -> None:
        """The engine (with its instance pool), its linker and its deadline ticker."""
        config = self.config
        wt = _wt()
        if _pooled(config):
            _check_pool_fits(config)
        try:
            engine = wt.wasmtime.Engine(_engine_config(wt, config))
        except wt.errors as exc:
            raise PluginError(f"cannot create the wasmtime engine: {_trap_text(str(exc))}") from exc
        self._engine = _Engine(wt, engine, config)
        self._linker = wt.wasmtime.Linker(engine)
        if config.deadline_s is not None:
            _tick_engine(engine, config.epoch_tick_s)
            self._release = weakref.finalize(self, _untick_engine, engine, config.epoch_tick_s)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return bool(self._gate.closed)

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the host: no call, probe or registration starts after this.

        Calls in flight are interrupted when a deadline is configured (they end with
        PluginTimeout), and close() waits for them and for registrations in flight
        (up to ``timeout`` seconds; None: as long as they take). With
        ``deadline_s=None`` nothing can interrupt a guest, so close() waits for them to
        finish. Then the slots and compiled modules are dropped and the deadline ticker
        is released. Calling it again does nothing.
        """
        if timeout is not None:
            check_number(timeout, "PluginHost.close.timeout", 0.0, MAX_DEADLINE_S)
        already = self._gate.close()
        if not already and self._engine.deadline_ticks:
            # Past every armed deadline: calls running now stop at their next epoch check.
            for _ in range(self._engine.deadline_ticks + 1):
                self._engine.engine.increment_epoch()
        if not self._gate.wait_idle(timeout):
            raise PluginError(f"close(): {self._gate.active} call(s) or registration(s) still running after {timeout} s")
        with self._lock:
            self._slots.clear()
            self._spare_modules.clear()
        self._release()

    def __enter__(self) -> "PluginHost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        in_flight = self._gate.active
        self._lock = threading.Lock()
        self._gate.after_fork(threading.Condition())
        if in_flight and self._engine.pooled and not self._gate.closed:
            # The calls' threads do not exist here, so their stores would hold their pool
            # slots for good: give the child a pool of its own.
            try:
                self._restart_engine()
            except Exception as exc:  # the child keeps serving, from a smaller pool
                _log.warning(
                    "fork() while %d plugin call(s) were in flight: their pool slots stay taken in this child "
                    "(%d of pool_size=%d), because a new pool could not be made: %s",
                    in_flight, in_flight, self.config.pool_size, exc,
                )

    def _restart_engine(self) -> None:
        """A new engine and pool, with every slot's plugin moved onto it (its compiled code
        is carried over, not recompiled); the old engine's spare modules are dropped."""
        self._release()
        self._start_engine()
        self._spare_modules.clear()
        wasmtime = self._engine.wt.wasmtime
        for key, loaded in list(self._slots.items()):
            module = wasmtime.Module.deserialize(self._engine.engine, loaded.module.serialize())
            instance_pre = self._linker.instantiate_pre(module)
            moved = dataclasses.replace(
                loaded, instance_pre=instance_pre, module=module, local=threading.local(), native=None,
                faults=_Faults(self._engine, loaded.name),
            )
            if _NATIVE is not None:
                moved.native = self._native_plugin(_NATIVE, moved, instance_pre)
            self._slots[key] = moved

    def _enter(self, plugin: str, hook: str) -> None:
        if not self._gate.enter():
            raise _closed_error(plugin, hook)

    def _leave(self) -> None:
        self._gate.leave()

    # -- admission ----------------------------------------------------------------

    def _content_hash(self, wasm: bytes) -> bytes:
        pages = self.config.memory_limit_bytes // WASM_PAGE
        return blake3.blake3(b"\x01\x00\x00\x00" + pages.to_bytes(4, "little") + wasm).digest()

    def _module_key(self, wasm: bytes) -> bytes:
        return blake3.blake3(wasm + b"\0" + self._engine_key.encode()).digest()

    def _module(self, wasm: bytes, key: bytes, name: str, kind: str) -> Any:
        """Rewrite and compile, or take from the caches (spare modules, then disk); ``key``
        is the module key (content and engine settings)."""
        with self._lock:
            for loaded in self._slots.values():
                if loaded.module_key == key:
                    return loaded.module
            module = self._spare_modules.pop(key, None)
        if module is not None:
            return module
        wasmtime = self._engine.wt.wasmtime
        engine = self._engine.engine
        cached = self._cache_dir / f"{key.hex()}.cwasm" if self._cache_dir else None
        if cached is not None:
            try:
                module = wasmtime.Module.deserialize(engine, cached.read_bytes())
            except FileNotFoundError:
                module = None
            except (OSError, *self._engine.wt.errors) as exc:
                # stale, foreign or unreadable (a name too long, a directory): compile again
                _log.warning("compiled-module cache %s not used: %s", cached, exc)
                module = None
        if module is None:
            try:
                instrumented = instrument_memory_grow(wasm)
            except WasmRewriteError as exc:
                raise PluginRejected(f"module rejected at load time: {exc}", plugin=name, hook=kind) from exc
            try:
                module = wasmtime.Module(engine, instrumented)
            except self._engine.wt.errors as exc:
                rejected = PluginRejected(f"failed to compile wasm module: {exc}".splitlines()[0], plugin=name, hook=kind)
                limit = _pool_limit_failure(self._engine, str(exc), name, kind)
                if limit is not None:
                    raise rejected from limit
                raise rejected from exc
            if cached is not None:
                self._store_compiled(cached, module)
        return module

    def _store_compiled(self, cached: Path, module: Any) -> None:
        """Write a compiled module to the disk cache through a unique temporary file; a cache
        that cannot be written costs a compile next time, never a registration."""
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=cached.parent, prefix=cached.stem[:16], suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(module.serialize())
                os.replace(temporary, cached)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as exc:
            _log.warning("cannot write the compiled-module cache %s: %s", cached, exc)

    def _retire(self, loaded: Optional[_Loaded]) -> None:
        """A plugin left its slot: keep its compiled module among the spares, unless another
        slot still uses it (called with the lock held)."""
        if loaded is None or any(other.module_key == loaded.module_key for other in self._slots.values()):
            return
        spares = self._spare_modules
        spares[loaded.module_key] = loaded.module
        spares.move_to_end(loaded.module_key)
        while len(spares) > self.config.module_cache_size:
            spares.popitem(last=False)

    def _admit(self, kind: str, name: str, data: bytes, content_hash: bytes) -> _Loaded:
        inspection = inspect_plugin(data)
        inspection.check(kind, plugin=name)
        module_key = self._module_key(data)
        module = self._module(data, module_key, name, kind)
        try:
            instance_pre = self._linker.instantiate_pre(module)
        except self._engine.wt.errors as exc:
            raise PluginRejected(f"failed to instantiate module: {exc}".splitlines()[0], plugin=name, hook=kind) from exc
        hooks = tuple(hook for hook in HOOK_EXPORTS if hook in ((inspection.metadata or {}).get("hooks") or {}))
        loaded = _Loaded(
            name, kind, content_hash, uuid.UUID(bytes=content_hash[:16], version=4), instance_pre, inspection, hooks,
            module, module_key, any(export.name == START_EXPORT for export in module.exports),
        )
        loaded.faults = _Faults(self._engine, name)
        if self.config.probe:
            for hook in hooks:
                self._probe(loaded, hook)
        else:
            self._trial_instance(loaded, kind)
        if _NATIVE is not None:
            loaded.native = self._native_plugin(_NATIVE, loaded, instance_pre)
        return loaded

    def _native_plugin(self, native: Any, loaded: _Loaded, instance_pre: Any) -> Any:
        """The extension's call path for an admitted plugin, with this host's limits."""
        engine = self._engine
        config = self.config
        return native.NativePlugin(
            ctypes.cast(engine.engine.ptr(), ctypes.c_void_p).value,
            ctypes.cast(instance_pre.ptr(), ctypes.c_void_p).value,
            (engine.engine, instance_pre),
            _Faults(engine, loaded.name),
            loaded.local,
            self._gate,
            loaded.hooks,
            reuse=engine.reuse,
            has_start=loaded.has_start,
            deadline_ticks=engine.deadline_ticks,
            fuel=config.fuel,
            memory_limit=config.memory_limit_bytes,
            table_elements=config.table_elements_limit,
            max_tables=config.max_tables,
            stack_needed=engine.stack_needed,
            bounds=config.bounds,
            origin_policy=config.origin_policy,
            cookie_redaction=config.cookie_redaction,
            hook_exports=HOOK_EXPORTS,
            grow_flag_export=GROW_REFUSED_EXPORT,
            start_export=START_EXPORT,
        )

    def _trial_instance(self, loaded: _Loaded, hook: str) -> Instance:
        """Instantiate under the limits (start function included); failures reject the module."""
        if self._gate.closed:
            raise PluginError("the host closed during admission", plugin=loaded.name, hook=hook)
        try:
            self._engine.check_thread_stack(loaded.name, hook)
            return Instance(self._engine, loaded, hook)
        except PluginPoolSaturated:
            raise  # the module is fine; the host is busy
        except PluginError as exc:
            raise PluginRejected(f"cannot instantiate: {exc.detail}", plugin=loaded.name, hook=hook) from exc

    def _probe(self, loaded: _Loaded, hook: str) -> None:
        sample = PROBE_SAMPLES[hook]
        instance = self._trial_instance(loaded, hook)
        try:
            view = instance.call_with(hook, sample)
            output = None if view is None else bytes(view)  # a copy: the store is closed below
            if hook == "filter":
                decode("FilterResponse", output)
            elif hook == "shape":
                decode("ShapeResponse", output)
        except (PluginError, DecodeError) as exc:
            reason = exc.detail if isinstance(exc, PluginError) else str(exc)
            raise PluginRejected(
                f"runtime probe failed for hook {hook}: {reason}", plugin=loaded.name, hook=hook
            ) from exc
        finally:
            instance.close()  # its pool slot now, not when a traceback holding it dies

    def _read_module(self, method: str, wasm: Any) -> bytes:
        if isinstance(wasm, (str, os.PathLike)):
            path = _path_text(wasm, f"{method}.wasm")
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise InvalidInput(f"{method}.wasm", f"cannot read {path!r}: {exc.strerror or exc}") from exc
        if isinstance(wasm, (bytes, bytearray, memoryview)):
            return bytes(wasm)
        raise InvalidInputType(f"{method}.wasm", f"expected the module's bytes or a path, got {type_name(wasm)}")

    def _register(
        self, kind: str, slot_key: Any, name: Any, wasm: Any, adapter: "type[_AdapterT]", failure_policy: Any
    ) -> "_AdapterT":
        method = f"register_{kind}"
        if not isinstance(slot_key, str):
            raise InvalidInputType(f"{method}.slot_key", f"expected a str, got {type_name(slot_key)}")
        if not isinstance(name, str):
            raise InvalidInputType(f"{method}.name", f"expected a str, got {type_name(name)}")
        if failure_policy is not None:
            failure_policy = coerce_enum(FailurePolicy, failure_policy, f"{method}.failure_policy")
        data = self._read_module(method, wasm)
        content_hash = self._content_hash(data)
        key = (kind, slot_key)
        self._enter(name, kind)
        try:
            with self._lock:
                ticket = next(self._tickets)
                current = self._slots.get(key)
                if current is not None and current.content_hash == content_hash and current.name == name:
                    self._slot_tickets[key] = ticket  # the same content: nothing changes but the order
                    self._slot_policies[key] = failure_policy  # ... and the policy it states
                    return adapter(self, kind, slot_key)
            loaded = self._admit(kind, name, data, content_hash)
            with self._lock:
                if self._gate.closed:
                    raise PluginError("the host closed during registration", plugin=name, hook=kind)
                if ticket < self._slot_tickets.get(key, 0):
                    _log.info("registration of %r into %s slot %r overtaken by a newer one; not applied", name, kind, slot_key)
                    self._retire(loaded)
                else:
                    previous = self._slots.get(key)
                    self._slots[key] = loaded  # one assignment: the swap is atomic
                    self._slot_tickets[key] = ticket
                    self._slot_policies[key] = failure_policy
                    self._retire(previous)
        finally:
            self._leave()
        return adapter(self, kind, slot_key)

    def register_filter(
        self,
        slot_key: str,
        name: str,
        wasm: Union[bytes, str, "os.PathLike[str]"],
        *,
        failure_policy: Union[FailurePolicy, str, None] = None,
    ) -> "FilterPlugin":
        """Admit a filter plugin (bytes or a path) into a slot; returns its adapter.

        ``failure_policy`` is the slot's (``*_with_policy`` obey it); None: the host
        config's. Each registration states it again, so a swap may change it."""
        return self._register("filter", slot_key, name, wasm, FilterPlugin, failure_policy)

    def register_shape(
        self,
        slot_key: str,
        name: str,
        wasm: Union[bytes, str, "os.PathLike[str]"],
        *,
        failure_policy: Union[FailurePolicy, str, None] = None,
    ) -> "UpstreamDialect":
        """Admit a shape plugin into a slot; returns its UpstreamDialect adapter.
        ``failure_policy``: as for ``register_filter``."""
        return self._register("shape", slot_key, name, wasm, UpstreamDialect, failure_policy)

    def register_observe(
        self,
        slot_key: str,
        name: str,
        wasm: Union[bytes, str, "os.PathLike[str]"],
        *,
        failure_policy: Union[FailurePolicy, str, None] = None,
    ) -> "ObservabilityHook":
        """Admit an observe plugin into a slot; returns its ObservabilityHook adapter.
        ``failure_policy``: as for ``register_filter``."""
        return self._register("observe", slot_key, name, wasm, ObservabilityHook, failure_policy)

    def _check_slot(self, method: str, kind: Any, slot_key: Any) -> Tuple[str, str]:
        if not isinstance(kind, str):
            raise InvalidInputType(f"{method}.kind", f"expected one of {', '.join(map(repr, HOOK_KINDS))}, got {type_name(kind)}")
        if kind not in HOOK_KINDS:
            raise InvalidInput(f"{method}.kind", f"{kind!r} is not one of {', '.join(map(repr, HOOK_KINDS))}")
        if not isinstance(slot_key, str):
            raise InvalidInputType(f"{method}.slot_key", f"expected a str, got {type_name(slot_key)}")
        return kind, slot_key

    def slot(self, kind: str, slot_key: str) -> Optional[_Loaded]:
        """The plugin a slot holds now, or None."""
        return self._slots.get(self._check_slot("slot", kind, slot_key))

    def unregister(self, kind: str, slot_key: str) -> None:
        """Empty a slot. Calls in flight finish with the plugin they started with; the
        plugin's reused instances and compiled module go with the last of them (the
        module stays among the ``module_cache_size`` spares for a quick swap back)."""
        key = self._check_slot("unregister", kind, slot_key)
        with self._lock:
            self._slot_tickets[key] = next(self._tickets)  # registrations already running are now stale
            self._retire_slot(key)

    def _retire_slot(self, key: Tuple[str, str]) -> None:
        self._retire(self._slots.pop(key, None))

    def _slot_counters(self, key: Tuple[str, str]) -> Any:
        counters = self._counters.get(key)
        if counters is None:
            with self._lock:
                counters = self._counters.setdefault(key, _SlotCounters(*key))
        return counters

    def _slot_policy(self, key: Tuple[str, str]) -> FailurePolicy:
        policy = self._slot_policies.get(key)
        return self.config.failure_policy if policy is None else policy

    def stats(self) -> Dict[Tuple[str, str], SlotStats]:
        """Each slot's call statistics since its first registration, keyed by
        ``(kind, slot_key)``: calls, errors by class, policy pass-throughs and a latency
        histogram (see ``SlotStats``). Slots keep their counters across swaps and
        unregistration; the snapshot is taken slot by slot."""
        with self._lock:
            counters = list(self._counters.items())
        return {key: slot.snapshot() for key, slot in counters}

    # -- calls ------------------------------------------------------------------------

class _Adapter:
    """A slot's adapter: every call runs the plugin the slot holds when the call starts."""

    hook = ""

    def __init__(self, host: PluginHost, kind: str, slot_key: str):
        self._host = host
        self._kind = kind
        self._slot = (kind, slot_key)
        self._counters = host._slot_counters(self._slot)

    @property
    def slot_key(self) -> str:
        """The slot this adapter calls."""
        return self._slot[1]

    @property
    def failure_policy(self) -> FailurePolicy:
        """The slot's failure policy: its registration's, else the host config's."""
        return self._host._slot_policy(self._slot)

    def _loaded(self) -> _Loaded:
        loaded = self._host._slots.get(self._slot)
        if loaded is None:
            state = "the host is closed" if self._host.closed else "unregistered, or never registered"
            raise PluginError(f"slot {self.slot_key!r} is empty ({state})", hook=self._kind)
        return loaded

    @property
    def plugin_id(self) -> uuid.UUID:
        """Derived from the plugin's content hash: the same module has the same id."""
        return self._loaded().plugin_id

    @property
    def plugin_name(self) -> str:
        """The name the plugin was registered under."""
        return self._loaded().name

    def stats(self) -> SlotStats:
        """This slot's call statistics (``PluginHost.stats`` for every slot)."""
        return self._counters.snapshot()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Empty the slot (``PluginHost.unregister``); calls in flight finish with the plugin
        they started with."""
        self._host.unregister(self._kind, self.slot_key)


class FilterPlugin(_Adapter):
    """A filter slot: ``filter(ctx, principal, candidates) -> FilterOutput``."""

    def filter(self, ctx: RequestContext, principal: Principal, candidates: Sequence[UpstreamCandidate]) -> FilterOutput:
        """Raises FilterError: ``trap`` ("phase: detail") for a guest trap, ``runtime`` for
        anything else the plugin did wrong, an empty slot or a closed host; the typed error
        (PluginTimeout, PluginTrap, ...) is its __cause__. Bad arguments raise the codec's
        own errors (``EncodeError``, ``InvalidInput``): they are the caller's, not the plugin's."""
        host = self._host
        started = _clock_ns()
        try:
            loaded = self._loaded()
            if loaded.native is not None:
                output = loaded.native.filter(ctx, principal, candidates)
            else:
                output = call_filter(host._engine, host._gate, loaded, ctx, principal, candidates)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            if isinstance(exc, PluginTrap):
                raise FilterError.trap(exc.detail) from exc
            if isinstance(exc, PluginError):
                raise FilterError.runtime(str(exc)) from exc
            raise
        self._counters.record_since(started)
        return output  # type: ignore[no-any-return]

    def filter_with_policy(
        self, ctx: RequestContext, principal: Principal, candidates: Iterable[UpstreamCandidate]
    ) -> FilterOutput:
        """``filter`` under the slot's failure policy: PASS_THROUGH answers a no-op (every
        candidate kept, in order, the failure in ``reason``); FAIL_CLOSED raises the
        FilterError. ``candidates`` may be any iterable: it is read once."""
        try:
            candidates = tuple(candidates)
        except TypeError:
            raise InvalidInputType(
                "FilterPlugin.filter_with_policy.candidates", f"expected an iterable of UpstreamCandidate, got {type_name(candidates)}"
            ) from None
        for index, candidate in enumerate(candidates):
            # Checked here too: an empty slot fails before the request is encoded, and
            # passing through needs every candidate's upstream_id.
            if not isinstance(candidate, UpstreamCandidate):
                raise InvalidInputType(
                    f"FilterPlugin.filter_with_policy.candidates[{index}]",
                    f"expected a cclb_wire.UpstreamCandidate, got {type_name(candidate)}",
                )
        try:
            return self.filter(ctx, principal, candidates)
        except FilterError as exc:
            if self.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            self._counters.record_pass_through()
            _log.warning("filter plugin failed, passing through: %s", exc)
            kept = tuple(c.upstream_id for c in candidates)
            return FilterOutput(kept, f"plugin failed; passed through: {exc}", ())


class UpstreamDialect(_Adapter):
    """A shape slot: ``shape(ctx, upstream, principal) -> ShapedRequest``."""

    def shape(self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal) -> ShapedRequest:
        """Raises DialectError (unsupported request) for anything the plugin did wrong, an
        empty slot or a closed host; the typed error is its __cause__."""
        host = self._host
        started = _clock_ns()
        try:
            loaded = self._loaded()
            if loaded.native is not None:
                output = loaded.native.shape(ctx, principal, upstream)
            else:
                output = call_shape(host._engine, host._gate, loaded, ctx, principal, upstream)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            if isinstance(exc, PluginTrap):
                raise DialectError.unsupported_request(exc.detail) from exc
            if isinstance(exc, PluginError):
                raise DialectError.unsupported_request(str(exc)) from exc
            raise
        self._counters.record_since(started)
        return output  # type: ignore[no-any-return]

    def shape_with_policy(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal
    ) -> Optional[ShapedRequest]:
        """``shape`` under the slot's failure policy: PASS_THROUGH answers None ("send the
        request to the upstream unchanged"); FAIL_CLOSED raises the DialectError."""
        try:
            return self.shape(ctx, upstream, principal)
        except DialectError as exc:
            if self.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            self._counters.record_pass_through()
            _log.warning("shape plugin failed, passing through: %s", exc)
            return None


class ObservabilityHook(_Adapter):
    """An observe slot: ``observe(event)``; the plugin's output is ignored."""

    def observe(self, event: ObserveEventInput) -> None:
        """Raises ObservabilityError (dropped) for anything the plugin did wrong, an empty
        slot or a closed host; the typed error is its __cause__."""
        host = self._host
        started = _clock_ns()
        try:
            loaded = self._loaded()
            if loaded.native is not None:
                loaded.native.observe(event)
            else:
                call_observe(host._engine, host._gate, loaded, event)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            if isinstance(exc, PluginError):
                raise ObservabilityError.dropped(str(exc)) from exc
            raise
        self._counters.record_since(started)

    def observe_with_policy(self, event: ObserveEventInput) -> bool:
        """``observe`` under the slot's failure policy: PASS_THROUGH logs and counts a
        failure and answers False (the event is dropped); FAIL_CLOSED raises the
        ObservabilityError. True when the plugin took the event."""
        try:
            self.observe(event)
        except ObservabilityError as exc:
            if self.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            self._counters.record_pass_through()
            _log.warning("observe plugin failed, event dropped: %s", exc)
            return False
        return True
