"""Host level of the cc-lb 1.0 hooks: host objects -> 1.0 request values, and 1.0 answers ->
host objects, by cc-lb 1.0's rules (CONTRACT-1.0.md). Both backends share this policy; the
archives are written and read by whichever backend is loaded.

- ``filter_request`` builds the 1.0 ``FilterRequest`` from the same RequestContext,
  Principal and candidates a 0.2 filter gets (headers stripped as in 0.2; cc-lb 1.0 sends
  the filter an empty claims list).
- ``transform_response_request`` / ``transform_sse_event_request`` build the transform
  hooks' requests (the principal with its claims, the upstream's status and headers as
  they came).
- ``response_transform`` / ``sse_transform`` convert the answers: a replaced status must be
  100..999, headers valid names and values within the bounds, the output within
  ``output_body_bytes``; else TransformError (``invalid_output``).
"""

from __future__ import annotations

from typing import Any, Iterable, Tuple

from . import host_rules, wire
from ._fallback import _wire_candidates
from ._validate import type_name
from .errors import InvalidInputType, TransformError
from .host_types import (
    AnthropicDirect,
    CachePricing,
    Principal,
    RequestContext,
    ResponseTransform,
    SseAction,
    SseEvent,
    SseTransform,
    UNCHANGED_EVENT,
    UNCHANGED_RESPONSE,
    UpstreamCandidate,
    UpstreamResponse,
    WireBounds,
)

__all__ = [
    "filter_request",
    "transform_response_request",
    "transform_sse_event_request",
    "response_transform",
    "sse_transform",
    "check_transform_args",
    "transform_head",
    "sse_event_request",
    "response_request",
    "PROBE_SAMPLES",
]

_UNKNOWN_PRICES = CachePricing()

# The requests are built with plain tuples for their nested structs (the codec takes a
# plain tuple wherever a struct goes): the classes are typed Any here for that.
_FilterRequest10: Any = wire.FilterRequest10
_TransformResponseRequest: Any = wire.TransformResponseRequest
_TransformSseEventRequest: Any = wire.TransformSseEventRequest


def _check(value: Any, cls: type, field: str) -> None:
    if not isinstance(value, cls):
        raise InvalidInputType(field, f"expected a cclb_wire.{cls.__name__}, got {type_name(value)}")


def filter_request(
    ctx: RequestContext, principal: Principal, candidates: Iterable[UpstreamCandidate], *, cookie_redaction: bool = False
) -> Any:
    """The 1.0 ``FilterRequest`` (a ``wire.FilterRequest10``) for a filter call."""
    where = "filter_request"
    _check(ctx, RequestContext, f"{where}.ctx")
    _check(principal, Principal, f"{where}.principal")
    pricing = _UNKNOWN_PRICES if ctx.cache_pricing is None else ctx.cache_pricing
    person_id, kind, _claims = principal.wire_fields
    return _FilterRequest10(
        ctx.request_id,
        ctx.thread_id,
        ctx.service_tier,
        ctx.canonical_model_id or "",
        pricing.wire_fields,
        ctx.method,
        ctx.path,
        ctx.query,
        host_rules.wire_headers(ctx.headers, cookie_redaction),
        ctx.body,
        (person_id, kind, ()),  # cc-lb 1.0 sends the filter no claims
        _wire_candidates(candidates, f"{where}.candidates", "wire_fields_1_0"),
    )


def check_transform_args(where: str, ctx: Any, principal: Any, upstream: Any, response: Any, event: Any = None) -> None:
    """InvalidInputType naming the first argument of a transform call that is not what it
    must be (``event``: checked unless None). The host types checked their own fields."""
    _check(ctx, RequestContext, f"{where}.ctx")
    _check(principal, Principal, f"{where}.principal")
    _check(upstream, AnthropicDirect, f"{where}.upstream")
    _check(response, UpstreamResponse, f"{where}.response")
    if event is not None:
        _check(event, SseEvent, f"{where}.event")


def transform_head(ctx: Any, principal: Any, upstream: Any, response: Any) -> Tuple[Any, ...]:
    """The fields both transform requests share, before the body or the event (one per
    answer: a stream's events all share it). Checks the arguments."""
    check_transform_args("transform_head", ctx, principal, upstream, response)
    return (
        ctx.request_id,
        principal.wire_fields,
        wire.AnthropicDirect(upstream.base_url),
        ctx.method,
        ctx.path,
        ctx.canonical_model_id or "",
        response.status,
        response.wire_headers,
    )


def transform_response_request(
    ctx: RequestContext, principal: Principal, upstream: AnthropicDirect, response: UpstreamResponse
) -> Any:
    """The ``TransformResponseRequest`` for the upstream's buffered ``response``."""
    return response_request(transform_head(ctx, principal, upstream, response), response.body)


def response_request(head: Tuple[Any, ...], body: Any) -> Any:
    """The ``TransformResponseRequest`` of a buffered body under its ``transform_head``."""
    return _TransformResponseRequest(*head, body)


def transform_sse_event_request(
    ctx: RequestContext, principal: Principal, upstream: AnthropicDirect, response: UpstreamResponse, event: SseEvent
) -> Any:
    """The ``TransformSseEventRequest`` for one ``event`` of the upstream's streamed ``response``."""
    _check(event, SseEvent, "transform_sse_event_request.event")
    return sse_event_request(transform_head(ctx, principal, upstream, response), event)


def sse_event_request(head: Tuple[Any, ...], event: SseEvent) -> Any:
    """The ``TransformSseEventRequest`` of one event under a stream's ``transform_head``."""
    return _TransformSseEventRequest(*head, (event.event, event.data))


def _headers(headers: Tuple[Any, ...], bounds: WireBounds) -> Tuple[Tuple[str, bytes], ...]:
    invalid = TransformError.invalid_output
    if len(headers) > bounds.max_headers:
        raise invalid(f"{len(headers)} headers, over wire_bounds.max_headers ({bounds.max_headers})")
    kept = []
    for name, value in headers:
        if not host_rules.is_header_name(name):
            raise invalid(f"invalid header name {host_rules.shown(name)}")
        if len(value) > bounds.max_header_value_bytes:
            raise invalid(
                f"header `{name}` value {len(value)} bytes, over wire_bounds.max_header_value_bytes ({bounds.max_header_value_bytes})"
            )
        if not host_rules.is_header_value(value):
            raise invalid(f"invalid header value for `{name}`")
        kept.append((host_rules.ascii_lower(name), bytes(value)))
    return tuple(kept)


def response_transform(answer: Any, bounds: WireBounds, size: int = 0) -> ResponseTransform:
    """A ``TransformResponseResult`` value as the host's answer (``size``: the archive's length)."""
    invalid = TransformError.invalid_output
    if size > bounds.output_body_bytes:
        raise invalid(f"output {size} bytes exceeds wire_bounds.output_body_bytes ({bounds.output_body_bytes})")
    if type(answer) is wire.TransformResponseResult.Unchanged:
        return UNCHANGED_RESPONSE
    status, headers, body = answer
    if status is not None and not 100 <= status <= 999:
        raise invalid(f"status {status} is not a valid HTTP status code (100..999)")
    return ResponseTransform(True, status, None if headers is None else _headers(headers, bounds), body)


def sse_transform(answer: Any, bounds: WireBounds, size: int = 0) -> SseTransform:
    """A ``TransformSseEventResult`` value as the host's answer (``size``: the archive's length)."""
    if size > bounds.output_body_bytes:
        raise TransformError.invalid_output(
            f"output {size} bytes exceeds wire_bounds.output_body_bytes ({bounds.output_body_bytes})"
        )
    kind = type(answer)
    if kind is wire.TransformSseEventResult.Unchanged:
        return UNCHANGED_EVENT
    if kind is wire.TransformSseEventResult.Drop:
        return SseTransform(SseAction.DROP)
    for name, _data in answer.events:
        if "\r" in name or "\n" in name:  # written as an `event:` line: a line end would inject fields
            raise TransformError.invalid_output(f"event name {host_rules.shown(name)} has a line end")
    return SseTransform(SseAction.REPLACE, tuple(SseEvent(name, data) for name, data in answer.events))


def _probe_principal() -> Any:
    return ("probe-principal", "api_key", ())


def _probe_transform_head(content_type: bytes) -> Tuple[Any, ...]:
    return (
        "probe-req-1",
        _probe_principal(),
        wire.AnthropicDirect("https://example.test"),
        "POST",
        "/v1/messages",
        "claude-3-haiku-20240307",
        200,
        (("content-type", content_type),),
    )


#: The 1.0 probe samples of CONTRACT-1.0.md (wire values; the shape probe is 0.2's).
PROBE_SAMPLES = {
    "filter": _FilterRequest10(
        "probe-req-1",
        None,
        "priority",
        "claude-3-haiku-20240307",
        ("unknown", None, None, None, None),
        "POST",
        "/v1/messages",
        None,
        (("content-type", b"application/json"),),
        b'{"model":"claude-3-haiku-20240307","messages":[]}',
        _probe_principal(),
        (),
    ),
    "transform_response": _TransformResponseRequest(*_probe_transform_head(b"application/json"), b'{"content":[]}'),
    "transform_sse_event": _TransformSseEventRequest(
        *_probe_transform_head(b"text/event-stream"),
        ("content_block_start", b'{"type":"content_block_start"}'),
    ),
}
