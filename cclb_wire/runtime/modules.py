"""Compiled modules: the memory.grow rewrite and compile, the spares a swap back can take
(an LRU), and the optional disk cache shared between processes."""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import blake3

from ..errors import PluginRejected, PluginTimeout
from .engine import Engine, admission_stack_size
from .faults import pool_limit_failure
from .pool import pooled
from .threads import GaveUp, run_on_own_thread
from .wasm_rewrite import WasmRewriteError, instrument_memory_grow

_log = logging.getLogger("cclb_wire.runtime")


class ModuleCache:
    """Where a host's compiled modules come from: a slot that has the same module, the
    spares (modules no slot uses, kept for quick swaps back), the disk cache, or a compile."""

    def __init__(self, engine: Engine, size: int, cache_dir: Optional[Path]):
        config = engine.config
        self._engine = engine
        self._size = size
        self._cache_dir = cache_dir
        #: Modules compiled with other engine settings must not be taken: they are in the key.
        self._engine_key = (
            f"wasmtime {engine.wt.version}; stack {config.max_wasm_stack}; "
            f"epoch {config.deadline_s is not None}; fuel {config.fuel is not None}; grow-rewrite 1; "
            f"pool {config.memory_limit_bytes if pooled(config) else 0}"
            # The page-resetting pool compiles without copy-on-write memory images.
            f"{'; page-reset memories' if engine.memory_pool is not None else ''}"
        ).encode()
        #: Compiled modules no slot may use any more, most recent last (an LRU).
        self.spares: "collections.OrderedDict[bytes, Any]" = collections.OrderedDict()

    def key(self, wasm: bytes) -> bytes:
        """The module key: the content and the engine settings it is compiled for."""
        return blake3.blake3(wasm + b"\0" + self._engine_key).digest()

    def take_spare(self, key: bytes) -> Any:
        """A spare compiled module with this key, taken out of the spares, or None."""
        return self.spares.pop(key, None)

    def compile(self, wasm: bytes, key: bytes, name: str, kind: str) -> Any:
        """The module from the disk cache, or rewritten and compiled (and written there)."""
        wt = self._engine.wt
        engine = self._engine.engine
        cached = self._cache_dir / f"{key.hex()}.cwasm" if self._cache_dir else None
        if cached is not None:
            try:
                return wt.wasmtime.Module.deserialize(engine, cached.read_bytes())
            except FileNotFoundError:
                pass
            except (OSError, *wt.errors) as exc:
                # stale, foreign or unreadable (a name too long, a directory): compile again
                _log.warning("compiled-module cache %s not used: %s", cached, exc)
        timeout = self._engine.config.compile_timeout_s
        try:
            module = run_on_own_thread(
                lambda: self._compile(wasm, name, kind), stack_size=admission_stack_size(self._engine.config),
                name=f"cclb-wire-compile-{name}"[:60], timeout=timeout,
            )
        except GaveUp:
            where = {"plugin": name, "hook": kind}
            late = PluginTimeout(f"compile: took longer than {timeout} s", phase="compile", **where)
            raise PluginRejected(
                f"compiling the module took longer than HostConfig.compile_timeout_s ({timeout} s)", **where
            ) from late
        if cached is not None:
            self._store(cached, module)
        return module

    def _compile(self, wasm: bytes, name: str, kind: str) -> Any:
        """Validate the module as written (the rewrite must not make an invalid module valid),
        rewrite its memory.grow, compile."""
        wt = self._engine.wt
        engine = self._engine.engine
        try:
            wt.wasmtime.Module.validate(engine, wasm)
        except wt.errors as exc:
            raise PluginRejected(f"invalid wasm module: {exc}".splitlines()[0], plugin=name, hook=kind) from exc
        try:
            instrumented = instrument_memory_grow(wasm)
        except WasmRewriteError as exc:
            raise PluginRejected(f"module rejected at load time: {exc}", plugin=name, hook=kind) from exc
        try:
            return wt.wasmtime.Module(engine, instrumented)
        except wt.errors as exc:
            rejected = PluginRejected(f"failed to compile wasm module: {exc}".splitlines()[0], plugin=name, hook=kind)
            limit = pool_limit_failure(self._engine, str(exc), name, kind)
            if limit is not None:
                raise rejected from limit
            raise rejected from exc

    def _store(self, cached: Path, module: Any) -> None:
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

    def retire(self, key: bytes, module: Any, in_use: Callable[[bytes], bool]) -> None:
        """A plugin left its slot: keep its compiled module among the spares, unless a slot
        still uses it (called with the host's lock held)."""
        if in_use(key):
            return
        spares = self.spares
        spares[key] = module
        spares.move_to_end(key)
        while len(spares) > self._size:
            spares.popitem(last=False)

    def clear(self) -> None:
        """Drop the spares (the host closes, or its engine is replaced)."""
        self.spares.clear()
