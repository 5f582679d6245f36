"""Admission: a module is read, inspected (metadata, fingerprints, exports), rewritten,
compiled, instantiated under the limits, and each active hook probed with its contract's
sample (HOST.md, CONTRACT-1.0.md), before it may take a slot."""

from __future__ import annotations

import ctypes
import dataclasses
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

from .. import decode, encode, host_1_0, wire
from .._validate import type_name
from ..errors import DecodeError, InvalidInput, InvalidInputType, PluginError, PluginPoolSaturated, PluginRejected
from ..schema import CONTRACT_0_2, Contract
from . import binding
from .config import path_text
from .ctypes_calls import Instance
from .engine import Engine
from .faults import Faults, gc_heap_unavailable
from .modules import ModuleCache
from .wasm_module import HOOK_EXPORTS, PluginInspection, inspect_plugin
from .wasm_rewrite import GROW_REFUSED_EXPORT, START_EXPORT


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


#: The canonical probe samples, as archives: HOST.md's for 0.2, CONTRACT-1.0.md's for 1.0
#: (whose shape sample is 0.2's: the layout did not change).
PROBE_SAMPLES: Dict[str, Dict[str, bytes]] = {
    "0.2": {
        "filter": encode(_probe_request(False)),
        "shape": encode(_probe_request(True)),
        "observe": encode(wire.RequestStarted("probe-req-1", "cc-lb-probe/1.0")),
    },
    "1.0": {
        "shape": encode(_probe_request(True)),
        **{hook: encode(value) for hook, value in host_1_0.PROBE_SAMPLES.items()},
    },
}


@dataclass
class Loaded:
    """One admitted plugin: its compiled module, ready to instantiate."""

    name: str
    kind: str
    content_hash: bytes
    plugin_id: uuid.UUID
    instance_pre: Any
    inspection: PluginInspection
    #: The hooks that are called (declared, not noop).
    hooks: Tuple[str, ...]
    #: The contract the plugin speaks, read from its fingerprints.
    contract: Contract = CONTRACT_0_2
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


def read_module(method: str, wasm: Any, limit: int, name: str, kind: str) -> bytes:
    """A module given as bytes or as a path (``cclb_wire:NAME.wasm``: a shipped plugin), read; InvalidInput(Type) naming the argument,
    PluginRejected when it is larger than ``limit`` bytes (a file: before it is read)."""
    if isinstance(wasm, (str, os.PathLike)):
        from ..plugin_paths import resolve_plugin_path

        path = str(resolve_plugin_path(path_text(wasm, f"{method}.wasm"), f"{method}.wasm"))
        try:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size <= limit:
                    return _within(file.read(limit + 1), limit, name, kind)
        except OSError as exc:
            raise InvalidInput(f"{method}.wasm", f"cannot read {path!r}: {exc.strerror or exc}") from exc
        raise _too_large(size, limit, name, kind)
    if isinstance(wasm, (bytes, bytearray, memoryview)):
        return _within(bytes(wasm), limit, name, kind)
    raise InvalidInputType(f"{method}.wasm", f"expected the module's bytes or a path, got {type_name(wasm)}")


def _within(data: bytes, limit: int, name: str, kind: str) -> bytes:
    if len(data) > limit:
        raise _too_large(len(data), limit, name, kind)
    return data


def _too_large(size: int, limit: int, name: str, kind: str) -> PluginRejected:
    return PluginRejected(
        f"module of {size} bytes is larger than HostConfig.max_module_bytes ({limit})", plugin=name, hook=kind
    )


class Admission:
    """Admits modules onto one engine: ``admit`` turns bytes into a ``Loaded`` plugin."""

    def __init__(self, engine: Engine, linker: Any, gate: Any, modules: ModuleCache,
                 module_in_slot: Callable[[bytes], Any]):
        self.engine = engine
        self.linker = linker
        self.gate = gate
        self.modules = modules
        #: The compiled module a slot holds under this key, or None (read under the host's lock).
        self.module_in_slot = module_in_slot

    def admit(self, kind: str, name: str, data: bytes, content_hash: bytes, lock: Any) -> Loaded:
        inspection = inspect_plugin(data)
        inspection.check(kind, plugin=name)
        if self.engine.memory_pool is not None and inspection.module is not None and inspection.module.externref_storage:
            # wasmtime's pool refuses these when it instantiates; the page-resetting pool
            # would hand each instance's GC heap a slot of its own (twice the slots).
            limit = gc_heap_unavailable({"plugin": name, "hook": kind, "phase": "instantiate"})
            raise PluginRejected(f"cannot instantiate: {limit.detail}", plugin=name, hook=kind) from limit
        module_key = self.modules.key(data)
        with lock:
            module = self.module_in_slot(module_key)
            if module is None:
                module = self.modules.take_spare(module_key)
        if module is None:
            module = self.modules.compile(data, module_key, name, kind)
        try:
            instance_pre = self.linker.instantiate_pre(module)
        except self.engine.wt.errors as exc:
            raise PluginRejected(f"failed to instantiate module: {exc}".splitlines()[0], plugin=name, hook=kind) from exc
        hooks = inspection.active_hooks
        assert inspection.contract is not None  # check() refused every plugin without one
        loaded = Loaded(
            name, kind, content_hash, uuid.UUID(bytes=content_hash[:16], version=4), instance_pre, inspection, hooks,
            inspection.contract, module, module_key, any(export.name == START_EXPORT for export in module.exports),
        )
        loaded.faults = Faults(self.engine, name)
        if self.engine.config.probe:
            for hook in hooks:
                self._probe(loaded, hook)
        else:
            self._trial_instance(loaded, kind)
        if binding.NATIVE is not None:
            loaded.native = self.native_plugin(binding.NATIVE, loaded, instance_pre)
        return loaded

    def move(self, loaded: Loaded) -> Loaded:
        """The same plugin on this admission's engine (a new one after fork): its compiled
        code is carried over, not recompiled."""
        module = self.engine.wt.wasmtime.Module.deserialize(self.engine.engine, loaded.module.serialize())
        instance_pre = self.linker.instantiate_pre(module)
        moved = dataclasses.replace(
            loaded, instance_pre=instance_pre, module=module, local=threading.local(), native=None,
            faults=Faults(self.engine, loaded.name),
        )
        if binding.NATIVE is not None:
            moved.native = self.native_plugin(binding.NATIVE, moved, instance_pre)
        return moved

    def native_plugin(self, native: Any, loaded: Loaded, instance_pre: Any) -> Any:
        """The extension's call path for an admitted plugin, with this host's limits."""
        engine = self.engine
        config = engine.config
        return native.NativePlugin(
            ctypes.cast(engine.engine.ptr(), ctypes.c_void_p).value,
            ctypes.cast(instance_pre.ptr(), ctypes.c_void_p).value,
            (engine.engine, instance_pre),
            Faults(engine, loaded.name),
            loaded.local,
            self.gate,
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

    def _trial_instance(self, loaded: Loaded, hook: str) -> Instance:
        """Instantiate under the limits (start function included); failures reject the module."""
        if self.gate.closed:
            raise PluginError("the host closed during admission", plugin=loaded.name, hook=hook)
        try:
            self.engine.check_thread_stack(loaded.name, hook)
            return Instance(self.engine, loaded, hook)
        except PluginPoolSaturated:
            raise  # the module is fine; the host is busy
        except PluginError as exc:
            raise PluginRejected(f"cannot instantiate: {exc.detail}", plugin=loaded.name, hook=hook) from exc

    def _probe(self, loaded: Loaded, hook: str) -> None:
        sample = PROBE_SAMPLES[loaded.contract.name][hook]
        instance = self._trial_instance(loaded, hook)
        try:
            view = instance.call_with(hook, sample)
            output = None if view is None else bytes(view)  # a copy: the store is closed below
            answer = loaded.contract.hook_responses.get(hook)
            if answer is not None:
                decode(answer, output)  # the archive only: its values are judged per call
        except (PluginError, DecodeError) as exc:
            reason = exc.detail if isinstance(exc, PluginError) else str(exc)
            raise PluginRejected(
                f"runtime probe failed for hook {hook}: {reason}", plugin=loaded.name, hook=hook
            ) from exc
        finally:
            instance.close()  # its pool slot now, not when a traceback holding it dies
