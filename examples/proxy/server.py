"""The HTTP/1.1 server side: uvicorn's protocols (h11, or httptools' C parser) with a
request-head timeout.

uvicorn closes a kept-alive connection that stays idle, but not one that never finishes a
request head (a fresh connection that sends nothing, or half a request line): a slowloris
client holds such connections forever. ``guarded(parser, header_timeout_s)`` is uvicorn's
protocol for that parser with one more timer: a request head must arrive whole within
``header_timeout_s`` of the connection opening, or of its first byte after an answer;
else the connection is closed (both protocols keep their request cycle in
``self.cycle``). Bodies are bounded by the app (``[server] body_timeout_s``) and
connections by uvicorn's ``limit_concurrency`` (``[server] max_client_connections``).

Both protocols write through ``_JoiningTransport``: uvicorn writes an answer's head and
body separately, and those two writes go out as one send.

The httptools protocol also puts a ``DisconnectWatch`` in each request's ASGI scope
(``DISCONNECT_KEY``): the app learns that its client left from a callback, without a
second task per request waiting on ``receive()``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List, Optional, cast

#: The request parsers the proxy can serve with ("httptools" needs the httptools package).
PARSERS = ("h11", "httptools")


#: The ASGI scope key of a request's DisconnectWatch.
DISCONNECT_KEY = "cclb.disconnect"


class DisconnectWatch:
    """Whether a request's client has gone, and what to call when it goes."""

    __slots__ = ("gone", "callbacks")

    def __init__(self) -> None:
        self.gone = False
        self.callbacks: List[Callable[[], Any]] = []

    def fire(self) -> None:
        if not self.gone:
            self.gone = True
            for callback in list(self.callbacks):
                callback()


class _JoiningTransport:
    """A transport that joins writes made in one step of the event loop. uvicorn writes an
    answer's head and then its body: two sends, two packets, two wake-ups of the client.
    A write is held until the next write (then both go out as one) or the end of the
    loop's current step; close() sends what is held first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: Optional[bytes] = None

    def write(self, data: bytes) -> None:
        if self._held is not None:  # the second write of the step: both go out now
            held, self._held = self._held, None
            self._transport.writelines((held, data))  # one gathered send, no copy of the body
            return
        self._held = bytes(data)
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info, ...
        return getattr(self._transport, name)


def guarded(parser: str, header_timeout_s: float) -> type:
    """uvicorn's protocol for ``parser`` whose request heads must arrive within ``header_timeout_s``."""
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class GuardedProtocol(base):  # type: ignore[valid-type,misc]
        _head_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(cast(asyncio.Transport, _JoiningTransport(transport, self.loop)))
            self._arm_head_timer()  # the first head, even if no byte ever comes

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # a whole head arrived
                self._cancel_head_timer()
            elif self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_head_timer()  # bytes of a next head: it must complete in time too

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._cancel_head_timer()
            cycle = self.cycle
            super().connection_lost(exc)
            if cycle is not None and not cycle.response_complete:
                watch = cast(Dict[str, Any], cycle.scope).get(DISCONNECT_KEY)
                if isinstance(watch, DisconnectWatch):
                    watch.fire()

        if parser == "httptools":
            def on_headers_complete(self) -> None:
                cast(Dict[str, Any], self.scope)[DISCONNECT_KEY] = DisconnectWatch()  # the scope the request's cycle gets
                super().on_headers_complete()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol
