"""The ctypes call path: the pure-Python twin of the extension's native one (_hostcall.pxi).

Calls take this path under the pure-Python backend, or when the extension cannot bind
to the libwasmtime wasmtime-py loaded. It does the same steps in the same order through
wasmtime's raw C entry points (ctypes functions of wasmtime-py's bindings, without its
Python wrappers), and builds every error through the plugin's ``faults`` object, the
one the native path uses, so both word their errors alike. ``cclb_wire.runtime`` holds
the policy and picks the path; this module is imported only with it.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable, List, Optional, Protocol, Tuple

from .. import (
    decode,
    decode_filter_output,
    decode_shaped_request,
    encode_filter_request,
    encode_into,
    encode_observe_event,
    encode_shape_request,
    encoded_size,
)
from ..errors import PluginError
from .wasm_module import HOOK_EXPORTS
from .wasm_rewrite import GROW_REFUSED_EXPORT, START_EXPORT

#: ``into(size)``: allocate ``size`` bytes in the guest, returning (guest memory view, pointer).
Into = Callable[[int], Tuple[memoryview, int]]


class Faults(Protocol):
    """What this call path asks of a plugin's error builder (``runtime._Faults``)."""

    def call(self, phase: str, hook: str, trap: Any, error: Any, refused: bool) -> PluginError: ...
    def instantiation(self, hook: str, exc: BaseException) -> PluginError: ...
    def missing_export(self, hook: str, name: str) -> PluginError: ...
    def alloc(self, hook: str, size: int, pointer: int, memory_size: int, refused: bool) -> PluginError: ...
    def output(self, hook: str, pointer: int, length: int, memory_size: int) -> Optional[PluginError]: ...


class Wasmtime:
    """The wasmtime module and the raw C entry points the call path uses."""

    def __init__(self) -> None:
        import wasmtime
        from wasmtime import _bindings, _ffi

        self.wasmtime = wasmtime
        self.ffi = _ffi
        # The raw C entry points (ctypes functions), without wasmtime-py's Python wrappers:
        # the hot path calls them directly. Their prototypes are the same in every wasmtime
        # major pyproject.toml allows (50 and 51).
        self.call_unchecked = _bindings._wasmtime_func_call_unchecked
        self.memory_data = _bindings._wasmtime_memory_data
        self.memory_data_size = _bindings._wasmtime_memory_data_size
        self.set_epoch_deadline = _bindings._wasmtime_context_set_epoch_deadline
        self.export_get = _bindings._wasmtime_instance_export_get
        self.global_get = _bindings._wasmtime_global_get
        self.global_set = _bindings._wasmtime_global_set
        self.async_stack_size_set = _bindings._wasmtime_config_async_stack_size_set
        self.dll = _ffi.dll
        self.version = getattr(wasmtime, "__version__", "") or package_version("wasmtime")
        self.trap_names = {code.value: code.name.lower() for code in wasmtime.TrapCode}
        self.errors = (wasmtime.WasmtimeError, wasmtime.Trap)


def trap_text(message: str) -> str:
    """The line of a wasmtime error that says what happened (after "Caused by:"), not the backtrace."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1 :]
        if after:
            return after[-1]
    return lines[0] if lines else "trap"


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


class CallGate:
    """Counts a host's calls and registrations in flight, for close() (the ctypes path's
    twin of the extension's CallGate: same methods, with a lock instead of the GIL)."""

    def __init__(self, idle: threading.Condition):
        self.idle = idle
        self.active = 0
        self.closed = False

    def enter(self) -> bool:
        """Count one more in flight; False (nothing counted) once the host is closed."""
        with self.idle:
            if self.closed:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self.idle:
            self.active -= 1
            if self.closed and not self.active:
                self.idle.notify_all()

    def close(self) -> bool:
        """Close the gate; returns whether it was closed already."""
        with self.idle:
            already, self.closed = self.closed, True
            return already

    def wait_idle(self, timeout: Optional[float]) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.active == 0, timeout)

    def after_fork(self, idle: threading.Condition) -> None:
        """In a forked child: no call of the parent's threads is in flight here."""
        self.idle = idle
        self.active = 0


class Instance:
    """One store and instance of a plugin, with the raw call machinery around it."""

    __slots__ = (
        "engine", "plugin", "store", "externs", "memory_ref", "context", "alloc", "free", "hooks",
        "args", "trap", "trap_ref", "out_pointer", "view", "view_key", "grow_refused_ref",
        "flag_value", "faults", "__weakref__",
    )

    def __init__(self, engine: Any, loaded: Any, hook: str):
        wt = engine.wt
        config = engine.config
        self.engine = engine
        self.plugin = loaded.name
        self.faults: Faults = loaded.faults
        store = wt.wasmtime.Store(engine.engine)
        store.set_limits(
            memory_size=config.memory_limit_bytes,
            table_elements=config.table_elements_limit,
            instances=1,
            tables=config.max_tables,
            memories=1,
        )
        self.store = store
        try:
            self._instantiate(engine, loaded, hook)
        except BaseException:
            store.close()  # now: it holds a pool slot, and the traceback would keep it
            raise

    def _instantiate(self, engine: Any, loaded: Any, hook: str) -> None:
        wt = engine.wt
        store = self.store
        self.context = store._context()
        # Armed before instantiation: a start function runs under the deadline and the fuel.
        self.arm()
        try:
            instance = loaded.instance_pre.instantiate(store)
        except wt.errors as exc:
            raise self.faults.instantiation(hook, exc) from exc
        # One C lookup per export we use: wasmtime-py's exports() wraps every export (~60 us).
        instance_ref = ctypes.byref(instance._instance)
        self.externs: List[Any] = []

        def export(name: str) -> Any:
            item = wt.ffi.wasmtime_extern_t()
            encoded = name.encode()
            if not wt.export_get(self.context, instance_ref, encoded, len(encoded), ctypes.byref(item)):
                raise self.faults.missing_export(hook, name)
            self.externs.append(item)  # the byref() pointers below point into it
            return item.of

        self.memory_ref = ctypes.byref(export("memory").memory)
        self.view: Optional[memoryview] = None
        self.view_key = (0, 0)
        self.alloc = ctypes.byref(export("cc_lb_alloc").func)
        self.free = ctypes.byref(export("cc_lb_free").func)
        self.grow_refused_ref = ctypes.byref(export(GROW_REFUSED_EXPORT).global_)
        self.flag_value = wt.ffi.wasmtime_val_t()
        self.hooks = {name: ctypes.byref(export(HOOK_EXPORTS[name]).func) for name in loaded.hooks}
        self.args = (wt.ffi.wasmtime_val_raw_t * 3)()
        self.trap = ctypes.POINTER(wt.ffi.wasm_trap_t)()
        self.trap_ref = ctypes.byref(self.trap)
        self.out_pointer = 0
        if loaded.has_start:
            # The rewrite turned the start section into an export: run it now, under the
            # limits armed above, so a trap in it is typed like any other.
            self._call(ctypes.byref(export(START_EXPORT).func), 0, "start function", hook)
            self.clear_refused_grow()  # a refusal the start function survived is not the hook's

    def close(self) -> None:
        """Delete the store now; the instance is unusable after this."""
        self.view = None
        self.store.close()

    def arm(self) -> None:
        """Reset the per-call limits: the epoch deadline and the fuel."""
        engine = self.engine
        if engine.deadline_ticks:
            engine.wt.set_epoch_deadline(self.context, engine.deadline_ticks)
        if engine.config.fuel is not None:
            self.store.set_fuel(engine.config.fuel)

    def _refused_a_grow(self) -> bool:
        """Whether the guest saw memory.grow fail (the rewrite records it in a global)."""
        value = self.flag_value
        self.engine.wt.global_get(self.context, self.grow_refused_ref, ctypes.byref(value))
        return bool(value.of.i32)

    def clear_refused_grow(self) -> None:
        """A reused instance starts each call with the flag down."""
        value = self.flag_value
        value.kind = 0  # WASMTIME_I32
        value.of.i32 = 0
        error = self.engine.wt.global_set(self.context, self.grow_refused_ref, ctypes.byref(value))
        if error:  # pragma: no cover - the global is ours, mutable and i32
            raise PluginError("cannot reset the memory.grow flag", plugin=self.plugin, phase="arm")

    def _call(self, func: Any, nargs: int, phase: str, hook: str) -> None:
        error = self.engine.wt.call_unchecked(self.context, func, self.args, nargs, self.trap_ref)
        if error or self.trap:
            raise self._failure(error, phase, hook)

    def _failure(self, error: Any, phase: str, hook: str) -> PluginError:
        trap = self.trap
        if trap:  # the error object takes the trap: the next call gets a fresh out-pointer
            self.trap = ctypes.POINTER(self.engine.wt.ffi.wasm_trap_t)()
            self.trap_ref = ctypes.byref(self.trap)
        return self.faults.call(phase, hook, trap, error, self._refused_a_grow())

    def guest_view(self) -> memoryview:
        """All of guest memory as a writable byte view. Memory may move or grow whenever the
        guest runs, so the view is rebuilt when its base or size changed."""
        wt = self.engine.wt
        size = wt.memory_data_size(self.context, self.memory_ref)
        address = ctypes.cast(wt.memory_data(self.context, self.memory_ref), ctypes.c_void_p).value or 0
        if (address, size) != self.view_key or self.view is None:
            self.view = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
            self.view_key = (address, size)
        return self.view

    def allocate(self, size: int, hook: str) -> Tuple[memoryview, int]:
        """cc_lb_alloc(size, 16): the guest buffer to write the request into."""
        self.args[0].i32 = size
        self.args[1].i32 = 16
        self._call(self.alloc, 2, "cc_lb_alloc", hook)
        pointer = self.args[0].i32 & 0xFFFFFFFF
        view = self.guest_view()
        if pointer == 0 or pointer % 16 or pointer + size > len(view):
            raise self.faults.alloc(hook, size, pointer, len(view), pointer == 0 and self._refused_a_grow())
        return view, pointer

    def call_hook(self, hook: str, pointer: int, size: int) -> Optional[memoryview]:
        """Call the hook on the request written at ``pointer`` and check its answer: a view
        of the output in guest memory, or None when an observe hook answers nothing."""
        export = HOOK_EXPORTS[hook]
        self.args[0].i32 = pointer
        self.args[1].i32 = size
        self._call(self.hooks[hook], 2, export, hook)
        packed = self.args[0].i64 & 0xFFFFFFFFFFFFFFFF
        out_pointer, out_length = packed >> 32, packed & 0xFFFFFFFF
        if hook == "observe" and packed == 0:
            return None
        view = self.guest_view()  # memory as it is after the call: the guest may have grown it
        failure = self.faults.output(hook, out_pointer, out_length, len(view))
        if failure is not None:
            raise failure
        self.out_pointer = out_pointer
        return view[out_pointer : out_pointer + out_length]

    def call_with(self, hook: str, request: bytes) -> Optional[memoryview]:
        """The whole call with a ready archive (the admission probe's sample)."""
        self.arm()
        view, pointer = self.allocate(len(request), hook)
        view[pointer : pointer + len(request)] = request
        return self.call_hook(hook, pointer, len(request))

    def free_output(self, length: int, hook: str) -> None:
        """cc_lb_free(out_ptr, out_len, 16): a reused instance gives its output back."""
        self.args[0].i32 = self.out_pointer
        self.args[1].i32 = length
        self.args[2].i32 = 16
        self._call(self.free, 3, "cc_lb_free", hook)


class PinnedInstance:
    """One instance that a stream's calls share (the ctypes path's PinnedGuest): opened
    now, released by ``close()`` or with this object; after a failed call, the next one
    opens a fresh instance. One call at a time."""

    def __init__(self, engine: Any, gate: CallGate, loaded: Any, hook: str):
        self.loaded = loaded
        self.calling = threading.Lock()  # held by the call in the scope: a check and a claim in one step
        self.closed = False
        self.instance: Optional[Instance] = None
        engine.check_thread_stack(loaded.name, hook)
        if not gate.enter():
            raise loaded.faults.closed(hook)
        try:
            self.instance = _new_instance(engine, loaded, hook)
        finally:
            gate.leave()

    def release(self) -> None:
        instance, self.instance = self.instance, None
        if instance is not None:
            instance.close()

    def close(self) -> None:
        """Release the instance (its pool slot); later calls through this scope are refused."""
        if self.calling.locked():
            raise self.loaded.faults.scope_in_call()
        self.closed = True
        self.release()

    @property
    def holds_instance(self) -> bool:
        return self.instance is not None

    def __del__(self) -> None:
        self.release()


def _new_instance(engine: Any, loaded: Any, hook: str) -> Instance:
    try:
        return Instance(engine, loaded, hook)
    except engine.wt.errors as exc:
        raise _wasmtime_failure(exc, loaded, hook) from exc


def _wasmtime_failure(exc: BaseException, loaded: Any, hook: str) -> PluginError:
    """A wasmtime error no typed fault took, as the plugin's PluginError."""
    return PluginError(f"{hook}: {trap_text(str(exc))}", plugin=loaded.name, hook=hook)


def run_call(
    engine: Any, gate: CallGate, loaded: Any, hook: str, write: Callable[[Into], int], convert: Callable[[Optional[memoryview]], Any],
    pinned: Optional[PinnedInstance] = None,
) -> Any:
    """One hook call, in the native path's order: ``write(into)`` measures the request
    first, so a bad argument is the caller's error whatever state the plugin, the host or
    the pool is in; ``into(size)`` then checks the stack, enters the gate, takes an
    instance, arms it and allocates the request in the guest. Every wasmtime failure comes
    out as a PluginError; the reused instance is discarded after any failure. A store that
    is done with is closed here, not when the last traceback holding it dies: it holds a
    slot of the instance pool. (Views of guest memory in such a traceback stay readable:
    a pool slot's memory stays mapped; without a pool the store is left to the last
    reference.) With ``pinned``, the call takes (or opens) that scope's instance."""
    instance: Optional[Instance] = None
    entered = claimed = False
    pointer = 0
    keep = engine.reuse or pinned is not None

    def into(size: int) -> Tuple[memoryview, int]:
        nonlocal instance, entered, claimed, pointer
        if pinned is not None:
            if pinned.loaded is not loaded or pinned.closed or not pinned.calling.acquire(blocking=False):
                raise loaded.faults.scope(hook, pinned.loaded is not loaded, pinned.closed)
            claimed = True
        engine.check_thread_stack(loaded.name, hook)
        if not gate.enter():
            raise loaded.faults.closed(hook)
        entered = True
        if pinned is not None:
            instance = pinned.instance
            if instance is None:
                instance = pinned.instance = Instance(engine, loaded, hook)
            else:
                instance.clear_refused_grow()
        else:
            instance = getattr(loaded.local, "instance", None) if engine.reuse else None
            if instance is None:
                instance = Instance(engine, loaded, hook)
                if engine.reuse:
                    loaded.local.instance = instance
            elif engine.reuse:
                instance.clear_refused_grow()
        instance.arm()
        view, pointer = instance.allocate(size, hook)
        return view, pointer

    try:
        size = write(into)
        assert instance is not None  # into() ran, or write() raised
        output = instance.call_hook(hook, pointer, size)
        result = convert(output)
        if keep and output is not None:
            instance.free_output(len(output), hook)
        return result
    except BaseException as exc:
        if claimed:
            pinned.release()  # type: ignore[union-attr]  # a failed instance is never reused
        elif engine.reuse and entered:
            loaded.local.instance = None
        if isinstance(exc, engine.wt.errors):
            raise _wasmtime_failure(exc, loaded, hook) from exc
        raise
    finally:
        if engine.pooled and instance is not None and pinned is None:  # pooled: FRESH, so the store is done with
            instance.close()
        if claimed:
            pinned.calling.release()  # type: ignore[union-attr]
        if entered:
            gate.leave()


# The hooks, as NativePlugin's methods do them (the adapters call one or the other).


def call_filter(engine: Any, gate: CallGate, loaded: Any, ctx: Any, principal: Any, candidates: Any) -> Any:
    config = engine.config

    def write(into: Into) -> int:
        return encode_filter_request(ctx, principal, candidates, cookie_redaction=config.cookie_redaction, into=into)

    return run_call(engine, gate, loaded, "filter", write, lambda output: decode_filter_output(output, config.bounds))


def call_shape(engine: Any, gate: CallGate, loaded: Any, ctx: Any, principal: Any, upstream: Any) -> Any:
    config = engine.config

    def write(into: Into) -> int:
        return encode_shape_request(ctx, principal, upstream, cookie_redaction=config.cookie_redaction, into=into)

    def convert(output: Optional[memoryview]) -> Any:
        return decode_shaped_request(output, upstream, origin_policy=config.origin_policy, bounds=config.bounds)

    return run_call(engine, gate, loaded, "shape", write, convert)


def call_observe(engine: Any, gate: CallGate, loaded: Any, event: Any, pinned: Optional[PinnedInstance] = None) -> None:
    run_call(engine, gate, loaded, "observe", lambda into: encode_observe_event(event, into=into), lambda output: None, pinned)


def call_wire(engine: Any, gate: CallGate, loaded: Any, hook: str, value: Any, pinned: Optional[PinnedInstance] = None) -> Any:
    """A call whose request is a wire root value (the cc-lb 1.0 hooks), as
    NativePlugin.call_wire: a filter answers its FilterOutput, a transform its wire answer."""
    config = engine.config

    def write(into: Into) -> int:
        size = encoded_size(value)
        buffer, offset = into(size)
        return encode_into(value, buffer, offset)

    def convert(output: Optional[memoryview]) -> Any:
        if hook == "filter":
            return decode_filter_output(output, config.bounds)
        return decode(loaded.contract.hook_responses[hook], output)

    return run_call(engine, gate, loaded, hook, write, convert, pinned)
