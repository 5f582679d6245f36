"""Host-side types: the Python face of cc-lb's plugin API (``cc-lb-plugin-api``).

These are what a proxy holds: requests as they arrive, principals, upstream
candidates, observe events, and what plugins answer once converted. The
``encode_*`` / ``decode_*`` functions of :mod:`cclb_wire` go between these and
the wire archives, applying the reference host's rules (see ``host_rules``).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from . import host_rules

__all__ = [
    "HeaderInput",
    "RequestContext",
    "PrincipalKind",
    "UpstreamKind",
    "Principal",
    "CacheScore",
    "UpstreamCandidate",
    "AnthropicDirect",
    "RequestStarted",
    "AuthnComplete",
    "UpstreamChosen",
    "Chunk",
    "RequestFinished",
    "ErrorEvent",
    "ObserveEventInput",
    "PerCandidateReason",
    "FilterOutput",
    "ShapedRequest",
    "WireBounds",
    "ShapeOriginPolicy",
]

StrOrBytes = Union[str, bytes]
HeaderInput = Union[Mapping[Any, Any], Iterable[Tuple[StrOrBytes, StrOrBytes]]]


def _header_pairs(headers: HeaderInput) -> Tuple[Tuple[StrOrBytes, StrOrBytes], ...]:
    if headers is None:
        return ()
    items = headers.items() if hasattr(headers, "items") else headers
    pairs = tuple(items)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"headers must be (name, value) pairs, got {pair!r}")
    return pairs


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One downstream request as the proxy received it.

    ``headers`` is a mapping or an iterable of ``(name, value)`` pairs, each a
    ``str`` or ``bytes``; order and repeats are kept (an ASGI ``scope["headers"]``
    list works as is). ``str`` values are taken as Latin-1, the HTTP convention
    (what ASGI/WSGI frameworks decode them with). ``query`` is the raw query
    string without the leading ``?``, or ``None``.
    """

    request_id: str
    method: str
    path: str
    query: Optional[str] = None
    headers: HeaderInput = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _header_pairs(self.headers))


class PrincipalKind(str, enum.Enum):
    """cc-lb's principal kinds, valued by their wire (snake_case) names."""

    API_KEY = "api_key"
    OAUTH_SUBJECT = "oauth_subject"
    INTERNAL_KEY = "internal_key"
    WORKLOAD_IDENTITY = "workload_identity"
    SUBSCRIPTION_BEARER = "subscription_bearer"


class UpstreamKind(str, enum.Enum):
    """cc-lb's upstream kinds, valued by their wire names."""

    ANTHROPIC_API_KEY = "anthropic_api_key"
    ANTHROPIC_OAUTH = "anthropic_oauth"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``kind`` is a str or a str-valued enum (``"api_key"``);
    ``claims`` maps str keys to JSON-serializable values.

    The claims are serialized once, here, as compact JSON the way serde_json
    writes it (see :func:`cclb_wire.host_rules.claim_json`); a value that cannot
    be serialized is skipped, as the reference host does. Later changes to the
    claim values are not seen.
    """

    id: str
    kind: Any = "unknown"
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: (id, kind text, ((claim key, JSON bytes), ...)): the wire Principal, computed once.
    wire_fields: Tuple[str, str, Tuple[Tuple[str, bytes], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(f"Principal.id must be a str, got {type(self.id).__name__}")
        object.__setattr__(self, "claims", dict(self.claims) if self.claims is not None else {})
        wire_fields = (self.id, host_rules.kind_text(self.kind), host_rules.wire_claims(self.claims))
        object.__setattr__(self, "wire_fields", wire_fields)


@dataclass(frozen=True, slots=True)
class CacheScore:
    """The prompt-cache prediction for one candidate (only the V1 field)."""

    predicted_cache_read_tokens: int


@dataclass(frozen=True, slots=True)
class UpstreamCandidate:
    """One upstream the filter may keep. ``upstream_id`` is a UUID (a str is parsed)."""

    upstream_id: uuid.UUID
    name: str
    kind: Any
    observed_at_unix_secs: int
    cache_score: Optional[CacheScore] = None
    #: (id text, name, kind text, observed_at_unix_secs, predicted_cache_read_tokens):
    #: the wire UpstreamCandidate, computed once.
    wire_fields: Tuple[str, str, str, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.upstream_id, uuid.UUID):
            if not isinstance(self.upstream_id, str):
                raise TypeError(
                    f"UpstreamCandidate.upstream_id must be a uuid.UUID, got {type(self.upstream_id).__name__}"
                )
            object.__setattr__(self, "upstream_id", uuid.UUID(self.upstream_id))
        # Frozen, so the wire form is computed once, here, not on every request encoded.
        score = self.cache_score
        tokens = 0 if score is None else score.predicted_cache_read_tokens
        wire_fields = (str(self.upstream_id), self.name, host_rules.kind_text(self.kind), self.observed_at_unix_secs, tokens)
        object.__setattr__(self, "wire_fields", wire_fields)


@dataclass(frozen=True, slots=True)
class AnthropicDirect:
    """The Anthropic API upstream; ``base_url=None`` means the canonical endpoint.

    ``base_url`` is parsed and serialized the WHATWG way (``ada-url``), so
    ``"https://api.anthropic.com"`` becomes ``"https://api.anthropic.com/"``; an
    invalid URL raises ``ValueError``.
    """

    base_url: Optional[str] = None
    #: The base_url's origin (ASCII serialization), computed once; ``None`` without a
    #: base_url. An opaque origin (``file:``, ``data:``) is ``"null"`` and matches nothing.
    origin: Optional[str] = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.base_url is not None:
            object.__setattr__(self, "base_url", host_rules.serialize_url(self.base_url))
            object.__setattr__(self, "origin", host_rules.url_origin(self.base_url) or "null")


# --- observe events -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestStarted:
    request_id: str
    downstream_user_agent: Optional[str] = None


@dataclass(frozen=True, slots=True)
class AuthnComplete:
    """``principal_kind`` is a str or a str-valued enum, like ``Principal.kind``."""

    principal_id: str
    principal_kind: Any


@dataclass(frozen=True, slots=True)
class UpstreamChosen:
    upstream: AnthropicDirect


@dataclass(frozen=True, slots=True)
class Chunk:
    batch_index: int
    event_count: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """``status`` is an int (``http.HTTPStatus`` works); token counts are optional."""

    status: int
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cache_creation_input_tokens: Optional[int] = None
    cache_read_input_tokens: Optional[int] = None
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    code: str
    message: str
    source: str


ObserveEventInput = Union[RequestStarted, AuthnComplete, UpstreamChosen, Chunk, RequestFinished, ErrorEvent]


# --- what plugins answer ------------------------------------------------------


class PerCandidateReason(str, enum.Enum):
    """Why a filter dropped a candidate, from the plugin's decision label."""

    RateLimited = "rate_limited"
    InsufficientQuota = "insufficient_quota"
    Unhealthy = "unhealthy"
    RejectedByPlugin = "rejected_by_plugin"


@dataclass(frozen=True, slots=True)
class FilterOutput:
    """A filter's answer: the kept candidates in the plugin's order, one reason per
    rejected candidate, and the plugin's reasons as ``"{id}: {reason}"`` joined by ``"; "``."""

    kept_upstream_ids: Tuple[uuid.UUID, ...]
    reason: str
    per_candidate_reasons: Tuple[PerCandidateReason, ...]


@dataclass(frozen=True, slots=True)
class ShapedRequest:
    """The upstream request a shape plugin built: a WHATWG-serialized URL, a valid
    method token, headers as ``(lowercase name, value bytes)`` pairs in order, the body."""

    url: str
    method: str
    headers: Tuple[Tuple[str, bytes], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class WireBounds:
    """Limits on what a plugin may answer (the reference host's defaults)."""

    output_body_bytes: int = 100 * 1024 * 1024
    max_headers: int = 100
    max_header_value_bytes: int = 8192
    reason_bytes: int = 256

    def __post_init__(self) -> None:
        for name in ("output_body_bytes", "max_headers", "max_header_value_bytes", "reason_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"WireBounds.{name} must be a non-negative int, got {value!r}")


class ShapeOriginPolicy(enum.Enum):
    """Whether a shaped URL must stay on the selected upstream's origin."""

    UNRESTRICTED = "unrestricted"
    SELECTED_UPSTREAM_ORIGIN = "selected_upstream_origin"
