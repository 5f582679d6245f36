"""Work on a thread of the host's own, with a stack of known size: admission compiles and
probes there, so a registration from a thread with a small stack (64 KiB, a green-thread
library's) neither crashes nor blames a good module, and a compile can be given up."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional, TypeVar

T = TypeVar("T")

#: Native stack of an admission thread beyond the wasm stack: the compiler's and the
#: interpreter's own frames (wasmtime's compiler recurses on deeply nested code).
ADMISSION_STACK_EXTRA = 8 * 1024 * 1024

# threading.stack_size is process-wide: set it, start the thread, and put it back at once.
_STACK_SIZE_LOCK = threading.Lock()


class GaveUp(Exception):
    """The work did not finish within its time; it goes on alone, and its result is dropped."""


def run_on_own_thread(work: Callable[[], T], *, stack_size: int, name: str, timeout: Optional[float] = None) -> T:
    """``work()`` on a new thread with ``stack_size`` bytes of stack; its result, or what it
    raised. Raises GaveUp after ``timeout`` seconds (None: waits for it)."""
    outcome: Dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            finished.set()

    with _STACK_SIZE_LOCK:
        previous = threading.stack_size(stack_size)
        try:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
        finally:
            threading.stack_size(previous)
    if not finished.wait(timeout):
        raise GaveUp(name)
    if "error" in outcome:
        error = outcome.pop("error")
        raise error
    return outcome["result"]  # type: ignore[no-any-return]
