"""The reference host's rules (``HOST.md``), shared by both codec backends.

Building requests: which downstream headers never reach a plugin, how a
principal's kind and claims are written. Converting answers: the decision
label mapping, reason truncation, UUID parsing, HTTP method and header
validity (as the Rust ``http`` crate defines them), and WHATWG URL origins.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import ada_url

from ._reasons import PerCandidateReason
from ._validate import plain_bytes, plain_int, plain_str, type_name, utf8_problem
from .errors import InvalidInput, InvalidInputType

__all__ = [
    "STRIPPED_REQUEST_HEADERS",
    "DROPPED_SHAPE_HEADERS",
    "DROPPED_SHAPE_HEADER_PREFIX",
    "kind_text",
    "plain_uuid",
    "claim_json",
    "wire_claims",
    "wire_headers",
    "header_pair",
    "header_name_bytes",
    "header_value_bytes",
    "MAX_CLAIM_DEPTH",
    "serialize_url",
    "url_origin",
    "label_reason",
    "truncate_reason",
    "parse_uuid",
    "is_method_token",
    "is_header_name",
    "is_header_value",
    "is_dropped_shape_header",
]

#: Downstream headers that never reach a plugin (credentials and ``host``).
STRIPPED_REQUEST_HEADERS = frozenset({b"authorization", b"x-api-key", b"host", b"proxy-authorization"})
#: Shape output headers dropped silently (hop-by-hop, framing and signer-owned).
DROPPED_SHAPE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "x-api-key",
    }
)
#: Shape output headers with this (lowercase) prefix are dropped silently too.
DROPPED_SHAPE_HEADER_PREFIX = "x-anthropic-"


# --- building requests -------------------------------------------------------


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def shown(value: Any, limit: int = 200) -> str:
    """``repr`` of a str or bytes for an error message, cut after ``limit`` items."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} in all)"


def kind_text(kind: Any, field: str = "kind") -> str:
    """A principal or upstream kind as its wire text: an enum's str value (or its
    member name in snake_case), a str as is, ``None`` as ``"unknown"``.
    Anything else raises InvalidInputType naming ``field``."""
    if kind is None:
        return "unknown"
    if isinstance(kind, enum.Enum):
        return plain_str(kind.value) if isinstance(kind.value, str) else _snake_case(kind.name)
    if type(kind) is str:
        return kind
    if isinstance(kind, str):
        return plain_str(kind)
    raise InvalidInputType(field, f"expected a str, an enum member or None, got {type_name(kind)}")


#: The deepest nesting of arrays and objects a claim value may have (serde_json's
#: reader, in the plugin, stops at 128).
MAX_CLAIM_DEPTH = 64


class _Unsendable(Exception):
    """Internal: a claim value that has no JSON form; ``path`` locates it inside the value."""

    def __init__(self, detail: str, path: str, type_problem: bool = False):
        super().__init__(detail)
        self.detail = detail
        self.path = path
        self.type_problem = type_problem


_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def plain_uuid(value: uuid.UUID) -> uuid.UUID:
    """The exact ``uuid.UUID`` a UUID (or subclass) holds: its 128-bit slot, read past any
    ``int`` or ``__str__`` override."""
    if type(value) is uuid.UUID:
        return value
    raw: int = vars(uuid.UUID)["int"].__get__(value)  # the slot itself, not a subclass's property
    return uuid.UUID(int=raw)


def _plain_datetime(value: datetime.datetime) -> datetime.datetime:
    """The exact ``datetime`` a datetime (or subclass) holds: its fields read by the C
    type's own descriptors, past any property a subclass puts over them."""
    if type(value) is datetime.datetime:
        return value

    def field(name: str) -> Any:
        return getattr(datetime.datetime, name).__get__(value)

    return datetime.datetime(
        field("year"), field("month"), field("day"), field("hour"), field("minute"), field("second"),
        field("microsecond"), tzinfo=field("tzinfo"), fold=field("fold"),
    )


def _json_string(text: str, path: str) -> str:
    if type(text) is not str:
        text = plain_str(text)
    problem = utf8_problem(text)
    if problem:
        raise _Unsendable(problem, path)
    escaped = _JSON_NEEDS_ESCAPE.sub(lambda m: _JSON_ESCAPES.get(m.group(), f"\\u{ord(m.group()):04x}"), text)
    return f'"{escaped}"'


def _json_float(value: float) -> str:
    """A float as serde_json writes it (ryu's layout of the shortest digits)."""
    if not math.isfinite(value):
        return "null"  # serde_json writes NaN and infinities as null
    text = repr(value)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exponent_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    exponent = int(exponent_text or 0) - len(fraction)
    if not digits:
        return sign + "0.0"
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    point = length + exponent  # value = 0.digits * 10**point
    if 0 <= exponent and point <= 16:
        body = digits + "0" * exponent + ".0"
    elif 0 < point <= 16:
        body = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        body = "0." + "0" * -point + digits
    elif length == 1:
        body = f"{digits}e{point - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{point - 1}"
    return sign + body


def _rfc3339(value: datetime.datetime, path: str) -> str:
    """An aware datetime as chrono's serde writes a ``DateTime``: RFC 3339 with
    ``SecondsFormat::AutoSi`` (0, 3 or 6 fractional digits, as needed) and ``Z``
    for a zero offset (``to_rfc3339_opts(SecondsFormat::AutoSi, true)``)."""
    offset = value.utcoffset()
    if offset is None:
        raise _Unsendable("a naive datetime has no time zone; pass an aware one (tzinfo set)", path, True)
    micro = value.microsecond
    if micro == 0:
        fraction = ""
    elif micro % 1000 == 0:
        fraction = f".{micro // 1000:03d}"
    else:
        fraction = f".{micro:06d}"
    seconds = int(offset.total_seconds())
    if seconds == 0:
        zone = "Z"
    else:
        sign = "-" if seconds < 0 else "+"
        minutes = (abs(seconds) + 30) // 60  # chrono rounds the offset to the nearest minute
        zone = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}{fraction}{zone}"
    )


_TWICE = "appears twice (a str subclass that hashes or compares unlike its text)"
_STR_ONLY = frozenset({str})


def _plain_keys(keys: List[str]) -> Tuple[List[str], List[Any], Optional[str]]:
    """A mapping's str keys in the order of their plain texts alone (a str subclass's own
    comparisons do not choose it): the texts, the keys in the same order, and a text two
    keys share (a subclass's hash or equality let both in) or None."""
    if _STR_ONLY.issuperset(map(type, keys)):  # distinct texts, ordered by str itself
        ordered = sorted(keys)
        return ordered, ordered, None
    pairs = sorted(((plain_str(key), key) for key in keys), key=lambda pair: pair[0])
    texts = [text for text, _ in pairs]
    repeated = next((text for text, after in zip(texts, texts[1:]) if text == after), None)
    return texts, [key for _, key in pairs], repeated


def _json_parts(value: Any, out: List[str], path: str, depth: int) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_json_string(value, path))
    elif isinstance(value, int):
        # serde_json numbers are i64, u64 or f64.
        number = plain_int(value)
        if not -(1 << 63) <= number < (1 << 64):
            raise _Unsendable(f"the int {number} is outside serde_json's i64/u64 range", path)
        out.append(str(number))
    elif isinstance(value, float):
        out.append(_json_float(float.__float__(value)))
    elif isinstance(value, uuid.UUID):
        out.append(f'"{plain_uuid(value)}"')  # serde's Uuid form: hyphenated, lowercase
    elif isinstance(value, datetime.datetime):
        out.append(f'"{_rfc3339(_plain_datetime(value), path)}"')
    elif isinstance(value, Mapping):
        if depth >= MAX_CLAIM_DEPTH:
            raise _Unsendable(f"nested deeper than {MAX_CLAIM_DEPTH} arrays/objects", path)
        keys = list(value.keys())
        for key in keys:
            if not isinstance(key, str):
                raise _Unsendable(f"object key {key!r} is a {type_name(key)}; JSON object keys are str", path, True)
        texts, ordered, repeated = _plain_keys(keys)
        if repeated is not None:
            raise _Unsendable(f"the object key {repeated!r} {_TWICE}", path)
        out.append("{")
        for index, (text, key) in enumerate(zip(texts, ordered)):
            if index:
                out.append(",")
            inner = f"{path}[{text!r}]"
            out.append(_json_string(text, inner))
            out.append(":")
            _json_parts(value[key], out, inner, depth + 1)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        if depth >= MAX_CLAIM_DEPTH:
            raise _Unsendable(f"nested deeper than {MAX_CLAIM_DEPTH} arrays/objects", path)
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _json_parts(item, out, f"{path}[{index}]", depth + 1)
        out.append("]")
    else:
        raise _Unsendable(
            f"{type_name(value)} values have no JSON form (expected None, bool, int, float, str, list, tuple, "
            "a mapping with str keys, uuid.UUID or an aware datetime.datetime)",
            path,
            True,
        )


def claim_json(value: Any, field: str = "claim") -> bytes:
    """Compact JSON bytes of a claim value, as ``serde_json::to_vec`` writes them:
    no spaces, non-ASCII as UTF-8, object keys sorted, floats in ryu's shortest form
    (``1e20``, ``1e-7``, ``0.0001``), NaN/infinity as ``null`` (serde_json's choice).
    A ``uuid.UUID`` is written as its hyphenated lowercase text (serde's ``Uuid``
    form) and an aware ``datetime.datetime`` as RFC 3339 the way chrono's serde writes
    it (``2026-01-01T12:00:00.250Z``, ``2026-01-01T13:00:00+01:00``).

    A value that cannot be sent raises InvalidInput naming ``field`` and saying why
    (InvalidInputType for a type JSON has no form for, a naive datetime or a non-str
    object key; InvalidInput for an int outside i64/u64, a lone surrogate, or nesting
    deeper than :data:`MAX_CLAIM_DEPTH`, which also catches self-containing values).
    """
    out: List[str] = []
    try:
        _json_parts(value, out, "", 0)
    except _Unsendable as problem:
        path = problem.path if len(problem.path) <= 80 else problem.path[:77] + "..."
        where = f" at {path}" if path else ""
        error = InvalidInputType if problem.type_problem else InvalidInput
        raise error(field, f"cannot be sent as JSON{where}: {problem.detail}") from None
    return "".join(out).encode("utf-8")


def wire_claims(claims: Mapping[str, Any], field: str = "Principal.claims") -> Tuple[Tuple[str, bytes], ...]:
    """Claims as wire ``(key, json bytes)`` pairs in sorted key order.

    A claim that cannot be sent is never dropped: InvalidInput names it
    (``Principal.claims['key']``) and says why."""
    if not isinstance(claims, Mapping):
        raise InvalidInputType(field, f"expected a mapping of str keys to JSON values, got {type_name(claims)}")
    keys = list(claims)
    for key in keys:
        if not isinstance(key, str):
            raise InvalidInputType(f"{field}[{key!r}]", f"claim keys must be str, got {type_name(key)}")
    texts, ordered, repeated = _plain_keys(keys)
    if repeated is not None:
        raise InvalidInput(f"{field}[{repeated!r}]", f"the claim key {_TWICE}")
    pairs = []
    for text, key in zip(texts, ordered):
        item = f"{field}[{text!r}]"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(item, "the claim key has a lone surrogate; it has no UTF-8 form") from None
        pairs.append((text, claim_json(claims[key], item)))
    return tuple(pairs)


def header_name_bytes(name: Any, field: str) -> bytes:
    """A header name as ASCII bytes (a str or a bytes-like object)."""
    if isinstance(name, str):
        text = plain_str(name)
        if not text.isascii():
            raise InvalidInput(field, f"header name {shown(text)} is not ASCII")
        return text.encode("ascii")
    if isinstance(name, (bytes, bytearray, memoryview)):
        raw = bytes(plain_bytes(name))
        if not raw.isascii():
            raise InvalidInput(field, f"header name {shown(raw)} is not ASCII")
        return raw
    raise InvalidInputType(field, f"a header name must be str or bytes, got {type_name(name)}")


def header_value_bytes(value: Any, field: str) -> bytes:
    """A header value as bytes: bytes-like as it is, a str as Latin-1."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(plain_bytes(value))
    if isinstance(value, str):
        text = plain_str(value)
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                field,
                f"header value has a character outside Latin-1 ({text[exc.start]!r} at index {exc.start}); "
                "pass bytes for other encodings",
            ) from None
    raise InvalidInputType(field, f"a header value must be str or bytes, got {type_name(value)}")


def wire_headers(
    pairs: Iterable[Tuple[Any, Any]], cookie_redaction: bool, field: str = "RequestContext.headers"
) -> Tuple[Tuple[str, bytes], ...]:
    """Downstream headers as the plugin sees them: in order, names lowercased,
    values raw, minus credentials and ``host`` (and ``cookie`` under redaction)."""
    result = []
    for index, pair in enumerate(pairs):
        where = f"{field}[{index}]"
        name, value = header_pair(pair, where)
        lower = header_name_bytes(name, where).lower()
        if lower in STRIPPED_REQUEST_HEADERS or (cookie_redaction and lower == b"cookie"):
            continue
        result.append((lower.decode("ascii"), header_value_bytes(value, where)))
    return tuple(result)


def header_pair(pair: Any, where: str) -> Tuple[Any, Any]:
    """A header's (name, value): a 2-item tuple or list, else InvalidInputType naming ``where``."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        shape = f"a {type_name(pair)} of {len(pair)} items" if isinstance(pair, (tuple, list)) else f"a {type_name(pair)}"
        raise InvalidInputType(where, f"expected a (name, value) pair, got {shape}")
    return pair[0], pair[1]


def serialize_url(url: Any, field: str = "url") -> str:
    """A URL serialized the WHATWG way (``ada-url``, the family of Rust's ``url``).
    Raises InvalidInput naming ``field`` for a URL that does not parse."""
    if not isinstance(url, str):
        raise InvalidInputType(field, f"expected a URL str, got {type_name(url)}")
    url = plain_str(url)
    try:
        return ada_url.normalize_url(url)
    except ValueError:
        raise InvalidInput(field, f"invalid URL {shown(url)} (not a WHATWG-parsable absolute URL)") from None


def url_origin(url: str) -> Optional[str]:
    """The ASCII serialization of a URL's origin; ``None`` for an opaque origin
    (which, as in Rust's ``url``, equals no other origin)."""
    origin = ada_url.parse_url(url, attributes=("origin",))["origin"]
    return None if origin == "null" else origin


# --- converting answers ---------------------------------------------------------


def label_reason(decision: str) -> PerCandidateReason:
    """The per-candidate reason for a non-accept decision label."""
    label = decision.replace("-", "_").translate(_ASCII_LOWER)
    if "rate_limit" in label:
        return PerCandidateReason.RateLimited
    if "quota" in label:
        return PerCandidateReason.InsufficientQuota
    if "unhealthy" in label:
        return PerCandidateReason.Unhealthy
    return PerCandidateReason.RejectedByPlugin


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def truncate_reason(reason: str, cap: int) -> str:
    """At most ``cap`` UTF-8 bytes of ``reason``, backing off to a character boundary."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= cap:
        return reason
    end = cap
    while end > 0 and (encoded[end] & 0xC0) == 0x80:
        end -= 1
    return encoded[:end].decode("utf-8")


_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# The forms Rust's Uuid::parse_str takes: simple, hyphenated, braced, urn.
_UUID_FORMS = re.compile(rf"(?:{_HEX}{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED})\Z")


def parse_uuid(text: str) -> Optional[uuid.UUID]:
    """A UUID in one of the forms Rust's ``Uuid::parse_str`` takes, else ``None``."""
    if _UUID_FORMS.match(text) is None:
        return None
    return uuid.UUID(text)


#: Shaped URLs whose parse shape_url keeps, and the longest it keeps.
SHAPE_URL_CACHE_SIZE = 1024
SHAPE_URL_CACHE_MAX_LENGTH = 512
_SHAPED_URLS: Dict[Tuple[str, Optional[str], bool], str] = {}

# RFC 9110 tchar: what http::Method and http::HeaderName accept.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: http::HeaderName's length limit.
MAX_HEADER_NAME_BYTES = (1 << 16) - 1


def is_method_token(method: str) -> bool:
    """What ``http::Method::from_bytes`` accepts: a non-empty token (case kept)."""
    return _TOKEN.match(method) is not None


def is_header_name(name: str) -> bool:
    """What ``http::HeaderName::from_bytes`` accepts: a token of at most 65535 bytes."""
    return len(name) <= MAX_HEADER_NAME_BYTES and _TOKEN.match(name) is not None


def is_header_value(value: bytes) -> bool:
    """What ``http::HeaderValue::from_bytes`` accepts: no control bytes but tab."""
    return _HEADER_VALUE_FORBIDDEN.search(value) is None


def is_dropped_shape_header(lower_name: str) -> bool:
    """Whether a shape output header (lowercase name) is dropped silently (hop-by-hop,
    framing, signer-owned or ``x-anthropic-*``)."""
    return lower_name in DROPPED_SHAPE_HEADERS or lower_name.startswith(DROPPED_SHAPE_HEADER_PREFIX)


UUID_FORMS_TEXT = "not a UUID (expected 32 hex digits, 8-4-4-4-12 hyphenated, {braced} or urn:uuid: form)"


def ascii_lower(text: str) -> str:
    """Rust's ``to_ascii_lowercase``: only A-Z change."""
    return text.translate(_ASCII_LOWER)


def shape_url(url: str, expected_origin: Optional[str], enforce_origin: bool) -> str:
    """Parse a shaped URL (WHATWG) and, when ``enforce_origin``, require ``expected_origin``
    (the selected upstream's, ``None`` when it has no base_url: then nothing is enforced).
    Returns the serialized URL. The answers for short URLs are kept (a refusal is not): a
    shape plugin sends most requests to the same few URLs, and parsing one costs more than
    the rest of decoding its answer. Long ones (a client's long query, say) are not kept:
    memory a client could fill, and text that may hold its secrets."""
    key = (url, expected_origin, enforce_origin)
    href = _SHAPED_URLS.get(key)
    if href is None:
        href = _shape_url(url, expected_origin, enforce_origin)
        if len(url) <= SHAPE_URL_CACHE_MAX_LENGTH:
            if len(_SHAPED_URLS) >= SHAPE_URL_CACHE_SIZE:
                _SHAPED_URLS.clear()  # a new set of URLs: start over (no order to keep under threads)
            _SHAPED_URLS[key] = href
    return href


def _shape_url(url: str, expected_origin: Optional[str], enforce_origin: bool) -> str:
    from .errors import DialectError

    try:
        if not (enforce_origin and expected_origin is not None):
            return ada_url.normalize_url(url)
        parsed = ada_url.parse_url(url, attributes=("href", "origin"))
    except ValueError:
        raise DialectError.unsupported_request(f"invalid upstream url: `{url}` is not a valid absolute URL") from None
    actual = parsed["origin"]
    if actual == "null" or actual != expected_origin:
        raise DialectError.unsupported_request(
            f"shape plugin returned URL origin `{actual}` but selected upstream requires `{expected_origin}`"
        )
    return parsed["href"]
