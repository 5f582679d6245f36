"""Server-sent events, read incrementally across chunk boundaries (the WHATWG rules the
Anthropic API's streams follow: events end at a blank line; lines end at LF, CRLF or CR).

``SseReader.feed(chunk)`` returns each complete event as its raw bytes (kept, so an event
a plugin leaves unchanged goes out byte for byte) and its ``cclb_wire.SseEvent`` (name and
data; several ``data:`` lines join with LF), or None for a block without data (a comment). ``encode_event`` writes an event a plugin made.
``SseEventCounter.count(chunk)`` counts the events that end in a chunk, for observe.
"""

from __future__ import annotations

import re
from typing import Iterator, List, Optional, Tuple, Union

import cclb_wire as cw

# An event ends at the first blank line: two line ends in a row, of any of the three kinds.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


def parse_event(raw: bytes) -> Optional[cw.SseEvent]:
    """The name and data of one event's lines (comments and other fields are skipped);
    None for a block with no ``data:`` line (a client dispatches no event for it)."""
    name = b""
    data: List[bytes] = []
    for line in _LINE_END.split(raw):
        field, colon, value = line.partition(b":")
        if not colon:
            field, value = line, b""
        elif value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value
        elif field == b"data":
            data.append(value)
    if not data:
        return None
    return cw.SseEvent(name.decode("utf-8", "replace"), b"\n".join(data))


def other_fields(raw: bytes) -> bytes:
    """The lines of an event that are not ``event:`` or ``data:`` (``id:``, ``retry:``,
    comments), each ending in LF: a replacement keeps them, so a client's ``Last-Event-ID``
    still works."""
    kept = [
        line + b"\n"
        for line in _LINE_END.split(raw)
        if line and line.partition(b":")[0] not in (b"event", b"data")
    ]
    return b"".join(kept)


def encode_event(event: cw.SseEvent) -> bytes:
    """An event as SSE bytes: ``event:`` (if named), one ``data:`` line per line of data."""
    lines = [b"event: " + event.event.encode("utf-8")] if event.event else []
    lines += [b"data: " + line for line in _LINE_END.split(event.data)]
    return b"\n".join(lines) + b"\n\n"


def _event_ends(buffer: Union[bytes, bytearray], start: int = 0) -> Iterator["re.Match[bytes]"]:
    """The event ends in ``buffer`` from ``start`` that are final: a CR that ends the buffer
    waits for the next chunk, since an LF after it would make it a CRLF."""
    for match in _EVENT_END.finditer(buffer, start):
        if match.end() == len(buffer) and buffer[-1] == 0x0D:
            return
        yield match


class SseEventCounter:
    """How many events end in each chunk of a stream (an observe ``Chunk``'s
    ``event_count``), by the same rules as SseReader, without keeping the events: only the
    up to three bytes after the last event end that may begin the next one. Comments and
    blocks without data count too: they end at a blank line like any event."""

    def __init__(self) -> None:
        self._tail = b""

    def count(self, chunk: bytes) -> int:
        data = self._tail + chunk
        ended, last = 0, 0
        for match in _event_ends(data):
            ended, last = ended + 1, match.end()
        self._tail = data[max(last, len(data) - 3) :]
        return ended


class SseEventTooLarge(ValueError):
    """One event grew past the reader's limit without ending: the upstream is broken."""


class SseReader:
    """Complete events out of a stream's chunks; a partial event waits for the next chunk.
    ``limit`` bounds one event's bytes (a stream that never ends an event is not buffered
    without end): past it, ``feed`` raises SseEventTooLarge.

    Each byte is scanned once or twice, never once per chunk: a scan resumes three bytes
    before where the last one stopped (an event end is at most four bytes). A CR that ends
    the buffer waits for the next chunk, since an LF after it would make it a CRLF."""

    def __init__(self, limit: int = 16 << 20) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer searched for an event end, without a match
        self._first = True  # a UTF-8 BOM may start the stream (WHATWG: it is skipped)

    def feed(self, chunk: bytes) -> List[Tuple[bytes, Optional[cw.SseEvent]]]:
        self._buffer += chunk
        events = []
        start = 0
        for match in _event_ends(self._buffer, max(0, self._scanned - 3)):
            block = bytes(self._buffer[start : match.start()])
            if self._first and block.startswith(_BOM):
                block = block[len(_BOM) :]
            self._first = False
            events.append((bytes(self._buffer[start : match.end()]), parse_event(block)))
            start = match.end()
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if len(self._buffer) > self.limit:
            raise SseEventTooLarge(f"an SSE event over {self.limit} bytes")
        return events

    def rest(self) -> bytes:
        """What the stream ended with that is not a complete event (sent as it came)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest
