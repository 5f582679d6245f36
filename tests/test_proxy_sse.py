"""The proxy's SSE reader: events split anywhere across chunks come out whole and the same,
nothing is lost, each byte is scanned a bounded number of times, and an upstream that never
ends an event ends the client's stream with an error event, not a dropped connection."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cclb_wire as cw
from test_proxy_contract_1_0 import body, config_1_0
from test_proxy_e2e import ServerThread, proxy_app, served_lifespan, start_proxy, upstream  # noqa: F401
from test_proxy_hardening import _requests_metric

from cclb_proxy import sse

# Every line-end kind, a comment, an id and an event with two data lines.
STREAM = (
    b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n"
    b": keep-alive\n\n"
    b"id: 7\nevent: delta\ndata: one\ndata: two\n\n"
    b"event: cr\rdata: x\r\r"
    b"data: last\n\n"
)
EXPECTED = [
    cw.SseEvent("message_start", b'{"a":1}'),
    None,
    cw.SseEvent("delta", b"one\ntwo"),
    cw.SseEvent("cr", b"x"),
    cw.SseEvent("", b"last"),
]


def read_all(chunks: List[bytes]) -> tuple:
    reader = sse.SseReader()
    out = [event for chunk in chunks for event in reader.feed(chunk)]
    return out, reader.rest()


def test_a_whole_stream_gives_each_event_with_its_raw_bytes():
    events, rest = read_all([STREAM])
    assert [event for _, event in events] == EXPECTED
    assert b"".join(raw for raw, _ in events) == STREAM and rest == b""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_events_split_anywhere_across_chunks_come_out_the_same(cuts):
    cuts = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    events, rest = read_all(chunks)
    assert [event for _, event in events] == EXPECTED
    assert b"".join(raw for raw, _ in events) + rest == STREAM  # nothing lost, nothing added


def test_a_cr_that_ends_a_chunk_waits_to_see_if_an_lf_follows():
    # "\n\r" then "\n": the blank line is LF + CRLF, so the event's bytes end with the LF.
    events, rest = read_all([b"data: a\n\r", b"\ndata: b\n\n"])
    assert [raw for raw, _ in events] == [b"data: a\n\r\n", b"data: b\n\n"] and rest == b""


def test_a_byte_order_mark_does_not_hide_the_first_event():
    events, _ = read_all([b"\xef\xbb\xbf", b"event: x\ndata: 1\n\n"])
    assert events == [(b"\xef\xbb\xbfevent: x\ndata: 1\n\n", cw.SseEvent("x", b"1"))]


def test_each_byte_is_scanned_a_bounded_number_of_times(monkeypatch):
    """One 1 MiB event in 1 KiB chunks: rescanning the buffer per chunk would search ~512 MiB."""
    scanned = []
    real = sse._EVENT_END

    class Counting:
        def finditer(self, buffer: Any, pos: int = 0) -> Any:
            scanned.append(len(buffer) - pos)
            return real.finditer(buffer, pos)

    monkeypatch.setattr(sse, "_EVENT_END", Counting())
    event = b"data: " + b"x" * (1 << 20) + b"\n\n"
    events, rest = read_all([event[i : i + 1024] for i in range(0, len(event), 1024)])
    assert [raw for raw, _ in events] == [event] and rest == b""
    assert sum(scanned) <= 2 * len(event)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_the_event_counter_counts_each_event_once_wherever_the_chunks_split(cuts):
    # Five blocks end in STREAM (a comment among them), with LF, CRLF and CR line ends;
    # the old count of b"\n\n" per chunk found 3 of them in the whole stream.
    cuts = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    counter = sse.SseEventCounter()
    counts = [counter.count(chunk) for chunk in chunks]
    assert sum(counts) == len(EXPECTED)
    # ... each in the chunk where the event's end is complete (what SseReader says too)
    reader = sse.SseReader()
    assert counts == [len(reader.feed(chunk)) for chunk in chunks]


def test_an_event_past_the_limit_is_refused():
    reader = sse.SseReader(limit=100)
    assert reader.feed(b"data: " + b"x" * 90) == []
    with pytest.raises(sse.SseEventTooLarge, match="an SSE event over 100 bytes"):
        reader.feed(b"x" * 20)


async def _endless_event(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """An SSE answer whose one event never ends."""
    if await served_lifespan(scope, receive, send):
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"event: message_start\ndata: ", "more_body": True})
    for _ in range(64):
        await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_an_upstream_event_that_never_ends_gives_the_client_an_error_event(tmp_path, start_proxy, monkeypatch):
    monkeypatch.setattr(proxy_app, "SseReader", lambda: sse.SseReader(limit=16 << 10))
    with ServerThread(_endless_event) as endless:
        proxy = start_proxy(config_1_0(tmp_path, endless.url))  # a 1.0 shape plugin reads the events
        answer = proxy.post(body(stream=True))
    assert answer.status_code == 200  # the headers had gone out
    assert answer.content.startswith(b"event: error\ndata: ")
    error = json.loads(answer.content.split(b"data: ", 1)[1])
    assert error["error"]["type"] == "api_error" and f"an SSE event over {16 << 10} bytes" in error["error"]["message"]
    assert _requests_metric(proxy).get("upstream_error") == 1
