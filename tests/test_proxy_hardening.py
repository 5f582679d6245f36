"""The example proxy against what an attacker or a careless client sends (issue 16), end
to end on loopback. Requests that httpx would normalise (dot segments, both framing
headers) go over a raw socket, byte for byte as written here."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from test_proxy_e2e import PROXY_KEY, proxy_app, proxy_config, served_lifespan, start_proxy, upstream, write_config  # noqa: F401


def raw_request(url: str, head: bytes, body: bytes = b"", *, read_until_close: bool = True, timeout: float = 10) -> bytes:
    """Send ``head`` (request line and headers, CRLF-terminated) and ``body``; the bytes the
    proxy answers until it closes the connection (or ``timeout``)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n" + body)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


def head(method: str, path: bytes, *extra: bytes, length: Optional[int] = None) -> bytes:
    lines = [f"{method} ".encode() + path + b" HTTP/1.1", b"host: proxy.test", f"x-api-key: {PROXY_KEY}".encode(),
             b"content-type: application/json", *extra]
    if length is not None:
        lines.append(f"content-length: {length}".encode())
    return b"\r\n".join(lines) + b"\r\n"


def status_and_json(answer: bytes) -> tuple:
    status = int(answer.split(b" ", 2)[1])
    body = answer.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(body) if body.startswith(b"{") else body


# --- 1. paths: what a plugin sees is what is sent; nothing the URL parser would rewrite -------------


@pytest.mark.parametrize(
    "path",
    [b"/v1/messages/../../../admin/keys", b"/v1/%2e%2e/%2e%2e/internal/billing", b"/v1/%2E%2E/admin",
     b"/v1/messages%2F..%2F..%2Fadmin", b"/v1/./messages", b"/v1/messages/..", b"/v1/a%5c..%5cadmin"],
)
def test_a_path_that_leaves_v1_or_hides_dot_segments_is_refused_and_nothing_is_sent(tmp_path, upstream, start_proxy, path):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    before = fake.count
    answer = raw_request(proxy.url, head("POST", path, b"connection: close", length=2), b"{}")
    status, document = status_and_json(answer)
    assert status == 400
    assert document["type"] == "error" and document["error"]["type"] == "invalid_request_error"
    assert fake.count == before  # the upstream (and its key) never saw it
    assert proxy.contexts == []  # nor did any plugin


def test_a_plain_v1_path_still_goes_through(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    answer = raw_request(proxy.url, head("POST", b"/v1/messages", b"connection: close", length=2), b"{}")
    assert status_and_json(answer)[0] == 200
    assert fake.received[-1].path == "/v1/messages"


# --- 2. body size: 413 before buffering ------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    before = fake.count
    limit = proxy.proxy.config.max_body_bytes
    assert limit == 32 * 1024 * 1024  # the Messages API's own limit is the default
    # Only the head is sent: the proxy must answer without waiting for 32 MiB + 1 bytes.
    answer = raw_request(proxy.url, head("POST", b"/v1/messages", length=limit + 1), b"", timeout=5)
    status, document = status_and_json(answer)
    assert (status, document["error"]["type"]) == (413, "request_too_large")
    assert b"connection: close" in answer.lower()
    assert fake.count == before


def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_passes(tmp_path, upstream, start_proxy):
    fake, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    config["server"]["max_body_bytes"] = 1000
    path = tmp_path / "small.json"
    path.write_text(json.dumps(config))
    proxy = start_proxy(path)
    chunk = b"x" * 600
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2)) + b"0\r\n\r\n"
    answer = raw_request(proxy.url, head("POST", b"/v1/messages", b"transfer-encoding: chunked"), chunked)
    assert status_and_json(answer)[0] == 413
    assert proxy.contexts == []


def test_a_32_mib_request_passes_every_plugin_of_the_sample_config(tmp_path, upstream, start_proxy):
    fake, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    sample = proxy_config.load(Path(__file__).resolve().parents[1] / "examples" / "proxy" / "config.example.toml")
    config["host"]["memory_limit_bytes"] = sample.host.memory_limit_bytes
    path = tmp_path / "big.json"
    path.write_text(json.dumps(config))
    proxy = start_proxy(path)
    text = "x" * (32 * 1024 * 1024 - 200)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    assert len(body) <= proxy.proxy.config.max_body_bytes
    answer = proxy.client.post("/v1/messages", content=body.encode(), headers={"x-api-key": PROXY_KEY})
    assert answer.status_code == 200, answer.text[:300]
    assert len(fake.received[-1].body) == len(body)
    stats = proxy.proxy.host.stats()
    assert all(not s.errors and not s.pass_throughs for s in stats.values()), stats


# --- 8. hop-by-hop headers, both ways --------------------------------------------------------------


def test_headers_named_in_connection_never_cross_the_proxy(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    answer = raw_request(
        proxy.url,
        head("POST", b"/v1/messages", b"connection: x-secret-hop, close", b"x-secret-hop: 1", b"proxy-connection: keep-alive",
             b"x-kept: yes", length=2),
        b"{}",
    )
    assert status_and_json(answer)[0] == 200
    sent = {name for name, _ in fake.received[-1].headers}
    assert b"x-secret-hop" not in sent and b"proxy-connection" not in sent
    assert b"x-kept" in sent
    assert not [n for n, _ in proxy.contexts[-1].headers if n in (b"x-secret-hop", b"proxy-connection")]


# --- 10. error shapes and no Host-header redirect --------------------------------------------------


def test_unknown_routes_and_methods_answer_in_anthropics_error_shape(tmp_path, upstream, start_proxy):
    _, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    not_found = proxy.client.get("/nope")
    assert not_found.status_code == 404 and not_found.json()["error"]["type"] == "not_found_error"
    wrong_method = proxy.admin.post("/healthz")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    # The public listener serves the API only: health and metrics are on the admin one.
    assert proxy.client.get("/healthz").status_code == 404 and proxy.client.get("/metrics").status_code == 404
    for url in (proxy.url, proxy.admin_server.url):
        answer = raw_request(url, b"GET /metrics/ HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n")
        status = int(answer.split(b" ", 2)[1])
        assert status != 307 and b"evil.example" not in answer


# --- 11. keys: none empty, none twice ------------------------------------------------------------


@pytest.mark.parametrize("keys, message", [
    ([{"key": "", "principal": "a"}], "keys[0].key: empty"),
    ([{"key": "   ", "principal": "a"}], "keys[0].key: empty"),
    ([{"key": "sk-1", "principal": "a"}, {"key": "sk-1", "principal": "b"}], "keys[1].key: the same key as an earlier entry"),
])
def test_empty_or_repeated_keys_stop_the_start(tmp_path, upstream, keys, message):
    _, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    config["keys"] = keys
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(config))
    with pytest.raises(proxy_config.ConfigError) as caught:
        proxy_config.load(path)
    assert message in str(caught.value)


# --- 12. request smuggling: both framing headers ---------------------------------------------------


def test_content_length_with_transfer_encoding_is_400_and_the_connection_closes(tmp_path, upstream, start_proxy):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    before = fake.count
    smuggled = b"GET /v1/models HTTP/1.1\r\nhost: proxy.test\r\nx-api-key: " + PROXY_KEY.encode() + b"\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    answer = raw_request(
        proxy.url, head("POST", b"/v1/messages", b"transfer-encoding: chunked", length=len(body)), body,
    )
    assert status_and_json(answer)[0] == 400
    assert answer.count(b"HTTP/1.1 ") == 1  # the pipelined request was never answered
    assert fake.count == before


# --- 9. a client that leaves mid-body ---------------------------------------------------------------


def test_a_client_that_leaves_mid_body_is_one_log_line_and_no_traceback(tmp_path, upstream, start_proxy, caplog):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    before = fake.count
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head("POST", b"/v1/messages", length=1000) + b"\r\n" + b"{" * 10)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while proxy.finished < proxy.entered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.finished == proxy.entered  # the request was accounted for
    assert fake.count == before
    assert not [r for r in caplog.records if r.exc_info and "ClientDisconnect" in str(r.exc_info[0])]


# --- 7. upstream timeouts: 504 before the headers, an SSE error event mid-stream ---------------------


def _timeout_config(tmp_path: Path, url: str, seconds: float) -> Path:
    config = json.loads(write_config(tmp_path, url).read_text())
    config["server"]["upstream_timeout_s"] = seconds
    path = tmp_path / "timeout.json"
    path.write_text(json.dumps(config))
    return path


def _requests_metric(proxy: Any) -> Dict[str, float]:
    text = proxy.admin.get("/metrics").text
    counts = {}
    for line in text.splitlines():
        if line.startswith("cclb_proxy_requests_total{"):
            label = line.split('status="')[1].split('"')[0]
            counts[label] = float(line.rsplit(" ", 1)[1])
    return counts


def test_an_upstream_that_does_not_answer_in_time_is_a_504(tmp_path, upstream, start_proxy, caplog):
    _, server = upstream
    proxy = start_proxy(_timeout_config(tmp_path, server.url, 0.3))
    answer = proxy.post({"model": "m"}, **{"x-fake-head-delay-ms": "1500"})
    assert answer.status_code == 504
    assert answer.json()["error"]["type"] == "api_error" and "timed out" in answer.json()["error"]["message"]
    assert any(type(e).__name__ == "ErrorEvent" and e.code == "upstream_timeout" for e in proxy.events)
    assert _requests_metric(proxy).get("504") == 1


def test_a_stream_that_stalls_ends_with_an_error_event_and_its_own_metric(tmp_path, upstream, start_proxy, caplog):
    _, server = upstream
    proxy = start_proxy(_timeout_config(tmp_path, server.url, 0.3))
    answer = proxy.post({"model": "m", "stream": True}, **{"x-fake-delay-ms": "1500", "x-fake-deltas": "2"})
    assert answer.status_code == 200  # the headers had gone out
    tail = answer.content.rsplit(b"\n\n", 2)[-2]
    assert tail.startswith(b"event: error\ndata: ")
    error = json.loads(tail.split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error" and "stalled" in error["error"]["message"]
    counts = _requests_metric(proxy)
    assert counts.get("upstream_timeout") == 1 and "200" not in counts
    broke = [r for r in caplog.records if "stalled past upstream_timeout_s" in r.getMessage()]
    assert len(broke) == 1 and broke[0].exc_info is None  # one line, no traceback
    assert not [r for r in caplog.records if r.exc_info]


# --- 6. a graceful shutdown that ends ------------------------------------------------------------


def test_sigterm_ends_the_process_even_while_a_client_holds_a_body_open(tmp_path, upstream):
    import os
    import signal
    import subprocess
    import sys

    import cclb_wire as cw
    from test_proxy_e2e import PROXY_DIR

    _, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    config["server"]["shutdown_timeout_s"] = 1
    path = tmp_path / "shutdown.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, str(PROXY_DIR), "--config", str(path), "--port", "0", "--admin-port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(cw.__file__).resolve().parents[1])},
    )
    try:
        line = process.stdout.readline()
        assert "listening on http://" in line, line
        url = line.split("listening on ")[1].split()[0]
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(head("POST", b"/v1/messages", length=1000) + b"\r\n" + b"{")  # the rest never comes
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)  # shutdown_timeout_s 1: well before this
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    assert process.returncode is not None


# --- 4. a client that leaves cancels the upstream request ------------------------------------------


@pytest.mark.parametrize("parser", ["httptools", "h11"])  # the server tells (httptools), or a task asks receive()
def test_a_client_that_leaves_before_the_answer_cancels_the_upstream_request(tmp_path, upstream, start_proxy, parser):
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url), parser)
    aborted = fake.aborted
    body = b'{"model":"m"}'
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head("POST", b"/v1/messages", b"x-fake-head-delay-ms: 5000", length=len(body)) + b"\r\n" + body)
        time.sleep(0.4)  # the proxy is waiting for the upstream now
    deadline = time.monotonic() + 2  # well before the upstream's 5 s answer
    while fake.aborted == aborted:
        assert time.monotonic() < deadline, "the upstream never saw the request cancelled"
        time.sleep(0.02)
    proxy.settle()
    assert any(type(e).__name__ == "ErrorEvent" and e.code == "client_gone" for e in proxy.events)


# --- 3. a hanging inline plugin stalls the loop one deadline, not concurrency x deadline -----------


def test_a_looping_inline_filter_is_entered_once_then_its_slot_fails_fast(tmp_path, upstream, start_proxy):
    import concurrent.futures

    from test_proxy_e2e import fixture_wasm, wasm_file

    fake, server = upstream
    hostile = wasm_file(tmp_path, "loop.wasm", fixture_wasm("filter_probe_then_loop"))
    config = json.loads(write_config(tmp_path, server.url, filter_wasm=hostile).read_text())
    del config["host"]["deadline_s"]  # the proxy's defaults: a short inline deadline and the breaker
    path = tmp_path / "loop.json"
    path.write_text(json.dumps(config))
    proxy = start_proxy(path)
    assert proxy.proxy.config.host.deadline_s == 0.05 and proxy.proxy.config.host.breaker_failures == 1
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: proxy.post({"model": "m"}).status_code, range(40)))
    assert statuses == [200] * 40  # pass_through: every request served
    stats = proxy.stats("filter")
    # The guest was entered once (one deadline of stall); the other 39 failed fast.
    assert stats.errors == {"PluginTimeout": 1, "PluginCircuitOpen": 39} and stats.breaker_trips == 1
    metrics = proxy.admin.get("/metrics").text
    assert 'cclb_plugin_breaker_trips_total{kind="filter",slot="filter"} 1.0' in metrics


# --- 5. slowloris: heads and bodies in time, connections bounded ------------------------------------


@pytest.fixture(params=["h11", "httptools"])
def guarded(request, tmp_path, upstream):
    """A proxy whose server (each request parser) has short head and body timeouts and room for 4 connections."""
    from test_proxy_e2e import ServerThread, proxy_app

    _, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    config["server"].update(header_timeout_s=0.5, body_timeout_s=0.5, max_client_connections=4)
    path = tmp_path / "guarded.json"
    path.write_text(json.dumps(config))
    loaded = proxy_config.load(path)
    proxy = proxy_app.Proxy(loaded)
    thread = ServerThread(proxy.app, header_timeout_s=loaded.header_timeout_s,
                          max_client_connections=loaded.max_client_connections, parser=request.param)
    with thread:
        yield thread


def _closed_by_server(sock: socket.socket) -> bytes:
    sock.settimeout(5)  # generous: the server's timeouts are 0.5 s
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


@pytest.mark.parametrize("sent", [b"", b"POST /v1/mess", b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n"])
def test_a_request_head_that_never_completes_is_closed(guarded, sent):
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(sent)
        assert _closed_by_server(sock) == b""  # closed without an answer


def test_a_body_that_trickles_is_408_and_closed(guarded):
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head("POST", b"/v1/messages", length=100) + b"\r\n" + b"{")
        answer = _closed_by_server(sock)
    assert int(answer.split(b" ", 2)[1]) == 408


def test_connections_past_the_limit_get_503(guarded):
    host, port = guarded.url.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(4):  # kept-alive connections, each after one answered request
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: " + PROXY_KEY.encode() + b"\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            held.append(sock)
        extra = raw_request(guarded.url, b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n")
        assert int(extra.split(b" ", 2)[1]) == 503
    finally:
        for sock in held:
            sock.close()


# --- gateway: failover to the next kept upstream -----------------------------------------------------


def _failover_config(tmp_path: Path, first_url: str, second_url: str, **server: Any) -> Path:
    """The filter keeps both upstreams (keep_k 2), in the config's order: PRIMARY is tried first."""
    config = json.loads(write_config(tmp_path, second_url).read_text())
    config["keys"][0]["claims"]["keep_k"] = 2
    config["upstreams"][0]["base_url"] = first_url
    config["server"].update(server)
    path = tmp_path / "failover.json"
    path.write_text(json.dumps(config))
    return path


async def _always_529(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    if await served_lifespan(scope, receive, send):
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    await send({"type": "http.response.start", "status": 529, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _attempts(proxy: Any) -> Dict[tuple, float]:
    counts = {}
    for line in proxy.admin.get("/metrics").text.splitlines():
        if line.startswith("cclb_proxy_upstream_attempts_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1 : line.index("}")].split(","))
            counts[(labels["upstream"].strip('"'), labels["outcome"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return counts


def test_an_unreachable_first_upstream_fails_over_to_the_next(tmp_path, upstream, start_proxy):
    fake, server = upstream
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    proxy = start_proxy(_failover_config(tmp_path, dead, server.url))
    before = fake.count
    answer = proxy.post({"model": "m"})
    assert answer.status_code == 200
    assert fake.count == before + 1
    codes = [getattr(e, "code", type(e).__name__) for e in proxy.events]
    assert codes.count("UpstreamChosen") == 2 and "upstream_unreachable" in codes
    assert _attempts(proxy) == {("primary", "unreachable"): 1.0, ("secondary", "answered"): 1.0}
    assert proxy.admin.get("/debug/hook-times").json()["upstream_attempts"] == [2]  # the load test's split
    health = proxy.admin.get("/healthz").json()["upstreams"]
    assert health["primary"]["consecutive_failures"] == 1 and health["primary"]["last_error"].startswith("unreachable: ")
    assert "Connect" in health["primary"]["last_error"]  # httpx's ConnectError, aiohttp's ClientConnectorError
    assert health["secondary"]["consecutive_failures"] == 0 and health["secondary"]["last_error"] is None


def test_hook_time_samples_count_the_upstream_attempts_begun_and_only_with_debug_endpoints(tmp_path, upstream, start_proxy):
    _, server = upstream
    proxy = start_proxy(_failover_config(tmp_path, server.url, server.url))  # both kept; the first answers
    assert proxy.post({"model": "m"}).status_code == 200
    assert proxy.admin.get("/debug/hook-times").json() == {"hook_seconds": [pytest.approx(proxy.proxy.hook_samples[0][0])],
                                                           "upstream_attempts": [1]}
    quiet = start_proxy(_failover_config(tmp_path, server.url, server.url, debug_endpoints=False))
    assert quiet.post({"model": "m"}).status_code == 200
    assert len(quiet.proxy.hook_samples) == 0 and quiet.admin.get("/debug/hook-times").status_code == 404
    assert "cclb_proxy_hook_seconds_count 1.0" in quiet.admin.get("/metrics").text  # the histogram still has it


async def _json_that_breaks_off(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """A JSON answer that declares 100 bytes and sends 10."""
    if await served_lifespan(scope, receive, send):
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"id":"ms_', "more_body": True})
    raise RuntimeError("the upstream fell over mid-answer")


def test_a_small_json_answer_that_breaks_off_is_a_502_not_a_truncated_200(tmp_path, start_proxy):
    from test_proxy_e2e import ServerThread

    with ServerThread(_json_that_breaks_off) as broken:
        proxy = start_proxy(write_config(tmp_path, broken.url))
        answer = proxy.post({"model": "m"})
    assert answer.status_code == 502
    assert answer.json()["error"]["type"] == "api_error" and "broke off (upstream_error)" in answer.json()["error"]["message"]
    assert _requests_metric(proxy) == {"upstream_error": 1.0}  # its own label, not a 200


def test_a_proxy_bug_is_one_logged_traceback_and_a_500_in_the_apis_error_shape(tmp_path, upstream, start_proxy, caplog):
    _, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))

    def broken(*args: Any) -> None:
        raise RuntimeError("injected bug")

    proxy.proxy.build_context = broken
    answer = proxy.client.post("/v1/messages", content=b"{}", headers={"x-api-key": PROXY_KEY})
    assert answer.status_code == 500 and answer.json()["error"] == {"type": "api_error", "message": "internal proxy error"}
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "injected bug" in str(logged[0].exc_info[1])


def test_x_forwarded_for_gets_the_peers_address_appended_and_cannot_replace_it(tmp_path, upstream, start_proxy):
    """A loopback client's own X-Forwarded-For must not become the address the proxy appends
    (uvicorn trusts such headers from 127.0.0.1 by default)."""
    fake, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    assert proxy.post({"model": "m"}, **{"x-forwarded-for": "203.0.113.7"}).status_code == 200
    assert [v for k, v in fake.received[-1].headers if k == b"x-forwarded-for"] == [b"203.0.113.7, 127.0.0.1"]


def test_a_dead_upstream_is_one_warning_per_interval_and_the_next_says_how_many_were_held(tmp_path, upstream, start_proxy,
                                                                                          caplog, monkeypatch):
    from test_proxy_e2e import proxy_app

    _, server = upstream
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    proxy = start_proxy(_failover_config(tmp_path, dead, server.url))
    for _ in range(3):
        assert proxy.post({"model": "m"}).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "'primary' unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "more since" not in warnings[0]
    assert _attempts(proxy)[("primary", "unreachable")] == 3.0  # every attempt still counted
    monkeypatch.setattr(proxy_app, "WARNING_INTERVAL_S", 0.0)
    assert proxy.post({"model": "m"}).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "'primary' unreachable" in r.getMessage()]
    assert len(warnings) == 2 and warnings[1].endswith("(2 more since the last warning for 'primary')")


def test_an_overloaded_first_upstream_fails_over_and_one_attempt_passes_it_through(tmp_path, upstream, start_proxy):
    from test_proxy_e2e import ServerThread

    _, server = upstream
    with ServerThread(_always_529) as overloaded:
        proxy = start_proxy(_failover_config(tmp_path, overloaded.url, server.url))
        assert proxy.post({"model": "m"}).status_code == 200
        assert _attempts(proxy) == {("primary", "529"): 1.0, ("secondary", "answered"): 1.0}
        single = start_proxy(_failover_config(tmp_path, overloaded.url, server.url, max_attempts=1))
        answer = single.post({"model": "m"})
        assert answer.status_code == 529 and answer.json()["error"]["type"] == "overloaded_error"


# --- gateway: one JSON access-log line per request, 401s and 502s included ----------------------------


def test_the_access_log_has_one_json_line_per_request(tmp_path, upstream, start_proxy, caplog):
    _, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    config["server"]["access_log"] = True
    path = tmp_path / "access.json"
    path.write_text(json.dumps(config))
    proxy = start_proxy(path)
    with caplog.at_level("INFO", logger="cclb_proxy.access"):
        ok = proxy.post({"model": "m"})
        refused = proxy.post({"model": "m"}, key="sk-wrong")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cclb_proxy.access"]
    assert [line["status"] for line in lines] == [200, 401]
    first, second = lines
    assert first["request_id"] == ok.headers["x-cclb-request-id"]
    assert (first["principal"], first["upstream"], first["attempts"]) == ("alice", "secondary", 1)
    assert (first["input_tokens"], first["output_tokens"]) == (17, 5) and first["hook_ms"] > 0
    assert second["principal"] is None and refused.status_code == 401


def test_the_access_log_is_off_by_default(tmp_path, upstream, start_proxy, caplog):
    _, server = upstream
    proxy = start_proxy(write_config(tmp_path, server.url))
    with caplog.at_level("INFO", logger="cclb_proxy.access"):
        proxy.post({"model": "m"})
    assert not [r for r in caplog.records if r.name == "cclb_proxy.access"]


# --- quickstart: a taken port is one line ------------------------------------------------------------


def test_a_port_in_use_is_one_line_naming_the_address(tmp_path, upstream):
    import os
    import subprocess
    import sys

    import cclb_wire as cw
    from test_proxy_e2e import PROXY_DIR

    _, server = upstream
    config = write_config(tmp_path, server.url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(Path(cw.__file__).resolve().parents[1])}
        proxy = subprocess.run([sys.executable, str(PROXY_DIR), "--config", str(config), "--port", str(port), "--admin-port", "0"],
                               capture_output=True, text=True, timeout=60, env=env)
        fake = subprocess.run([sys.executable, str(PROXY_DIR / "fake_upstream.py"), "--port", str(port)],
                              capture_output=True, text=True, timeout=60, env=env)
    for result, name in ((proxy, "cclb-proxy"), (fake, "fake upstream")):
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert lines == [f"{name}: cannot listen on 127.0.0.1:{port}: Address already in use"], result.stderr


def test_a_loop_parser_or_client_that_is_not_installed_is_a_config_error(tmp_path, upstream, monkeypatch):
    import importlib.util

    _, server = upstream
    config = json.loads(write_config(tmp_path, server.url).read_text())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("uvloop", "httptools") else real(name, *a))
    for key, value, others in (("event_loop", "uvloop", {"http_parser": "h11", "upstream_client": "httpx"}),
                               ("http_parser", "httptools", {"event_loop": "asyncio", "upstream_client": "httpx"}),
                               ("upstream_client", "httptools", {"event_loop": "asyncio", "http_parser": "h11"})):
        config["server"].update(others, **{key: value})
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(config))
        with pytest.raises(proxy_config.ConfigError, match=f"server.{key}: '{value}' is not installed"):
            proxy_config.load(path)
    config["server"].update(event_loop="asyncio", http_parser="h11", upstream_client="httpx")  # what is always there
    path.write_text(json.dumps(config))
    assert proxy_config.load(path).event_loop == "asyncio"


# --- the server joins an answer's head and body into one send ----------------------------------


class _RecordingTransport:
    def __init__(self) -> None:
        self.sent: List[Any] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def writelines(self, parts: Any) -> None:
        self.sent.append(tuple(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_step_go_out_as_one_send():
    from cclb_proxy.server import _JoiningTransport

    async def main() -> None:
        real = _RecordingTransport()
        joined = _JoiningTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        joined.write(b"head")
        joined.write(b"body")  # the same step: both at once, in order
        assert real.sent == [(b"head", b"body")]
        joined.write(b"lone")  # nothing follows in this step: sent when the step ends
        assert joined.get_write_buffer_size() == 4 and real.sent == [(b"head", b"body")]
        await asyncio.sleep(0)
        assert real.sent == [(b"head", b"body"), b"lone"]
        joined.write(b"last words")
        joined.close()  # what is held goes out before the close
        assert (real.sent[-1], real.closed) == (b"last words", True)
        assert joined.is_closing()  # the rest is the real transport's
        await asyncio.sleep(0)
        assert real.sent[-1] == b"last words"  # sent once

    asyncio.run(main())


class _SwallowingClient:
    """An upstream client whose send answers even when cancelled, as asyncio.wait_for does
    when the result arrives in the step the task is cancelled (3.11; found by review: each
    such answer kept its connection and its place among max_connections for good)."""

    def __init__(self) -> None:
        self.closed = 0

    async def send(self, *args: Any) -> Any:
        client = self

        class Answer:
            async def aclose(self) -> None:
                client.closed += 1

        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # swallowed
        return Answer()


@pytest.mark.parametrize("watched", [True, False])  # the server tells (httptools), or a task asks receive()
def test_an_answer_that_comes_despite_the_cancel_is_closed(watched):
    from cclb_proxy.server import DisconnectWatch

    async def main() -> int:
        proxy = types.SimpleNamespace(client=_SwallowingClient())
        watch = DisconnectWatch() if watched else None
        left = asyncio.Event()

        async def receive() -> Dict[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        sending = asyncio.ensure_future(proxy_app.Proxy._send_unless_gone(proxy, (receive, watch), "POST", "http://u/", [], b""))
        await asyncio.sleep(0.01)
        left.set()
        if watch is not None:
            watch.fire()
        with pytest.raises(proxy_app._ClientGone):
            await sending
        assert not sending.cancelled()
        return proxy.client.closed

    assert asyncio.run(main()) == 1


def test_a_whole_answer_is_reported_even_when_sending_it_fails():
    reported = []

    async def after() -> None:
        reported.append(True)

    async def send(message: Dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise RuntimeError("the server refused the body")

    answer = proxy_app._WholeAnswer(200, [(b"content-length", b"2")], b"ok", after)
    with pytest.raises(RuntimeError):
        asyncio.run(answer({}, None, send))
    assert reported == [True]
