"""A host's wasmtime engine: its configuration, and what every call needs from it."""

from __future__ import annotations

import ctypes
import math
from typing import Any, Callable, Optional, Tuple

from ..errors import PluginError
from .config import HostConfig, InstanceStrategy
from .ctypes_calls import Wasmtime, trap_text
from .faults import stack_error
from .pool import check_pool_fits, pooled, use_instance_pool
from .stack import STACK_ADDRESS, STACK_HEADROOM, thread_stack
from .threads import ADMISSION_STACK_EXTRA
from .ticker import native_ticker, no_ticker, release_native, tick_engine, untick_engine

def engine_config(wt: Wasmtime, config: HostConfig) -> Any:
    """The wasmtime Config of a host: limits, pool, interruption, fuel and wasm features."""
    engine_config = wt.wasmtime.Config()
    engine_config.max_wasm_stack = config.max_wasm_stack
    # wasmtime aborts the process if max_wasm_stack exceeds the (unused) async stack size.
    wt.async_stack_size_set(engine_config.ptr(), max(2 * 1024 * 1024, config.max_wasm_stack + 256 * 1024))
    # wasmtime's compile thread pool does not survive fork(): a child that compiles with it
    # hangs forever. Plugins are small and compiled once, so compile on the calling thread.
    engine_config.parallel_compilation = False
    if pooled(config):
        # Where FRESH memories come from (None: wasmtime's pool), for Engine.memory_pool.
        engine_config.cclb_memory_pool = use_instance_pool(wt, engine_config, config)
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


class Engine:
    """What every call needs from its host: the engine, the limits, the deadline. Holds no
    slots and no host, so instances that keep it create no reference cycles."""

    __slots__ = ("wt", "engine", "config", "deadline_ticks", "reuse", "pooled", "memory_pool")

    def __init__(self, wt: Wasmtime, engine: Any, config: HostConfig, memory_pool: Optional[int] = None):
        self.wt = wt
        self.engine = engine
        self.config = config
        # The deadline passes after this many ticks; +1 because the first tick may come at once.
        self.deadline_ticks = (
            math.ceil(config.deadline_s / config.epoch_tick_s) + 1 if config.deadline_s is not None else 0
        )
        self.reuse = config.instance_strategy is InstanceStrategy.REUSE_PER_THREAD
        self.pooled = pooled(config)
        #: The address of the extension's page-resetting memory pool, when FRESH memories
        #: come from it (pool.py); None for wasmtime's pooling allocator or no pool.
        self.memory_pool = memory_pool

    def check_thread_stack(self, plugin: str, hook: str) -> None:
        """Refuse to enter guest code where the thread's stack cannot hold max_wasm_stack:
        what is left below the current frame (with the extension), else the whole stack."""
        bounds = thread_stack()
        if bounds is None:
            return
        base, size = bounds
        left = STACK_ADDRESS() - base if STACK_ADDRESS is not None else size
        if left < self.stack_needed:
            raise stack_error(self.config, plugin, hook, left, size)

    @property
    def stack_needed(self) -> int:
        """Native stack a call needs below its caller: the wasm stack and the host's headroom."""
        return self.config.max_wasm_stack + STACK_HEADROOM


def admission_stack_size(config: HostConfig) -> int:
    """Stack of a thread that compiles and probes: the wasm stack, the host's headroom and
    the compiler's frames, in whole 64 KiB (platforms want page multiples)."""
    size = config.max_wasm_stack + STACK_HEADROOM + ADMISSION_STACK_EXTRA
    return -(-size // 65536) * 65536


def start_engine(wt: Wasmtime, config: HostConfig, owner: object) -> Tuple[Engine, Any, Callable[[], Any]]:
    """A new engine (with its instance pool), its linker, and the release of its deadline
    ticker, which runs at the latest when ``owner`` is collected."""
    import weakref

    if pooled(config):
        check_pool_fits(config)
    try:
        settings = engine_config(wt, config)
        engine = wt.wasmtime.Engine(settings)
    except wt.errors as exc:
        raise PluginError(f"cannot create the wasmtime engine: {trap_text(str(exc))}") from exc
    release: Callable[[], Any] = no_ticker
    if config.deadline_s is not None:
        native = native_ticker()
        handle = None
        if native is not None:
            try:
                address = ctypes.cast(engine.ptr(), ctypes.c_void_p).value
                handle = native.native_ticker_add(address, max(1, round(config.epoch_tick_s * 1e9)))
            except (OSError, RuntimeError):  # no thread to be had: the Python ticker serves
                handle = None
        if handle is not None:
            release = weakref.finalize(owner, release_native, native, handle, engine)
        else:
            tick_engine(engine, config.epoch_tick_s)
            release = weakref.finalize(owner, untick_engine, engine, config.epoch_tick_s)
    memory_pool = getattr(settings, "cclb_memory_pool", None)
    return Engine(wt, engine, config, memory_pool), wt.wasmtime.Linker(engine), release
