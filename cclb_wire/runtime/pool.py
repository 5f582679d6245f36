"""wasmtime's pooling allocator for FRESH instances: its settings, and a check that its
address space can be reserved before wasmtime tries (its C API aborts when it cannot)."""

from __future__ import annotations

import ctypes
import os
from typing import Any, Tuple

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
#: Address space wasmtime maps for a pool beyond its memories and tables (instances,
#: guard regions), allowed for when checking that the pool fits.
POOL_OVERHEAD_BYTES = 64 * 1024 * 1024


def pooled(config: HostConfig) -> bool:
    """Whether instances come from the pool: FRESH instances, unless pool_size is 0."""
    return config.instance_strategy is InstanceStrategy.FRESH and config.pool_size > 0


def pool_tables(config: HostConfig) -> int:
    """Tables per pool slot: ``max_tables``, and at least one (wasmtime's pool needs it)."""
    return max(config.max_tables, 1)


def pool_reservation(config: HostConfig) -> Tuple[int, int]:
    """Bytes of address space the instance pool reserves: (memories, tables)."""
    memories = config.pool_size * (config.memory_limit_bytes + POOL_MEMORY_GUARD)
    tables = config.pool_size * pool_tables(config) * config.table_elements_limit * 8
    return memories, tables


def check_pool_fits(config: HostConfig) -> None:
    """Reserve (and release) the pool's address space before wasmtime does: wasmtime's C API
    aborts the process when its reservation fails (``ulimit -v``, or a pool larger than the
    address space), where this raises PluginResourceLimit."""
    import mmap

    memories, tables = pool_reservation(config)
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


def c_function(dll: Any, name: str, restype: Any, *argtypes: Any) -> Any:
    """A function of libwasmtime wasmtime-py has no binding for, typed for ctypes."""
    function = getattr(dll, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


def use_instance_pool(wt: Wasmtime, engine_config: Any, config: HostConfig) -> None:
    """Instantiate from wasmtime's pooling allocator: memories and tables are reserved once
    for ``pool_size`` instances and reset (copy-on-write) when a store is dropped."""
    dll = wt.dll
    c_u32, c_u64, c_size, c_void_p = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p
    pool = c_function(dll, "wasmtime_pooling_allocation_config_new", c_void_p)()
    settings = (
        ("total_core_instances", c_u32, config.pool_size),
        ("total_memories", c_u32, config.pool_size),
        ("total_tables", c_u32, config.pool_size * pool_tables(config)),
        ("max_memories_per_module", c_u32, 1),
        ("max_tables_per_module", c_u32, pool_tables(config)),
        ("table_elements", c_size, config.table_elements_limit),
        ("max_memory_size", c_size, config.memory_limit_bytes),
        ("linear_memory_keep_resident", c_size, POOL_KEEP_RESIDENT),
        ("total_stacks", c_u32, 0),
        ("total_gc_heaps", c_u32, 0),
        ("total_component_instances", c_u32, 0),
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
