"""Code a user writes against cclb_wire's public API, for the type checker.

``mypy --strict tests/typing_consumer.py`` must pass: the ``assert_type`` calls pin
the public types (a regression to another type, or to ``Any``, fails them), and the
``# type: ignore[code]`` lines in ``_rejected_by_the_type_checker`` must stay errors
(strict mode reports an ignore that is no longer needed).

It also runs: ``python tests/typing_consumer.py`` (tests/test_typing.py calls
``main()``). Nothing runs at import, and pytest does not collect this file (its name
does not start with ``test_``).
"""

from __future__ import annotations

import uuid
from importlib import resources
from typing import TYPE_CHECKING, Any, List, Literal, Optional, Tuple

import cclb_wire
from cclb_wire import wire

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:

    def assert_type(value, _type):  # typing.assert_type does nothing at run time either
        return value


PRIMARY = uuid.UUID("6f1c3a8e-2d4b-4c7a-9e1f-0a2b3c4d5e01")
SECONDARY = uuid.UUID("6f1c3a8e-2d4b-4c7a-9e1f-0a2b3c4d5e02")


def backend() -> str:
    assert_type(cclb_wire.BACKEND, Literal["cython", "python"])
    return cclb_wire.BACKEND


# --- the wire level: the five archive roots -----------------------------------------


def wire_round_trips() -> None:
    header = wire.Header("content-type", b"application/json")
    principal = wire.Principal("tenant-a", "api_key", (wire.Claim("team", b'"infra"'),))
    candidate = wire.UpstreamCandidate(str(PRIMARY), "primary", "anthropic_api_key", 1767225600, 4096)
    assert_type(candidate.observed_at_unix_secs, int)

    filter_request = wire.FilterRequest("req-1", "POST", "/v1/messages", "beta=true", (header,), b"{}", principal, (candidate,))
    data = cclb_wire.encode(filter_request)
    assert_type(data, bytes)
    assert_type(cclb_wire.encoded_size(filter_request), int)
    decoded_request = cclb_wire.decode(wire.FilterRequest, data)
    assert_type(decoded_request, wire.FilterRequest)
    assert_type(decoded_request.query, Optional[str])
    assert_type(decoded_request.candidates, Tuple[wire.UpstreamCandidate, ...])
    assert decoded_request == filter_request

    filter_response = wire.FilterResponse((wire.PerCandidateReason(str(PRIMARY), "accept", "fresh cache"),))
    decoded_response = cclb_wire.decode(wire.FilterResponse, cclb_wire.encode(filter_response))
    assert_type(decoded_response.results[0].decision, str)
    assert decoded_response == filter_response

    shape_request = wire.ShapeRequest(
        "req-1", "POST", "/v1/messages", None, (header,), b"{}", principal, wire.AnthropicDirect(None)
    )
    assert_type(shape_request.upstream, wire.Upstream)
    buffer = bytearray(cclb_wire.encoded_size(shape_request) + 16)
    written = cclb_wire.encode_into(shape_request, buffer, 16)
    assert_type(written, int)
    assert cclb_wire.decode(wire.ShapeRequest, memoryview(buffer)[16 : 16 + written]) == shape_request

    shape_response = wire.ShapeResponse("https://api.anthropic.com/v1/messages", "POST", (header,), b"{}")
    by_name = cclb_wire.decode("ShapeResponse", cclb_wire.encode(shape_response))
    assert_type(by_name, wire.WireValue)  # a name says less than a class
    assert by_name == shape_response

    event = wire.RequestFinished(200, 1200, 350, None, 1024, 812)
    decoded_event = cclb_wire.decode(wire.ObserveEvent, cclb_wire.encode(event))
    assert_type(decoded_event, wire.ObserveEvent)
    if isinstance(decoded_event, wire.RequestFinished):
        assert_type(decoded_event.input_tokens, Optional[int])
    assert decoded_event == event

    as_json: Any = cclb_wire.decode_json("ObserveEvent", cclb_wire.encode(event))
    assert_type(cclb_wire.encode_json("ObserveEvent", as_json), bytes)


# --- the host level -----------------------------------------------------------------


def request_parts() -> Tuple[cclb_wire.RequestContext, cclb_wire.Principal, List[cclb_wire.UpstreamCandidate]]:
    ctx = cclb_wire.RequestContext(
        "req-1",
        "POST",
        "/v1/messages",
        query=b"beta=true",  # ASGI's query_string as it is
        headers=[(b"content-type", b"application/json"), (b"x-api-key", b"sk-ant-redacted")],
        body=b'{"model": "claude-sonnet-4-5"}',
    )
    principal = cclb_wire.Principal("tenant-a", cclb_wire.PrincipalKind.API_KEY, {"keep_k": 1, "team": "infra"})
    candidates = [
        cclb_wire.UpstreamCandidate(PRIMARY, "primary", cclb_wire.UpstreamKind.ANTHROPIC_API_KEY, 1767225600.5, cclb_wire.CacheScore(4096)),
        cclb_wire.UpstreamCandidate(SECONDARY, "secondary", "anthropic_oauth", 1767225600),
    ]
    assert_type(candidates[0].upstream_id, uuid.UUID)
    return ctx, principal, candidates


def events() -> List[cclb_wire.host_types.ObserveEventInput]:
    return [
        cclb_wire.RequestStarted("req-1", "claude-cli/2.0.14"),
        cclb_wire.AuthnComplete("tenant-a", cclb_wire.PrincipalKind.API_KEY),
        cclb_wire.UpstreamChosen(cclb_wire.AnthropicDirect("https://api.anthropic.com")),
        cclb_wire.Chunk(0, 3, 1024),
        cclb_wire.RequestFinished(200, input_tokens=1200, output_tokens=350, duration_ms=812),
        cclb_wire.ErrorEvent("upstream_timeout", "no answer in 30 s", "proxy"),
    ]


def host_codec() -> None:
    ctx, principal, candidates = request_parts()
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    assert_type(upstream.origin, Optional[str])

    request = cclb_wire.encode_filter_request(ctx, principal, candidates, cookie_redaction=True)
    assert_type(request, bytes)
    assert_type(cclb_wire.encode_shape_request(ctx, principal, upstream), bytes)
    for event in events():
        assert_type(cclb_wire.encode_observe_event(event), bytes)

    target = bytearray(64 * 1024)

    def into(size: int) -> Tuple[bytearray, int]:
        assert size <= len(target)
        return target, 0

    assert_type(cclb_wire.encode_filter_request(ctx, principal, candidates, into=into), int)
    assert_type(cclb_wire.encode_observe_event(events()[0], into=into), int)

    answer = cclb_wire.encode(
        wire.FilterResponse(
            (
                wire.PerCandidateReason(str(PRIMARY), "accept", "warm cache"),
                wire.PerCandidateReason(str(SECONDARY), "rate-limited", "429 from upstream"),
            )
        )
    )
    output = cclb_wire.decode_filter_output(answer, cclb_wire.WireBounds(reason_bytes=64))
    assert_type(output, cclb_wire.FilterOutput)
    assert_type(output.kept_upstream_ids, Tuple[uuid.UUID, ...])
    assert_type(output.per_candidate_reasons, Tuple[cclb_wire.PerCandidateReason, ...])
    assert output.per_candidate_reasons == (cclb_wire.PerCandidateReason.RateLimited,)

    shaped_answer = cclb_wire.encode(wire.ShapeResponse("https://api.anthropic.com/v1/messages", "POST", (), b"{}"))
    shaped = cclb_wire.decode_shaped_request(
        shaped_answer, upstream, origin_policy=cclb_wire.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN
    )
    assert_type(shaped, cclb_wire.ShapedRequest)
    assert_type(shaped.headers, Tuple[Tuple[str, bytes], ...])


# --- the plugin host ------------------------------------------------------------------


def plugin_host(filter_wasm: bytes, shape_wasm: bytes, observe_wasm: bytes) -> None:
    ctx, principal, candidates = request_parts()
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    config = cclb_wire.HostConfig(
        deadline_s=1.0,
        failure_policy=cclb_wire.FailurePolicy.PASS_THROUGH,
        instance_strategy=cclb_wire.InstanceStrategy.REUSE_PER_THREAD,
        pool_size=0,
    )
    with cclb_wire.PluginHost(config) as host:
        assert_type(host, cclb_wire.PluginHost)
        filter_plugin = host.register_filter("default", "cache-aware-filter", filter_wasm)
        assert_type(filter_plugin, cclb_wire.FilterPlugin)
        dialect = host.register_shape(
            "default", "shape-passthrough", shape_wasm, failure_policy=cclb_wire.FailurePolicy.FAIL_CLOSED
        )
        assert_type(dialect, cclb_wire.UpstreamDialect)
        hook = host.register_observe("default", "observe-counter", observe_wasm)
        assert_type(hook, cclb_wire.ObservabilityHook)
        assert_type(filter_plugin.plugin_id, uuid.UUID)
        assert_type(filter_plugin.plugin_name, str)

        output = filter_plugin.filter(ctx, principal, candidates)
        assert_type(output, cclb_wire.FilterOutput)
        assert set(output.kept_upstream_ids) <= {PRIMARY, SECONDARY}
        assert_type(filter_plugin.filter_with_policy(ctx, principal, iter(candidates)), cclb_wire.FilterOutput)

        shaped = dialect.shape(ctx, upstream, principal)
        assert_type(shaped, cclb_wire.ShapedRequest)
        assert shaped.url.startswith("https://api.anthropic.com/")
        assert_type(dialect.shape_with_policy(ctx, upstream, principal), Optional[cclb_wire.ShapedRequest])

        for event in events():
            hook.observe(event)
        assert_type(hook.observe_with_policy(events()[-1]), bool)

        try:
            host.register_filter("broken", "not-a-plugin", b"\x00asm\x01\x00\x00\x00")
        except cclb_wire.PluginRejected as exc:
            assert_type(exc.plugin, str)
            assert exc.plugin == "not-a-plugin"
        else:
            raise AssertionError("an empty module was admitted")
    assert host.closed

    try:
        filter_plugin.filter(ctx, principal, candidates)
    except cclb_wire.FilterError as exc:
        assert_type(exc.kind, str)
        assert exc.kind == "runtime"  # the host is closed: the slot is empty
    assert filter_plugin.filter_with_policy(ctx, principal, candidates).kept_upstream_ids == (PRIMARY, SECONDARY)


# --- the error hierarchy ----------------------------------------------------------------


def error_handling() -> None:
    try:
        cclb_wire.decode(wire.FilterRequest, b"\x00" * 5)
    except cclb_wire.DecodeError as exc:
        assert_type(exc.offset, Optional[int])
        assert_type(exc.kind, str)
        assert isinstance(exc, cclb_wire.WireError) and isinstance(exc, ValueError)
    else:
        raise AssertionError("5 bytes decoded")

    try:
        cclb_wire.encode(wire.Chunk(0, 1, -1))
    except cclb_wire.EncodeError as exc:
        assert_type(exc.path, str)
        assert exc.path == "Chunk.total_bytes"

    try:
        cclb_wire.RequestContext("req-1", "POST", "/", headers=[("x-name", "π ≠ latin-1")])
    except cclb_wire.InvalidInput as exc:
        assert_type(exc.field, str)
        assert exc.field == "RequestContext.headers[0]"

    errors: Tuple[type[cclb_wire.CclbWireError], ...] = (
        cclb_wire.PluginTimeout,
        cclb_wire.PluginOutOfFuel,
        cclb_wire.PluginMemoryLimit,
        cclb_wire.PluginPoolSaturated,
        cclb_wire.PluginTrap,
        cclb_wire.PluginOutputError,
    )
    for error in errors:
        assert issubclass(error, cclb_wire.PluginError)
    trap = cclb_wire.PluginTrap("unreachable executed", trap_code="unreachable", plugin="p", hook="filter")
    assert_type(trap.trap_code, str)
    assert str(trap) == "plugin 'p' hook filter: unreachable executed"
    assert_type(cclb_wire.ObservabilityError.dropped("queue full"), cclb_wire.ObservabilityError)


def _rejected_by_the_type_checker() -> None:  # never runs
    cclb_wire.encode(b"not a wire value")  # type: ignore[arg-type]
    wire.Claim("key", "not bytes")  # type: ignore[arg-type]
    cclb_wire.PluginHost(cclb_wire.WireBounds())  # type: ignore[arg-type]
    cclb_wire.no_such_name  # type: ignore[attr-defined]
    cclb_wire.UpstreamCandidate(PRIMARY, "primary", "anthropic_api_key", "yesterday")  # type: ignore[arg-type]


def main() -> None:
    """Run every example (the plugin host with the plugins cclb_wire ships)."""
    backend()
    wire_round_trips()
    host_codec()
    error_handling()
    plugins = resources.files("cclb_wire").joinpath("plugins")
    plugin_host(
        plugins.joinpath("cache_aware_filter.wasm").read_bytes(),
        plugins.joinpath("shape_passthrough.wasm").read_bytes(),
        plugins.joinpath("observe_counter.wasm").read_bytes(),
    )


if __name__ == "__main__":
    main()
