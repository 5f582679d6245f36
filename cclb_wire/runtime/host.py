"""PluginHost: slots of admitted plugins, their swaps and statistics, and the host's
lifecycle (close, fork)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, TypeVar, Union

import blake3

from .._validate import check_number, coerce_enum, type_name
from ..errors import InvalidInput, InvalidInputType, PluginError
from ..host_stats import MemoryPoolStats, SlotStats
from . import binding
from .admission import Admission, Loaded, read_module
from .config import MAX_DEADLINE_S, WASM_PAGE, FailurePolicy, HostConfig
from .engine import admission_stack_size, start_engine
from .faults import closed_error
from .modules import ModuleCache
from .pool import PAGE_RESET_KEEP_RESIDENT
from .threads import run_on_own_thread
from .breaker import Breaker
from .counters import new_slot_counters
from .wasm_module import HOOK_EXPORTS

if TYPE_CHECKING:
    from .adapters import FilterPlugin, ObservabilityHook, UpstreamDialect, _Adapter

_log = logging.getLogger("cclb_wire.runtime")

HOOK_KINDS = tuple(HOOK_EXPORTS)

_AdapterT = TypeVar("_AdapterT", bound="_Adapter")

#: How often close() pushes the epoch past every deadline again while calls are in flight.
CLOSE_INTERRUPT_INTERVAL_S = 0.01

#: Hosts alive in this process, for the fork handler.
_HOSTS: "weakref.WeakSet[PluginHost]" = weakref.WeakSet()


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
        binding.load_wasmtime()  # first: it picks the call path, whose gate is made below
        self._slots: Dict[Tuple[str, str], Loaded] = {}
        #: The ticket of the last registration or unregistration applied to each slot.
        self._slot_tickets: Dict[Tuple[str, str], int] = {}
        #: Each slot's failure policy, as its last applied registration gave it (None: the config's).
        self._slot_policies: Dict[Tuple[str, str], Optional[FailurePolicy]] = {}
        #: Each slot's call counters, from its first registration on (they outlive swaps).
        self._counters: Dict[Tuple[str, str], Any] = {}
        self._breakers: Dict[Tuple[str, str], Breaker] = {}
        #: slot -> [when its last pass-through warning was logged, how many were held back since]
        self._slot_warnings: Dict[Tuple[str, str], List[Any]] = {}
        self._tickets = itertools.count(1)
        self._lock = threading.Lock()  # the slots and their tickets
        #: Calls and registrations in flight; close() shuts it and waits for them.
        self._gate: Any = binding.new_gate()
        self._cache_dir = Path(config.module_cache_dir) if config.module_cache_dir is not None else None
        self._start_engine()
        _HOSTS.add(self)

    def _start_engine(self) -> None:
        """The engine (with its instance pool), its linker, its deadline ticker, and the
        admission and module cache that work on it."""
        self._engine, self._linker, self._release = start_engine(binding.load_wasmtime(), self.config, self)
        self._modules = ModuleCache(self._engine, self.config.module_cache_size, self._cache_dir)
        # A function of the slots, not a method: the admission holds no reference to the host.
        self._admission = Admission(
            self._engine, self._linker, self._gate, self._modules, functools.partial(_module_in_slots, self._slots)
        )

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
        self._gate.close()
        if not self._wait_for_calls(timeout):
            raise PluginError(f"close(): {self._gate.active} call(s) or registration(s) still running after {timeout} s")
        with self._lock:
            for loaded in self._slots.values():
                _discard_prepared(loaded)
            self._slots.clear()
            self._modules.clear()
        self._release()

    def _wait_for_calls(self, timeout: Optional[float]) -> bool:
        """Wait for the calls in flight, interrupting them: the epoch is moved past every
        armed deadline, and again every CLOSE_INTERRUPT_INTERVAL_S, since a call that was
        instantiating at the first push arms its deadline only afterwards."""
        if not self._engine.deadline_ticks:
            return bool(self._gate.wait_idle(timeout))  # nothing can interrupt a guest
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            for _ in range(self._engine.deadline_ticks + 1):
                self._engine.engine.increment_epoch()
            step = CLOSE_INTERRUPT_INTERVAL_S if end is None else min(CLOSE_INTERRUPT_INTERVAL_S, max(0.0, end - time.monotonic()))
            if self._gate.wait_idle(step):
                return True
            if end is not None and time.monotonic() >= end:
                return False

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
        is carried over, not recompiled); the old engine's spare modules are dropped. All or
        nothing: if any step fails, the old engine stays, with its deadline ticker."""
        old = (self._engine, self._linker, self._release, self._modules, self._admission)
        try:
            self._start_engine()
            moved = {key: self._admission.move(loaded) for key, loaded in self._slots.items()}
        except BaseException:
            if self._engine is not old[0]:
                self._release()
            self._engine, self._linker, self._release, self._modules, self._admission = old
            raise
        old[2]()  # the old engine leaves its ticker only now
        self._slots.update(moved)

    def _enter(self, plugin: str, hook: str) -> None:
        if not self._gate.enter():
            raise closed_error(plugin, hook)

    def _leave(self) -> None:
        self._gate.leave()

    # -- admission ----------------------------------------------------------------

    def _content_hash(self, wasm: bytes) -> bytes:
        pages = self.config.memory_limit_bytes // WASM_PAGE
        return blake3.blake3(b"\x01\x00\x00\x00" + pages.to_bytes(4, "little") + wasm).digest()

    def _admit(self, kind: str, name: str, data: bytes, content_hash: bytes) -> Loaded:
        """Admission runs on a thread of its own with a stack of known size: it compiles and
        calls guest code, which the registering thread's stack may be too small for."""
        admission = self._admission
        return run_on_own_thread(
            lambda: admission.admit(kind, name, data, content_hash, self._lock),
            stack_size=admission_stack_size(self.config), name=f"cclb-wire-admit-{name}"[:60],
        )

    def _retire(self, loaded: Optional[Loaded]) -> None:
        """A plugin left its slot: its module may become a spare (called with the lock held)."""
        if loaded is not None:
            _discard_prepared(loaded)  # its pool slot is free at once, not when the plugin is collected
            self._modules.retire(loaded.module_key, loaded.module, lambda key: _module_in_slots(self._slots, key) is not None)

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
        data = read_module(method, wasm, self.config.max_module_bytes, name, kind)
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
            if current is not None:  # admission may need the pool slot it holds: none is opened meanwhile
                _discard_prepared(current)
            try:
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
                if current is not None and current.native is not None and self._slots.get(key) is current:
                    current.native.allow_prepare()  # still the slot's plugin: admission failed or was overtaken
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
        from .adapters import FilterPlugin

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
        from .adapters import UpstreamDialect

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
        from .adapters import ObservabilityHook

        return self._register("observe", slot_key, name, wasm, ObservabilityHook, failure_policy)

    # -- slots --------------------------------------------------------------------

    def _check_slot(self, method: str, kind: Any, slot_key: Any) -> Tuple[str, str]:
        if not isinstance(kind, str):
            raise InvalidInputType(f"{method}.kind", f"expected one of {', '.join(map(repr, HOOK_KINDS))}, got {type_name(kind)}")
        if kind not in HOOK_KINDS:
            raise InvalidInput(f"{method}.kind", f"{kind!r} is not one of {', '.join(map(repr, HOOK_KINDS))}")
        if not isinstance(slot_key, str):
            raise InvalidInputType(f"{method}.slot_key", f"expected a str, got {type_name(slot_key)}")
        return kind, slot_key

    def slot(self, kind: str, slot_key: str) -> Optional[Loaded]:
        """The plugin a slot holds now, or None."""
        return self._slots.get(self._check_slot("slot", kind, slot_key))

    def unregister(self, kind: str, slot_key: str) -> None:
        """Empty a slot. Calls in flight finish with the plugin they started with; the
        plugin's reused instances and compiled module go with the last of them (the
        module stays among the ``module_cache_size`` spares for a quick swap back)."""
        key = self._check_slot("unregister", kind, slot_key)
        with self._lock:
            self._slot_tickets[key] = next(self._tickets)  # registrations already running are now stale
            self._retire(self._slots.pop(key, None))

    def _slot_counters(self, key: Tuple[str, str]) -> Any:
        counters = self._counters.get(key)
        if counters is None:
            with self._lock:
                counters = self._counters.setdefault(key, new_slot_counters(*key))
        return counters

    def _slot_breaker(self, key: Tuple[str, str]) -> Breaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.setdefault(
                    key, Breaker(key[1], self.config.breaker_failures, self.config.breaker_cooldown_s)
                )
        return breaker

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
            breakers = dict(self._breakers)
        stats = {}
        for key, slot in counters:
            snapshot = slot.snapshot()
            trips = breakers[key].trips if key in breakers else 0
            stats[key] = dataclasses.replace(snapshot, breaker_trips=trips) if trips else snapshot
        return stats

    def memory_pool_stats(self) -> Optional[MemoryPoolStats]:
        """Counters of the page-resetting memory pool FRESH instances take their memories
        from, or None where it does not serve (wasmtime's pooling allocator or no pool:
        REUSE_PER_THREAD, pool_size=0, the pure-Python backend, a kernel without
        PAGEMAP_SCAN, CCLB_WIRE_MEMORY_POOL=wasmtime)."""
        with self._lock:
            engine = self._engine
        if engine.memory_pool is None:
            return None
        from .. import _codec

        counters = _codec.memory_pool_stats(engine.memory_pool)
        return MemoryPoolStats(slots=self.config.pool_size, keep_resident_bytes=PAGE_RESET_KEEP_RESIDENT, **counters)


def _discard_prepared(loaded: Loaded) -> None:
    """Close the instance a plugin has opened ahead (``prepare_instance``), if any, and open
    none until ``allow_prepare()`` (never, for a plugin that left its slot)."""
    if loaded.native is not None:
        loaded.native.discard_prepared(hold=True)


def _module_in_slots(slots: Dict[Tuple[str, str], Loaded], key: bytes) -> Any:
    """The compiled module some slot holds under this module key, or None."""
    for loaded in slots.values():
        if loaded.module_key == key:
            return loaded.module
    return None


def _after_fork_in_child() -> None:
    for host in list(_HOSTS):
        host._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
