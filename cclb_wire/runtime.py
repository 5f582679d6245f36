"""Running cc-lb V1 plugins under wasmtime: admission, slots, calls, limits.

``PluginHost`` registers plugins into slots (``register_filter`` / ``register_shape``
/ ``register_observe``) and returns adapters that behave like the reference
host's: ``FilterPlugin.filter`` -> FilterOutput, ``UpstreamDialect.shape`` ->
ShapedRequest, ``ObservabilityHook.observe``. Where the reference has holes, this
host adds a per-call deadline (epoch interruption), optional fuel, a memory limit
per store and a wasm stack limit, each with its own error class, and it checks the
output size before reading anything.

The call path is plain Python around a few hot calls: the request is encoded
straight into guest memory (sizes first, one write), the hook is called through
wasmtime's C API with a preallocated raw argument array (wasmtime-py's ``Func``
call is ~20x slower), and the answer is decoded in place. ``wasmtime`` is imported
only when a host is created.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import blake3

from . import (
    decode,
    decode_filter_output,
    decode_shaped_request,
    encode,
    encode_filter_request,
    encode_observe_event,
    encode_shape_request,
    wire,
)
from .errors import (
    DecodeError,
    DialectError,
    FilterError,
    ObservabilityError,
    PluginError,
    PluginMemoryLimit,
    PluginOutOfFuel,
    PluginOutputError,
    PluginRejected,
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
from .wasm_module import HOOK_EXPORTS, PluginInspection, inspect_plugin

__all__ = [
    "FailurePolicy",
    "InstanceStrategy",
    "HostConfig",
    "PluginHost",
    "FilterPlugin",
    "UpstreamDialect",
    "ObservabilityHook",
    "PROBE_SAMPLES",
]

_log = logging.getLogger("cclb_wire.runtime")

WASM_PAGE = 65536


class FailurePolicy(enum.Enum):
    """What the ``*_with_policy`` calls do when a filter or shape plugin fails.

    PASS_THROUGH (the reference's default): the failure is a no-op. The filter keeps
    every candidate, and shape answers ``None``, meaning "send the request to the
    upstream unchanged". FAIL_CLOSED: the error is raised, and the proxy answers
    503 (upstream unavailable). Pick it when the plugin enforces authz or tenant
    policy.
    """

    PASS_THROUGH = "pass_through"
    FAIL_CLOSED = "fail_closed"


class InstanceStrategy(enum.Enum):
    """FRESH (default, the reference's): a new store and instance for every call, so plugins
    are stateless. REUSE_PER_THREAD: one instance per thread and plugin, reused; outputs
    are freed with ``cc_lb_free``, and the instance is discarded after any trap or error."""

    FRESH = "fresh"
    REUSE_PER_THREAD = "reuse_per_thread"


@dataclass(frozen=True)
class HostConfig:
    """Settings of a PluginHost (defaults are the reference host's, plus our limits)."""

    bounds: WireBounds = field(default_factory=WireBounds)
    origin_policy: ShapeOriginPolicy = ShapeOriginPolicy.UNRESTRICTED
    cookie_redaction: bool = False
    failure_policy: FailurePolicy = FailurePolicy.PASS_THROUGH
    #: Wall-clock limit per hook call (epoch interruption); None: no deadline.
    deadline_s: Optional[float] = 1.0
    #: Fuel per hook call; None: fuel metering off.
    fuel: Optional[int] = None
    #: Guest memory limit per store (2048 pages).
    memory_limit_bytes: int = 128 * 1024 * 1024
    max_wasm_stack: int = 1024 * 1024
    instance_strategy: InstanceStrategy = InstanceStrategy.FRESH
    #: How often the deadline ticker advances the engine's epoch.
    epoch_tick_s: float = 0.01
    #: Where compiled modules are kept between processes (None: in memory only). Compiled
    #: code is loaded from there as it is: use a directory only this service can write.
    module_cache_dir: Optional[Union[str, Path]] = None
    #: Call every declared hook once with the canonical sample at admission (HOST.md).
    #: Turn it off only to study a misbehaving module in tests or tools.
    probe: bool = True

    def __post_init__(self) -> None:
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError("HostConfig.deadline_s must be > 0 or None")
        if self.fuel is not None and not (isinstance(self.fuel, int) and self.fuel > 0):
            raise ValueError("HostConfig.fuel must be a positive int or None")
        if self.memory_limit_bytes < WASM_PAGE:
            raise ValueError("HostConfig.memory_limit_bytes must be at least one wasm page (65536)")
        if not 0 < self.epoch_tick_s <= 1:
            raise ValueError("HostConfig.epoch_tick_s must be in (0, 1]")


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


class _Wasmtime:
    """The wasmtime module and the raw C entry points the call path uses."""

    def __init__(self) -> None:
        import wasmtime
        from wasmtime import _bindings, _ffi

        self.wasmtime = wasmtime
        self.ffi = _ffi
        # The raw C entry points (ctypes functions), without wasmtime-py's Python wrappers:
        # the hot path calls them directly. wasmtime is pinned to one major version.
        self.call_unchecked = _bindings._wasmtime_func_call_unchecked
        self.memory_data = _bindings._wasmtime_memory_data
        self.memory_data_size = _bindings._wasmtime_memory_data_size
        self.set_epoch_deadline = _bindings._wasmtime_context_set_epoch_deadline
        self.version = getattr(wasmtime, "__version__", "") or _package_version("wasmtime")
        self.trap_names = {code.value: code.name.lower() for code in wasmtime.TrapCode}


def _trap_text(message: str) -> str:
    """The line of a wasmtime error that says what happened (after "Caused by:"), not the backtrace."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1 :]
        if after:
            return after[-1]
    return lines[0] if lines else "trap"


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


_WASMTIME: Optional[_Wasmtime] = None
_WASMTIME_LOCK = threading.Lock()


def _wt() -> _Wasmtime:
    global _WASMTIME
    if _WASMTIME is None:
        with _WASMTIME_LOCK:
            if _WASMTIME is None:
                _WASMTIME = _Wasmtime()
    return _WASMTIME


class _Ticker:
    """Advances the engine's epoch every ``tick`` seconds, for per-call deadlines."""

    def __init__(self, engine: Any, tick: float):
        self._engine = engine
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cclb-wire-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Ticks are scheduled on absolute times, so waits that run long under load do not
        # add up: a deadline of n ticks ends within one tick of n * tick.
        next_tick = time.monotonic()
        while True:
            next_tick += self._tick
            if self._stop.wait(max(0.0, next_tick - time.monotonic())):
                return
            self._engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Loaded:
    """One admitted plugin: its compiled module, ready to instantiate."""

    name: str
    kind: str
    content_hash: bytes
    plugin_id: uuid.UUID
    instance_pre: Any
    inspection: PluginInspection
    local: threading.local = field(default_factory=threading.local)


class _Instance:
    """One store and instance of a plugin, with the raw call machinery around it."""

    __slots__ = (
        "host", "loaded", "store", "memory", "memory_ref", "context", "alloc", "free", "hooks",
        "args", "trap", "trap_ref", "out_pointer", "view", "view_key",
    )

    def __init__(self, host: "PluginHost", loaded: _Loaded):
        wt = host._wt
        store = wt.wasmtime.Store(host._engine)
        store.set_limits(memory_size=host.config.memory_limit_bytes)
        self.host = host
        self.loaded = loaded
        self.store = store
        instance = loaded.instance_pre.instantiate(store)
        exports = instance.exports(store)
        self.memory = exports["memory"]
        self.memory_ref = ctypes.byref(self.memory._memory)
        self.context = store._context()
        self.view: Optional[memoryview] = None
        self.view_key = (0, 0)
        self.alloc = ctypes.byref(exports["cc_lb_alloc"]._func)
        self.free = ctypes.byref(exports["cc_lb_free"]._func)
        self.hooks = {
            hook: ctypes.byref(exports[export]._func)
            for hook, export in HOOK_EXPORTS.items()
            if export in exports and hook in (loaded.inspection.metadata or {}).get("hooks", {})
        }
        self.args = (wt.ffi.wasmtime_val_raw_t * 3)()
        self.trap = ctypes.POINTER(wt.ffi.wasm_trap_t)()
        self.trap_ref = ctypes.byref(self.trap)

    def arm(self) -> None:
        """Reset the per-call limits: the epoch deadline and the fuel."""
        config = self.host.config
        if config.deadline_s is not None:
            self.host._wt.set_epoch_deadline(self.context, self.host._deadline_ticks)
        if config.fuel is not None:
            self.store.set_fuel(config.fuel)

    def _call(self, func: Any, nargs: int, phase: str, hook: str) -> None:
        wt = self.host._wt
        error = wt.call_unchecked(self.context, func, self.args, nargs, self.trap_ref)
        if error or self.trap:
            raise self._failure(error, phase, hook)

    def _failure(self, error: Any, phase: str, hook: str) -> PluginError:
        wt = self.host._wt
        where = {"plugin": self.loaded.name, "hook": hook, "phase": phase}
        if self.trap:
            trap = wt.wasmtime.Trap._from_ptr(self.trap)
            self.trap = ctypes.POINTER(wt.ffi.wasm_trap_t)()
            self.trap_ref = ctypes.byref(self.trap)
            code = trap.trap_code
            message = _trap_text(trap.message)
            name = wt.trap_names.get(getattr(code, "value", code), "unknown") if code is not None else "unknown"
        else:
            message = _trap_text(str(wt.wasmtime.WasmtimeError._from_ptr(error)))
            name = "error"
        if name == "interrupt":
            return PluginTimeout(f"{phase}: exceeded the {self.host.config.deadline_s} s deadline", **where)
        if name == "out_of_fuel":
            return PluginOutOfFuel(f"{phase}: used up its {self.host.config.fuel} units of fuel", **where)
        if self._at_memory_limit():
            return PluginMemoryLimit(
                f"{phase}: guest memory reached the {self.host.config.memory_limit_bytes}-byte limit ({message})", **where
            )
        return PluginTrap(f"{phase}: {message}", trap_code=name, **where)

    def _at_memory_limit(self) -> bool:
        # The store refuses a memory.grow past the limit (memory.grow answers -1), and the
        # guest then fails its own way; memory at the limit tells us why.
        size = self.host._wt.memory_data_size(self.context, self.memory_ref)
        return size + WASM_PAGE > self.host.config.memory_limit_bytes

    def guest_view(self) -> memoryview:
        """All of guest memory as a writable byte view. Memory may move or grow whenever the
        guest runs, so the view is rebuilt when its base or size changed."""
        wt = self.host._wt
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
        if pointer == 0:
            if self._at_memory_limit() or size > self.host.config.memory_limit_bytes:
                raise PluginMemoryLimit(
                    f"cc_lb_alloc: no room for the {size}-byte request under the "
                    f"{self.host.config.memory_limit_bytes}-byte limit",
                    plugin=self.loaded.name, hook=hook, phase="cc_lb_alloc",
                )
            raise PluginTrap(
                f"cc_lb_alloc: guest returned null pointer for {size}-byte allocation",
                trap_code="null_pointer", plugin=self.loaded.name, hook=hook, phase="cc_lb_alloc",
            )
        view = self.guest_view()
        if pointer + size > len(view):
            raise PluginOutputError(
                f"cc_lb_alloc: returned [{pointer}..{pointer + size}) outside guest memory ({len(view)} bytes)",
                plugin=self.loaded.name, hook=hook, phase="cc_lb_alloc",
            )
        return view, pointer

    def call_hook(self, hook: str, write_request: Callable[[Callable[[int], Tuple[memoryview, int]]], int]) -> Optional[memoryview]:
        """Write the request into guest memory, call the hook, check its output.

        ``write_request(into)`` encodes the request through ``into(size) -> (buffer,
        offset)``, which allocates it in the guest, and returns its size. Returns a
        view of the output in guest memory, or None when an observe hook answers nothing.
        """
        self.arm()
        pointers = []

        def into(size: int) -> Tuple[memoryview, int]:
            view, pointer = self.allocate(size, hook)
            pointers.append(pointer)
            return view, pointer

        size = write_request(into)
        export = HOOK_EXPORTS[hook]
        self.args[0].i32 = pointers[0]
        self.args[1].i32 = size
        self._call(self.hooks[hook], 2, export, hook)
        packed = self.args[0].i64 & 0xFFFFFFFFFFFFFFFF
        out_pointer, out_length = packed >> 32, packed & 0xFFFFFFFF
        if hook == "observe" and packed == 0:
            return None
        where = {"plugin": self.loaded.name, "hook": hook, "phase": export}
        if out_pointer == 0 or out_length == 0:
            raise PluginOutputError(
                f"{export}: guest returned invalid (ptr={out_pointer}, len={out_length}); only observe may return (0, 0)",
                **where,
            )
        bound = self.host.config.bounds.output_body_bytes
        if out_length > bound:  # checked before anything is read
            raise PluginOutputError(
                f"{export}: output of {out_length} bytes exceeds wire_bounds.output_body_bytes ({bound})", **where
            )
        end = out_pointer + out_length
        if end > 0xFFFFFFFF:
            raise PluginOutputError(f"{export}: guest output ptr+len overflows ({out_pointer} + {out_length})", **where)
        view = self.guest_view()  # memory as it is after the call: the guest may have grown it
        if end > len(view):
            raise PluginOutputError(
                f"{export}: guest output [{out_pointer}..{end}) out of bounds (memory size {len(view)})", **where
            )
        self.out_pointer = out_pointer
        return view[out_pointer:end]

    def free_output(self, length: int, hook: str) -> None:
        """cc_lb_free(out_ptr, out_len, 16): a reused instance gives its output back."""
        self.args[0].i32 = self.out_pointer
        self.args[1].i32 = length
        self.args[2].i32 = 16
        self._call(self.free, 3, "cc_lb_free", hook)


# ==============================================================================
# The host
# ==============================================================================


class PluginHost:
    """Loads cc-lb V1 plugins into slots and runs them under limits.

    ``register_*`` admits a module (inspection, compile, probe of every declared hook)
    and puts it in a slot; registering other content for the same slot swaps it
    atomically (calls in flight keep the plugin they started with), registering the
    same content again changes nothing. ``close()`` stops the deadline ticker and
    drops every slot.
    """

    def __init__(self, config: Optional[HostConfig] = None):
        self.config = config if config is not None else HostConfig()
        self._wt = _wt()
        wasmtime = self._wt.wasmtime
        engine_config = wasmtime.Config()
        engine_config.max_wasm_stack = self.config.max_wasm_stack
        engine_config.epoch_interruption = self.config.deadline_s is not None
        engine_config.consume_fuel = self.config.fuel is not None
        self._engine = wasmtime.Engine(engine_config)
        self._engine_key = (
            f"wasmtime {self._wt.version}; stack {self.config.max_wasm_stack}; "
            f"epoch {self.config.deadline_s is not None}; fuel {self.config.fuel is not None}"
        )
        self._linker = wasmtime.Linker(self._engine)
        self._modules: Dict[bytes, Any] = {}
        self._slots: Dict[Tuple[str, str], _Loaded] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._deadline_ticks = 0
        self._ticker: Optional[_Ticker] = None
        if self.config.deadline_s is not None:
            # The deadline passes after this many ticks; +1 because the first tick may come at once.
            self._deadline_ticks = math.ceil(self.config.deadline_s / self.config.epoch_tick_s) + 1
            self._ticker = _Ticker(self._engine, self.config.epoch_tick_s)
        self._cache_dir = Path(self.config.module_cache_dir) if self.config.module_cache_dir else None

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Drop every slot and stop the deadline ticker. Calls still running are interrupted
        (they end with PluginTimeout): the epoch is advanced past every deadline."""
        with self._lock:
            self._closed = True
            self._slots.clear()
            self._modules.clear()
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker = None
            for _ in range(self._deadline_ticks + 1):
                self._engine.increment_epoch()

    def __enter__(self) -> "PluginHost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- admission ----------------------------------------------------------------

    def _content_hash(self, wasm: bytes) -> bytes:
        pages = self.config.memory_limit_bytes // WASM_PAGE
        return blake3.blake3(b"\x01\x00\x00\x00" + pages.to_bytes(4, "little") + wasm).digest()

    def _module(self, wasm: bytes, name: str, kind: str) -> Any:
        """Compile, or take from the cache (memory, then disk), keyed by content and engine."""
        key = blake3.blake3(wasm + b"\0" + self._engine_key.encode()).digest()
        module = self._modules.get(key)
        if module is not None:
            return module
        wasmtime = self._wt.wasmtime
        cached = self._cache_dir / f"{key.hex()}.cwasm" if self._cache_dir else None
        if cached is not None and cached.exists():
            try:
                module = wasmtime.Module.deserialize(self._engine, cached.read_bytes())
            except Exception:
                module = None  # stale or foreign: compile again
        if module is None:
            try:
                module = wasmtime.Module(self._engine, wasm)
            except Exception as exc:
                raise PluginRejected(f"failed to compile wasm module: {exc}".splitlines()[0], plugin=name, hook=kind) from exc
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                temporary = cached.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_bytes(module.serialize())
                temporary.replace(cached)
        self._modules[key] = module
        return module

    def _admit(self, kind: str, name: str, data: bytes, content_hash: bytes) -> _Loaded:
        if self._closed:
            raise PluginError("the host is closed", plugin=name, hook=kind)
        inspection = inspect_plugin(data)
        inspection.check(kind, plugin=name)
        module = self._module(data, name, kind)
        try:
            instance_pre = self._linker.instantiate_pre(module)
        except Exception as exc:
            raise PluginRejected(f"failed to instantiate module: {exc}".splitlines()[0], plugin=name, hook=kind) from exc
        loaded = _Loaded(name, kind, content_hash, uuid.UUID(bytes=content_hash[:16], version=4), instance_pre, inspection)
        if self.config.probe:
            for hook in (inspection.metadata or {}).get("hooks", {}):
                self._probe(loaded, hook)
        return loaded

    def _probe(self, loaded: _Loaded, hook: str) -> None:
        sample = PROBE_SAMPLES[hook]
        try:
            instance = _Instance(self, loaded)

            def write(into: Callable[[int], Tuple[memoryview, int]]) -> int:
                buffer, offset = into(len(sample))
                memoryview(buffer)[offset : offset + len(sample)] = sample
                return len(sample)

            output = instance.call_hook(hook, write)
            if hook == "filter":
                decode("FilterResponse", output)
            elif hook == "shape":
                decode("ShapeResponse", output)
        except (PluginError, DecodeError) as exc:
            reason = exc.detail if isinstance(exc, PluginError) else str(exc)
            raise PluginRejected(
                f"runtime probe failed for hook {hook}: {reason}", plugin=loaded.name, hook=hook
            ) from exc

    def _register(self, kind: str, slot_key: str, name: str, wasm: Any, adapter: type) -> Any:
        if not isinstance(slot_key, str) or not isinstance(name, str):
            raise TypeError("slot_key and name must be str")
        data = Path(wasm).read_bytes() if isinstance(wasm, (str, os.PathLike)) else bytes(wasm)
        content_hash = self._content_hash(data)
        current = self._slots.get((kind, slot_key))
        if current is not None and current.content_hash == content_hash and current.name == name:
            return adapter(self, kind, slot_key)  # the same content: nothing changes
        loaded = self._admit(kind, name, data, content_hash)
        with self._lock:
            if self._closed:
                raise PluginError("the host is closed", plugin=name, hook=kind)
            self._slots[(kind, slot_key)] = loaded  # one assignment: the swap is atomic
        return adapter(self, kind, slot_key)

    def register_filter(self, slot_key: str, name: str, wasm: Any) -> "FilterPlugin":
        """Admit a filter plugin (bytes or a path) into a slot; returns its adapter."""
        return self._register("filter", slot_key, name, wasm, FilterPlugin)

    def register_shape(self, slot_key: str, name: str, wasm: Any) -> "UpstreamDialect":
        """Admit a shape plugin into a slot; returns its UpstreamDialect adapter."""
        return self._register("shape", slot_key, name, wasm, UpstreamDialect)

    def register_observe(self, slot_key: str, name: str, wasm: Any) -> "ObservabilityHook":
        """Admit an observe plugin into a slot; returns its ObservabilityHook adapter."""
        return self._register("observe", slot_key, name, wasm, ObservabilityHook)

    def slot(self, kind: str, slot_key: str) -> Optional[_Loaded]:
        return self._slots.get((kind, slot_key))

    def unregister(self, kind: str, slot_key: str) -> None:
        with self._lock:
            self._slots.pop((kind, slot_key), None)

    # -- calls ------------------------------------------------------------------------

    def _instance(self, loaded: _Loaded) -> _Instance:
        if self.config.instance_strategy is InstanceStrategy.REUSE_PER_THREAD:
            instance = getattr(loaded.local, "instance", None)
            if instance is None:
                instance = loaded.local.instance = _Instance(self, loaded)
            return instance
        return _Instance(self, loaded)

    def _run(self, loaded: _Loaded, hook: str, write: Callable, convert: Callable[[Optional[memoryview]], Any]) -> Any:
        """One hook call: instance, request, call, checks, conversion; the instance is
        discarded after any failure (reuse strategy)."""
        reuse = self.config.instance_strategy is InstanceStrategy.REUSE_PER_THREAD
        instance = self._instance(loaded)
        try:
            output = instance.call_hook(hook, write)
            result = convert(output)
            if reuse and output is not None:
                instance.free_output(len(output), hook)
            return result
        except BaseException:
            if reuse:
                loaded.local.instance = None
            raise


class _Adapter:
    """A slot's adapter: every call runs the plugin the slot holds when the call starts."""

    hook = ""

    def __init__(self, host: PluginHost, kind: str, slot_key: str):
        self._host = host
        self._kind = kind
        self.slot_key = slot_key

    def _loaded(self) -> _Loaded:
        loaded = self._host.slot(self._kind, self.slot_key)
        if loaded is None:
            raise PluginError(f"slot {self.slot_key!r} is empty (closed or never registered)", hook=self._kind)
        return loaded

    @property
    def plugin_id(self) -> uuid.UUID:
        """Derived from the plugin's content hash: the same module has the same id."""
        return self._loaded().plugin_id

    @property
    def plugin_name(self) -> str:
        return self._loaded().name

    def close(self) -> None:
        """Empty the slot; calls in flight finish with the plugin they started with."""
        self._host.unregister(self._kind, self.slot_key)


class FilterPlugin(_Adapter):
    """A filter slot: ``filter(ctx, principal, candidates) -> FilterOutput``."""

    def filter(self, ctx: RequestContext, principal: Principal, candidates: Sequence[UpstreamCandidate]) -> FilterOutput:
        """Raises FilterError: ``trap`` ("phase: detail") for a guest trap, ``runtime`` for
        anything else; the typed error (PluginTimeout, PluginTrap, ...) is its __cause__."""
        loaded = self._loaded()
        host = self._host
        config = host.config

        def write(into: Callable) -> int:
            return encode_filter_request(ctx, principal, candidates, cookie_redaction=config.cookie_redaction, into=into)

        try:
            return host._run(loaded, "filter", write, lambda output: decode_filter_output(output, config.bounds))
        except PluginTrap as exc:
            raise FilterError.trap(exc.detail) from exc
        except PluginError as exc:
            raise FilterError.runtime(str(exc)) from exc

    def filter_with_policy(
        self, ctx: RequestContext, principal: Principal, candidates: Sequence[UpstreamCandidate]
    ) -> FilterOutput:
        """``filter`` under the host's failure policy: PASS_THROUGH answers a no-op (every
        candidate kept, the failure in ``reason``); FAIL_CLOSED raises the FilterError."""
        try:
            return self.filter(ctx, principal, candidates)
        except FilterError as exc:
            if self._host.config.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            _log.warning("filter plugin failed, passing through: %s", exc)
            kept = tuple(c.upstream_id for c in candidates)
            return FilterOutput(kept, f"plugin failed; passed through: {exc}", ())


class UpstreamDialect(_Adapter):
    """A shape slot: ``shape(ctx, upstream, principal) -> ShapedRequest``."""

    def shape(self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal) -> ShapedRequest:
        """Raises DialectError (unsupported request); the typed error is its __cause__."""
        loaded = self._loaded()
        config = self._host.config

        def write(into: Callable) -> int:
            return encode_shape_request(ctx, principal, upstream, cookie_redaction=config.cookie_redaction, into=into)

        def convert(output: Optional[memoryview]) -> ShapedRequest:
            return decode_shaped_request(output, upstream, origin_policy=config.origin_policy, bounds=config.bounds)

        try:
            return self._host._run(loaded, "shape", write, convert)
        except PluginTrap as exc:
            raise DialectError.unsupported_request(exc.detail) from exc
        except PluginError as exc:
            raise DialectError.unsupported_request(str(exc)) from exc

    def shape_with_policy(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal
    ) -> Optional[ShapedRequest]:
        """``shape`` under the failure policy: PASS_THROUGH answers None ("send the request to
        the upstream unchanged"); FAIL_CLOSED raises the DialectError."""
        try:
            return self.shape(ctx, upstream, principal)
        except DialectError as exc:
            if self._host.config.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            _log.warning("shape plugin failed, passing through: %s", exc)
            return None


class ObservabilityHook(_Adapter):
    """An observe slot: ``observe(event)``; the plugin's output is ignored."""

    def observe(self, event: ObserveEventInput) -> None:
        """Raises ObservabilityError (dropped); the typed error is its __cause__."""
        loaded = self._loaded()

        def write(into: Callable) -> int:
            return encode_observe_event(event, into=into)

        try:
            self._host._run(loaded, "observe", write, lambda output: None)
        except PluginError as exc:
            raise ObservabilityError.dropped(str(exc)) from exc
