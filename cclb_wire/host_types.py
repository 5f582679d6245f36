"""Host-side types: the Python face of cc-lb's plugin API (``cc-lb-plugin-api``).

These are what a proxy holds: requests as they arrive, principals, upstream
candidates, observe events, and what plugins answer once converted. The
``encode_*`` / ``decode_*`` functions of :mod:`cclb_wire` go between these and
the wire archives, applying the reference host's rules (see ``host_rules``).
"""

from __future__ import annotations

import enum
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from . import host_rules
from ._reasons import PerCandidateReason  # shared with host_rules (label_reason): lives below both
from ._validate import U64_MAX, check_int, check_str, plain_bytes, plain_str, type_name
from .errors import InvalidInput, InvalidInputType

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
    "CachePricing",
    "UpstreamResponse",
    "SseEvent",
    "ResponseTransform",
    "SseAction",
    "SseTransform",
    "UNCHANGED_RESPONSE",
    "UNCHANGED_EVENT",
]

StrOrBytes = Union[str, bytes]
#: What ``RequestContext.headers`` takes: a mapping or an iterable of (name, value) pairs.
HeaderInput = Union[Mapping[Any, Any], Iterable[Tuple[StrOrBytes, StrOrBytes]]]


U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1
_BYTES_LIKE = (bytes, bytearray, memoryview)


def _header_pairs(headers: Any, field: str) -> Tuple[Tuple[StrOrBytes, StrOrBytes], ...]:
    """The (name, value) pairs of a headers argument, each checked: a 2-item tuple or
    list, an ASCII name (str or bytes), a bytes value or a Latin-1 str value."""
    if headers is None:
        return ()
    expected = "a mapping or an iterable of (name, value) pairs"
    if isinstance(headers, (str,) + _BYTES_LIKE):
        raise InvalidInputType(field, f"expected {expected}, got {type_name(headers)}")
    items = headers.items() if callable(getattr(headers, "items", None)) else headers
    try:
        iterator = iter(items)
    except TypeError:
        raise InvalidInputType(field, f"expected {expected}, got {type_name(headers)}") from None
    pairs = []
    for pair in iterator:
        # The common case (an ASGI list of bytes pairs) in a few C-level checks; anything
        # else is judged, and refused with its field named, by the full check below.
        if type(pair) is tuple and len(pair) == 2:
            name, value = pair
            if type(name) is bytes and type(value) is bytes and name.isascii():
                pairs.append(pair)
                continue
        pairs.append(_checked_pair(pair, f"{field}[{len(pairs)}]"))
    return tuple(pairs)


def _checked_pair(pair: Any, where: str) -> Tuple[StrOrBytes, StrOrBytes]:
    """A header pair as plain objects: a str name or value stays a (plain) str, anything
    else is kept as the bytes that were checked (a bytearray can change size later)."""
    name, value = host_rules.header_pair(pair, where)
    name_bytes = host_rules.header_name_bytes(name, where)
    value_bytes = host_rules.header_value_bytes(value, where)
    return (
        plain_str(name) if isinstance(name, str) else name_bytes,
        plain_str(value) if isinstance(value, str) else value_bytes,
    )


def _query(query: Any, field: str) -> Optional[str]:
    if query is None or isinstance(query, str):
        return None if query is None else plain_str(query)
    if isinstance(query, _BYTES_LIKE):
        raw = bytes(plain_bytes(query))
        if not raw:
            return None  # ASGI's query_string is b"" when the URL has no query
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(field, f"query bytes are not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    raise InvalidInputType(field, f"expected a str, bytes (ASGI's query_string) or None, got {type_name(query)}")


def _body(body: Any, field: str) -> Any:
    if not isinstance(body, _BYTES_LIKE):
        raise InvalidInputType(field, f"expected bytes, bytearray or memoryview, got {type_name(body)}")
    if isinstance(body, memoryview) and not body.c_contiguous:
        raise InvalidInputType(field, "expected a C-contiguous buffer, got a non-contiguous memoryview")
    return plain_bytes(body)


def _optional_int(value: Any, field: str, maximum: int) -> Optional[int]:
    return None if value is None else check_int(value, field, 0, maximum)


def _keep(instance: Any, name: str, checked: Any) -> None:
    """Store the plain value a check returned in a frozen instance's field, unless it is the
    given object already: what is encoded later is exactly what was checked."""
    if checked is not getattr(instance, name):
        object.__setattr__(instance, name, checked)


def _unix_secs(value: Any, field: str) -> int:
    """An int in u64 range, or a finite non-negative float truncated toward zero."""
    if isinstance(value, float):
        value = float.__float__(value)  # a subclass's comparisons could lie
        if not (math.isfinite(value) and 0 <= value < 2.0**64):
            raise InvalidInput(field, f"{value!r} is out of range (a finite number of seconds, 0..{U64_MAX})")
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputType(field, f"expected an int or a float (seconds since the Unix epoch), got {type_name(value)}")
    return check_int(value, field, 0, U64_MAX)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One downstream request as the proxy received it.

    ``headers`` is a mapping or an iterable of ``(name, value)`` pairs, each a
    ``str`` or ``bytes``; order and repeats are kept (an ASGI ``scope["headers"]``
    list works as is). Names must be ASCII; ``str`` values are taken as Latin-1,
    the HTTP convention (what ASGI/WSGI frameworks decode them with). ``headers``
    is stored as a tuple of ``(name, value)`` tuples.

    ``query`` is the raw query string without the leading ``?``, or ``None``. ASGI's
    ``scope["query_string"]`` bytes work as they are: ``b""`` means no query
    (``None``), other bytes are decoded as UTF-8. A ``str`` is kept as it is
    (``""`` stays ``""``). ``body`` is bytes, a bytearray or a contiguous memoryview.

    The routing fields are read by cc-lb 1.0 filters only (a 0.2 filter's request has no
    place for them): ``thread_id`` (the conversation, e.g. from a client header),
    ``service_tier`` (the tier the client asked for, e.g. ``"priority"``),
    ``canonical_model_id`` (``None`` is sent as ``""``) and ``cache_pricing`` (the model's
    prices; ``None`` is sent as status ``"unknown"`` with every price unknown).

    Every field is checked here: a bad one raises InvalidInput (InvalidInputType for
    a wrong type) naming it, e.g. ``RequestContext.headers[2]``. What is checked is
    what is kept: a subclass of str or bytes is stored as the plain str or bytes it
    holds, and a header name or value given as a bytearray or memoryview as bytes (a
    bytearray ``body`` is kept as it is: resizing it during a call is InvalidInput).
    """

    request_id: str
    method: str
    path: str
    query: Union[str, bytes, None] = None
    headers: HeaderInput = ()
    body: Union[bytes, bytearray, memoryview] = b""
    thread_id: Optional[str] = None
    service_tier: Optional[str] = None
    canonical_model_id: Optional[str] = None
    cache_pricing: Optional["CachePricing"] = None

    def __post_init__(self) -> None:
        for name in ("request_id", "method", "path"):
            _keep(self, name, check_str(getattr(self, name), f"RequestContext.{name}"))
        for name in ("thread_id", "service_tier", "canonical_model_id"):
            if getattr(self, name) is not None:
                _keep(self, name, check_str(getattr(self, name), f"RequestContext.{name}"))
        if self.cache_pricing is not None and not isinstance(self.cache_pricing, CachePricing):
            raise InvalidInputType(
                "RequestContext.cache_pricing", f"expected a cclb_wire.CachePricing or None, got {type_name(self.cache_pricing)}"
            )
        object.__setattr__(self, "query", _query(self.query, "RequestContext.query"))
        object.__setattr__(self, "headers", _header_pairs(self.headers, "RequestContext.headers"))
        if type(self.body) is not bytes:
            _keep(self, "body", _body(self.body, "RequestContext.body"))


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
    """Who is calling. ``kind`` is a str or a str-valued enum (``"api_key"``; ``None``
    is ``"unknown"``); ``claims`` maps str keys to JSON-serializable values.

    The claims are serialized once, here, as compact JSON the way serde_json
    writes it (see :func:`cclb_wire.host_rules.claim_json`). ``uuid.UUID`` values are
    sent as their hyphenated lowercase text and aware ``datetime.datetime`` values as
    RFC 3339 text (as serde writes them); NaN and infinities become ``null`` (as in
    serde_json). A claim that cannot be sent is never dropped: it raises InvalidInput
    naming it (``Principal.claims['key']``) and why (a type JSON has no form for, a
    naive datetime, an int outside i64/u64, a non-str object key, a lone surrogate,
    nesting deeper than 64). Later changes to the claim values are not seen.
    """

    id: str
    kind: Any = "unknown"
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: (id, kind text, ((claim key, JSON bytes), ...)): the wire Principal, computed once.
    wire_fields: Tuple[str, str, Tuple[Tuple[str, bytes], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _keep(self, "id", check_str(self.id, "Principal.id"))
        kind = host_rules.kind_text(self.kind, "Principal.kind")
        claims = {} if self.claims is None else self.claims
        if not isinstance(claims, Mapping):
            raise InvalidInputType("Principal.claims", f"expected a mapping of str keys to JSON values, got {type_name(claims)}")
        object.__setattr__(self, "claims", dict(claims))
        wire_fields = (self.id, kind, host_rules.wire_claims(self.claims, "Principal.claims"))
        object.__setattr__(self, "wire_fields", wire_fields)


@dataclass(frozen=True, slots=True)
class CacheScore:
    """The prompt-cache prediction for one candidate, in tokens (each a u32). A 0.2
    filter sees ``predicted_cache_read_tokens`` only; a 1.0 filter sees all four."""

    predicted_cache_read_tokens: int
    predicted_cache_creation_tokens_5m: int = 0
    predicted_cache_creation_tokens_1h: int = 0
    predicted_uncached_input_tokens: int = 0

    def __post_init__(self) -> None:
        for field in _CACHE_SCORE_FIELDS:
            _keep(self, field, check_int(getattr(self, field), f"CacheScore.{field}", 0, U32_MAX))


_CACHE_SCORE_FIELDS = (
    "predicted_cache_read_tokens",
    "predicted_cache_creation_tokens_5m",
    "predicted_cache_creation_tokens_1h",
    "predicted_uncached_input_tokens",
)


@dataclass(frozen=True, slots=True)
class CachePricing:
    """A model's prompt-cache prices, as cc-lb 1.0 sends them to filters
    (``CachePricingSummary``): a status text and four prices in micro-units per million
    tokens, each an int in u64 range or ``None`` (unknown)."""

    status: str = "unknown"
    input_micros_per_million: Optional[int] = None
    cache_creation_5m_micros_per_million: Optional[int] = None
    cache_creation_1h_micros_per_million: Optional[int] = None
    cache_read_micros_per_million: Optional[int] = None

    def __post_init__(self) -> None:
        _keep(self, "status", check_str(self.status, "CachePricing.status"))
        for name in _PRICE_FIELDS:
            _keep(self, name, _optional_int(getattr(self, name), f"CachePricing.{name}", U64_MAX))

    @property
    def wire_fields(self) -> Tuple[Any, ...]:
        """(status, the four prices): the wire CachePricingSummary."""
        return (self.status, *(getattr(self, name) for name in _PRICE_FIELDS))


_PRICE_FIELDS = (
    "input_micros_per_million",
    "cache_creation_5m_micros_per_million",
    "cache_creation_1h_micros_per_million",
    "cache_read_micros_per_million",
)


@dataclass(frozen=True, slots=True)
class UpstreamCandidate:
    """One upstream the filter may keep. ``upstream_id`` is a UUID (a str is parsed);
    ``kind`` is a str or a str-valued enum, like ``Principal.kind``.

    ``observed_at_unix_secs`` is an int in u64 range, or a finite non-negative float
    (``time.time()`` works) truncated toward zero to whole seconds: the field then
    holds the int. Every field is checked here (InvalidInput naming it).

    A cc-lb 1.0 filter also sees the cache score's creation and uncached predictions,
    ``plan_capacity_ratio`` (a float; default 1.0) and the three tiers (default ``""``).
    """

    upstream_id: uuid.UUID  # a str is parsed (the field then holds the UUID)
    name: str
    kind: Any
    observed_at_unix_secs: Union[int, float]
    cache_score: Optional[CacheScore] = None
    plan_capacity_ratio: float = 1.0
    organization_type: str = ""
    rate_limit_tier: str = ""
    seat_tier: str = ""
    #: (id text, name, kind text, observed_at_unix_secs, predicted_cache_read_tokens):
    #: the wire UpstreamCandidate, computed once.
    wire_fields: Tuple[str, str, str, int, int] = field(init=False, repr=False, compare=False)
    #: The twelve fields of the 1.0 wire UpstreamCandidate, computed once.
    wire_fields_1_0: Tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        upstream_id: Any = self.upstream_id
        if isinstance(upstream_id, uuid.UUID):
            upstream_id = host_rules.plain_uuid(upstream_id)
        else:
            if not isinstance(upstream_id, str):
                raise InvalidInputType(
                    "UpstreamCandidate.upstream_id", f"expected a uuid.UUID or its str form, got {type_name(upstream_id)}"
                )
            text = plain_str(upstream_id)
            try:
                upstream_id = uuid.UUID(text)
            except ValueError:
                raise InvalidInput("UpstreamCandidate.upstream_id", f"{host_rules.shown(text)} is not a UUID") from None
        _keep(self, "upstream_id", upstream_id)
        _keep(self, "name", check_str(self.name, "UpstreamCandidate.name"))
        kind = host_rules.kind_text(self.kind, "UpstreamCandidate.kind")
        observed = _unix_secs(self.observed_at_unix_secs, "UpstreamCandidate.observed_at_unix_secs")
        object.__setattr__(self, "observed_at_unix_secs", observed)
        score = self.cache_score
        if score is not None and not isinstance(score, CacheScore):
            raise InvalidInputType("UpstreamCandidate.cache_score", f"expected a CacheScore or None, got {type_name(score)}")
        # Frozen, so the wire form is computed once, here, not on every request encoded.
        tokens = 0 if score is None else score.predicted_cache_read_tokens
        if type(score) is not CacheScore and score is not None:  # a subclass may read another value
            tokens = check_int(tokens, "UpstreamCandidate.cache_score.predicted_cache_read_tokens", 0, U32_MAX)
        wire_fields = (str(upstream_id), self.name, kind, observed, tokens)
        object.__setattr__(self, "wire_fields", wire_fields)
        ratio = self.plan_capacity_ratio
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
            raise InvalidInputType("UpstreamCandidate.plan_capacity_ratio", f"expected a float, got {type_name(ratio)}")
        try:
            ratio = float.__float__(ratio) if isinstance(ratio, float) else int.__float__(ratio)
        except OverflowError:
            raise InvalidInput("UpstreamCandidate.plan_capacity_ratio", "the int is too large for a float") from None
        if not (math.isfinite(ratio) and ratio >= 0):
            raise InvalidInput("UpstreamCandidate.plan_capacity_ratio", f"{ratio!r} is out of range (a finite number >= 0)")
        object.__setattr__(self, "plan_capacity_ratio", ratio)
        for name in ("organization_type", "rate_limit_tier", "seat_tier"):
            _keep(self, name, check_str(getattr(self, name), f"UpstreamCandidate.{name}"))
        predictions = (0, 0, 0)
        if score is not None:
            predictions = tuple(  # type: ignore[assignment]
                check_int(getattr(score, name), f"UpstreamCandidate.cache_score.{name}", 0, U32_MAX)
                for name in _CACHE_SCORE_FIELDS[1:]
            )
        wire_1_0 = (*wire_fields, *predictions, ratio, self.organization_type, self.rate_limit_tier, self.seat_tier)
        object.__setattr__(self, "wire_fields_1_0", wire_1_0)


@dataclass(frozen=True, slots=True)
class AnthropicDirect:
    """The Anthropic API upstream; ``base_url=None`` means the canonical endpoint.

    ``base_url`` is parsed and serialized the WHATWG way (``ada-url``), so
    ``"https://api.anthropic.com"`` becomes ``"https://api.anthropic.com/"``; an
    invalid URL raises InvalidInput (a ``ValueError``) naming ``AnthropicDirect.base_url``.
    """

    base_url: Optional[str] = None
    #: The base_url's origin (ASCII serialization), computed once; ``None`` without a
    #: base_url. An opaque origin (``file:``, ``data:``) is ``"null"`` and matches nothing.
    origin: Optional[str] = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.base_url is not None:
            object.__setattr__(self, "base_url", host_rules.serialize_url(self.base_url, "AnthropicDirect.base_url"))
            object.__setattr__(self, "origin", host_rules.url_origin(self.base_url) or "null")


# --- observe events -----------------------------------------------------------


# Each event checks its fields when built (InvalidInput naming the field): str fields
# are str, int fields are ints in their wire ranges (u64, ``status`` u16). Like every
# host type, an event keeps the plain int or str a subclass holds, the value checked
# (an ``IntEnum`` such as ``http.HTTPStatus.OK`` is kept as ``200``).


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request arrived (``downstream_user_agent``: its User-Agent, if any)."""

    request_id: str
    downstream_user_agent: Optional[str] = None

    def __post_init__(self) -> None:
        _keep(self, "request_id", check_str(self.request_id, "RequestStarted.request_id"))
        agent = check_str(self.downstream_user_agent, "RequestStarted.downstream_user_agent", optional=True)
        _keep(self, "downstream_user_agent", agent)


@dataclass(frozen=True, slots=True)
class AuthnComplete:
    """``principal_kind`` is a str or a str-valued enum, like ``Principal.kind``."""

    principal_id: str
    principal_kind: Any

    def __post_init__(self) -> None:
        _keep(self, "principal_id", check_str(self.principal_id, "AuthnComplete.principal_id"))
        host_rules.kind_text(self.principal_kind, "AuthnComplete.principal_kind")


@dataclass(frozen=True, slots=True)
class UpstreamChosen:
    """The upstream the request goes to (an AnthropicDirect)."""

    upstream: AnthropicDirect

    def __post_init__(self) -> None:
        if not isinstance(self.upstream, AnthropicDirect):
            raise InvalidInputType("UpstreamChosen.upstream", f"expected an AnthropicDirect, got {type_name(self.upstream)}")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A batch of a streamed response: its index, event count and size (u64s)."""

    batch_index: int
    event_count: int
    total_bytes: int

    def __post_init__(self) -> None:
        batch, count, total = self.batch_index, self.event_count, self.total_bytes
        # One event per streamed chunk: the common case in one expression.
        if type(batch) is int and type(count) is int and type(total) is int and 0 <= min(batch, count, total) and max(batch, count, total) <= U64_MAX:
            return
        for name in ("batch_index", "event_count", "total_bytes"):
            _keep(self, name, check_int(getattr(self, name), f"Chunk.{name}", 0, U64_MAX))


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """``status`` is an int in 0..65535 (``http.HTTPStatus`` works); token counts are
    optional u64s."""

    status: int
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cache_creation_input_tokens: Optional[int] = None
    cache_read_input_tokens: Optional[int] = None
    duration_ms: int = 0

    def __post_init__(self) -> None:
        _keep(self, "status", check_int(self.status, "RequestFinished.status", 0, U16_MAX))
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            _keep(self, name, _optional_int(getattr(self, name), f"RequestFinished.{name}", U64_MAX))
        _keep(self, "duration_ms", check_int(self.duration_ms, "RequestFinished.duration_ms", 0, U64_MAX))


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The request failed: an error code, message and source (the wire ``Error`` event)."""

    code: str
    message: str
    source: str

    def __post_init__(self) -> None:
        for name in ("code", "message", "source"):
            _keep(self, name, check_str(getattr(self, name), f"ErrorEvent.{name}"))


#: Any of the host's observe events.
ObserveEventInput = Union[RequestStarted, AuthnComplete, UpstreamChosen, Chunk, RequestFinished, ErrorEvent]


# --- cc-lb 1.0 transforms: the upstream's answer, and what a plugin makes of it ---------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: its name (``event:``; ``""`` for none; no line end) and its data bytes."""

    event: str
    data: bytes

    def __post_init__(self) -> None:
        _keep(self, "event", check_str(self.event, "SseEvent.event"))
        if "\r" in self.event or "\n" in self.event:
            raise InvalidInput("SseEvent.event", f"the event name {host_rules.shown(self.event)} has a line end")
        if type(self.data) is not bytes:
            object.__setattr__(self, "data", bytes(_body(self.data, "SseEvent.data")))


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """The upstream's answer as a transform sees it: the status (0..65535), the headers
    (pairs as for RequestContext, stored as ``(name, value)`` tuples; as in an HTTP answer,
    each name a token and no value with a control byte but tab) and the body (for a
    streamed answer, ``b""``: the events come one at a time)."""

    status: int
    headers: HeaderInput = ()
    body: Union[bytes, bytearray, memoryview] = b""
    #: The headers as a transform request carries them ((ASCII name, value bytes) pairs, as
    #: they came), computed once.
    wire_headers: Tuple[Tuple[str, bytes], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _keep(self, "status", check_int(self.status, "UpstreamResponse.status", 0, 0xFFFF))
        pairs = _header_pairs(self.headers, "UpstreamResponse.headers")
        object.__setattr__(self, "headers", pairs)
        object.__setattr__(self, "wire_headers", tuple(
            _response_header(name, value, f"UpstreamResponse.headers[{index}]") for index, (name, value) in enumerate(pairs)
        ))
        if type(self.body) is not bytes:
            object.__setattr__(self, "body", bytes(_body(self.body, "UpstreamResponse.body")))


def _response_header(name: Any, value: Any, field: str) -> Tuple[str, bytes]:
    """A header of an HTTP answer: a token name and a value without control bytes but tab
    (what ``http::HeaderValue`` holds; a CR or LF would split the header when it is sent)."""
    text = host_rules.header_name_bytes(name, field).decode("ascii")
    if not host_rules.is_header_name(text):
        raise InvalidInput(field, f"invalid header name {host_rules.shown(text)}")
    raw = host_rules.header_value_bytes(value, field)
    if not host_rules.is_header_value(raw):
        raise InvalidInput(field, f"the value of header `{text}` has a control byte (CR, LF, NUL, ...)")
    return text, raw


def _drop_headers(headers: Tuple[Tuple[Any, Any], ...], names: Tuple[bytes, ...]) -> Tuple[Tuple[Any, Any], ...]:
    def lower(name: Any) -> bytes:
        return (name.encode("latin-1") if isinstance(name, str) else bytes(name)).lower()

    return tuple(pair for pair in headers if lower(pair[0]) not in names)


@dataclass(frozen=True, slots=True)
class ResponseTransform:
    """What ``transform_response`` answered: ``replaced`` False keeps the upstream's answer
    (``Unchanged``); otherwise each of ``status``, ``headers`` (``(lowercase name, value)``
    pairs) and ``body`` replaces the upstream's, and ``None`` keeps it."""

    replaced: bool = False
    status: Optional[int] = None
    headers: Optional[Tuple[Tuple[str, bytes], ...]] = None
    body: Optional[bytes] = None

    def apply(self, response: UpstreamResponse) -> UpstreamResponse:
        """The answer to send: cc-lb's rules. A replaced body drops the upstream's
        ``content-encoding`` and ``content-length`` (the proxy sets the length again); a
        kept body keeps them."""
        if not self.replaced:
            return response
        headers: Tuple[Tuple[Any, Any], ...] = response.headers if self.headers is None else self.headers  # type: ignore[assignment]
        if self.body is not None and self.headers is None:
            headers = _drop_headers(headers, (b"content-encoding", b"content-length"))
        return UpstreamResponse(
            response.status if self.status is None else self.status,
            headers,
            response.body if self.body is None else self.body,
        )


class SseAction(str, enum.Enum):
    """What ``transform_sse_event`` did with an event."""

    UNCHANGED = "unchanged"
    REPLACE = "replace"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class SseTransform:
    """What ``transform_sse_event`` answered: keep the event, replace it by ``events`` (in
    order; none is allowed), or drop it."""

    action: SseAction = SseAction.UNCHANGED
    events: Tuple[SseEvent, ...] = ()

    def apply(self, event: SseEvent) -> Tuple[SseEvent, ...]:
        """The events to emit in place of ``event``."""
        if self.action is SseAction.UNCHANGED:
            return (event,)
        return self.events


#: transform_response's "nothing changed" (also the answer of noop hooks and 0.2 shape plugins).
UNCHANGED_RESPONSE = ResponseTransform()
#: transform_sse_event's "nothing changed" (also the answer of noop hooks and 0.2 shape plugins).
UNCHANGED_EVENT = SseTransform()


# --- what plugins answer ------------------------------------------------------


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
            _keep(self, name, check_int(getattr(self, name), f"WireBounds.{name}", 0, U64_MAX))


class ShapeOriginPolicy(enum.Enum):
    """Whether a shaped URL must stay on the selected upstream's origin.

    Wherever the API takes one, the value strings work too, in any case
    (``"selected_upstream_origin"``, ``"SELECTED_UPSTREAM_ORIGIN"``); anything
    else raises InvalidInput.
    """

    UNRESTRICTED = "unrestricted"
    SELECTED_UPSTREAM_ORIGIN = "selected_upstream_origin"
