"""The calling thread's native stack: guest code runs on it, so a call checks that it has
room for ``max_wasm_stack`` before entering a guest."""

from __future__ import annotations

import ctypes
import threading
from typing import Callable, Optional, Tuple

# Guest code runs on the calling thread's own stack, and wasmtime only bounds it by
# max_wasm_stack below the point of entry: on a thread whose stack is smaller (macOS
# gives secondary threads 512 KiB; threading.stack_size() can ask for less) a deep guest
# runs into the guard page and the process dies. So a call refuses threads too small.

#: Room kept for the host's own frames (interpreter, ctypes, wasmtime) above the guest's.
STACK_HEADROOM = 256 * 1024
_THREAD_STACK = threading.local()


def _native_stack_bounds() -> Optional[Tuple[int, int]]:
    """(lowest address, size) of the calling thread's stack, where the platform tells
    (Linux, macOS); None elsewhere."""
    import sys

    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
        if sys.platform.startswith("linux"):
            attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on glibc x86_64
            if libc.pthread_getattr_np(ctypes.c_void_p(libc.pthread_self()), attr) != 0:
                return None
            base, size = ctypes.c_void_p(), ctypes.c_size_t()
            failed = libc.pthread_attr_getstack(attr, ctypes.byref(base), ctypes.byref(size))
            libc.pthread_attr_destroy(attr)
            return None if failed or not base.value else (base.value, size.value)
        if sys.platform == "darwin":
            libc.pthread_get_stacksize_np.restype = ctypes.c_size_t
            libc.pthread_get_stacksize_np.argtypes = [ctypes.c_void_p]
            libc.pthread_get_stackaddr_np.restype = ctypes.c_void_p  # the top: stacks grow down
            libc.pthread_get_stackaddr_np.argtypes = [ctypes.c_void_p]
            thread = libc.pthread_self()
            size = int(libc.pthread_get_stacksize_np(thread))
            return int(libc.pthread_get_stackaddr_np(thread)) - size, size
    except (OSError, AttributeError, TypeError):
        pass
    return None


def thread_stack() -> Optional[Tuple[int, int]]:
    """The calling thread's stack bounds, looked up once per thread."""
    try:
        return _THREAD_STACK.bounds  # type: ignore[no-any-return]
    except AttributeError:
        bounds = _THREAD_STACK.bounds = _native_stack_bounds()
        return bounds


def _stack_pointer_reader() -> Optional[Callable[[], int]]:
    """The extension's reading of the current stack address; without the extension the
    host can only compare the thread's whole stack size."""
    from .. import BACKEND

    if BACKEND != "cython":
        return None
    from .. import _codec

    return getattr(_codec, "_stack_address", None)


STACK_ADDRESS = _stack_pointer_reader()
