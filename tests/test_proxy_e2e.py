"""End-to-end tests of examples/proxy on real loopback sockets.

The proxy (uvicorn, in a thread) runs in front of a fake Anthropic upstream (uvicorn,
in another thread) that records what it receives and streams SSE. One test runs the
proxy as a subprocess, as its README says to, and reloads it with SIGHUP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

# The proxy's dependencies are test dependencies ('.[test]'): missing ones fail here, not skip.
import httpx
import pytest
import uvicorn
import wasmtime
from prometheus_client.parser import text_string_to_metric_families

import cclb_wire as cw
from cclb_wire.runtime import NATIVE_CALLS_ENV

REPO = Path(__file__).resolve().parents[1]
PROXY_DIR = REPO / "examples" / "proxy"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "proxy"
PLUGINS = Path(cw.__file__).resolve().parent / "plugins"


def _load_proxy_package() -> Any:
    """examples/proxy as the package ``cclb_proxy``, without putting the checkout's root on
    sys.path (the installed cclb_wire stays the one under test)."""
    if "cclb_proxy" in sys.modules:
        return sys.modules["cclb_proxy"]
    spec = importlib.util.spec_from_file_location("cclb_proxy", PROXY_DIR / "__init__.py", submodule_search_locations=[str(PROXY_DIR)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["cclb_proxy"] = package
    spec.loader.exec_module(package)
    return package


def _load_fixture_generator() -> Any:
    spec = importlib.util.spec_from_file_location("proxy_fixture_gen", FIXTURES / "gen_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_load_proxy_package()
from cclb_proxy import app as proxy_app  # noqa: E402
from cclb_proxy import config as proxy_config  # noqa: E402
from cclb_proxy.fake_upstream import FakeUpstream, check_stream, parse_sse, sse_events  # noqa: E402

gen = _load_fixture_generator()

PROXY_KEY = "sk-proxy-test-7f3a"
BOB_KEY = "sk-proxy-bob-91c2"
PRIMARY = "11111111-1111-4111-8111-111111111111"
SECONDARY = "22222222-2222-4222-8222-222222222222"
UPSTREAM_KEYS = {PRIMARY: "sk-ant-upstream-primary", SECONDARY: "sk-ant-upstream-secondary"}


class ServerThread:
    """A uvicorn server on an already-bound loopback socket, in a thread of its own."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.sock = proxy_app.bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(proxy_app.uvicorn_config(app, log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "server did not stop"
        self.sock.close()


async def served_lifespan(scope: Dict[str, Any], receive: Any, send: Any) -> bool:
    """For a test's bare ASGI upstream: answers the lifespan protocol; True if ``scope`` was it."""
    if scope["type"] != "lifespan":
        return False
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
    return True


@pytest.fixture(scope="module", autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every server, executor and deadline ticker these tests start is gone at the end."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while [t for t in threading.enumerate() if t not in before and t.is_alive()]:
        assert time.monotonic() < deadline, f"threads left running: {set(threading.enumerate()) - before}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Tuple[FakeUpstream, ServerThread]]:
    app = FakeUpstream(keep=100)
    with ServerThread(app) as server:
        yield app, server


def wasm_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def fixture_wasm(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((FIXTURES / f"{name}.wat").read_text()))


def write_config(tmp_path: Path, upstream_url: str, *, filter_wasm: Optional[Path] = None, filter_policy: str = "pass_through",
                 shape_wasm: Optional[Path] = None, shape_policy: str = "fail_closed", offload: bool = False,
                 deadline_s: float = 1.0, reload_poll_s: float = 0.0, secondary_tokens: int = 4096, pool_size: int = 4) -> Path:
    def slot(name: str, wasm: Path, policy: str) -> Dict[str, Any]:
        return {"name": name, "wasm": str(wasm), "failure_policy": policy, "offload_to_thread": offload}

    config = {
        "server": {"reload_poll_s": reload_poll_s, "upstream_timeout_s": 10, "debug_endpoints": True,
                   # CI runs these tests with each upstream client (the default is aiohttp).
                   "upstream_client": os.environ.get("CCLB_PROXY_UPSTREAM_CLIENT", "httptools")},
        "host": {"deadline_s": deadline_s, "pool_size": pool_size, "memory_limit_bytes": 16 << 20},
        "keys": [
            {"key": PROXY_KEY, "principal": "alice", "kind": "api_key", "claims": {"team": "research", "keep_k": 1}},
            {"key": BOB_KEY, "principal": "bob", "claims": {"keep_k": 2}},
        ],
        "upstreams": [
            {"id": PRIMARY, "name": "primary", "base_url": upstream_url, "api_key": UPSTREAM_KEYS[PRIMARY], "predicted_cache_read_tokens": 0},
            # More predicted cache reads: cache_aware_filter (keep_k 1) keeps this one.
            {"id": SECONDARY, "name": "secondary", "base_url": upstream_url + "/", "api_key": UPSTREAM_KEYS[SECONDARY],
             "predicted_cache_read_tokens": secondary_tokens},
        ],
        "plugins": {
            "filter": slot("cache-aware", filter_wasm or PLUGINS / "cache_aware_filter.wasm", filter_policy),
            "shape": slot("passthrough", shape_wasm or PLUGINS / "shape_passthrough.wasm", shape_policy),
            "observe": slot("counter", PLUGINS / "observe_counter.wasm", "pass_through"),
        },
    }
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(config))
    return path


class Running:
    """A proxy serving in a thread, with spies on what it builds and reports."""

    def __init__(self, config_path: Path, parser: str = "httptools") -> None:
        self.proxy = proxy_app.Proxy(proxy_config.load(config_path))
        self.contexts: List[cw.RequestContext] = []
        self.events: List[Any] = []
        build, observe = self.proxy.build_context, self.proxy.observe

        def build_spy(*args: Any) -> cw.RequestContext:
            ctx = build(*args)
            self.contexts.append(ctx)
            return ctx

        async def observe_spy(request: Any, event: Any, *scope: Any) -> None:
            self.events.append(event)
            await observe(request, event, *scope)

        self.proxy.build_context = build_spy  # type: ignore[method-assign]
        self.proxy.observe = observe_spy  # type: ignore[method-assign]
        # A request is done for the proxy when _finish ran (after its last event), which
        # can be after the client has read a content-length body: settle() waits for it.
        self.entered = self.finished = 0
        finish, app = self.proxy._finish, self.proxy.app

        def finish_spy(*args: Any, **kwargs: Any) -> None:
            finish(*args, **kwargs)
            self.finished += 1

        async def counting_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                self.entered += 1
            await app(scope, receive, send)

        self.proxy._finish = finish_spy  # type: ignore[method-assign]
        self.server = ServerThread(counting_app, parser=parser)
        self.admin_server = ServerThread(self.proxy.admin_app, lifespan="off")
        self.url = self.server.url
        self.client = httpx.Client(base_url=self.url, timeout=20)
        #: The admin listener: /healthz, /metrics, /debug/*.
        self.admin = httpx.Client(base_url=self.admin_server.url, timeout=20)

    def settle(self) -> None:
        deadline = time.monotonic() + 20
        while self.finished < self.entered:
            assert time.monotonic() < deadline, "a request never finished"
            time.sleep(0.005)

    def stats(self, kind: str) -> cw.SlotStats:
        self.settle()
        return self.proxy.host.stats()[(kind, kind)]

    def post(self, body: Dict[str, Any], key: Optional[str] = PROXY_KEY, **headers: str) -> httpx.Response:
        sent = {"content-type": "application/json", "anthropic-version": "2023-06-01", **headers}
        if key is not None:
            sent["x-api-key"] = key
        answer = self.client.post("/v1/messages", content=json.dumps(body).encode(), headers=sent)
        self.settle()
        return answer


@pytest.fixture
def start_proxy() -> Iterator[Any]:
    running: List[Running] = []

    def start(config_path: Path, parser: str = "httptools") -> Running:
        proxy = Running(config_path, parser)
        proxy.server.__enter__()
        proxy.admin_server.__enter__()
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.client.close()
        proxy.admin.close()
        proxy.admin_server.__exit__()
        proxy.server.__exit__()
        assert proxy.proxy.host.closed  # the lifespan's shutdown closed the host


def header_values(headers: Any, name: str) -> List[bytes]:
    key = name.encode()
    return [v if isinstance(v, bytes) else v.encode("latin-1") for k, v in headers if (k if isinstance(k, bytes) else k.encode()) == key]


FORBIDDEN = (b"authorization", b"x-api-key", b"cookie", b"proxy-authorization")


# --- forwarding and shaping --------------------------------------------------------------


def test_non_streaming_request_reaches_upstream_as_shaped_without_downstream_credentials(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    before = fake.count
    answer = proxy.client.post(
        "/v1/messages?beta=true",
        content=json.dumps(body).encode(),
        headers=[("content-type", "application/json"), ("anthropic-version", "2023-06-01"), ("x-api-key", PROXY_KEY),
                 ("authorization", "Bearer sk-downstream-oauth"), ("cookie", "session=secret"),
                 ("proxy-authorization", "Basic eA=="), ("x-trace", "a"), ("x-trace", "b"), ("user-agent", "claude-cli/2.0")],
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["output_tokens"] == 5
    proxy.settle()
    assert fake.count == before + 1
    got = fake.received[-1]

    # What the proxy handed the plugins: no credentials, no cookie; the body as sent.
    (ctx,) = proxy.contexts
    assert not [name for name, _ in ctx.headers if name in FORBIDDEN]
    assert ctx.body == got.body == json.dumps(body).encode()
    assert (ctx.method, ctx.path, ctx.query) == ("POST", "/v1/messages", "beta=true")

    # What the upstream got is what the shape plugin answers for that context and the
    # upstream the filter chose (secondary: more predicted cache reads), plus our key.
    chosen = proxy.proxy.upstreams[uuid.UUID(SECONDARY)]
    shaped = proxy.proxy.adapters["shape"].shape(ctx, chosen.target, proxy.proxy.keys[proxy_config.key_digest(PROXY_KEY.encode())])
    assert shaped.url == f"{server.url}/v1/messages?beta=true"
    assert (got.method, got.path, got.query, got.body) == (shaped.method, "/v1/messages", b"beta=true", shaped.body)
    # The proxy's request id goes to the upstream and back to the client; the client's
    # address is appended to X-Forwarded-For.
    request_id = answer.headers["x-cclb-request-id"].encode()
    assert request_id.startswith(b"req_")
    expected = [(n.encode(), v) for n, v in shaped.headers] + [
        (b"x-api-key", UPSTREAM_KEYS[SECONDARY].encode()), (b"x-cclb-request-id", request_id), (b"x-forwarded-for", b"127.0.0.1"),
    ]
    added_by_http = {b"host", b"content-length"}
    assert [h for h in got.headers if h[0] not in added_by_http] == expected
    assert header_values(got.headers, "x-trace") == [b"a", b"b"]  # order and repeats kept
    assert header_values(got.headers, "user-agent") == [b"claude-cli/2.0"]  # not httpx's own
    # The only credential the upstream sees is the one the proxy adds for it.
    assert header_values(got.headers, "x-api-key") == [UPSTREAM_KEYS[SECONDARY].encode()]
    for name in (b"authorization", b"cookie", b"proxy-authorization"):
        assert not header_values(got.headers, name.decode())
    assert not [v for _, v in got.headers if PROXY_KEY.encode() in v or b"sk-downstream-oauth" in v]

    # Observe saw the whole request, token counts parsed from the JSON answer.
    kinds = [type(e).__name__ for e in proxy.events]
    assert kinds == ["RequestStarted", "AuthnComplete", "UpstreamChosen", "Chunk", "RequestFinished"]
    assert proxy.events[0].downstream_user_agent == "claude-cli/2.0"
    assert proxy.events[1] == cw.AuthnComplete("alice", "api_key")
    assert proxy.events[2] == cw.UpstreamChosen(chosen.target)
    finished = proxy.events[-1]
    assert (finished.status, finished.input_tokens, finished.output_tokens, finished.cache_read_input_tokens) == (200, 17, 5, 4096)


def test_a_shape_plugin_that_rewrites_the_request_decides_what_the_upstream_gets(tmp_path, upstream, start_proxy):
    fake, server = upstream
    wat = gen.shape_constant_wat(
        f"{server.url}/v1/rewritten?via=plugin", "PUT",
        [("x-shaped-by", b"test-plugin"), ("x-api-key", b"sk-injected"), ("authorization", b"Bearer injected"),
         ("anthropic-version", b"2023-06-01")],
        b'{"shaped":true}',
    )
    shape = wasm_file(tmp_path, "shape_constant.wasm", bytes(wasmtime.wat2wasm(wat)))
    proxy = start_proxy(write_config(tmp_path, server.url, shape_wasm=shape))
    answer = proxy.post({"model": "m", "messages": []}, **{"x-client": "original"})
    assert answer.status_code == 200, answer.text
    got = fake.received[-1]
    assert (got.method, got.path, got.query, got.body) == ("PUT", "/v1/rewritten", b"via=plugin", b'{"shaped":true}')
    assert header_values(got.headers, "x-shaped-by") == [b"test-plugin"]
    assert not header_values(got.headers, "x-client")  # the plugin's headers replace the request's
    # The plugin cannot choose credentials: the host drops them, the proxy adds the upstream's.
    assert header_values(got.headers, "x-api-key") == [UPSTREAM_KEYS[SECONDARY].encode()]
    assert not header_values(got.headers, "authorization")


def test_a_shaped_url_off_the_upstream_origin_is_refused_and_nothing_is_sent(tmp_path, upstream, start_proxy):
    fake, server = upstream
    wat = gen.shape_constant_wat("http://exfiltrate.invalid/v1/messages", "POST", [], b"{}")
    shape = wasm_file(tmp_path, "shape_elsewhere.wasm", bytes(wasmtime.wat2wasm(wat)))
    proxy = start_proxy(write_config(tmp_path, server.url, shape_wasm=shape, shape_policy="fail_closed"))
    before = fake.count
    answer = proxy.post({"model": "m", "messages": []})
    assert answer.status_code == 502
    error = answer.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["error"]["message"].startswith("shape plugin 'passthrough' failed:")
    assert "origin" in error["error"]["message"]
    assert fake.count == before
    assert type(proxy.events[-1]).__name__ == "ErrorEvent" and proxy.events[-1].code == "shape_failed"


# --- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("offload", [False, True], ids=["inline", "offload_to_thread"])
def test_streamed_chunks_arrive_in_order_and_complete_and_every_event_is_observed(tmp_path, upstream, start_proxy, offload):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url, offload=offload))
    deltas = 12
    headers = {"content-type": "application/json", "x-api-key": PROXY_KEY, "x-fake-deltas": str(deltas), "x-fake-delay-ms": "5"}
    chunks: List[bytes] = []
    with proxy.client.stream("POST", "/v1/messages", content=b'{"stream":true,"messages":[]}', headers=headers) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        chunks.extend(answer.iter_raw())
    proxy.settle()
    data = b"".join(chunks)
    assert check_stream(data, deltas) is None
    assert len(chunks) > 1  # streamed as it came, not buffered to the end
    assert [e[0] for e in parse_sse(data)] == list(range(len(sse_events(deltas))))

    kinds = [type(e).__name__ for e in proxy.events]
    sent = [e for e in proxy.events if isinstance(e, cw.Chunk)]
    assert kinds == ["RequestStarted", "AuthnComplete", "UpstreamChosen"] + ["Chunk"] * len(sent) + ["RequestFinished"]
    assert [c.batch_index for c in sent] == list(range(len(sent)))
    assert sum(c.total_bytes for c in sent) == len(data)
    assert sum(c.event_count for c in sent) == len(sse_events(deltas))
    finished = proxy.events[-1]
    assert (finished.status, finished.input_tokens, finished.output_tokens, finished.cache_read_input_tokens) == (200, 17, deltas, 4096)

    # observe_counter validates every event (it traps on an invalid one): all were taken.
    observed = proxy.stats("observe")
    assert observed.calls == proxy.proxy.events_reported == len(proxy.events)
    assert observed.errors == {} and observed.pass_throughs == 0
    assert proxy.stats("filter").calls == proxy.stats("shape").calls == 1


@pytest.mark.parametrize("batch", [None, 4], ids=["held_to_the_end", "batches_of_4"])
def test_a_streams_events_are_observed_as_it_ends_or_in_batches_while_it_runs(tmp_path, upstream, start_proxy, monkeypatch, batch):
    """Under pass_through, inline (the defaults), no observe call runs while the stream
    does: its events are observed once it ended, or DEFERRED_EVENTS_MAX at a time; in
    order either way, each one once."""
    if batch is not None:
        monkeypatch.setattr(proxy_app, "DEFERRED_EVENTS_MAX", batch)
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    observed = lambda: proxy.proxy.host.stats()[("observe", "observe")].calls  # noqa: E731 (settle() would wait for the end)
    headers = {"x-api-key": PROXY_KEY, "x-fake-deltas": "12", "x-fake-delay-ms": "30"}
    received = 0
    with proxy.client.stream("POST", "/v1/messages", content=b'{"stream":true}', headers=headers) as answer:
        for _ in answer.iter_raw():
            received += 1
            if received == 8:
                during = observed()
    proxy.settle()
    # Each chunk's event was held before the chunk went out: 3 + 8 events at least by then.
    if batch is None:
        assert during == 0
    else:
        assert during >= 8 and during % batch == 0
    kinds = [type(e).__name__ for e in proxy.events]
    chunks = kinds.count("Chunk")
    assert chunks >= received and kinds == ["RequestStarted", "AuthnComplete", "UpstreamChosen"] + ["Chunk"] * chunks + ["RequestFinished"]
    assert observed() == len(proxy.events) == proxy.proxy.events_reported


def test_a_client_that_goes_away_mid_stream_ends_the_upstream_request(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    headers = {"x-api-key": PROXY_KEY, "x-fake-deltas": "40", "x-fake-delay-ms": "100"}
    aborted = fake.aborted
    with proxy.client.stream("POST", "/v1/messages", content=b'{"stream":true}', headers=headers) as answer:
        assert next(answer.iter_raw()).startswith(b"id: 0\n")
    # Leaving the block closed the connection: the proxy stops relaying, closes its
    # upstream request (the upstream sees it go) and reports it.
    proxy.settle()
    deadline = time.monotonic() + 20
    while fake.aborted == aborted:
        assert time.monotonic() < deadline, "the upstream request was not closed"
        time.sleep(0.01)
    assert isinstance(proxy.events[-1], cw.ErrorEvent) and proxy.events[-1].code == "stream_aborted"
    assert not any(isinstance(e, cw.RequestFinished) for e in proxy.events)
    assert proxy.stats("observe").calls == proxy.proxy.events_reported
    assert proxy.post({"model": "m"}).status_code == 200  # and goes on serving


def test_upstream_error_status_and_body_pass_through(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    answer = proxy.post({"model": "m"}, **{"x-fake-status": "529"})
    assert answer.status_code == 529
    assert answer.json() == {"type": "error", "error": {"type": "api_error", "message": "fake error 529"}}
    assert proxy.events[-1].status == 529


def test_an_unreachable_upstream_is_a_502(tmp_path, start_proxy):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    proxy = start_proxy(write_config(tmp_path, dead))
    answer = proxy.post({"model": "m"})
    assert answer.status_code == 502
    assert answer.json()["error"]["message"].startswith("upstream 'secondary' unreachable")
    assert proxy.events[-1].code == "upstream_unreachable"


# --- authentication ----------------------------------------------------------------------


def test_an_unknown_key_is_401_and_reaches_no_plugin(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    assert proxy.post({"model": "m"}).status_code == 200  # every slot has been called once
    before, count = proxy.proxy.host.stats(), fake.count
    contexts, events = len(proxy.contexts), len(proxy.events)
    for key, headers in [("sk-wrong", {}), (None, {}), (None, {"authorization": "Bearer sk-wrong"}),
                         (None, {"authorization": f"Basic {PROXY_KEY}"})]:
        answer = proxy.post({"model": "m"}, key=key, **headers)
        assert answer.status_code == 401
        assert answer.json() == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    after = proxy.proxy.host.stats()
    assert {k: s.calls for k, s in after.items()} == {k: s.calls for k, s in before.items()}
    assert (len(proxy.contexts), len(proxy.events), fake.count) == (contexts, events, count)
    # A bearer token works like x-api-key.
    assert proxy.post({"model": "m"}, key=None, authorization=f"Bearer {BOB_KEY}").status_code == 200
    assert proxy.events[-4] == cw.AuthnComplete("bob", "api_key")


@pytest.mark.parametrize("pool_size", [4, proxy_app.PREPARE_MIN_POOL])
def test_requests_leave_no_instance_open_but_the_next_requests(tmp_path, upstream, start_proxy, pool_size):
    """Each request's observe instance (its events are observed after the upstream was
    asked, or after a whole answer was sent) is closed when the request ends, for whole and
    streamed answers. With room in the pool the filter and shape instances of the next
    request are open already (prepared), and nothing else is."""
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url, pool_size=pool_size))
    for index in range(6):
        answer = proxy.post({"model": "m", "max_tokens": 8, "stream": index % 2 == 1, "messages": []})
        assert answer.status_code == 200, answer.text
    kinds = [type(event).__name__ for event in proxy.events]
    assert (kinds.count("RequestStarted"), kinds.count("RequestFinished"), kinds.count("ErrorEvent")) == (6, 6, 0)
    assert proxy.proxy._open_scopes == 0
    native = cw.BACKEND == "cython" and os.environ.get(NATIVE_CALLS_ENV) != "0"
    prepared = native and pool_size >= proxy_app.PREPARE_MIN_POOL
    assert [proxy.proxy.adapters[hook]._loaded().native.has_prepared if native else False
            for hook in ("filter", "shape", "observe")] == [prepared, prepared, False]
    stats = proxy.proxy.host.memory_pool_stats()
    if stats is not None:  # the page-resetting pool counts the memories in use
        assert stats.in_use == (2 if prepared else 0)


def test_a_request_whose_held_back_events_raise_is_still_accounted_for_and_releases_its_instance(
        tmp_path, upstream, start_proxy, caplog):
    """A bug in observing the held-back events (here: the batch raises) must not keep the
    request's observe instance or skip its metrics (found by review)."""
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    assert proxy.post({"model": "m", "max_tokens": 8, "messages": []}).status_code == 200
    observe = proxy.proxy.adapters["observe"]
    observe.observe_batch = lambda events, scope=None: (_ for _ in ()).throw(RuntimeError("a bug"))
    samples = len(proxy.proxy.hook_samples)
    answer = proxy.client.post("/v1/messages", content=b'{"model":"m","messages":[]}', headers={"x-api-key": PROXY_KEY})
    assert answer.status_code == 200  # sent before it is reported
    deadline = time.monotonic() + 10
    while len(proxy.proxy.hook_samples) == samples:  # settle() counts _finish calls that return
        assert time.monotonic() < deadline, "the request was never accounted for"
        time.sleep(0.005)
    assert proxy.proxy._open_scopes == 0
    stats = proxy.proxy.host.memory_pool_stats()
    if stats is not None:
        assert stats.in_use <= 2  # the next request's prepared instances at most
    assert any("reporting the answer failed" in r.getMessage() for r in caplog.records)


# --- hostile filters and failure policies -----------------------------------------------


@pytest.mark.parametrize("fixture, error", [("filter_probe_then_loop", "PluginTimeout"), ("filter_probe_then_trap", "PluginTrap")])
@pytest.mark.parametrize("policy", ["pass_through", "fail_closed"])
def test_a_hostile_filter_under_each_failure_policy(tmp_path, upstream, start_proxy, fixture, error, policy):
    fake, server = upstream
    hostile = wasm_file(tmp_path, f"{fixture}.wasm", fixture_wasm(fixture))  # admitted: it answers the probe
    proxy = start_proxy(write_config(tmp_path, server.url, filter_wasm=hostile, filter_policy=policy, deadline_s=0.05))
    before = fake.count
    for attempt in range(2):  # the second call meets the open circuit (the proxy's breaker_failures is 1)
        answer = proxy.post({"model": "m", "messages": []})
        if policy == "pass_through":
            assert answer.status_code == 200, answer.text
        else:
            assert answer.status_code == 502
            body = answer.json()
            assert body["type"] == "error" and body["error"]["type"] == "api_error"
            message = body["error"]["message"]
            assert message.startswith("filter plugin 'cache-aware' failed:")
            if attempt == 0:
                assert ("deadline" in message or "interrupt" in message) if error == "PluginTimeout" else "unreachable" in message
            else:
                assert "circuit is open after 1 consecutive failures" in message
            assert proxy.events[-1].code == "filter_failed" and proxy.events[-1].source == "filter"
    stats = proxy.stats("filter")
    # One call reached the guest; the next failed fast: one deadline of stall, not two.
    assert stats.calls == 2 and stats.errors == {error: 1, "PluginCircuitOpen": 1} and stats.breaker_trips == 1
    assert stats.pass_throughs == (2 if policy == "pass_through" else 0)
    # Passed through: every candidate kept, the first (primary) chosen, the request sent.
    assert fake.count - before == (2 if policy == "pass_through" else 0)
    if policy == "pass_through":
        assert header_values(fake.received[-1].headers, "x-api-key") == [UPSTREAM_KEYS[PRIMARY].encode()]
    assert proxy.stats("observe").errors == {}


def test_a_filter_that_keeps_nothing_is_a_503(tmp_path, upstream, start_proxy):
    fake, server = upstream
    keep_none = wasm_file(tmp_path, "keep_none.wasm", fixture_wasm("filter_keep_none"))
    proxy = start_proxy(write_config(tmp_path, server.url, filter_wasm=keep_none))
    before = fake.count
    answer = proxy.post({"model": "m"})
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "api_error"
    assert fake.count == before and proxy.events[-1].code == "no_upstream"


# --- reloads -----------------------------------------------------------------------------


def _with_custom_section(wasm: bytes, tag: bytes) -> bytes:
    """The same module plus a custom section: another content hash, the same behaviour."""
    name = b"cclb-proxy-test"
    payload = bytes([len(name)]) + name + tag
    return wasm + b"\x00" + bytes([len(payload)]) + payload


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one


def _reloads(proxy: Running, result: str) -> float:
    return proxy.proxy.metrics.reloads.labels("filter", result)._value.get()


def test_a_changed_plugin_file_is_swapped_in_while_requests_keep_succeeding(tmp_path, upstream, start_proxy):
    fake, server = upstream
    original = (PLUGINS / "cache_aware_filter.wasm").read_bytes()
    path = wasm_file(tmp_path, "filter.wasm", original)
    proxy = start_proxy(write_config(tmp_path, server.url, filter_wasm=path, reload_poll_s=0.05))
    statuses: List[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=proxy.url, timeout=20) as client:
            while not stop.is_set():
                answer = client.post("/v1/messages", content=b'{"stream":true}', headers={"x-api-key": PROXY_KEY, "x-fake-deltas": "2", "x-fake-delay-ms": "0"})
                statuses.append(answer.status_code)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        ids = {proxy.proxy.adapters["filter"].plugin_id}
        for n in range(3):
            _replace(path, _with_custom_section(original, b"%d" % n))
            deadline = time.monotonic() + 20
            while _reloads(proxy, "swapped") < n + 1:
                assert time.monotonic() < deadline, "the file change was not picked up"
                time.sleep(0.02)
            ids.add(proxy.proxy.adapters["filter"].plugin_id)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join(20)
    assert len(ids) == 4 and _reloads(proxy, "failed") == 0
    assert statuses and set(statuses) == {200}, statuses
    # A real swap: a filter that keeps nothing takes over.
    _replace(path, fixture_wasm("filter_keep_none"))
    deadline = time.monotonic() + 20
    while _reloads(proxy, "swapped") < 4:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proxy.post({"model": "m"}).status_code == 503
    # A file the host rejects leaves the slot as it was.
    _replace(path, b"\0asm not a module")
    deadline = time.monotonic() + 20
    while _reloads(proxy, "failed") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proxy.post({"model": "m"}).status_code == 503


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_the_cli_serves_and_reloads_on_sighup(tmp_path, upstream):
    fake, server = upstream
    original = (PLUGINS / "cache_aware_filter.wasm").read_bytes()
    path = wasm_file(tmp_path, "filter.wasm", original)
    config = write_config(tmp_path, server.url, filter_wasm=path)  # no file polling: SIGHUP only
    # As the README says: `python examples/proxy --config ...` (the installed cclb_wire is used).
    process = subprocess.Popen(
        [sys.executable, str(PROXY_DIR), "--config", str(config), "--port", "0", "--admin-port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(cw.__file__).resolve().parents[1])},  # this cclb_wire
    )
    try:
        line = process.stdout.readline()
        assert "listening on http://" in line, line + process.stderr.read()
        url = line.split("listening on ")[1].split()[0]
        admin_line = process.stdout.readline()
        assert "admin listening on http://" in admin_line, admin_line
        admin_url = admin_line.split("listening on ")[1].split()[0]
        with httpx.Client(base_url=url, timeout=20) as client, httpx.Client(base_url=admin_url, timeout=20) as admin:
            def swapped() -> float:
                for family in text_string_to_metric_families(admin.get("/metrics").text):
                    for sample in family.samples:
                        if sample.name == "cclb_proxy_plugin_reloads_total" and sample.labels == {"hook": "filter", "result": "swapped"}:
                            return sample.value
                return 0.0

            assert client.post("/v1/messages", content=b"{}", headers={"x-api-key": PROXY_KEY}).status_code == 200
            before = admin.get("/healthz").json()["plugins"]["filter"]["plugin_id"]
            _replace(path, _with_custom_section(original, b"sighup"))
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while swapped() < 1:
                assert time.monotonic() < deadline, "SIGHUP did not reload"
                time.sleep(0.05)
            assert admin.get("/healthz").json()["plugins"]["filter"]["plugin_id"] != before
            assert client.get("/metrics").status_code == 404  # not on the public listener
            assert client.post("/v1/messages", content=b"{}", headers={"x-api-key": PROXY_KEY}).status_code == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    # uvicorn shuts down cleanly on SIGTERM, then re-raises it (so the status says why it ended).
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in err and "ERROR" not in err, err


# --- metrics -----------------------------------------------------------------------------


def test_metrics_export_the_proxy_and_plugin_stats(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    for _ in range(3):
        assert proxy.post({"stream": True}, **{"x-fake-deltas": "3", "x-fake-delay-ms": "0"}).status_code == 200
    assert proxy.post({"model": "m"}, key="nope").status_code == 401
    text = proxy.admin.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("cclb_proxy_requests_total", (("status", "200"),))] == 3
    assert samples[("cclb_proxy_requests_total", (("status", "401"),))] == 1
    assert samples[("cclb_proxy_hook_seconds_count", ())] == 3
    assert samples[("cclb_proxy_chunks_streamed_total", ())] == sum(isinstance(e, cw.Chunk) for e in proxy.events)
    for kind in ("filter", "shape", "observe"):
        stats = proxy.stats(kind)
        labels = (("kind", kind), ("slot", kind))
        assert samples[("cclb_plugin_calls_total", labels)] == stats.calls > 0
        assert samples[("cclb_plugin_call_seconds_count", labels)] == stats.calls
        assert samples[("cclb_plugin_call_seconds_bucket", labels[:1] + (("le", "+Inf"),) + labels[1:])] == stats.calls
        assert samples[("cclb_plugin_pass_throughs_total", labels)] == 0
    # Buckets are cumulative.
    buckets = [v for (name, labels), v in samples.items() if name == "cclb_plugin_call_seconds_bucket" and ("kind", "observe") in labels]
    assert buckets == sorted(buckets)
    hook_times = proxy.admin.get("/debug/hook-times").json()
    assert len(hook_times["hook_seconds"]) == 3 and all(0 < t < 1 for t in hook_times["hook_seconds"])
    assert hook_times["upstream_attempts"] == [1, 1, 1]  # the 401 ran no hook: no sample


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('keys = []\n[[upstreams]]\nid = "not-a-uuid"\nname = "x"\nbase_url = "http://127.0.0.1:1"\napi_key = "k"\n')
    with pytest.raises(proxy_config.ConfigError, match=r"^upstreams\[0\]"):
        proxy_config.load(bad)
    bad.write_text('keys = []\n[[upstreams]]\nid = "%s"\nname = "x"\nbase_url = "http://127.0.0.1:1"\napi_key_env = "CCLB_PROXY_TEST_UNSET"\n' % PRIMARY)
    with pytest.raises(proxy_config.ConfigError, match="CCLB_PROXY_TEST_UNSET is not set"):
        proxy_config.load(bad)
    bad.write_text('[[upstreams]]\nid = "%s"\nname = "x"\nbase_url = "http://127.0.0.1:1"\napi_key = "k"\n' % PRIMARY)
    with pytest.raises(proxy_config.ConfigError, match="^keys: required"):
        proxy_config.load(bad)
    example = proxy_config.load(PROXY_DIR / "config.example.toml")
    assert set(example.slots) == {"filter", "shape", "observe"}
    assert example.host.origin_policy is cw.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN


@pytest.mark.parametrize(
    "table, key, value, message",
    [
        ("server", "reload_pol_s", 5, r"^server\.reload_pol_s: unknown key \(expected one of access_log, "),
        ("admin", "prot", 9, r"^admin\.prot: unknown key \(expected one of host, port\)"),
        (None, "sever", {"port": 9}, r"^sever: unknown key \(expected one of admin, host, keys, "),
        ("server", "reload_poll_s", -1, r"^server\.reload_poll_s: must be 0 or a positive number of seconds, got -1\.0"),
        ("server", "upstream_timeout_s", 0, r"^server\.upstream_timeout_s: must be a positive number of seconds, got 0\.0"),
    ],
)
def test_a_misspelt_key_or_a_bad_time_stops_the_start_naming_it(tmp_path, table, key, value, message):
    path = write_config(tmp_path, "http://127.0.0.1:1")
    config = json.loads(path.read_text())
    (config if table is None else config.setdefault(table, {}))[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(proxy_config.ConfigError, match=message):
        proxy_config.load(path)
