"""InstanceScope: one instance of a slot's plugin that the calls of one stream share.

cc-lb runs every hook call in a fresh store. A streamed answer makes one
``transform_sse_event`` call (and one observe ``Chunk``) per event; through a scope they
all run in one instance, taken fresh when the scope opens and released when it closes:
the per-call instantiation is paid once per stream, and a plugin may keep state for the
stream that no other stream sees (cc-lb's ADR-0007 "one pinned instance per stream").

- The scope belongs to the plugin the slot held when it opened: a swap mid-stream does
  not change the instance a stream talks to.
- A call that fails releases the instance; the scope's next call opens a fresh one.
- Calls through one scope must not overlap (a second one meanwhile is refused with
  InvalidInput): wasmtime aborts the process if two threads use one store.
- The instance holds a slot of the instance pool until the scope closes: ``close()``,
  ``with``, or the scope being garbage collected (a stream abandoned mid-way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .ctypes_calls import PinnedInstance

if TYPE_CHECKING:
    from .adapters import _Adapter
    from .admission import Loaded


class InstanceScope:
    """One instance of a slot's plugin, shared by the calls given ``scope=`` (see the module)."""

    __slots__ = ("loaded", "pinned", "host", "slot", "__weakref__")

    def __init__(self, adapter: "_Adapter", hook: str):
        loaded: Loaded = adapter._loaded()
        self.loaded = loaded
        host = adapter._host
        self.host = host
        #: The slot key of the adapter that opened it: only that slot's calls may use it.
        self.slot = adapter._slot
        #: The call path's pinned instance: the extension's PinnedGuest or a PinnedInstance.
        self.pinned: Any
        if loaded.native is not None:
            self.pinned = loaded.native.pin(hook)
        else:
            self.pinned = PinnedInstance(host._engine, host._gate, loaded, hook)

    @property
    def plugin(self) -> str:
        """The name of the plugin whose instance this scope holds."""
        return self.loaded.name

    @property
    def holds_instance(self) -> bool:
        """Whether an instance is open (False once closed, and after a failed call until
        the next call opens a fresh one)."""
        return bool(self.pinned.holds_instance)

    def close(self) -> None:
        """Release the instance and its pool slot; calls through the scope are refused after."""
        self.pinned.close()

    def __enter__(self) -> "InstanceScope":
        return self

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        self.close()
