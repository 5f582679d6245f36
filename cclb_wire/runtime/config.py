"""A plugin host's settings: HostConfig, its enums and limits, checked at construction."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .._validate import check_bool, check_int, check_number, coerce_enum, type_name
from ..errors import InvalidInput, InvalidInputType
from ..host_types import ShapeOriginPolicy, WireBounds

__all__ = ["FailurePolicy", "InstanceStrategy", "HostConfig"]

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
#: Largest module a host admits at all (a compile costs time and memory in its size).
MAX_MODULE_BYTES = 1 << 30
#: Longest compile deadline we accept (an hour).
MAX_COMPILE_TIMEOUT_S = 3600.0
#: Largest instance pool: its address space is reserved up front.
MAX_POOL_SIZE = 4096


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
    #: Largest module admitted, in bytes (cc-lb's plugins are well under 1 MiB); a larger
    #: one is PluginRejected before it is read or hashed.
    max_module_bytes: int = 32 * 1024 * 1024
    #: Longest a module may take to validate, rewrite and compile, in seconds (None: no
    #: bound). Past it the registration is PluginRejected (its cause a PluginTimeout); the
    #: compile itself cannot be stopped and finishes on its own thread, its result dropped.
    compile_timeout_s: Optional[float] = 30.0
    #: A slot's circuit breaker: after this many consecutive plugin failures its calls fail
    #: at once (PluginCircuitOpen, under the slot's failure policy) for
    #: ``breaker_cooldown_s``, then one call probes the plugin. 0: no breaker.
    breaker_failures: int = 5
    #: How long an open circuit fails calls before letting one through, in seconds.
    breaker_cooldown_s: float = 5.0
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
            put("module_cache_dir", Path(path_text(self.module_cache_dir, "HostConfig.module_cache_dir")))
        check_int(self.module_cache_size, "HostConfig.module_cache_size", 0, 1024)
        check_int(self.max_module_bytes, "HostConfig.max_module_bytes", 8, MAX_MODULE_BYTES)
        if self.compile_timeout_s is not None:
            put("compile_timeout_s", check_number(
                self.compile_timeout_s, "HostConfig.compile_timeout_s", 0.0, MAX_COMPILE_TIMEOUT_S, open_minimum=True
            ))
        check_int(self.pool_size, "HostConfig.pool_size", 0, MAX_POOL_SIZE)
        check_int(self.breaker_failures, "HostConfig.breaker_failures", 0, 1_000_000)
        put("breaker_cooldown_s", check_number(
            self.breaker_cooldown_s, "HostConfig.breaker_cooldown_s", 0.0, MAX_DEADLINE_S, open_minimum=True
        ))


def path_text(path: Any, field: str) -> str:
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
