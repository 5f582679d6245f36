"""A fake Anthropic Messages API upstream, for the proxy's tests and load test.

It records what it receives and answers deterministically:

- ``"stream": true`` in the JSON body: an SSE stream, one event per chunk with a small
  delay between them: message_start, content_block_start, N content_block_delta,
  content_block_stop, message_delta, message_stop. Every event carries an SSE ``id:``
  numbering it from 0, so a client can check that none was lost or reordered.
- otherwise: a JSON message with ``usage``.

When the request declares ``tools``, the answer also calls the first one (a ``tool_use``
block with that tool's name, as the API does): a test sees which name the upstream got.

Request headers steer it: ``x-fake-deltas`` (N, default 5), ``x-fake-delay-ms``
(between events, default 2), ``x-fake-head-delay-ms`` (before the answer starts, default
0), ``x-fake-status`` (answer that status with an Anthropic-style error).

    python examples/proxy/fake_upstream.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

INPUT_TOKENS = 17
CACHE_READ_TOKENS = 4096


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: bytes
    headers: Tuple[Tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> List[bytes]:
        key = name.lower().encode("latin-1")
        return [v for k, v in self.headers if k == key]


def tool_use(name: str) -> Dict[str, Any]:
    return {"type": "tool_use", "id": "toolu_fake", "name": name, "input": {}}


def sse_events(deltas: int, tool: Optional[str] = None) -> List[Tuple[str, Dict[str, Any]]]:
    """The stream's events, in order (clients compare against this)."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1, "cache_read_input_tokens": CACHE_READ_TOKENS},
        },
    }
    events: List[Tuple[str, Dict[str, Any]]] = [
        ("message_start", start),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ]
    for i in range(deltas):
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"chunk-{i} "}}))
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool is not None:
        events.append(("content_block_start", {"type": "content_block_start", "index": 1, "content_block": tool_use(tool)}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": deltas}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def sse_bytes(seq: int, name: str, data: Dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def message(deltas: int, tool: Optional[str] = None) -> Dict[str, Any]:
    return {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake",
        "content": [{"type": "text", "text": "".join(f"chunk-{i} " for i in range(deltas))}]
        + ([tool_use(tool)] if tool is not None else []),
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": deltas, "cache_read_input_tokens": CACHE_READ_TOKENS},
    }


class FakeUpstream:
    """A plain ASGI app. ``received`` holds the last ``keep`` requests (0: none kept)."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self.received: List[Received] = []
        self.count = 0
        #: Streams cut short because the client (the proxy) closed the connection.
        self.aborted = 0

    async def __call__(self, scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        got = Received(scope["method"], scope["path"], scope["query_string"], tuple(scope["headers"]), body)
        self.count += 1
        if self.keep:
            self.received.append(got)
            del self.received[: -self.keep]
        status = int((got.header("x-fake-status") or [b"200"])[0])
        deltas = int((got.header("x-fake-deltas") or [b"5"])[0])
        delay = int((got.header("x-fake-delay-ms") or [b"2"])[0]) / 1000
        head_delay = int((got.header("x-fake-head-delay-ms") or [b"0"])[0]) / 1000
        gone = asyncio.ensure_future(_disconnected(receive))  # the client (the proxy) closed the connection
        try:
            if head_delay:
                await asyncio.wait({gone}, timeout=head_delay)
                if gone.done():
                    self.aborted += 1
                    return
            await self._answer(send, got, status, deltas, delay, body, gone)
        finally:
            gone.cancel()

    async def _answer(self, send: Callable[..., Any], got: Received, status: int, deltas: int, delay: float,
                      body: bytes, gone: "asyncio.Future[None]") -> None:
        if status != 200:
            error = {"type": "error", "error": {"type": "api_error", "message": f"fake error {status}"}}
            await _answer(send, status, b"application/json", json.dumps(error).encode())
            return
        stream, tool = False, None
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            document = None
        if isinstance(document, dict):
            stream = bool(document.get("stream"))
            tools = document.get("tools")
            if isinstance(tools, list) and tools and isinstance(tools[0], dict) and isinstance(tools[0].get("name"), str):
                tool = tools[0]["name"]
        if not stream:
            answer = json.dumps(message(deltas, tool)).encode()
            await _answer(send, 200, b"application/json", answer, [(b"request-id", b"req_fake")])
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"), (b"request-id", b"req_fake"),
        ]})
        for seq, (name, data) in enumerate(sse_events(deltas, tool)):
            if seq and delay:
                await asyncio.sleep(delay)
            if gone.done():  # stop streaming to a closed connection
                self.aborted += 1
                return
            await send({"type": "http.response.body", "body": sse_bytes(seq, name, data), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Callable[..., Any]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(send: Callable[..., Any], status: int, content_type: bytes, body: bytes, extra: Optional[List[Tuple[bytes, bytes]]] = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def parse_sse(data: bytes) -> List[Tuple[int, str, Dict[str, Any]]]:
    """(id, event, data) of every event in a complete SSE body."""
    events = []
    for block in data.split(b"\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        events.append((int(fields[b"id"]), fields[b"event"].decode(), json.loads(fields[b"data"])))
    return events


def check_stream(data: bytes, deltas: int, tool: Optional[str] = None) -> Optional[str]:
    """None if ``data`` is exactly the stream for ``deltas`` (and ``tool``), else what is wrong."""
    try:
        got = parse_sse(data)
    except (ValueError, KeyError) as exc:
        return f"unparsable stream: {exc}"
    expected = sse_events(deltas, tool)
    ids = [seq for seq, _, _ in got]
    if ids != list(range(len(expected))):
        return f"event ids {ids[:8]}... (of {len(ids)}), expected 0..{len(expected) - 1}"
    if [(name, data) for _, name, data in got] != expected:
        return "event content differs"
    return None


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="A fake Anthropic Messages API upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port")
    args = parser.parse_args()
    # IPPROTO_TCP, not 0: asyncio then disables Nagle per connection (see app.bind).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise SystemExit(f"fake upstream: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"fake upstream listening on http://{host}:{port}", flush=True)
    app = FakeUpstream(keep=0)
    # Idle connections outlive the proxy's (httpx keeps them 5 s), as a real API's do: else
    # the proxy may reuse a connection this server is closing, and that request fails.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=75)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
