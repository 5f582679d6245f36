"""The reference host's rules (``HOST.md``), shared by both codec backends.

Building requests: which downstream headers never reach a plugin, how a
principal's kind and claims are written. Converting answers: the decision
label mapping, reason truncation, UUID parsing, HTTP method and header
validity (as the Rust ``http`` crate defines them), and WHATWG URL origins.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from typing import Any, Iterable, List, Mapping, Optional, Tuple

import ada_url

from . import host_types  # circular on purpose: used at call time only

__all__ = [
    "STRIPPED_REQUEST_HEADERS",
    "DROPPED_SHAPE_HEADERS",
    "DROPPED_SHAPE_HEADER_PREFIX",
    "kind_text",
    "claim_json",
    "wire_claims",
    "wire_headers",
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
DROPPED_SHAPE_HEADER_PREFIX = "x-anthropic-"


# --- building requests -------------------------------------------------------


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def kind_text(kind: Any) -> str:
    """A principal or upstream kind as its wire text: an enum's str value (or its
    member name in snake_case), a str as is, ``None`` as ``"unknown"``."""
    if kind is None:
        return "unknown"
    if isinstance(kind, enum.Enum):
        return kind.value if isinstance(kind.value, str) else _snake_case(kind.name)
    if isinstance(kind, str):
        return kind
    raise TypeError(f"a kind must be a str or an enum member, got {type(kind).__name__}")


class _Unserializable(Exception):
    pass


_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def _json_string(text: str) -> str:
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


def _json_parts(value: Any, out: List[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, int):
        # serde_json numbers are i64, u64 or f64.
        if not -(1 << 63) <= value < (1 << 64):
            raise _Unserializable
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_json_float(float(value)))
    elif isinstance(value, Mapping):
        keys = list(value.keys())
        if not all(isinstance(k, str) for k in keys):
            raise _Unserializable
        out.append("{")
        for index, key in enumerate(sorted(keys)):
            if index:
                out.append(",")
            out.append(_json_string(key))
            out.append(":")
            _json_parts(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _json_parts(item, out)
        out.append("]")
    else:
        raise _Unserializable


def claim_json(value: Any) -> Optional[bytes]:
    """Compact JSON bytes of a claim value, as ``serde_json::to_vec`` writes them:
    no spaces, non-ASCII as UTF-8, object keys sorted, floats in ryu's shortest form
    (``1e20``, ``1e-7``, ``0.0001``), NaN/infinity as ``null``.

    ``None`` when the value cannot be serialized: a type JSON has no form for, a
    non-str object key, an int outside i64/u64, or a lone surrogate.
    """
    out: List[str] = []
    try:
        _json_parts(value, out)
        return "".join(out).encode("utf-8")
    except (_Unserializable, UnicodeEncodeError, RecursionError):
        return None


def wire_claims(claims: Mapping[str, Any]) -> Tuple[Tuple[str, bytes], ...]:
    """Claims as wire ``(key, json bytes)`` pairs in sorted key order, skipping
    values that cannot be serialized."""
    pairs = []
    for key in sorted(claims):
        if not isinstance(key, str):
            raise TypeError(f"claim keys must be str, got {type(key).__name__}")
        encoded = claim_json(claims[key])
        if encoded is not None:
            pairs.append((key, encoded))
    return tuple(pairs)


def _header_name_bytes(name: Any) -> bytes:
    if isinstance(name, str):
        if not name.isascii():
            raise ValueError(f"header name {name!r} is not ASCII")
        return name.encode("ascii")
    if isinstance(name, (bytes, bytearray, memoryview)):
        raw = bytes(name)
        if not raw.isascii():
            raise ValueError(f"header name {raw!r} is not ASCII")
        return raw
    raise TypeError(f"a header name must be str or bytes, got {type(name).__name__}")


def _header_value_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(
                f"header value {value!r} has characters outside Latin-1; pass bytes for other encodings"
            ) from None
    raise TypeError(f"a header value must be str or bytes, got {type(value).__name__}")


def wire_headers(pairs: Iterable[Tuple[Any, Any]], cookie_redaction: bool) -> Tuple[Tuple[str, bytes], ...]:
    """Downstream headers as the plugin sees them: in order, names lowercased,
    values raw, minus credentials and ``host`` (and ``cookie`` under redaction)."""
    result = []
    for name, value in pairs:
        lower = _header_name_bytes(name).lower()
        if lower in STRIPPED_REQUEST_HEADERS or (cookie_redaction and lower == b"cookie"):
            continue
        result.append((lower.decode("ascii"), _header_value_bytes(value)))
    return tuple(result)


def serialize_url(url: str) -> str:
    """A URL serialized the WHATWG way (``ada-url``, the family of Rust's ``url``)."""
    if not isinstance(url, str):
        raise TypeError(f"a URL must be a str, got {type(url).__name__}")
    try:
        return ada_url.normalize_url(url)
    except ValueError:
        raise ValueError(f"invalid URL {url!r}") from None


def url_origin(url: str) -> Optional[str]:
    """The ASCII serialization of a URL's origin; ``None`` for an opaque origin
    (which, as in Rust's ``url``, equals no other origin)."""
    origin = ada_url.parse_url(url, attributes=("origin",))["origin"]
    return None if origin == "null" else origin


# --- converting answers ---------------------------------------------------------


def label_reason(decision: str) -> "host_types.PerCandidateReason":
    """The per-candidate reason for a non-accept decision label."""
    PerCandidateReason = host_types.PerCandidateReason
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
    return lower_name in DROPPED_SHAPE_HEADERS or lower_name.startswith(DROPPED_SHAPE_HEADER_PREFIX)


UUID_FORMS_TEXT = "not a UUID (expected 32 hex digits, 8-4-4-4-12 hyphenated, {braced} or urn:uuid: form)"


def ascii_lower(text: str) -> str:
    """Rust's ``to_ascii_lowercase``: only A-Z change."""
    return text.translate(_ASCII_LOWER)


def shape_url(url: str, expected_origin: Optional[str], enforce_origin: bool) -> str:
    """Parse a shaped URL (WHATWG) and, when ``enforce_origin``, require ``expected_origin``
    (the selected upstream's, ``None`` when it has no base_url: then nothing is enforced).
    Returns the serialized URL."""
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
