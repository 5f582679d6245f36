"""The proxy's httptools upstream client (examples/proxy/upstream_client.py) against raw
loopback servers that answer exactly the bytes each case needs: what it sends, how it
frames answers, when it reuses a connection, and which of the three failures it reports.

The proxy's end-to-end tests run through this client too (it is the default); these pin
the HTTP/1.1 cases a well-behaved fake upstream never produces."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, List, Optional, Tuple

import pytest

from test_proxy_e2e import proxy_app  # noqa: F401  (loads examples/proxy as cclb_proxy)

from cclb_proxy.upstream_client import HttptoolsClient, UpstreamBroken, UpstreamTimeout, UpstreamUnreachable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running ``handler`` per connection; it records each request head."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.heads: List[bytes] = []
        self.connections = 0
        self.server: Optional[asyncio.AbstractServer] = None

    async def __aenter__(self) -> "Server":
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """Each request gets the next answer, as raw bytes, on whichever connection it came;
    ``then_close``: each connection is closed after one answer."""

    def make(server: Server) -> Handler:
        queue = iter(answers)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(next(queue))
                await writer.drain()
                if then_close:
                    return

        return handler

    return make


async def serve(make: Callable[[Server], Handler]) -> Server:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = make(server)
    return await server.__aenter__()


async def fetch(client: HttptoolsClient, url: str, method: str = "POST", headers: Optional[list] = None,
                body: bytes = b"{}") -> Tuple[int, list, bytes]:
    answer = await client.send(method, url, headers or [(b"content-type", b"application/json")], body)
    data = b"".join([chunk async for chunk in answer.iter_raw()])
    await answer.aclose()
    return answer.status_code, answer.raw_headers, data


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_the_request_goes_out_as_given_with_host_and_length():
    async def main() -> None:
        server = await serve(answering(OK))
        client = HttptoolsClient(8, 5.0)
        headers = [(b"X-Trace", b"a"), ("x-trace", "b"), (b"x-raw", b"\xff\xfe latin-1")]
        assert await fetch(client, server.url + "/v1/messages?beta=true", headers=headers, body=b"hello")
        head = server.heads[0]
        port = server.url.rsplit(":", 1)[1].encode()
        assert head == (b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: 127.0.0.1:" + port + b"\r\n"
                        b"X-Trace: a\r\nx-trace: b\r\nx-raw: \xff\xfe latin-1\r\ncontent-length: 5\r\n\r\n")
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_answers_framed_every_way():
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"

    async def main() -> None:
        server = await serve(answering(chunked, interim, no_content, OK))
        client = HttptoolsClient(8, 5.0)
        assert await fetch(client, server.url) == (200, [(b"transfer-encoding", b"chunked")], b"abcde")
        assert await fetch(client, server.url) == (200, [(b"content-length", b"2")], b"ok")  # the interim answer skipped
        assert (await fetch(client, server.url))[::2] == (204, b"")
        assert (await fetch(client, server.url))[::2] == (200, b"ok")
        assert server.connections == 1  # each framed answer left the connection reusable
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_an_answer_delimited_by_the_connections_end():
    async def main() -> None:
        server = await serve(answering(*[b"HTTP/1.1 200 OK\r\n\r\nuntil the end"] * 2, then_close=True))
        client = HttptoolsClient(8, 5.0)
        assert await fetch(client, server.url) == (200, [], b"until the end")
        assert await fetch(client, server.url) == (200, [], b"until the end")
        assert server.connections == 2  # such a connection is not reused
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_the_answer_to_head_has_no_body():
    async def main() -> None:
        server = await serve(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", OK))
        client = HttptoolsClient(8, 5.0)
        assert (await fetch(client, server.url, "HEAD", body=b""))[::2] == (200, b"")
        assert server.heads[0].startswith(b"HEAD / HTTP/1.1\r\n") and b"content-length" not in server.heads[0]
        assert (await fetch(client, server.url))[::2] == (200, b"ok")
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_a_connection_the_upstream_closed_while_idle_is_not_reused():
    async def main() -> None:
        server = await serve(answering(OK, OK, then_close=True))
        client = HttptoolsClient(8, 5.0)
        assert (await fetch(client, server.url))[::2] == (200, b"ok")
        await asyncio.sleep(0.05)  # the upstream closes the kept-alive connection meanwhile
        assert (await fetch(client, server.url))[::2] == (200, b"ok")
        assert server.connections == 2
        await client.aclose()
        await server.__aexit__()

    run(main())


HALF = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"


def misbehaving(reply: bytes, hold_s: float) -> Callable[[Server], Handler]:
    """Reads a request, writes ``reply``, then holds the connection ``hold_s`` seconds and closes it."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(reply)
            await writer.drain()
            await asyncio.sleep(hold_s)

        return handler

    return make


def test_the_three_failures():
    async def main() -> None:
        client = HttptoolsClient(8, 0.2)
        server = await serve(misbehaving(b"", 5))  # no answer within the timeout
        with pytest.raises(UpstreamTimeout):
            await client.send("POST", server.url, [], b"{}")
        await server.__aexit__()
        server = await serve(misbehaving(b"SMTP ready\r\n\r\n", 1))  # not HTTP
        with pytest.raises(UpstreamUnreachable, match="HttpParser"):
            await client.send("POST", server.url, [], b"{}")
        await server.__aexit__()
        for hold_s, timeout in ((5, True), (0, False)):  # half an answer, then a stall or the end
            server = await serve(misbehaving(HALF, hold_s))
            answer = await client.send("POST", server.url, [], b"{}")
            with pytest.raises(UpstreamBroken) as broken:
                async for _ in answer.iter_raw():
                    pass
            assert broken.value.timeout is timeout
            await answer.aclose()
            url = server.url
            await server.__aexit__()
        with pytest.raises(UpstreamUnreachable, match="ConnectionRefused"):
            await client.send("POST", url, [], b"{}")  # nobody listens there now
        with pytest.raises(UpstreamUnreachable, match="InvalidURL"):
            await client.send("POST", "ftp://127.0.0.1/", [], b"")
        await client.aclose()

    run(main())


def test_a_cancelled_send_closes_its_connection_and_frees_its_place():
    async def main() -> None:
        closed = asyncio.Event()

        async def make(server: Server) -> Handler:
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await server.read_request(reader)
                await reader.read()  # returns when the client closes the connection
                closed.set()

            return handler

        server = Server(lambda r, w: asyncio.sleep(0))
        server.handler = await make(server)
        await server.__aenter__()
        client = HttptoolsClient(1, 5.0)  # one request at a time
        sending = asyncio.ensure_future(client.send("POST", server.url, [], b"{}"))
        await asyncio.sleep(0.05)
        sending.cancel()
        await asyncio.wait_for(closed.wait(), 2)  # the upstream saw the request end
        second = asyncio.ensure_future(client.send("POST", server.url, [], b"{}"))
        await asyncio.sleep(0.05)
        assert len(server.heads) == 2  # the one place was given back
        second.cancel()
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_a_request_that_waits_too_long_for_a_connection_times_out():
    """max_connections requests at once; the next waits upstream_timeout_s for a place, then
    fails as a timeout (PoolTimeout); a place given back serves the next."""

    async def main() -> None:
        server = await serve(misbehaving(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab", 5))  # half a body, held
        client = HttptoolsClient(1, 0.2)  # one request at a time
        first = await client.send("POST", server.url, [], b"{}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout, match="PoolTimeout"):
            await asyncio.wait_for(client.send("POST", server.url, [], b"{}"), 5)  # a regression fails, not hangs
        assert loop.time() - started >= 0.15  # it waited for a place first
        await first.aclose()
        third = await client.send("POST", server.url, [], b"{}")
        assert third.status_code == 200 and len(server.heads) == 2
        await third.aclose()
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_nothing_past_the_end_of_an_answer_is_taken():
    """An upstream that sends more than the answer in one read (found by review: the
    extra became part of this answer, and the connection was reused for the next)."""
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Evil: 1\r\n\r\nevil"

    async def main() -> None:
        server = await serve(answering(OK + second, b"HTTP/1.1 304 Not Modified\r\n\r\n" + second, OK, OK))
        client = HttptoolsClient(8, 5.0)
        assert await fetch(client, server.url) == (200, [(b"content-length", b"2")], b"ok")
        assert await fetch(client, server.url) == (304, [], b"")
        assert (await fetch(client, server.url))[::2] == (200, b"ok")
        assert server.connections == 3  # neither connection that carried extra bytes was reused
        await client.aclose()
        await server.__aexit__()

    run(main())


def test_framing_edge_cases():
    chunked_with_trailer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nx-trailer: t\r\n\r\n"
    gzip_last = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nuntil the end"  # RFC 9112 6.3: read to close

    async def main() -> None:
        client = HttptoolsClient(8, 5.0)
        server = await serve(answering(chunked_with_trailer))
        assert await fetch(client, server.url) == (200, [(b"transfer-encoding", b"chunked")], b"ab")  # a trailer is no header
        await server.__aexit__()
        server = await serve(answering(gzip_last, then_close=True))
        assert await fetch(client, server.url) == (200, [(b"transfer-encoding", b"chunked, gzip")], b"until the end")
        await server.__aexit__()
        await client.aclose()

    run(main())


def test_what_would_change_how_the_head_is_read_is_refused():
    from cclb_proxy.upstream_client import _request_bytes, _target

    async def main() -> None:
        server = await serve(answering(OK))
        client = HttptoolsClient(8, 5.0)
        split = [[(b"x-a", b"1\r\nx-injected: 1")], [(b"x-a\nb", b"1")], [(b"x-a", b"\x00")]]  # would split the head
        unread = [[(b"x a", b"1")], [(b"", b"1")], [(b"x:y", b"1")], [(b"host", b"a"), (b"Host", b"b")], [("x", "\u20ac")]]
        cases = [("GET / HTTP/1.1\r\nX: 1\r\n\r\nGET", [], "InvalidMethod")] + [("POST", headers, "InvalidHeader") for headers in split]
        for method, headers, refusal in cases + [("GET", headers, "InvalidHeader") for headers in unread]:
            with pytest.raises(UpstreamUnreachable, match=refusal):
                await client.send(method, server.url + "/", headers, b"")
        assert server.heads == []
        await client.aclose()
        await server.__aexit__()

    run(main())
    # Framing is the client's own; a target keeps visible ASCII and escapes the rest byte for byte.
    head = _request_bytes("POST", "/", "a", [(b"Content-Length", b"99"), (b"transfer-encoding", b"chunked")], b"ab")
    assert head == b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nab"
    assert _target("http://a.example/\xe9t\xe9 x?q=%41")[1:] == ("/%E9t%E9%20x?q=%41", "a.example")
    assert _target("http://b\u00fccher.example:8080/")[2] == "xn--bcher-kva.example:8080"


def test_only_short_urls_are_kept_parsed():
    from cclb_proxy import upstream_client

    async def main() -> None:
        server = await serve(answering(OK, OK))
        client = HttptoolsClient(8, 5.0)
        assert (await fetch(client, server.url + "/v1/messages"))[::2] == (200, b"ok")
        assert (await fetch(client, server.url + "/v1/messages?q=" + "a" * upstream_client.TARGET_CACHE_MAX_LENGTH))[::2] == (200, b"ok")
        assert list(client._targets) == [server.url + "/v1/messages"]  # the long one was not kept
        await client.aclose()
        await server.__aexit__()

    run(main())
