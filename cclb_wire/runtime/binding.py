"""Loading wasmtime (lazily: codec-only users never import it) and choosing the call path:
the extension's native one, bound to the libwasmtime that wasmtime-py loaded, or the
ctypes one (``ctypes_calls``) where it cannot bind."""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from typing import Any, Dict, Optional, Tuple

from .ctypes_calls import CallGate, Wasmtime

_WASMTIME: Optional[Wasmtime] = None
_WASMTIME_LOCK = threading.Lock()


def load_wasmtime() -> Wasmtime:
    """wasmtime-py and its raw C entry points, loaded and bound once per process."""
    global _WASMTIME
    if _WASMTIME is None:
        with _WASMTIME_LOCK:
            if _WASMTIME is None:
                wt = Wasmtime()
                _bind_native(wt)
                _WASMTIME = wt
    return _WASMTIME


#: Set to 0 to use the ctypes call path even where the extension could take the calls.
NATIVE_CALLS_ENV = "CCLB_WIRE_NATIVE_CALLS"
#: The extension, bound to libwasmtime; None: calls take the ctypes path.
NATIVE: Optional[Any] = None
#: Why calls take the ctypes path ("" when they take the native one).
NATIVE_REASON = "not bound yet"


def _bind_native(wt: Wasmtime) -> None:
    """Bind the extension's call path to the libwasmtime wasmtime-py loaded, once. Where it
    cannot (the pure-Python backend, another wasmtime, a missing symbol), calls take the
    ctypes path; a mismatch also warns, naming the reason."""
    global NATIVE, NATIVE_REASON
    from .. import BACKEND

    if BACKEND != "cython":
        NATIVE_REASON = "the pure-Python backend is loaded"
        return
    if os.environ.get(NATIVE_CALLS_ENV, "") == "0":
        NATIVE_REASON = f"{NATIVE_CALLS_ENV}=0"
        return
    from .. import _codec

    def layout(struct: Any) -> Tuple[int, Dict[str, int]]:
        return ctypes.sizeof(struct), {name: getattr(struct, name).offset for name, *_ in struct._fields_}

    layouts = {name: layout(getattr(wt.ffi, name)) for name in _codec._WASMTIME_LAYOUTS if hasattr(wt.ffi, name)}
    addresses = {}
    for symbol in _codec._WASMTIME_SYMBOLS:
        try:
            addresses[symbol] = ctypes.cast(getattr(wt.dll, symbol), ctypes.c_void_p).value
        except AttributeError:
            addresses[symbol] = None
    try:
        _codec.bind_wasmtime(wt.version, addresses, layouts)
    except RuntimeError as exc:
        NATIVE_REASON = str(exc)
        warnings.warn(f"cclb_wire: plugin calls take the slower ctypes path: {exc}", RuntimeWarning, stacklevel=3)
        return
    NATIVE = _codec
    NATIVE_REASON = ""


def new_gate() -> Any:
    """A gate that counts a host's calls in flight, of the call path in use."""
    if NATIVE is not None:
        return NATIVE.CallGate(threading.Condition())
    return CallGate(threading.Condition())
