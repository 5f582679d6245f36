"""Typed errors of plugin calls: every way a call, an instantiation or a compile can fail
becomes one PluginError subclass that names the plugin, the hook and what happened. Both
call paths (the extension's and ctypes) build their errors here, so they word them alike."""

from __future__ import annotations

import ctypes
import re
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..errors import (
    InvalidInput,
    PluginError,
    PluginMemoryLimit,
    PluginOutOfFuel,
    PluginOutputError,
    PluginPoolSaturated,
    PluginResourceLimit,
    PluginTimeout,
    PluginTrap,
)
from .ctypes_calls import trap_text
from .pool import pool_limits
from .stack import STACK_HEADROOM
from .wasm_module import HOOK_EXPORTS

if TYPE_CHECKING:
    from .config import HostConfig
    from .engine import Engine

def _instantiate_failure(engine: Engine, exc: BaseException, plugin: str, hook: str) -> PluginError:
    """A typed error for a failed instantiation (start function, limits, host memory)."""
    where = {"plugin": plugin, "hook": hook, "phase": "instantiate"}
    wasmtime = engine.wt.wasmtime
    if isinstance(exc, wasmtime.Trap):
        return _trap_failure(engine, exc, "instantiate", where, grow_refused=False)
    message = trap_text(str(exc))
    lowered = message.lower()
    exhausted = _POOL_EXHAUSTED.search(message)
    if exhausted is not None:
        return _pool_exhausted(engine.config, int(exhausted.group(1)), exhausted.group(2), message, where)
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


#: wasmtime's pool is out of one resource: "maximum concurrent limit of 32 for core
#: instances reached" (pooling.rs); the kinds are "core instances", "memory stripe 0",
#: "tables", "GC heaps" and "component instances".
_POOL_EXHAUSTED = re.compile(r"maximum concurrent limit of (\d+) for (.+?) reached")


def _pool_resource(kind: str) -> str:
    """The resource behind a kind of wasmtime's concurrency error, as pool.pool_limits names
    it without "total_": a memory stripe is every memory (no protection keys, one stripe)."""
    return "memories" if kind.startswith("memory stripe") else kind


def _pool_exhausted(config: HostConfig, limit: int, kind: str, message: str, where: Dict[str, str]) -> PluginError:
    """Saturated only when the pool is full: the resource is one the pool holds, and all of
    it is in use. A resource the pool holds none of is a limit the module never fits."""
    resource = _pool_resource(kind)
    held = pool_limits(config).get("total_" + resource.lower().replace(" ", "_"), 0)
    if held and limit == held:
        return PluginPoolSaturated(
            f"instantiate: every slot of the instance pool is in use: all {held} {resource} "
            f"(HostConfig.pool_size = {config.pool_size})",
            **where,
        )
    if kind == "GC heaps":
        return gc_heap_unavailable(where)
    return PluginResourceLimit(
        f"instantiate: {message}: the instance pool holds {held} {resource}, which this module never fits in "
        f"(HostConfig.pool_size = {config.pool_size}; pool_size=0 for no pool)",
        **where,
    )


def gc_heap_unavailable(where: Dict[str, str]) -> PluginResourceLimit:
    """A module whose instances need a GC heap, on a host whose FRESH pool gives none: both
    pools (wasmtime's has no GC heaps; in the page-resetting one each would take a second
    memory slot per instance, so a pool of one could never hold it)."""
    return PluginResourceLimit(
        "instantiate: the module uses externref (a table or global of it), which needs a GC heap, and the "
        "instance pool has none: each GC heap would take a memory slot of its own, doubling the pool's "
        "address space. Register it on a host with HostConfig.pool_size=0 (no pool) or "
        "instance_strategy=REUSE_PER_THREAD",
        **where,
    )


def pool_limit_failure(engine: Engine, message: str, plugin: str, hook: str) -> Optional[PluginError]:
    """The typed limit behind a module the instance pool cannot hold (wasmtime checks the
    pool's limits when it compiles), or None for any other compile failure."""
    if "does not fit in pooling allocator" not in message:
        return None
    detail = re.sub(r"^\d+: ", "", trap_text(message))  # the last cause, without its chain number
    where = {"plugin": plugin, "hook": hook, "phase": "compile"}
    config = engine.config
    if message.startswith("module memory"):
        return PluginMemoryLimit(f"compile: {detail} (HostConfig.memory_limit_bytes = {config.memory_limit_bytes})", **where)
    if message.startswith("module instance size"):
        # "instance allocation for this module requires N bytes which exceeds the configured
        # maximum of M bytes; breakdown ...", then one line per large part.
        required = re.search(r"instance allocation for this module requires .*? of \d+ bytes", message)
        return PluginResourceLimit(
            f"compile: {required.group(0) if required else message.splitlines()[0]} (most of it: "
            f"{detail.lstrip('* ')}): wasmtime's pool bounds the state of each instance (what it defines "
            "and imports), and no HostConfig field raises that bound; set HostConfig.pool_size=0 for no pool",
            **where,
        )
    if "count of" in detail:
        return PluginResourceLimit(f"compile: {detail} (HostConfig.max_tables = {config.max_tables})", **where)
    return PluginResourceLimit(f"compile: {detail} (HostConfig.table_elements_limit = {config.table_elements_limit})", **where)


def _trap_failure(engine: Engine, trap: Any, phase: str, where: Dict[str, str], *, grow_refused: bool) -> PluginError:
    code = trap.trap_code
    message = trap_text(trap.message)
    name = engine.wt.trap_names.get(getattr(code, "value", code), "unknown") if code is not None else "unknown"
    return _classify(engine, name, message, phase, where, grow_refused=grow_refused)


#: How guests fail after memory.grow answered -1: a panic or abort (Rust's OOM handler,
#: C's assert) is ``unreachable``; using memory that was never granted is an out-of-bounds
#: access. A division by zero or a stack overflow after a refused grow is still a bug.
_OUT_OF_MEMORY_TRAPS = frozenset({"unreachable", "memory_out_of_bounds"})


def _classify(
    engine: Engine, name: str, message: str, phase: str, where: Dict[str, str], *, grow_refused: bool
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


def closed_error(plugin: str, hook: str) -> PluginError:
    return PluginError("the host is closed", plugin=plugin, hook=hook)


class Faults:
    """The typed error of every way a call can fail, for one plugin: both call paths (the
    extension's and the ctypes one) build their errors here, so they word them alike.
    ``trap`` and ``error`` are wasmtime pointers (ctypes pointers or addresses, 0 for none)
    whose ownership passes to the wasmtime-py object made of them."""

    __slots__ = ("engine", "plugin")

    def __init__(self, engine: Engine, plugin: str):
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
        return _classify(self.engine, "error", trap_text(str(failure)), phase, where, grow_refused=refused)

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
        return stack_error(self.engine.config, self.plugin, hook, left, size)

    def closed(self, hook: str) -> PluginError:
        return closed_error(self.plugin, hook)

    def scope(self, hook: str, foreign: bool, closed: bool) -> InvalidInput:
        """An instance scope used where it can't be: another plugin's, closed, or in a call."""
        if foreign:
            why = f"it holds an instance of another plugin than {self.plugin!r}"
        elif closed:
            why = "it is closed"
        else:
            why = "another call is in it (a scope's calls must not overlap)"
        return InvalidInput("scope", f"{hook}: the instance scope can't take this call: {why}")

    def scope_in_call(self) -> InvalidInput:
        """An instance scope closed while a call is in it."""
        return InvalidInput("scope", "the instance scope is in a call: close it once the call returns")


# --- which call path: the extension's, or ctypes ------------------------------------------


def stack_error(config: "HostConfig", plugin: str, hook: str, left: int, size: int) -> PluginResourceLimit:
    """The calling thread has too little native stack left for a guest call."""
    return PluginResourceLimit(
        f"the calling thread has {left // 1024} KiB of stack left (of {size // 1024} KiB), less than "
        f"HostConfig.max_wasm_stack ({config.max_wasm_stack // 1024} KiB) + {STACK_HEADROOM // 1024} KiB: "
        "call plugins from threads with a larger stack (threading.stack_size), not deep in recursion, "
        "or lower max_wasm_stack",
        plugin=plugin, hook=hook, phase="enter",
    )
