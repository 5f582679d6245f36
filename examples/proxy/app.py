"""A small reverse proxy for the Anthropic Messages API that runs cc-lb plugins.

Per request: authenticate the proxy's own key, build the RequestContext, filter the
upstreams, shape the request, forward it (aiohttp or httpx), stream the answer back, and
report every step to the observe hook. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Deque, Dict, Iterable, List, MutableMapping, Optional, Tuple, TypeVar, Union

import anyio
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import cclb_wire as cw
from cclb_wire.host_rules import STRIPPED_REQUEST_HEADERS as HOST_STRIPPED_HEADERS

from . import config as cfg
from .metrics import ProxyMetrics
from .server import DISCONNECT_KEY, DisconnectWatch, guarded
from .upstream_client import Answer, UpstreamBroken, UpstreamTimeout, UpstreamUnreachable, make_client, within
from .sse import SseEventCounter, SseEventTooLarge, SseReader, encode_event, other_fields

log = logging.getLogger("cclb_proxy")
#: One JSON line per request when ``[server] access_log`` is on.
access_log = logging.getLogger("cclb_proxy.access")
T = TypeVar("T")

#: Never handed to a plugin nor to an upstream: what the host strips anyway (the
#: downstream's credentials, the proxy's own key among them, and ``host``), the cookies,
#: and headers that belong to one connection, not to the request.
STRIPPED_REQUEST_HEADERS = HOST_STRIPPED_HEADERS | frozenset(
    b"cookie content-length connection keep-alive te trailer transfer-encoding upgrade proxy-connection"
    b" x-forwarded-for x-cclb-request-id".split()  # the proxy sends its own
)
#: Hop-by-hop headers of the upstream's answer: uvicorn frames the answer itself.
STRIPPED_RESPONSE_HEADERS = frozenset(
    b"connection keep-alive proxy-authenticate proxy-connection te trailer transfer-encoding upgrade".split()
)
# Percent-encoded '/', '\\' or '.': a path that hides a separator or a dot segment from the
# route match but not from the URL parser that builds the upstream URL.
_ENCODED_SEPARATOR = re.compile(rb"%(?:2[fF]|5[cC]|2[eE])")


def path_problem(raw_path: bytes) -> Optional[str]:
    """Why a request path may not be forwarded (None: it may). The path a plugin sees is
    the path that is sent, so nothing that a URL parser would normalise is let through."""
    if _ENCODED_SEPARATOR.search(raw_path):
        return "the path has a percent-encoded '/', '\\' or '.'"
    if b"\\" in raw_path:
        return "the path has a '\\'"
    if any(segment in (b".", b"..") for segment in raw_path.split(b"/")):
        return "the path has a '.' or '..' segment"
    if not raw_path.startswith(b"/v1/"):
        return "the path is outside /v1/"
    return None


def forwarded_for(scope: MutableMapping[str, Any]) -> bytes:
    """The client's ``X-Forwarded-For`` with the client's address appended (RFC 7239's
    convention for the de facto header)."""
    client = scope.get("client")
    address = (client[0] if client else "unknown").encode("latin-1")
    prior = [value.strip() for name, value in scope["headers"] if name == b"x-forwarded-for" and value.strip()]
    return b", ".join(prior + [address])


def connection_named(headers: Iterable[Tuple[bytes, bytes]]) -> frozenset:
    """The header names a ``Connection`` header lists: hop-by-hop, never forwarded (RFC 9110 §7.6.1)."""
    named = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(named)
HOOK_SAMPLES = 100_000
#: The proxy's request id, sent to the upstream and back to the client.
REQUEST_ID_HEADER = b"x-cclb-request-id"
#: Statuses that send a request to the next kept upstream (with 5xx), before any byte reached the client.
RETRY_STATUSES = frozenset({429, 529})
#: A non-streamed answer of at most this Content-Length is read whole, then sent at once.
BUFFERED_ANSWER_BYTES = 1 << 20
#: The methods the public listener forwards (under /v1/).
FORWARDED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
#: The smallest [host] pool_size with which the filter and shape instances are opened ahead
#: (two slots held; scopes may hold half the pool, the calls need the rest).
PREPARE_MIN_POOL = 8
#: Events a request holds back at most (_observe_later): a long stream's are observed in batches.
DEFERRED_EVENTS_MAX = 128
#: An upstream's failure warnings are logged at most once per this many seconds.
WARNING_INTERVAL_S = 5.0
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def api_error(status: int, kind: str, message: str, *, close: bool = False) -> JSONResponse:
    """Anthropic's error shape, so clients handle our errors like the API's. ``close``: the
    connection ends after it (what is left of the request is never read)."""
    headers = {"connection": "close"} if close else None
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status, headers=headers)


_HTTP_ERRORS = {404: "not_found_error", 405: "invalid_request_error"}


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in Anthropic's error shape."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    return api_error(status, _HTTP_ERRORS.get(status, "api_error"), str(detail))


class _Request:
    """One request's bookkeeping."""

    __slots__ = ("id", "started", "hook_s", "broken", "attempts", "upstream", "principal", "tokens", "observe_scope", "deferred",
                 "outcome")

    def __init__(self) -> None:
        self.id = f"req_{uuid.uuid4().hex}"
        self.started = time.perf_counter()
        self.hook_s = 0.0
        #: Why the upstream's answer broke off ("upstream_timeout", "upstream_error"), if it did.
        self.broken: Optional[str] = None
        #: Upstreams tried, and the name of the one that answered.
        self.attempts = 0
        self.upstream: Optional[str] = None
        #: For the access log: who asked (None: unauthenticated), and the usage read from the answer.
        self.principal: Optional[str] = None
        self.tokens: Tuple[Optional[int], ...] = (None,) * len(TOKEN_FIELDS)
        #: The observe plugin's instance for this request's events (None: a fresh one each).
        self.observe_scope: Optional[Any] = None
        #: Events held back until the answer is relayed (None: none are; see _observe_later).
        self.deferred: Optional[List[Any]] = None
        #: The requests metric's label of an answer read whole whose request ends later (_relay's finish).
        self.outcome: Any = None


class UsageScanner:
    """Token counts from the answer, when they are cheap to get: the JSON body of a
    non-streaming answer (up to 1 MiB), or the ``usage`` objects of an SSE stream's
    ``message_start`` / ``message_delta`` events. Anything else leaves them None."""

    LIMIT = 1 << 20

    def __init__(self, content_type: str, encoded: bool) -> None:
        self.sse = content_type.startswith("text/event-stream")
        self.enabled = not encoded and (self.sse or content_type.startswith("application/json"))
        self.usage: Dict[str, int] = {}
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not self.enabled:
            return
        self._buffer += chunk
        if not self.sse:
            self.enabled = len(self._buffer) <= self.LIMIT
            return
        # Only complete lines are read; the tail waits for the next chunk.
        end = self._buffer.rfind(b"\n") + 1
        if end:
            for line in bytes(self._buffer[:end]).split(b"\n"):
                if line.startswith(b"data:") and b'"usage"' in line:
                    with contextlib.suppress(ValueError, RecursionError):  # not ours to judge: the bytes pass on as they are
                        self._take(json.loads(line[5:]))
            del self._buffer[:end]

    def _take(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        message = event.get("message")
        usage = (message if isinstance(message, dict) else event).get("usage")
        if isinstance(usage, dict):
            self.usage.update((k, v) for k, v in usage.items() if k in TOKEN_FIELDS and isinstance(v, int) and v >= 0)

    def tokens(self) -> Tuple[Optional[int], ...]:
        if self.enabled and not self.sse and self._buffer:
            with contextlib.suppress(ValueError, RecursionError):
                self._take(json.loads(self._buffer))
        return tuple(self.usage.get(k) for k in TOKEN_FIELDS)


class Proxy:
    """The proxy: its plugin host, upstreams, keys, metrics and the Starlette app."""

    def __init__(self, config: cfg.ProxyConfig) -> None:
        self.config = config
        self.host = cw.PluginHost(config.host)
        self.metrics = ProxyMetrics(self.host)
        self.keys = {key.digest: key.principal for key in config.keys}
        self.upstreams = {upstream.id: upstream for upstream in config.upstreams}
        self.candidates = tuple(upstream.candidate for upstream in config.upstreams)
        self.adapters: Dict[str, Any] = {}
        #: Observe calls made (tests compare it with the host's stats).
        self.events_reported = 0
        #: (hook seconds, upstream attempts begun) per finished request, with debug_endpoints
        #: only (for GET /debug/hook-times).
        self.hook_samples: Deque[Tuple[float, int]] = collections.deque(maxlen=HOOK_SAMPLES)
        self._stamps: Dict[str, Tuple[int, int, int]] = {}
        self._reload_lock: Optional[asyncio.Lock] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: Dict[str, Tuple[Optional[float], int]] = {}  # key -> (last warning, held back since)
        self._open_scopes = 0  # instance scopes held by streams in flight
        self.client: Optional[Any] = None  # upstream_client.make_client(...), made on the serving loop
        # The first registration happens before serving: a bad plugin stops the start.
        for slot in config.slots.values():
            self._stamps[slot.hook] = _stamp(slot.path)
            self.adapters[slot.hook] = self._register(slot)
        #: upstream name -> its health as the proxy saw it: consecutive failures, the last error.
        self.upstream_health: Dict[str, Dict[str, Any]] = {
            upstream.name: {"consecutive_failures": 0, "last_error": None, "last_error_at": None} for upstream in config.upstreams
        }
        public = [Route("/v1/{rest:path}", self.forward, methods=sorted(FORWARDED_METHODS))]
        admin = [Route("/healthz", self.health), Route("/metrics", self.metrics_endpoint)]
        if config.debug_endpoints:
            admin += [Route("/debug/hook-times", self.hook_times),
                      Route("/debug/hook-times/reset", self.reset_hook_times, methods=["POST"])]
        handlers = {HTTPException: http_error}
        self._routed = Starlette(routes=public, lifespan=self._lifespan, exception_handlers=handlers)
        #: The admin listener ([admin] host/port, loopback by default): health, metrics, debug.
        self.admin_app = Starlette(routes=admin, exception_handlers=handlers)
        for app in (self._routed, self.admin_app):
            app.router.redirect_slashes = False  # no redirect may take its Location from the Host header

    async def app(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """The public listener: the Messages API and nothing else. A request the route takes
        goes straight to ``forward`` (Starlette's router and middleware stack cost tens of
        microseconds per request); the rest (lifespan, 404, 405) goes through Starlette."""
        if scope["type"] == "http" and scope["method"] in FORWARDED_METHODS and scope["path"].startswith("/v1/"):
            try:
                response = await self.forward(scope, receive)
            except Exception:  # a bug: one logged traceback, and the client gets the API's error shape
                log.exception("the request failed")
                response = api_error(500, "api_error", "internal proxy error")
            await response(scope, receive, send)
            return
        await self._routed(scope, receive, send)

    # --- plugins and reloads -----------------------------------------------------------

    def _register(self, slot: cfg.PluginSlot) -> Any:
        register = getattr(self.host, f"register_{slot.hook}")
        return register(slot.hook, slot.name, slot.path, failure_policy=slot.failure_policy)

    async def reload(self, hooks: Optional[Iterable[str]] = None, why: str = "SIGHUP") -> None:
        """Register the slots' files again. The host swaps a slot atomically (calls in
        flight keep the old plugin) and ignores identical bytes; a module it rejects
        leaves the slot as it was. Compiling takes up to 100s of ms: it runs in a thread."""
        assert self._reload_lock is not None
        async with self._reload_lock:  # one reload at a time, in the order asked
            for hook in list(hooks or self.config.slots):
                slot = self.config.slots[hook]
                self._stamps[hook] = _stamp(slot.path)  # before reading: a later write is seen next poll
                before = self.adapters[hook].plugin_id
                try:
                    adapter = await asyncio.to_thread(self._register, slot)
                except Exception as exc:  # the slot keeps its plugin; the next change is tried again
                    log.error("%s: reloading the %s plugin failed, keeping the old one: %s", why, hook, exc,
                              exc_info=not isinstance(exc, cw.CclbWireError))  # a traceback only for surprises
                    self.metrics.reloads.labels(hook, "failed").inc()
                    continue
                self.adapters[hook] = adapter
                result = "unchanged" if adapter.plugin_id == before else "swapped"
                log.info("%s: %s plugin %s (%s)", why, hook, result, adapter.plugin_id)
                self.metrics.reloads.labels(hook, result).inc()

    def request_reload(self, why: str = "SIGHUP") -> None:
        task = asyncio.get_running_loop().create_task(self.reload(why=why))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _poll_files(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_poll_s)
            changed = [hook for hook, slot in self.config.slots.items() if _stamp(slot.path) != self._stamps[hook]]
            if changed:
                await self.reload(changed, why="file change")

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._reload_lock = asyncio.Lock()
        # The upstream gets the shaped headers and our credentials, nothing of the client's own.
        self.client = make_client(self.config.upstream_client, self.config.max_connections, self.config.upstream_timeout_s)
        loop = asyncio.get_running_loop()
        # Signal handlers can only be set from the main thread (and Windows has no SIGHUP).
        on_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP")
        if on_main:
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        poller = loop.create_task(self._poll_files()) if self.config.reload_poll_s > 0 and self.config.slots else None
        try:
            yield
        finally:
            if on_main:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in [poller, *self._tasks]:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.client.aclose()
            self.host.close()

    # --- hook calls -----------------------------------------------------------------------

    async def _call(self, request: _Request, hook: str, fn: Callable[..., T], *args: Any) -> T:
        """Inline by default: a hook call takes microseconds, less than a thread hop, and
        the host's deadline bounds the worst case. ``offload_to_thread`` is for slow
        plugins (guest code runs without the GIL, so the loop keeps serving)."""
        started = time.perf_counter()
        try:
            if self.config.slots[hook].offload_to_thread:
                return await asyncio.to_thread(fn, *args)
            return fn(*args)
        finally:
            request.hook_s += time.perf_counter() - started

    async def observe(self, request: _Request, event: Any) -> None:
        """PASS_THROUGH: a failure is logged and counted by the host. FAIL_CLOSED raises
        ObservabilityError: a request that cannot be observed is not served. The call runs
        in the request's instance of the observe plugin, if it has one."""
        adapter = self.adapters.get("observe")
        if adapter is not None:
            self.events_reported += 1
            if request.deferred is not None:
                request.deferred.append(event)
                if len(request.deferred) >= DEFERRED_EVENTS_MAX:  # a long stream's: observed in batches
                    self._observe_deferred(request, more=True)
                return
            await self._call(request, "observe", adapter.observe_with_policy, event, request.observe_scope)

    def _observe_later(self) -> bool:
        """Whether a request's events may be observed later than the moment they describe:
        the observe slot passes failures through (so no failure can change the answer) and
        runs inline. Then the events are held back: a whole answer's are observed after it
        was sent (those before it, then its own as they come), a stream's once it ended
        (DEFERRED_EVENTS_MAX at a time while it runs), an error's when the request ends.
        The same calls, in the same order, in the request's instance, off the client's wait;
        a stream's back to back, where the plugin's code and memory stay in the CPU's caches.
        A plugin sees no difference: it has no clock, and a FRESH instance sees no other
        request's events."""
        adapter = self.adapters.get("observe")
        return adapter is None or (adapter.failure_policy is cw.FailurePolicy.PASS_THROUGH
                                   and not self.config.slots["observe"].offload_to_thread)

    def _observe_deferred(self, request: _Request, *, more: bool = False) -> None:
        """The events held back, observed now, in order, in the request's instance;
        ``more``: the request's later events are held back too."""
        events, request.deferred = request.deferred, ([] if more else None)
        adapter = self.adapters.get("observe")
        if not events or adapter is None:
            return
        if request.observe_scope is None:
            request.observe_scope = self._instance_scope(request, "observe")
        started = time.perf_counter()
        try:
            adapter.observe_batch(events, request.observe_scope)  # one call for them all
        finally:
            request.hook_s += time.perf_counter() - started

    def _instance_scope(self, request: _Request, hook: str) -> Optional[Any]:
        """One instance of a slot's plugin for a request's observe events or a streamed
        answer's transform calls, or None: no such slot, or no instance to be had. Scopes
        may hold at most half the instance pool, so the calls that need a fresh instance
        always find one; past that, or with a full pool, each call runs in a fresh
        instance, as cc-lb does."""
        adapter = self.adapters.get(hook)
        if adapter is None:
            return None
        calls = "a request's observe events run" if hook == "observe" else "a stream's calls run"
        pool_size = self.config.host.pool_size
        if pool_size and self._open_scopes >= pool_size // 2:
            self._warn(f"scope:{hook}", f"{hook} slot: {calls} in fresh instances "
                                        f"(scopes hold half the pool already: {self._open_scopes} instances)")
            return None
        started = time.perf_counter()
        try:
            scope = adapter.instance_scope()
        except cw.PluginError as exc:
            self._warn(f"scope:{hook}", f"{hook} slot: {calls} in fresh instances ({exc})")
            return None
        finally:
            request.hook_s += time.perf_counter() - started  # an instantiation is hook time too
        self._open_scopes += 1
        return scope

    # --- requests -------------------------------------------------------------------------

    async def read_body(self, declared: Optional[bytes], receive: Any) -> Any:
        """The body, or a 413 ``request_too_large`` past ``max_body_bytes``: refused from its
        Content-Length (``declared``) before anything is read, else as soon as the chunks
        pass the limit. ``receive``: the request's ASGI receive."""
        limit = self.config.max_body_bytes
        too_large = f"the request body is over the limit of {limit} bytes"
        if declared is not None:
            if not declared.isdigit():
                return api_error(400, "invalid_request_error", "an invalid Content-Length", close=True)
            if int(declared) > limit:
                return api_error(413, "request_too_large", too_large, close=True)
        chunks: List[bytes] = []

        async def read() -> Optional[Response]:
            total = 0
            while True:  # the ASGI messages themselves: Starlette's stream() costs a generator
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    return api_error(413, "request_too_large", too_large, close=True)
                if chunk:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return None

        try:
            refused = await within(read(), self.config.body_timeout_s)  # no second task per request on 3.11+
        except asyncio.TimeoutError:  # a body trickled in too slowly (or never ends)
            seconds = self.config.body_timeout_s
            return api_error(408, "invalid_request_error", f"the request body did not arrive within {seconds:g} s", close=True)
        return refused if refused is not None else b"".join(chunks)  # one bytes object: the chunks joined once

    def authenticate(self, headers: List[Tuple[bytes, bytes]]) -> Optional[cw.Principal]:
        """``x-api-key`` first, else ``authorization: Bearer``. Keys are looked up by
        digest: they are not kept in clear, and a dict lookup on a hash leaks nothing
        useful about a key through timing."""
        bearer = None
        for name, value in headers:
            if name == b"x-api-key":
                return self.keys.get(cfg.key_digest(value))
            if name == b"authorization" and bearer is None and value[:7].lower() == b"bearer ":
                bearer = value[7:].strip()
        return None if bearer is None else self.keys.get(cfg.key_digest(bearer))

    def build_context(self, scope: MutableMapping[str, Any], request_id: str, body: bytes) -> cw.RequestContext:
        """From the ASGI scope: the headers list as it is, minus the stripped ones; the body
        object as read (RequestContext keeps it, the host copies it once into the guest).
        For a cc-lb 1.0 filter, the routing fields too (``routing``)."""
        named = connection_named(scope["headers"])
        headers = [h for h in scope["headers"] if h[0] not in STRIPPED_REQUEST_HEADERS and h[0] not in named]
        path = scope.get("raw_path") or scope["path"].encode("utf-8")  # raw: keeps %-escapes as sent
        routing = self.routing(scope["headers"], body) if self._filter_contract() == "1.0" else {}
        return cw.RequestContext(request_id, scope["method"], path.decode("latin-1"), scope["query_string"], headers, body, **routing)

    def _filter_contract(self) -> Optional[str]:
        adapter = self.adapters.get("filter")
        return None if adapter is None else adapter.contract

    def routing(self, headers: List[Tuple[bytes, bytes]], body: bytes) -> Dict[str, Any]:
        """A 1.0 filter's routing fields: ``model`` and ``service_tier`` from the JSON body,
        ``thread_id`` from ``[server].thread_id_header``, the model's prices from
        ``[prices]``. A body that is not a JSON object leaves them unset."""
        routing: Dict[str, Any] = {}
        wanted = self.config.thread_id_header.encode("latin-1")
        for name, value in headers:
            if wanted and name == wanted:
                routing["thread_id"] = value.decode("latin-1")
                break
        try:
            document = json.loads(body) if body else None
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict):
            model, tier = document.get("model"), document.get("service_tier")
            if _utf8_text(model):
                routing["canonical_model_id"] = model
                routing["cache_pricing"] = self.config.prices.get(model)
            if _utf8_text(tier):
                routing["service_tier"] = tier
        return routing

    async def forward(self, scope: MutableMapping[str, Any], receive: Any) -> Any:
        """One request to /v1/ (its ASGI scope and receive): the response to send."""
        request = _Request()
        headers = scope["headers"]
        principal = self.authenticate(headers)
        request.principal = None if principal is None else principal.id
        if principal is None:  # before anything else: an unknown caller reaches no plugin
            return self._done(request, api_error(401, "authentication_error", "invalid x-api-key"), record=False)
        declared = agent = None  # the first of each, as a server's header lookup gives
        chunked = False
        for name, value in headers:  # names arrive lowercased (ASGI)
            if name == b"content-length":
                declared = value if declared is None else declared
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"user-agent" and agent is None:
                agent = value.decode("latin-1")
        if declared is not None and chunked:  # RFC 9112 §6.3: a smuggling attempt
            return self._done(request, api_error(400, "invalid_request_error", "both Content-Length and Transfer-Encoding",
                                                 close=True), record=False)
        problem = path_problem(scope.get("raw_path") or scope["path"].encode("utf-8"))
        if problem is not None:
            return self._done(request, api_error(400, "invalid_request_error", problem), record=False)
        try:
            body = await self.read_body(declared, receive)
        except ClientDisconnect:  # the client left mid-body: nothing to answer
            log.info("%s: the client disconnected while sending the body", request.id)
            return self._done(request, Response(status_code=499), record=False)
        if isinstance(body, Response):
            return self._done(request, body, record=False)
        try:
            ctx = self.build_context(scope, request.id, body)
        except cw.InvalidInput as exc:
            return self._done(request, api_error(400, "invalid_request_error", str(exc)), record=False)
        try:
            return await self._forward(request, ctx, principal, agent, (receive, scope.get(DISCONNECT_KEY)), forwarded_for(scope))
        except cw.ObservabilityError as exc:
            return self._done(request, api_error(502, "api_error", f"observe plugin {self._name('observe')!r} failed: {exc}"))

    async def _forward(self, request: _Request, ctx: cw.RequestContext, principal: cw.Principal, agent: Optional[str],
                       client: Tuple[Any, Optional[DisconnectWatch]], forwarded_for: bytes) -> Any:
        if self._observe_later():
            request.deferred = []  # observed once the answer is relayed (_observe_deferred)
        else:
            request.observe_scope = self._instance_scope(request, "observe")  # the request's events share one instance
        await self.observe(request, cw.RequestStarted(request.id, agent))
        await self.observe(request, cw.AuthnComplete(principal.id, principal.kind))

        kept: Iterable[uuid.UUID] = self.upstreams
        if "filter" in self.adapters:
            try:
                output = await self._call(request, "filter", self.adapters["filter"].filter_with_policy, ctx, principal, self.candidates)
            except cw.FilterError as exc:  # FAIL_CLOSED
                return await self._failed(request, 502, "filter", exc)
            kept = output.kept_upstream_ids
        chosen = [self.upstreams[i] for i in kept if i in self.upstreams]
        if not chosen:
            await self.observe(request, cw.ErrorEvent("no_upstream", "the filter kept no upstream", "proxy"))
            return self._done(request, api_error(503, "api_error", "no upstream available for this request"))

        # Failover: the kept upstreams in the filter's order, at most max_attempts of them.
        # Only before any byte reached the client: a connect error, a timeout before the
        # headers, or a status worth retrying elsewhere (429, 529, 5xx).
        attempts = chosen[: self.config.max_attempts]
        for attempt, upstream in enumerate(attempts, 1):
            last = attempt == len(attempts)
            request.attempts = attempt
            await self.observe(request, cw.UpstreamChosen(upstream.target))
            shaped = None
            if "shape" in self.adapters:
                try:
                    shaped = await self._call(request, "shape", self.adapters["shape"].shape_with_policy, ctx, upstream.target, principal)
                except cw.DialectError as exc:  # FAIL_CLOSED
                    return await self._failed(request, 502, "shape", exc)
            if shaped is None:  # no shape plugin, or it failed under PASS_THROUGH: send it unchanged
                query = "" if ctx.query is None else f"?{ctx.query}"
                method, url, headers, content = ctx.method, f"{upstream.base_url}{ctx.path}{query}", list(ctx.headers), ctx.body
            else:
                method, url, headers, content = shaped.method, shaped.url, list(shaped.headers), shaped.body
            headers.append((b"x-api-key", upstream.api_key.encode("latin-1")))  # the only credential sent
            headers.append((REQUEST_ID_HEADER, request.id.encode("ascii")))
            headers.append((b"x-forwarded-for", forwarded_for))

            try:
                answer = await self._send_unless_gone(client, method, url, headers, content)
            except _ClientGone:  # nobody waits for this answer: the upstream request was cancelled
                log.info("%s: the client left before upstream %r answered; request cancelled", request.id, upstream.name)
                await self.observe(request, cw.ErrorEvent("client_gone", "the client left before the upstream answered", "proxy"))
                return self._done(request, Response(status_code=499))
            except UpstreamTimeout as exc:  # nothing came back in time: the gateway timed out
                await self._attempt_failed(request, upstream, "upstream_timeout", "timeout", str(exc),
                                           f"timed out before answering ({exc})", "timeout: ")
                if not last:
                    continue
                return self._done(request, api_error(504, "api_error", f"upstream {upstream.name!r} timed out before answering"))
            except UpstreamUnreachable as exc:
                await self._attempt_failed(request, upstream, "upstream_unreachable", "unreachable", str(exc),
                                           f"unreachable ({exc})", "unreachable: ")
                if not last:
                    continue
                return self._done(request, api_error(502, "api_error", f"upstream {upstream.name!r} unreachable: {exc}"))
            if not last and (answer.status_code in RETRY_STATUSES or answer.status_code >= 500):
                await answer.aclose()  # nothing of it was sent: the next upstream may do better
                status = answer.status_code
                await self._attempt_failed(request, upstream, "upstream_retry", str(status), f"status {status}",
                                           f"answered {status}; trying the next kept upstream")
                continue
            self.metrics.attempts.labels(upstream.name, "answered").inc()
            self._upstream_answered(upstream)
            request.upstream = upstream.name
            break
        named = connection_named(answer.raw_headers)
        response_headers = [(name, value) for name, value in answer.raw_headers
                            if (lower := name.lower()) not in STRIPPED_RESPONSE_HEADERS and lower not in named]
        response_headers.append((REQUEST_ID_HEADER, request.id.encode("ascii")))
        transforms = self.adapters["shape"].transform_hooks if "shape" in self.adapters else ()
        sse = answer.header("content-type").startswith("text/event-stream")
        if transforms:  # a cc-lb 1.0 shape plugin maps the answer back
            seen = cw.UpstreamResponse(answer.status_code, response_headers)
            call = (ctx, upstream.target, principal, seen)
            encoded = answer.header("content-encoding", "identity").lower() != "identity"
            if sse and not encoded and "transform_sse_event" in transforms:
                response = StreamingResponse(self._relay(request, answer, call), status_code=answer.status_code)
                response.raw_headers = response_headers
                return response
            if not sse and not encoded and "transform_response" in transforms:
                return await self._transform_buffered(request, answer, call)
        length = answer.header("content-length")
        if length.isdigit() and int(length) <= BUFFERED_ANSWER_BYTES and not sse:
            # A small answer of known length: read whole, then sent in one write (a streamed
            # relay costs a task group and a write per chunk).
            chunks: List[bytes] = []
            broken: Optional[UpstreamBroken] = None
            try:
                async for chunk in answer.iter_raw():
                    chunks.append(chunk)
            except UpstreamBroken as exc:
                broken = exc
            replay = _Replayed(answer, chunks, broken)
            if broken is None and self._observe_later():
                # The client's answer first; what the proxy does about it (Chunk events,
                # usage, RequestFinished, releases, metrics) once it is sent.
                return _WholeAnswer(answer.status_code, response_headers, b"".join(chunks),
                                    functools.partial(self._report_sent, request, replay))
            else:  # reported before it is sent: a broken answer becomes a 502/504
                whole = await self._read_whole(request, replay)
                if isinstance(whole, Response):
                    return whole
                response = Response(whole, status_code=answer.status_code)
        else:
            response = StreamingResponse(self._relay(request, answer), status_code=answer.status_code)
        response.raw_headers = response_headers  # as a list: repeated headers survive
        return response

    async def _read_whole(self, request: _Request, answer: Answer, *, finish: bool = True) -> Union[bytes, Response]:
        """The whole answer through ``_relay`` (each chunk observed, usage counted), or the
        error to send if it broke off (a part of an answer is not sent as if whole)."""
        chunks = [chunk async for chunk in self._relay(request, answer, streamed=False, finish=finish)]
        if request.broken is not None:
            status = 504 if request.broken == "upstream_timeout" else 502
            return api_error(status, "api_error", f"the upstream's answer broke off ({request.broken})")
        return b"".join(chunks)

    async def _report_sent(self, request: _Request, replay: "_Replayed") -> None:
        """A whole answer that was sent: relayed again, to the plugins and the metrics only."""
        try:
            async for _ in self._relay(request, replay, streamed=False):
                pass
        except Exception:  # a bug: logged; the client has its answer already
            log.exception("%s: reporting the answer failed", request.id)

    async def _attempt_failed(self, request: _Request, upstream: Any, code: str, outcome: str, detail: str, what: str,
                              health_prefix: str = "") -> None:
        """An attempt that got no answer worth sending: logged (at most one line per upstream
        every WARNING_INTERVAL_S), observed, counted, and held against the upstream's health."""
        self._warn(upstream.name, f"{request.id}: upstream {upstream.name!r} {what}")
        await self.observe(request, cw.ErrorEvent(code, detail, "upstream"))
        self.metrics.attempts.labels(upstream.name, outcome).inc()
        self._upstream_failed(upstream, health_prefix + detail)

    def _warn(self, key: str, message: str) -> None:
        """A warning, at most one per ``key`` every WARNING_INTERVAL_S (a dead upstream under
        load would flood the log): the next one says how many were held back."""
        now = time.monotonic()
        last, held = self._warned.get(key, (None, 0))
        if last is not None and now - last < WARNING_INTERVAL_S:
            self._warned[key] = (last, held + 1)
            return
        self._warned[key] = (now, 0)
        log.warning("%s%s", message, f" ({held} more since the last warning for {key!r})" if held else "")

    async def _send_unless_gone(self, client: Tuple[Any, Optional[DisconnectWatch]], method: str, url: str,
                                headers: List[Tuple[bytes, bytes]], content: bytes) -> Answer:
        """``client.send``, cancelled (its connection closed) as soon as the client
        disconnects: a generation nobody will read is not paid for. ``client``: the
        request's ASGI receive and the server's DisconnectWatch, if it gave one (then
        the disconnect cancels this task: no second task per request)."""
        assert self.client is not None
        receive, watch = client
        if watch is not None:
            if watch.gone:
                raise _ClientGone()
            task = asyncio.current_task()
            assert task is not None
            watch.callbacks.append(task.cancel)
            try:
                answer = await self.client.send(method, url, headers, content)
            except asyncio.CancelledError:
                if not watch.gone:  # someone else's cancellation (shutdown)
                    raise
                _uncancel(task)  # ours, and handled: the task goes on to answer 499
                raise _ClientGone() from None
            finally:
                watch.callbacks.remove(task.cancel)
            if watch.gone:  # the answer came in the step the client left: the cancel was lost
                await answer.aclose()
                _uncancel(task)
                raise _ClientGone()
            return answer
        sending = asyncio.ensure_future(self.client.send(method, url, headers, content))
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if sending.done():
            return sending.result()
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, UpstreamTimeout, UpstreamUnreachable):
            late = await sending  # an answer despite the cancel (it came in the same step)
            await late.aclose()  # else its connection and its place in the pool are lost
        raise _ClientGone()

    async def _transform_buffered(self, request: _Request, answer: Answer, call: Tuple[Any, ...]) -> Response:
        """The whole answer, read (usage counted on the upstream's bytes), then through
        ``transform_response``; a failure sends the upstream's answer as it came."""
        try:
            whole = await self._read_whole(request, answer, finish=False)
            if isinstance(whole, Response):  # a part of an answer is not transformed
                return whole
            ctx, target, principal, seen = call
            upstream_answer = cw.UpstreamResponse(seen.status, seen.headers, whole)
            result = await self._call(request, "shape", self.adapters["shape"].transform_response_with_policy, ctx, target, principal, upstream_answer)
            sent = result.apply(upstream_answer)
            response = Response(sent.body, status_code=sent.status)
            headers = [(_latin1(name).lower(), _latin1(value)) for name, value in sent.headers]
            response.raw_headers = [h for h in headers if h[0] != b"content-length"] + [(b"content-length", str(len(sent.body)).encode())]
            return response
        finally:  # after the transform: its hook time counts, and the instances opened ahead are the next request's
            self._finish(request, answer.status_code if request.outcome is None else request.outcome)

    async def _relay(self, request: _Request, answer: Answer, call: Optional[Tuple[Any, ...]] = None,
                     *, streamed: bool = True, finish: bool = True) -> AsyncIterator[bytes]:
        """The upstream's bytes as they come (raw: a compressed answer stays compressed,
        with its content-encoding), each chunk reported before it is passed on. With
        ``call`` (a streamed answer a cc-lb 1.0 shape plugin transforms), each complete event
        goes through ``transform_sse_event`` first; usage is read from the upstream's bytes.
        ``streamed``: under a StreamingResponse, whose task group cancels the relay when the
        client leaves (anyio cancels at every await), so the clean-up is shielded; an answer
        read whole runs in the request's own task, where that costs for nothing. ``finish``:
        the request ends here (else its caller ends it, with ``request.outcome``)."""
        scanner = UsageScanner(answer.header("content-type"), bool(answer.header("content-encoding")))
        index, finished = 0, False
        # A streamed answer's transform calls run in one instance, taken here, released at the end.
        shape_scope = None if call is None else self._instance_scope(request, "shape")
        stream = None if call is None else self.adapters["shape"].sse_stream(*call, shape_scope)
        reader = SseReader()
        counter = SseEventCounter()
        outcome: Any = answer.status_code  # the requests metric's label
        try:
            if not streamed:  # an answer read whole: the events so far now, its own as they come (measured faster)
                self._observe_deferred(request)
            try:
                async for chunk in answer.iter_raw():
                    events = counter.count(chunk) if scanner.sse else 1
                    await self.observe(request, cw.Chunk(index, events, len(chunk)))
                    scanner.feed(chunk)
                    self.metrics.chunks.inc()
                    index += 1
                    if stream is None:
                        yield chunk
                        continue
                    out = []
                    for raw, event in reader.feed(chunk):
                        if event is None:  # a comment or a block without data: no event to transform
                            out.append(raw)
                            continue
                        try:
                            emitted = await self._call(request, "shape", stream.events, event)
                        except cw.TransformError as exc:  # after a transformed event: the stream must end
                            await self.observe(request, cw.ErrorEvent("transform_failed", str(exc), "shape"))
                            message = f"shape plugin {self._name('shape')!r} failed mid-stream: {exc}"
                            error = {"type": "error", "error": {"type": "api_error", "message": message}}
                            yield b"".join(out) + encode_event(cw.SseEvent("error", json.dumps(error).encode()))
                            return
                        if emitted == (event,):
                            out.append(raw)  # unchanged: byte for byte
                        elif emitted:
                            out.append(other_fields(raw) + b"".join(encode_event(e) for e in emitted))
                    if out:
                        yield b"".join(out)
            except (UpstreamBroken, SseEventTooLarge) as exc:  # the upstream stalled, broke off or never ended an event
                timeout = isinstance(exc, UpstreamBroken) and exc.timeout
                outcome = "upstream_timeout" if timeout else "upstream_error"
                request.broken = outcome
                if isinstance(exc, SseEventTooLarge):
                    what = f"sent {exc}"
                else:
                    what = "stalled past upstream_timeout_s" if timeout else f"broke off ({exc.cause_name})"
                self._warn(f"{request.upstream}", f"{request.id}: the upstream's answer {what} after {index} chunks")
                await self.observe(request, cw.ErrorEvent(outcome, str(exc), "upstream"))
                if scanner.sse:  # the client learns why its stream ends, in the API's own way
                    error = {"type": "error", "error": {"type": "api_error", "message": f"the upstream's answer {what}"}}
                    yield encode_event(cw.SseEvent("error", json.dumps(error).encode()))
                finished = True  # reported: not also as stream_aborted
                return
            if stream is not None and (rest := reader.rest()):
                yield rest
            finished = True
            tokens = scanner.tokens()
            request.tokens = tokens
            duration_ms = int((time.perf_counter() - request.started) * 1000)
            await self.observe(request, cw.RequestFinished(answer.status_code, *tokens, duration_ms=duration_ms))
        finally:
            self._close_scope(request, shape_scope)
            with anyio.CancelScope(shield=True) if streamed else contextlib.nullcontext():  # also when the client went away
                await answer.aclose()
                if not finished:
                    with contextlib.suppress(cw.ObservabilityError):
                        await self.observe(request, cw.ErrorEvent("stream_aborted", "the answer ended early", "proxy"))
            if finish:
                self._finish(request, outcome)
            else:
                request.outcome = outcome

    async def _failed(self, request: _Request, status: int, hook: str, exc: Exception) -> Response:
        message = f"{hook} plugin {self._name(hook)!r} failed: {exc}"
        await self.observe(request, cw.ErrorEvent(f"{hook}_failed", message, hook))
        return self._done(request, api_error(status, "api_error", message))

    def _name(self, hook: str) -> str:
        return self.config.slots[hook].name

    def _done(self, request: _Request, response: Response, *, record: bool = True) -> Response:
        self._finish(request, response.status_code, record=record)
        return response

    def _close_scope(self, request: _Request, scope: Optional[Any]) -> None:
        if scope is not None:
            self._open_scopes -= 1
            started = time.perf_counter()
            # A call still running in a thread (the client left mid-call) keeps its
            # instance: the scope is then released once that call lets go of it.
            with contextlib.suppress(cw.InvalidInput):
                scope.close()
            request.hook_s += time.perf_counter() - started

    def _finish(self, request: _Request, status: Any, *, record: bool = True) -> None:
        try:
            self._observe_deferred(request)  # the events held back (all of them, under pass_through)
        finally:  # observed, or not (a bug raised): the request is accounted for and its instance goes back
            scope, request.observe_scope = request.observe_scope, None
            self._close_scope(request, scope)
            if self.config.access_log:
                self._access_line(request, status)
            self.metrics.requests.labels(str(status)).inc()
            self.metrics.duration.observe(time.perf_counter() - request.started)
            if record:  # requests that ran hooks
                self._prepare_instances(request)
                self.metrics.hook_time.observe(request.hook_s)
                if self.config.debug_endpoints:  # kept only for GET /debug/hook-times
                    self.hook_samples.append((request.hook_s, request.attempts))

    def _prepare_instances(self, request: _Request) -> None:
        """The next request's filter and shape instances, opened as this one ends (for a
        whole answer: after it was sent), so their instantiation is off the next request's
        path. Counted in this request's hook time. Each holds a pool slot until a call
        takes it: only with room in the pool (``PREPARE_MIN_POOL``). The observe slot's is
        not: its instance opens off the path anyway, and one held a whole request ahead
        measured slower (its memory has gone cold by then)."""
        pool_size = self.config.host.pool_size
        if pool_size and pool_size < PREPARE_MIN_POOL:
            return
        started = time.perf_counter()
        for hook in ("filter", "shape"):
            adapter = self.adapters.get(hook)
            if adapter is not None:
                adapter.prepare_instance()
        request.hook_s += time.perf_counter() - started

    def _access_line(self, request: _Request, status: Any) -> None:
        """One JSON line per request on the ``cclb_proxy.access`` logger."""
        line = {
            "request_id": request.id,
            "principal": request.principal,
            "upstream": request.upstream,
            "status": status,
            "attempts": request.attempts,
            "duration_ms": round((time.perf_counter() - request.started) * 1000, 3),
            "hook_ms": round(request.hook_s * 1000, 3),
            **dict(zip(TOKEN_FIELDS, request.tokens)),
        }
        access_log.info("%s", json.dumps(line, separators=(",", ":")))

    # --- other endpoints ------------------------------------------------------------------

    async def health(self, http: Request) -> Response:
        plugins = {hook: {"name": a.plugin_name, "plugin_id": str(a.plugin_id), "contract": a.contract}
                   for hook, a in self.adapters.items()}
        return JSONResponse({"status": "ok", "plugins": plugins, "upstreams": self.upstream_health})

    def _upstream_failed(self, upstream: cfg.Upstream, error: str) -> None:
        health = self.upstream_health[upstream.name]
        health["consecutive_failures"] += 1
        health["last_error"] = error
        health["last_error_at"] = time.time()

    def _upstream_answered(self, upstream: cfg.Upstream) -> None:
        self.upstream_health[upstream.name]["consecutive_failures"] = 0

    async def metrics_endpoint(self, http: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def hook_times(self, http: Request) -> Response:
        """Raw per-request hook seconds (the load test's p50/p99), and how many upstream
        attempts each request began (a request that fails over is shaped again)."""
        return JSONResponse({"hook_seconds": [seconds for seconds, _ in self.hook_samples],
                             "upstream_attempts": [attempts for _, attempts in self.hook_samples]})

    async def reset_hook_times(self, http: Request) -> Response:
        """Empty the hook-time samples (a POST: no state changes through GET)."""
        self.hook_samples.clear()
        return JSONResponse({"hook_seconds": [], "upstream_attempts": []})


class _AdminServer(uvicorn.Server):
    """The admin listener's server: the public one owns the signals (one SIGTERM stops both)."""

    def capture_signals(self) -> Any:
        return contextlib.nullcontext()


class _WholeAnswer:
    """A whole answer as two ASGI messages, then ``after`` (a Starlette Response would
    build headers the proxy replaces anyway)."""

    __slots__ = ("status_code", "raw_headers", "body", "after")

    def __init__(self, status_code: int, raw_headers: List[Tuple[bytes, bytes]], body: bytes,
                 after: Callable[[], Any]) -> None:
        self.status_code = status_code
        self.raw_headers = raw_headers
        self.body = body
        self.after = after

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self.body})
        finally:  # reported and counted even if sending failed
            await self.after()


class _Replayed(Answer):
    """An answer read already: its chunks again, then how it ended."""

    def __init__(self, answer: Answer, chunks: List[bytes], broken: Optional[UpstreamBroken]) -> None:
        self._answer = answer
        self._chunks = chunks
        self._broken = broken
        self.status_code = answer.status_code
        self.raw_headers = answer.raw_headers

    async def iter_raw(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._broken is not None:
            raise self._broken

    async def aclose(self) -> None:
        await self._answer.aclose()


class _ClientGone(Exception):
    """The client disconnected while the proxy waited for the upstream."""


def _uncancel(task: "asyncio.Task[Any]") -> None:
    """Take back a cancellation the task handled (3.11+ counts them; 3.10 does not)."""
    if sys.version_info >= (3, 11) and task.cancelling():
        task.uncancel()


async def _wait_for_disconnect(receive: Any) -> None:
    """Returns once the client has disconnected (the body was read already: receive()
    has nothing else to give)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _utf8_text(value: Any) -> bool:
    """Whether a JSON value is a str the wire can carry (JSON admits lone surrogates, UTF-8 does not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _latin1(text: Any) -> bytes:
    """A header name or value as bytes (host types keep what they were given: str or bytes)."""
    return text.encode("latin-1") if isinstance(text, str) else bytes(text)


def _stamp(path: os.PathLike[str]) -> Tuple[int, int, int]:
    """What tells a changed file: os.replace gives a new inode, an in-place write a new mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn. Its protocol is given (IPPROTO_TCP), not left 0:
    asyncio turns Nagle's algorithm off only on connections of such a socket, and with
    it on, an answer written in two pieces waits ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # uvicorn's default backlog
    return sock


def uvicorn_config(app: Any, log_level: str = "info", keep_alive_s: float = 75.0,
                   shutdown_timeout_s: float = 30.0, header_timeout_s: float = 10.0,
                   max_client_connections: int = 1024, lifespan: str = "on", parser: str = "httptools") -> uvicorn.Config:
    """No server/date headers of uvicorn's own: the upstream's pass through instead of
    being doubled. Idle connections are kept longer than clients keep them (httpx: 5 s),
    so a client never sends a request on a connection the server is closing. On SIGTERM,
    requests in flight get ``shutdown_timeout_s`` to finish; then the process exits. A
    request head must arrive within ``header_timeout_s`` (server.py); past
    ``max_client_connections`` open connections, requests get 503. The peer's address is
    the one a socket gives (uvicorn would take a loopback client's X-Forwarded-For for it)."""
    return uvicorn.Config(app, log_level=log_level, access_log=False, lifespan=lifespan, server_header=False, proxy_headers=False, interface="asgi3",
                          date_header=False, timeout_keep_alive=int(keep_alive_s),
                          timeout_graceful_shutdown=int(max(1, shutdown_timeout_s)),
                          # uvicorn counts the asking connection too: N open connections are served
                          http=guarded(parser, header_timeout_s), limit_concurrency=max_client_connections + 1)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="cclb-proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the TOML (or .json) configuration file")
    parser.add_argument("--host", help="listen address (overrides [server].host)")
    parser.add_argument("--port", type=int, help="listen port, 0 for any free one (overrides [server].port)")
    parser.add_argument("--admin-port", type=int, help="admin listen port, 0 for any free one (overrides [admin].port)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded request otherwise (httpx client)
    try:
        config = cfg.load(args.config)
        proxy = Proxy(config)
    except (cfg.ConfigError, cw.CclbWireError) as exc:
        print(f"cclb-proxy: {exc}", file=sys.stderr)
        return 2
    listen = (args.host or config.listen_host, config.listen_port if args.port is None else args.port)
    admin_listen = (config.admin_host, config.admin_port if args.admin_port is None else args.admin_port)
    sockets = []
    for where in (listen, admin_listen):
        try:
            sockets.append(bind(*where))
        except OSError as exc:  # one line, not a traceback: which address, and why
            print(f"cclb-proxy: cannot listen on {where[0]}:{where[1]}: {exc.strerror or exc}", file=sys.stderr)
            for opened in sockets:
                opened.close()
            proxy.host.close()
            return 2
    sock, admin_sock = sockets
    host, port = sock.getsockname()[:2]
    print(f"cclb-proxy listening on http://{host}:{port} (pid {os.getpid()}, backend {cw.BACKEND})", flush=True)
    admin_host, admin_port = admin_sock.getsockname()[:2]
    print(f"cclb-proxy admin listening on http://{admin_host}:{admin_port} (/healthz, /metrics)", flush=True)
    server = uvicorn.Server(uvicorn_config(
        proxy.app, args.log_level, config.keep_alive_s, config.shutdown_timeout_s, config.header_timeout_s,
        config.max_client_connections, parser=config.http_parser,
    ))
    admin = _AdminServer(uvicorn_config(proxy.admin_app, args.log_level, header_timeout_s=config.header_timeout_s,
                                        lifespan="off"))

    async def serve() -> None:
        admin_task = asyncio.ensure_future(admin.serve(sockets=[admin_sock]))
        try:
            await server.serve(sockets=[sock])  # it handles SIGTERM/SIGINT; the admin listener follows it
        finally:
            admin.should_exit = True
            await admin_task

    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0
