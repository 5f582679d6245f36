"""The proxy's HTTP client to its upstreams, behind one small interface, in two makes:
``httpx`` and ``aiohttp`` (``[server] upstream_client``). Both send exactly the headers
they are given (no user-agent, accept-encoding or content-type of their own), never
follow redirects, never decompress, and report failures as three exceptions:

- ``UpstreamTimeout``: no answer (headers) within the timeout;
- ``UpstreamUnreachable``: no answer for any other reason (refused, reset, protocol);
- ``UpstreamBroken`` (from ``Answer.iter_raw``): the answer broke off or stalled midway
  (``timeout`` says which).

Cancelling a ``send`` closes its connection: the upstream sees the request end.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, List, Optional, Tuple

#: (name, value) pairs, each str or bytes (a str value is Latin-1 text, as in RequestContext).
Headers = List[Tuple[Any, Any]]

#: The makes ``make_client`` knows.
CLIENTS = ("httpx", "aiohttp")


class UpstreamTimeout(Exception):
    """No answer within the timeout."""


class UpstreamUnreachable(Exception):
    """No answer: refused, reset, or not HTTP."""


class UpstreamBroken(Exception):
    """The answer broke off (``timeout`` False) or stalled past the timeout (True) midway."""

    def __init__(self, cause: BaseException, timeout: bool):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause_name = type(cause).__name__
        self.timeout = timeout


class Answer:
    """An upstream's answer whose body is still to be read."""

    status_code: int
    #: The headers as they came: (name, value) bytes, repeats and order kept.
    raw_headers: Headers

    def header(self, name: str, default: str = "") -> str:
        key = name.lower().encode("latin-1")
        for header, value in self.raw_headers:
            if header.lower() == key:
                return value.decode("latin-1")
        return default

    def iter_raw(self) -> AsyncIterator[bytes]:  # pragma: no cover - the makes implement it
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover
        raise NotImplementedError


# --- httpx ----------------------------------------------------------------------------------------


class _HttpxAnswer(Answer):
    def __init__(self, response: Any):
        self._response = response
        self.status_code = response.status_code
        self.raw_headers = list(response.headers.raw)

    async def iter_raw(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamBroken(exc, isinstance(exc, httpx.TimeoutException)) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxClient:
    def __init__(self, max_connections: int, timeout_s: float):
        import httpx

        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(limits=limits, timeout=timeout_s, follow_redirects=False)
        for name in list(self._client.headers):  # httpx's defaults (user-agent, accept-encoding, ...)
            del self._client.headers[name]

    async def send(self, method: str, url: str, headers: Headers, content: bytes) -> Answer:
        import httpx

        try:
            response = await self._client.send(self._client.build_request(method, url, headers=headers, content=content), stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnreachable(type(exc).__name__) from exc
        return _HttpxAnswer(response)

    async def aclose(self) -> None:
        await self._client.aclose()


# --- aiohttp --------------------------------------------------------------------------------------


class _AiohttpAnswer(Answer):
    def __init__(self, response: Any):
        self._response = response
        self.status_code = response.status
        self.raw_headers = list(response.raw_headers)

    async def iter_raw(self) -> AsyncIterator[bytes]:
        import asyncio

        import aiohttp

        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamBroken(exc, True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamBroken(exc, False) from exc

    async def aclose(self) -> None:
        self._response.release() if self._response.content.at_eof() else self._response.close()


class AiohttpClient:
    """aiohttp's client: about a third of httpx's CPU per request (measured here, 142 vs
    482 us). aiohttp writes header values as UTF-8, so a request whose header values are
    not all valid UTF-8 (so would not go out byte for byte) is sent with httpx instead."""

    # aiohttp adds these unless told not to: the upstream gets exactly the shaped headers.
    _SKIP = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})

    def __init__(self, max_connections: int, timeout_s: float):
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._session: Optional[Any] = None
        self._byte_exact: Optional[HttpxClient] = None

    def _open(self) -> Any:
        import aiohttp

        if self._session is None:  # made on the event loop that uses it
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s, sock_read=self._timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                                  skip_auto_headers=self._SKIP)
        return self._session

    async def send(self, method: str, url: str, headers: Headers, content: bytes) -> Answer:
        import asyncio

        import aiohttp
        from multidict import CIMultiDict

        try:
            sent = CIMultiDict((_text(name, "ascii"), _text(value, "utf-8")) for name, value in headers)
        except UnicodeDecodeError:  # aiohttp would re-encode these bytes: httpx sends them as they are
            if self._byte_exact is None:
                self._byte_exact = HttpxClient(self._max_connections, self._timeout_s)
            return await self._byte_exact.send(method, url, headers, content)
        session = self._open()
        try:
            response = await session.request(method, url, headers=sent, data=content or None, allow_redirects=False)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(type(exc).__name__) from exc
        return _AiohttpAnswer(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._byte_exact is not None:
            await self._byte_exact.aclose()


def _text(value: Any, encoding: str) -> str:
    """A header name or value as text (host types keep str or bytes as given)."""
    return value if isinstance(value, str) else bytes(value).decode(encoding)


def make_client(kind: str, max_connections: int, timeout_s: float) -> Any:
    """The client of make ``kind`` (one of CLIENTS)."""
    if kind == "aiohttp":
        return AiohttpClient(max_connections, timeout_s)
    return HttpxClient(max_connections, timeout_s)
