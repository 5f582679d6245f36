"""The pool FRESH instances take their memories from, and a check that its address space
can be reserved before it is mapped (wasmtime's C API aborts when it cannot).

Two pools (README "The instance pool"): the extension's page-resetting memory pool
(_mempool.pxi: instances on demand, memories from one slab, reset page by page with
PAGEMAP_SCAN) where it serves (``page_reset_pool``), else wasmtime's pooling allocator.

What the pool maps when the engine is created (wasmtime 50's pooling allocator, in
crates/wasmtime/src/runtime/vm/instance/allocator/pooling/), measured from VmSize:

- memories (memory_pool.rs): one slab of ``total_memories`` slots, each the memory
  reservation (here the memory limit) plus the guard region, rounded up to host pages,
  after a guard region as large at the front of the slab (``guard_before_linear_memory``,
  on by default; the C API cannot turn it off). No protection keys, so no stripes and no
  guard region at the end.
- tables (table_pool.rs): ``total_tables`` slots, each ``table_elements`` x 8 bytes (the
  largest element a pooled table holds, a funcref pointer) rounded up to host pages: a
  table of one element still takes a whole page.
- nothing for instances (their VMContext is allocated when one is made), GC heaps (a slot
  is a lazily made heap whose storage is a memory slot taken from the memory pool,
  gc_heap_pool.rs) or stacks (``total_stacks`` is 0; each would be its size plus a guard
  page, unix_stack_pool.rs).
- wasmtime's heap bookkeeping of every slot (index allocators, image slots): measured
  56 bytes per table slot and 112 to 124 bytes per memory slot; mapped as well, so it
  counts toward ``ulimit -v`` too (14 MiB for 262,144 tables).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

from ..errors import PluginResourceLimit
from .config import HostConfig, InstanceStrategy
from .ctypes_calls import Wasmtime

#: Guard pages after each pooled memory: wasmtime checks bounds explicitly, since a slot
#: reserves only the memory limit, not 4 GiB.
POOL_MEMORY_GUARD = 64 * 1024
#: The first bytes of a pooled memory are reset with memset, the rest with madvise: a page
#: fault on the next call costs more than zeroing the stack and small heap a plugin uses
#: (256 KiB measured best for both bench guests; 64 KiB cost cache_aware_filter 1.5x).
POOL_KEEP_RESIDENT = 256 * 1024
#: Bytes a pooled table slot holds per element: wasmtime sizes every slot for the largest
#: element a pooled table stores (a funcref pointer; an externref takes 4).
POOL_TABLE_ELEMENT_BYTES = 8
#: wasmtime's heap bookkeeping per pool slot, rounded up from what was measured (112 to 124
#: bytes per memory slot, 56 per table slot).
POOL_BOOKKEEPING_PER_MEMORY = 128
POOL_BOOKKEEPING_PER_TABLE = 64
#: The page-resetting pool's bookkeeping per memory slot, rounded up from what was measured
#: (75 bytes a slot for 4,096 slots: its 48-byte slot records and the engine's own heap).
PAGE_RESET_BOOKKEEPING_PER_MEMORY = 128


def pooled(config: HostConfig) -> bool:
    """Whether instances come from the pool: FRESH instances, unless pool_size is 0."""
    return config.instance_strategy is InstanceStrategy.FRESH and config.pool_size > 0


def pool_tables(config: HostConfig) -> int:
    """Tables per pool slot: ``max_tables``, and at least one (wasmtime's pool needs it)."""
    return max(config.max_tables, 1)


def pool_limits(config: HostConfig) -> Dict[str, int]:
    """How many of each resource the pool holds, by the name of wasmtime's setting. No GC
    heaps: each would take a memory slot of its own (see the module's docstring), so
    giving every slot one would double the memories and their address space."""
    size = config.pool_size
    return {
        "total_core_instances": size,
        "total_memories": size,
        "total_tables": size * pool_tables(config),
        "total_gc_heaps": 0,
        "total_stacks": 0,
        "total_component_instances": 0,
    }


@dataclass(frozen=True)
class PoolReservation:
    """Bytes of address space wasmtime maps for an instance pool when the engine is made."""

    #: The memory slab: a slot per memory (limit + guard region) and the front guard region.
    memories: int
    #: A slot per table, each rounded up to whole host pages.
    tables: int
    #: wasmtime's bookkeeping of those slots, on its heap.
    bookkeeping: int

    @property
    def total(self) -> int:
        return self.memories + self.tables + self.bookkeeping

    def regions(self) -> Iterator[int]:
        return (size for size in (self.memories, self.tables, self.bookkeeping) if size)


def _page_up(size: int) -> int:
    return -(-size // mmap.PAGESIZE) * mmap.PAGESIZE


def pool_reservation(config: HostConfig, page_reset: Optional[bool] = None) -> PoolReservation:
    """What this host's pool reserves (see the module's docstring): wasmtime's pooling
    allocator, or with ``page_reset`` (default: where it serves, page_reset_pool()) the
    extension's memory pool, which maps the same slab of memories and no tables (instances
    are allocated on demand, their tables with them)."""
    if page_reset is None:
        page_reset = page_reset_pool() is not None
    limits = pool_limits(config)
    guard = _page_up(POOL_MEMORY_GUARD)
    memory_slot = _page_up(config.memory_limit_bytes) + guard  # the reservation is the limit
    memories = limits["total_memories"]
    slab = guard + memories * memory_slot  # both pools: a guard region, then the slots
    if page_reset:
        return PoolReservation(memories=slab, tables=0, bookkeeping=memories * PAGE_RESET_BOOKKEEPING_PER_MEMORY)
    table_slot = _page_up(config.table_elements_limit * POOL_TABLE_ELEMENT_BYTES)
    tables = limits["total_tables"]
    return PoolReservation(
        memories=slab,
        tables=tables * table_slot,
        bookkeeping=memories * POOL_BOOKKEEPING_PER_MEMORY + tables * POOL_BOOKKEEPING_PER_TABLE,
    )


def check_pool_fits(config: HostConfig) -> None:
    """Reserve (and release) the pool's address space before wasmtime does: wasmtime's C API
    aborts the process when its reservation fails (``ulimit -v``, or a pool larger than the
    address space), where this raises PluginResourceLimit."""
    reservation = pool_reservation(config)
    if os.name == "nt":  # pragma: no cover - Windows reserves lazily; no ulimit -v there
        return
    reserved = []
    try:
        for size in reservation.regions():
            reserved.append(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0))
    except (OSError, OverflowError, ValueError) as exc:
        raise PluginResourceLimit(
            f"cannot reserve address space for the instance pool: {reservation.total} bytes, "
            f"{reservation.memories} for its memories and guard regions, {reservation.tables} for its tables "
            f"(whole pages each) and {reservation.bookkeeping} for wasmtime's bookkeeping ({exc}); lower "
            "HostConfig.pool_size, memory_limit_bytes, max_tables or table_elements_limit, or set pool_size=0 "
            "for no pool"
        ) from None
    finally:
        for region in reserved:
            region.close()


def c_function(dll: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    """A function of libwasmtime wasmtime-py has no binding for, typed for ctypes."""
    function = getattr(dll, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


#: Set to "wasmtime" to take FRESH instances from wasmtime's pooling allocator even where
#: the extension's page-resetting memory pool works.
MEMORY_POOL_ENV = "CCLB_WIRE_MEMORY_POOL"
#: Dirty pages the page-resetting pool zeroes in place per freed memory (they stay
#: resident for the next instance, at most this much RSS per slot); past it, the rest of
#: the memory is given back to the kernel. Measured (perf, the Rust-laid-out guest): a page
#: fault costs about 1.1 us, zeroing a resident 4 KiB page about 0.07 us.
PAGE_RESET_KEEP_RESIDENT = 1024 * 1024


def page_reset_pool() -> Any:
    """The extension, where FRESH memories can come from its page-resetting pool (Linux
    6.7+ with PAGEMAP_SCAN, the Cython backend, a wasmtime whose memory-creator prototype
    the extension knows, not turned off by CCLB_WIRE_MEMORY_POOL); else None: wasmtime's
    pooling allocator serves."""
    from .. import BACKEND

    if BACKEND != "cython" or os.environ.get(MEMORY_POOL_ENV, "") == "wasmtime":
        return None
    from .. import _codec
    from .binding import load_wasmtime

    if not _codec.memory_pool_supported() or memory_request_struct(load_wasmtime(), _codec) is None:
        return None
    return _codec


def memory_request_struct(wt: Wasmtime, native: Any) -> Optional[bool]:
    """How libwasmtime calls a memory creator, from wasmtime-py's declarations: True, with
    a wasmtime_memory_request_t laid out as the extension's (wasmtime 51); False, with the
    request as six arguments (wasmtime 50); None: neither, so the pool is not used."""
    callback = getattr(wt.ffi, "wasmtime_new_memory_callback_t", None)
    arguments = len(getattr(callback, "_argtypes_", ()))
    request = getattr(wt.ffi, "wasmtime_memory_request", None)
    if request is not None and arguments == 3:
        theirs = (ctypes.sizeof(request), {name: getattr(request, name).offset for name, *_ in request._fields_})
        return True if theirs == native.MEMORY_REQUEST_LAYOUT else None
    return False if request is None and arguments == 7 else None


def use_instance_pool(wt: Wasmtime, engine_config: Any, config: HostConfig) -> Optional[int]:
    """Reserve memories for ``pool_size`` FRESH instances once, reset when a store drops them.
    With the extension's page-resetting pool (see _mempool.pxi) instances are allocated on
    demand and their memories come from that pool: returns its address, for its counters.
    Else wasmtime's pooling allocator holds memories and tables: returns None."""
    native = page_reset_pool()
    if native is not None:
        return _use_page_reset_pool(wt, native, engine_config, config)
    _use_wasmtime_pool(wt, engine_config, config)
    return None


def _use_page_reset_pool(wt: Wasmtime, native: Any, engine_config: Any, config: HostConfig) -> int:
    dll = wt.dll
    c_void_p = ctypes.c_void_p
    config_ptr = ctypes.cast(engine_config.ptr(), c_void_p)
    error_new = ctypes.cast(dll.wasmtime_error_new, c_void_p).value
    try:
        creator, memory_pool = native.memory_pool_creator(
            config.pool_size, config.memory_limit_bytes, POOL_MEMORY_GUARD, PAGE_RESET_KEEP_RESIDENT, error_new,
            bool(memory_request_struct(wt, native)),
        )
    except MemoryError:
        raise PluginResourceLimit(
            f"cannot reserve address space for the memory pool: {pool_reservation(config).memories} bytes; lower "
            "HostConfig.pool_size or memory_limit_bytes, or set pool_size=0 for no pool"
        ) from None
    try:  # the config copies the struct and owns the pool from here on
        c_function(dll, "wasmtime_config_host_memory_creator_set", None, c_void_p, c_void_p)(config_ptr, creator)
    finally:
        native.memory_pool_release_struct(creator)
    # A memory of our own has no copy-on-write image: data segments are copied in.
    c_function(dll, "wasmtime_config_memory_init_cow_set", None, c_void_p, ctypes.c_bool)(config_ptr, False)
    for name, value in (("memory_reservation", config.memory_limit_bytes), ("memory_guard_size", POOL_MEMORY_GUARD)):
        c_function(dll, f"wasmtime_config_{name}_set", None, c_void_p, ctypes.c_uint64)(config_ptr, value)
    return int(memory_pool)


def _use_wasmtime_pool(wt: Wasmtime, engine_config: Any, config: HostConfig) -> None:
    """wasmtime's pooling allocator: memories and tables reserved once, memories reset by
    zeroing their first POOL_KEEP_RESIDENT bytes and giving the rest back (copy-on-write)."""
    dll = wt.dll
    c_u32, c_u64, c_size, c_void_p = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p
    pool = c_function(dll, "wasmtime_pooling_allocation_config_new", c_void_p)()
    settings: Tuple[Tuple[str, Any, int], ...] = (
        *((name, c_u32, count) for name, count in pool_limits(config).items()),
        ("max_memories_per_module", c_u32, 1),
        ("max_tables_per_module", c_u32, pool_tables(config)),
        ("table_elements", c_size, config.table_elements_limit),
        ("max_memory_size", c_size, config.memory_limit_bytes),
        ("linear_memory_keep_resident", c_size, POOL_KEEP_RESIDENT),
    )
    try:
        for name, kind, value in settings:
            c_function(dll, f"wasmtime_pooling_allocation_config_{name}_set", None, c_void_p, kind)(pool, value)
        config_ptr = ctypes.cast(engine_config.ptr(), c_void_p)
        for name, value in (("memory_reservation", config.memory_limit_bytes), ("memory_guard_size", POOL_MEMORY_GUARD)):
            c_function(dll, f"wasmtime_config_{name}_set", None, c_void_p, c_u64)(config_ptr, value)
        # The strategy copies the settings.
        c_function(dll, "wasmtime_pooling_allocation_strategy_set", None, c_void_p, c_void_p)(config_ptr, pool)
    finally:
        c_function(dll, "wasmtime_pooling_allocation_config_delete", None, c_void_p)(pool)
