"""Host-level requests and answers as JSON, for ``cclb-wire call`` and ``cclb-wire demo``.

A request file holds what the proxy has, not wire values::

    {"request": {"request_id": "...", "method": "POST", "path": "/v1/messages", "query": null,
                 "headers": [["content-type", "application/json"], ...],
                 "body": "<UTF-8 text>"            (or {"hex": "<lowercase hex>"})},
     "principal": {"id": "tenant-a", "kind": "api_key", "claims": {"keep_k": 2}},
     "candidates": [{"upstream_id": "<uuid>", "name": "...", "kind": "anthropic_api_key",
                     "observed_at_unix_secs": 1767225600, "predicted_cache_read_tokens": 4096}],
     "upstream": {"base_url": "https://api.anthropic.com"},      (shape)
     "event": {"RequestFinished": {"status": 200, "duration_ms": 812, ...}}}   (observe)

Header values and bodies that are not UTF-8 are written as {"hex": ...} in answers.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Callable, Dict, List, Optional, TypeVar

from . import host_rules, host_types
from .errors import InvalidInput, InvalidInputType

__all__ = ["request_from_json", "event_from_json", "output_to_json"]

T = TypeVar("T")

_EVENTS = {
    "RequestStarted": host_types.RequestStarted,
    "AuthnComplete": host_types.AuthnComplete,
    "UpstreamChosen": host_types.UpstreamChosen,
    "Chunk": host_types.Chunk,
    "RequestFinished": host_types.RequestFinished,
    "Error": host_types.ErrorEvent,
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _object(value: Any, path: str, *, null_is_empty: bool = False) -> Dict[str, Any]:
    if value is None and null_is_empty:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputType(path, f"expected an object, got {_kind(value)}")
    return value


def _array(value: Any, path: str) -> List[Any]:
    if not isinstance(value, list):
        raise InvalidInputType(path, f"expected an array, got {_kind(value)}")
    return value


def _bytes(value: Any, path: str) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(path, "the string has a lone surrogate; it has no UTF-8 form") from None
    if isinstance(value, dict) and set(value) == {"hex"} and isinstance(value["hex"], str):
        try:
            return bytes.fromhex(value["hex"])
        except ValueError:
            raise InvalidInput(f"{path}.hex", "not a hex string (2 digits per byte)") from None
    raise InvalidInputType(path, f'expected a string or {{"hex": "<hex digits>"}}, got {_kind(value)}')


def _at(path: str, build: Callable[[], T]) -> T:
    """Build a host object; an InvalidInput it raises is re-aimed at the JSON path
    (``UpstreamCandidate.observed_at_unix_secs`` -> ``$.candidates[0].observed_at_unix_secs``)."""
    try:
        return build()
    except InvalidInput as exc:
        _, dot, rest = exc.field.partition(".")
        raise type(exc)(f"{path}.{rest}" if dot else path, exc.detail) from exc


def _text_or_hex(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": data.hex()}


def request_from_json(obj: Any) -> Dict[str, Any]:
    """The host objects of a request file: ctx, principal, candidates, upstream.

    The shape is checked: anything wrong raises InvalidInput (InvalidInputType for
    a wrong JSON type) naming its JSON path, e.g. ``$.candidates[1].upstream_id``.
    """
    root = _object(obj, "$")
    request = _object(root.get("request"), "$.request", null_is_empty=True)
    header_list = _array(request.get("headers", []), "$.request.headers")
    headers = []
    for index, pair in enumerate(header_list):
        where = f"$.request.headers[{index}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise InvalidInputType(where, f"expected a [name, value] array, got {_kind(pair)}")
        if not isinstance(pair[0], str):
            raise InvalidInputType(f"{where}[0]", f"expected a header name string, got {_kind(pair[0])}")
        headers.append((pair[0], _bytes(pair[1], f"{where}[1]")))
    body = _bytes(request.get("body", ""), "$.request.body")
    ctx = _at(
        "$.request",
        lambda: host_types.RequestContext(
            request.get("request_id", "req-1"),
            request.get("method", "POST"),
            request.get("path", "/v1/messages"),
            request.get("query"),
            headers,
            body,
        ),
    )
    principal_obj = _object(root.get("principal"), "$.principal", null_is_empty=True)
    principal = _at(
        "$.principal",
        lambda: host_types.Principal(
            principal_obj.get("id", "anonymous"),
            principal_obj.get("kind", "api_key"),
            _object(principal_obj.get("claims", {}), "$.principal.claims", null_is_empty=True),
        ),
    )
    candidates = [
        _candidate(_object(item, f"$.candidates[{index}]"), f"$.candidates[{index}]")
        for index, item in enumerate(_array(root.get("candidates", []), "$.candidates"))
    ]
    upstream_obj = _object(root.get("upstream"), "$.upstream", null_is_empty=True)
    upstream = _at("$.upstream", lambda: host_types.AnthropicDirect(upstream_obj.get("base_url")))
    return {"ctx": ctx, "principal": principal, "candidates": candidates, "upstream": upstream}


def _candidate(item: Dict[str, Any], path: str) -> host_types.UpstreamCandidate:
    if "upstream_id" not in item:
        raise InvalidInput(path, "missing `upstream_id`")
    upstream_id = item["upstream_id"]
    if not isinstance(upstream_id, str):
        raise InvalidInputType(f"{path}.upstream_id", f"expected a UUID string, got {_kind(upstream_id)}")
    try:
        parsed = uuid.UUID(upstream_id)
    except ValueError:
        raise InvalidInput(f"{path}.upstream_id", f"{host_rules.shown(upstream_id)} is not a UUID") from None
    tokens = item.get("predicted_cache_read_tokens")
    score: Optional[host_types.CacheScore] = None
    if tokens is not None:
        score = _at(path, lambda: host_types.CacheScore(tokens))
    return _at(
        path,
        lambda: host_types.UpstreamCandidate(
            parsed,
            item.get("name", ""),
            item.get("kind", "anthropic_api_key"),
            item.get("observed_at_unix_secs", 0),
            score,
        ),
    )


def event_from_json(obj: Any) -> Any:
    """The observe event of a request file: ``{"event": {"Variant": {fields}}}``.

    Unknown variants or fields, missing fields and bad values raise InvalidInput
    naming the JSON path (``$.event.RequestFinished.status``)."""
    root = _object(obj, "$")
    event = root.get("event")
    if not isinstance(event, dict) or len(event) != 1:
        raise InvalidInputType("$.event", 'an observe request needs "event": {"<Variant>": {fields}}')
    ((name, fields),) = event.items()
    if name not in _EVENTS:
        raise InvalidInput("$.event", f"unknown event {name!r}; expected one of {', '.join(_EVENTS)}")
    path = f"$.event.{name}"
    fields = _object(fields, path)
    cls = _EVENTS[name]
    declared = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in fields:
        if key not in declared:
            raise InvalidInput(f"{path}.{key}", f"unknown field; {name} has {', '.join(declared)}")
    for key, declared_field in declared.items():
        has_default = declared_field.default is not dataclasses.MISSING or declared_field.default_factory is not dataclasses.MISSING
        if key not in fields and not has_default:
            raise InvalidInput(path, f"missing field `{key}`")
    arguments = dict(fields)
    if name == "UpstreamChosen":
        upstream_obj = _object(fields["upstream"], f"{path}.upstream", null_is_empty=True)
        arguments["upstream"] = _at(f"{path}.upstream", lambda: host_types.AnthropicDirect(upstream_obj.get("base_url")))
    return _at(path, lambda: cls(**arguments))


def output_to_json(output: Any) -> Any:
    """A FilterOutput or ShapedRequest as JSON."""
    if isinstance(output, host_types.FilterOutput):
        return {
            "kept_upstream_ids": [str(u) for u in output.kept_upstream_ids],
            "reason": output.reason,
            "per_candidate_reasons": [r.value for r in output.per_candidate_reasons],
        }
    if isinstance(output, host_types.ShapedRequest):
        return {
            "url": output.url,
            "method": output.method,
            "headers": [[name, _text_or_hex(value)] for name, value in output.headers],
            "body": _text_or_hex(output.body),
        }
    return {"observed": True}
