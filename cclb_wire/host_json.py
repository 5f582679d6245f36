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

import uuid
from typing import Any, Dict

from . import host_types

__all__ = ["request_from_json", "event_from_json", "output_to_json"]

_EVENTS = {
    "RequestStarted": host_types.RequestStarted,
    "AuthnComplete": host_types.AuthnComplete,
    "UpstreamChosen": host_types.UpstreamChosen,
    "Chunk": host_types.Chunk,
    "RequestFinished": host_types.RequestFinished,
    "Error": host_types.ErrorEvent,
}


def _bytes(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"hex"} and isinstance(value["hex"], str):
        return bytes.fromhex(value["hex"])
    raise ValueError(f"{what} must be a string or {{\"hex\": ...}}")


def _text_or_hex(data: bytes) -> Any:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": data.hex()}


def request_from_json(obj: Dict[str, Any]) -> Dict[str, Any]:
    """The host objects of a request file: ctx, principal, candidates, upstream."""
    request = obj.get("request") or {}
    headers = [(str(name), _bytes(value, f"header {name!r}")) for name, value in request.get("headers", [])]
    ctx = host_types.RequestContext(
        request.get("request_id", "req-1"),
        request.get("method", "POST"),
        request.get("path", "/v1/messages"),
        request.get("query"),
        headers,
        _bytes(request.get("body", ""), "body"),
    )
    principal_obj = obj.get("principal") or {}
    principal = host_types.Principal(principal_obj.get("id", "anonymous"), principal_obj.get("kind", "api_key"), principal_obj.get("claims", {}))
    candidates = [
        host_types.UpstreamCandidate(
            uuid.UUID(c["upstream_id"]),
            c.get("name", ""),
            c.get("kind", "anthropic_api_key"),
            c.get("observed_at_unix_secs", 0),
            None if c.get("predicted_cache_read_tokens") is None else host_types.CacheScore(c["predicted_cache_read_tokens"]),
        )
        for c in obj.get("candidates", [])
    ]
    upstream = host_types.AnthropicDirect((obj.get("upstream") or {}).get("base_url"))
    return {"ctx": ctx, "principal": principal, "candidates": candidates, "upstream": upstream}


def event_from_json(obj: Dict[str, Any]) -> Any:
    """The observe event of a request file: {"Variant": {fields}}."""
    event = obj.get("event")
    if not isinstance(event, dict) or len(event) != 1:
        raise ValueError('an observe request needs "event": {"<Variant>": {fields}}')
    ((name, fields),) = event.items()
    if name not in _EVENTS:
        raise ValueError(f"unknown event {name!r}; expected one of {', '.join(_EVENTS)}")
    if name == "UpstreamChosen":
        fields = {"upstream": host_types.AnthropicDirect((fields.get("upstream") or {}).get("base_url"))}
    return _EVENTS[name](**fields)


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
