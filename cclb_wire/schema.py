"""The cc-lb plugin contracts (0.2 and 1.0), stated once, as data.

Every wire type is declared here with its fields in declaration order. Archived
sizes, alignments and field offsets are *computed* from rkyv 0.8's layout rules
(``#[repr(C)]`` structs, ``#[repr(u8)]`` enums, 8-byte relative pointers,
``Option`` = tag byte + payload at the payload's alignment). The descriptor
strings and their BLAKE3 fingerprints are derived from the same declarations.

The pure-Python codec, the JSON interchange, the value classes, the CLI and the
tests all derive from this module; the Cython extension is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Tuple, Union

import blake3

__all__ = [
    "WIRE_VERSION",
    "Primitive",
    "Pointer",
    "SliceOf",
    "OptionOf",
    "Field",
    "StructType",
    "Variant",
    "EnumType",
    "WireType",
    "U16",
    "U32",
    "U64",
    "STR",
    "BYTES",
    "CLAIM",
    "HEADER",
    "PRINCIPAL",
    "UPSTREAM_CANDIDATE",
    "FILTER_REQUEST",
    "PER_CANDIDATE_REASON",
    "FILTER_RESPONSE",
    "UPSTREAM",
    "SHAPE_REQUEST",
    "SHAPE_RESPONSE",
    "OBSERVE_EVENT",
    "ROOT_TYPES",
    "ALL_TYPES",
    "HOOK_REQUEST_TYPES",
    "HOOK_RESPONSE_TYPES",
    "kind_of",
    "descriptor",
    "fingerprint",
    "FINGERPRINTS",
]

#: The wire format version these types describe.
WIRE_VERSION = 1


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


# --- wire types -------------------------------------------------------------


@dataclass(frozen=True)
class _Scalar:
    """A fixed-size little-endian number, naturally aligned."""

    name: str  # the Rust spelling: u16, u32, u64, f64
    size: int

    @property
    def align(self) -> int:
        """Natural alignment: the size."""
        return self.size

    @property
    def rust(self) -> str:
        """The Rust spelling (``u32``)."""
        return self.name


@dataclass(frozen=True)
class Primitive(_Scalar):
    """A little-endian unsigned integer, naturally aligned."""

    @property
    def max_value(self) -> int:
        """The largest value the type holds."""
        return (1 << (8 * self.size)) - 1


@dataclass(frozen=True)
class Float(_Scalar):
    """A little-endian IEEE-754 float, naturally aligned (bytecheck accepts every bit pattern)."""


@dataclass(frozen=True)
class Pointer:
    """``Box<str>`` or ``Box<[u8]>``: i32 relative offset + u32 byte length."""

    name: str  # "str" or "bytes"
    rust: str
    size: int = 8
    align: int = 4
    pointee_align: int = 1


@dataclass(frozen=True)
class SliceOf:
    """``Box<[T]>`` of a struct: i32 offset + u32 element count."""

    elem: "StructType"
    size: int = 8
    align: int = 4

    @property
    def name(self) -> str:
        """``[T]``."""
        return f"[{self.elem.name}]"

    @property
    def rust(self) -> str:
        """The Rust spelling (``Box<[T]>``)."""
        return f"Box<[{self.elem.name}]>"

    @property
    def pointee_align(self) -> int:
        """The alignment the elements' array must have: the element's."""
        # rkyv checks the element alignment even for an empty slice.
        return self.elem.align


@dataclass(frozen=True)
class OptionOf:
    """``Option<T>``: tag byte (0 None, 1 Some), payload at ``align(T)``."""

    inner: Union[Primitive, Pointer, "SliceOf"]
    size: int = field(init=False)
    align: int = field(init=False)
    payload_offset: int = field(init=False)

    def __post_init__(self) -> None:
        align = max(1, self.inner.align)
        object.__setattr__(self, "payload_offset", align)
        object.__setattr__(self, "align", align)
        object.__setattr__(self, "size", _round_up(align + self.inner.size, align))

    @property
    def name(self) -> str:
        """``Option<T>`` (T in its Rust spelling)."""
        return f"Option<{self.inner.rust}>"

    @property
    def rust(self) -> str:
        """The Rust spelling: the name."""
        return self.name


@dataclass(frozen=True)
class Field:
    """A struct or variant field: its name, type and byte offset in the archived value."""

    name: str
    type: "WireType"
    offset: int


def _lay_out(start: int, declared: Tuple[Tuple[str, "WireType"], ...]) -> Tuple[Tuple[Field, ...], int, int]:
    """C layout from ``start``: each field at its own alignment. Returns (fields, end, align)."""
    fields = []
    position = start
    align = 1
    for name, wire_type in declared:
        position = _round_up(position, wire_type.align)
        fields.append(Field(name, wire_type, position))
        position += wire_type.size
        align = max(align, wire_type.align)
    return tuple(fields), position, align


@dataclass(frozen=True, eq=False)  # identity: each named type is declared once, and is a cheap dict key
class StructType:
    """A derived ``#[repr(C)]`` archived struct."""

    name: str
    fields: Tuple[Field, ...]
    size: int
    align: int
    #: The name this package gives the type where another contract's type has the same Rust name.
    alias: str = ""

    @property
    def rust(self) -> str:
        """The Rust spelling: the name."""
        return self.name

    @property
    def public_name(self) -> str:
        """The name of the type in this package (``FilterRequest10`` for 1.0's ``FilterRequest``)."""
        return self.alias or self.name

    @classmethod
    def declare(cls, name: str, *declared: Tuple[str, "WireType"], alias: str = "") -> "StructType":
        """The struct of the ``(field name, type)`` pairs, in declaration order, laid out."""
        fields, end, align = _lay_out(0, declared)
        return cls(name, fields, _round_up(end, align), align, alias)


@dataclass(frozen=True)
class Variant:
    """An enum variant: its name, tag byte and fields (laid out after the tag)."""

    name: str
    tag: int
    fields: Tuple[Field, ...]


@dataclass(frozen=True, eq=False)  # identity: each named type is declared once, and is a cheap dict key
class EnumType:
    """A derived archived enum: always ``#[repr(u8)]``; fields follow the tag."""

    name: str
    variants: Tuple[Variant, ...]
    size: int
    align: int

    @property
    def rust(self) -> str:
        """The Rust spelling: the name."""
        return self.name

    @property
    def public_name(self) -> str:
        """The name of the type in this package (enum names are unique across contracts)."""
        return self.name

    @classmethod
    def declare(cls, name: str, *declared: Tuple[str, Tuple[Tuple[str, "WireType"], ...]]) -> "EnumType":
        """The enum of the ``(variant name, fields)`` pairs (tags in order), laid out."""
        variants = []
        size = 1
        align = 1
        for tag, (variant_name, variant_fields) in enumerate(declared):
            fields, end, variant_align = _lay_out(1, variant_fields)
            variants.append(Variant(variant_name, tag, fields))
            align = max(align, variant_align)
            size = max(size, end)
        return cls(name, tuple(variants), _round_up(size, align), align)


#: Any wire type.
WireType = Union[Primitive, Float, Pointer, SliceOf, OptionOf, StructType, EnumType]

# --- V1 declarations (declaration order = layout order) ----------------------

#: ``u16``.
U16 = Primitive("u16", 2)
#: ``u32``.
U32 = Primitive("u32", 4)
#: ``u64``.
U64 = Primitive("u64", 8)
#: ``Box<str>``: UTF-8 text.
STR = Pointer("str", "Box<str>")
#: ``Box<[u8]>``: raw bytes.
BYTES = Pointer("bytes", "Box<[u8]>")
OPTION_STR = OptionOf(STR)
OPTION_U64 = OptionOf(U64)

#: A principal's claim: key and JSON value bytes.
CLAIM = StructType.declare("Claim", ("key", STR), ("value", BYTES))
#: An HTTP header: name and raw value.
HEADER = StructType.declare("Header", ("name", STR), ("value", BYTES))
#: Who is calling: id, kind and claims.
PRINCIPAL = StructType.declare("Principal", ("id", STR), ("kind", STR), ("claims", SliceOf(CLAIM)))
#: One upstream a filter may keep.
UPSTREAM_CANDIDATE = StructType.declare(
    "UpstreamCandidate",
    ("upstream_id", STR),
    ("name", STR),
    ("kind", STR),
    ("observed_at_unix_secs", U64),
    ("predicted_cache_read_tokens", U32),
)
_REQUEST_HEAD = (
    ("request_id", STR),
    ("method", STR),
    ("path", STR),
    ("query", OPTION_STR),
    ("headers", SliceOf(HEADER)),
    ("body", BYTES),
    ("principal", PRINCIPAL),
)
#: The filter hook's request (a root).
FILTER_REQUEST = StructType.declare(
    "FilterRequest", *_REQUEST_HEAD, ("candidates", SliceOf(UPSTREAM_CANDIDATE))
)
#: A filter's decision on one candidate: upstream_id, decision label and reason.
PER_CANDIDATE_REASON = StructType.declare(
    "PerCandidateReason", ("upstream_id", STR), ("decision", STR), ("reason", STR)
)
#: The filter hook's answer (a root).
FILTER_RESPONSE = StructType.declare("FilterResponse", ("results", SliceOf(PER_CANDIDATE_REASON)))
#: The selected upstream (enum; V1 has AnthropicDirect only).
UPSTREAM = EnumType.declare("Upstream", ("AnthropicDirect", (("base_url", OPTION_STR),)))
#: The shape hook's request (a root).
SHAPE_REQUEST = StructType.declare("ShapeRequest", *_REQUEST_HEAD, ("upstream", UPSTREAM))
#: The shape hook's answer: the upstream request to send (a root).
SHAPE_RESPONSE = StructType.declare(
    "ShapeResponse", ("url", STR), ("method", STR), ("headers", SliceOf(HEADER)), ("body", BYTES)
)
#: The observe hook's request: one event of a request's life (enum, a root).
OBSERVE_EVENT = EnumType.declare(
    "ObserveEvent",
    ("RequestStarted", (("request_id", STR), ("downstream_user_agent", OPTION_STR))),
    ("AuthnComplete", (("principal_id", STR), ("principal_kind", STR))),
    ("UpstreamChosen", (("upstream", UPSTREAM),)),
    ("Chunk", (("batch_index", U64), ("event_count", U64), ("total_bytes", U64))),
    (
        "RequestFinished",
        (
            ("status", U16),
            ("input_tokens", OPTION_U64),
            ("output_tokens", OPTION_U64),
            ("cache_creation_input_tokens", OPTION_U64),
            ("cache_read_input_tokens", OPTION_U64),
            ("duration_ms", U64),
        ),
    ),
    ("Error", (("code", STR), ("message", STR), ("source", STR))),
)

# --- cc-lb 1.0 declarations (CONTRACT-1.0.md; layouts checked against LAYOUTS.md) ---------

#: ``f64``: IEEE-754, little-endian.
F64 = Float("f64", 8)
OPTION_U16 = OptionOf(U16)
OPTION_BYTES = OptionOf(BYTES)
OPTION_HEADERS = OptionOf(SliceOf(HEADER))

#: One upstream a 1.0 filter may keep: the 0.2 fields, then cache predictions and tiers.
UPSTREAM_CANDIDATE_1_0 = StructType.declare(
    "UpstreamCandidate",
    ("upstream_id", STR),
    ("name", STR),
    ("kind", STR),
    ("observed_at_unix_secs", U64),
    ("predicted_cache_read_tokens", U32),
    ("predicted_cache_creation_tokens_5m", U32),
    ("predicted_cache_creation_tokens_1h", U32),
    ("predicted_uncached_input_tokens", U32),
    ("plan_capacity_ratio", F64),
    ("organization_type", STR),
    ("rate_limit_tier", STR),
    ("seat_tier", STR),
    alias="UpstreamCandidate10",
)
#: The model's cache prices, in micro-units per million tokens (None: unknown).
CACHE_PRICING_SUMMARY = StructType.declare(
    "CachePricingSummary",
    ("status", STR),
    ("input_micros_per_million", OPTION_U64),
    ("cache_creation_5m_micros_per_million", OPTION_U64),
    ("cache_creation_1h_micros_per_million", OPTION_U64),
    ("cache_read_micros_per_million", OPTION_U64),
)
#: The 1.0 filter hook's request (a root, align 8).
FILTER_REQUEST_1_0 = StructType.declare(
    "FilterRequest",
    ("request_id", STR),
    ("thread_id", OPTION_STR),
    ("service_tier", OPTION_STR),
    ("canonical_model_id", STR),
    ("cache_pricing", CACHE_PRICING_SUMMARY),
    ("method", STR),
    ("path", STR),
    ("query", OPTION_STR),
    ("headers", SliceOf(HEADER)),
    ("body", BYTES),
    ("principal", PRINCIPAL),
    ("candidates", SliceOf(UPSTREAM_CANDIDATE_1_0)),
    alias="FilterRequest10",
)
_TRANSFORM_HEAD = (
    ("request_id", STR),
    ("principal", PRINCIPAL),
    ("upstream", UPSTREAM),
    ("request_method", STR),
    ("request_path", STR),
    ("canonical_model_id", STR),
    ("response_status", U16),
    ("response_headers", SliceOf(HEADER)),
)
#: The transform_response hook's request: the upstream's buffered answer (a root).
TRANSFORM_RESPONSE_REQUEST = StructType.declare("TransformResponseRequest", *_TRANSFORM_HEAD, ("body", BYTES))
#: The transform_response hook's answer (a root): keep the answer, or replace parts of it.
TRANSFORM_RESPONSE_RESULT = EnumType.declare(
    "TransformResponseResult",
    ("Unchanged", ()),
    ("Replace", (("status", OPTION_U16), ("headers", OPTION_HEADERS), ("body", OPTION_BYTES))),
)
#: One server-sent event: its name and data.
SSE_EVENT = StructType.declare("SseEvent", ("event", STR), ("data", BYTES))
#: The transform_sse_event hook's request: one event of the upstream's stream (a root).
TRANSFORM_SSE_EVENT_REQUEST = StructType.declare("TransformSseEventRequest", *_TRANSFORM_HEAD, ("event", SSE_EVENT))
#: The transform_sse_event hook's answer (a root): keep, replace by events, or drop the event.
TRANSFORM_SSE_EVENT_RESULT = EnumType.declare(
    "TransformSseEventResult",
    ("Unchanged", ()),
    ("Replace", (("events", SliceOf(SSE_EVENT)),)),
    ("Drop", ()),
)

NamedType = Union[StructType, EnumType]


def _named_types(roots: Tuple[NamedType, ...]) -> Dict[str, NamedType]:
    """Every named type reachable from ``roots``, dependencies first, by public name."""
    found: Dict[str, NamedType] = {}

    def visit(wire_type: "WireType") -> None:
        if isinstance(wire_type, OptionOf):
            visit(wire_type.inner)
        elif isinstance(wire_type, SliceOf):
            visit(wire_type.elem)
        elif isinstance(wire_type, (StructType, EnumType)):
            fields = wire_type.fields if isinstance(wire_type, StructType) else tuple(
                f for v in wire_type.variants for f in v.fields
            )
            for f in fields:
                visit(f.type)
            found.setdefault(wire_type.public_name, wire_type)

    for root in roots:
        visit(root)
    return found


@dataclass(frozen=True)
class Contract:
    """One plugin contract of cc-lb, stated once: its roots, hooks and rules.

    cc-lb labels both contracts "wire_version 1"; a plugin's fingerprints tell them apart."""

    #: "0.2" or "1.0".
    name: str
    #: Which cc-lb speaks it.
    source: str
    #: hook -> the root type of its request.
    hook_requests: Mapping[str, NamedType]
    #: hook -> the root type of its answer (absent: the hook answers nothing the host reads).
    hook_responses: Mapping[str, NamedType]
    #: Hooks that may be declared ``"mode": "noop"``.
    noop_hooks: FrozenSet[str] = frozenset()
    #: hook -> the hooks a plugin that declares it must also declare.
    requires: Mapping[str, FrozenSet[str]] = field(default_factory=dict)
    #: hooks that may only be declared beside the hook they map to.
    needs_companion: Mapping[str, str] = field(default_factory=dict)

    @property
    def hooks(self) -> Tuple[str, ...]:
        """The hooks of this contract, in declaration order."""
        return tuple(self.hook_requests)

    @property
    def roots(self) -> Dict[str, NamedType]:
        """Every archive root of the contract (requests and answers), by public name."""
        roots: Dict[str, NamedType] = {}
        for root in (*self.hook_requests.values(), *self.hook_responses.values()):
            roots.setdefault(root.public_name, root)
        return roots

    @property
    def types(self) -> Dict[str, NamedType]:
        """Every named type of the contract, dependencies first, by public name."""
        return _named_types(tuple(self.roots.values()))

    @property
    def fingerprints(self) -> Dict[str, bytes]:
        """hook -> the 32 bytes a plugin of this contract stores in ``cc_lb.schema.<hook>.v1``."""
        return {hook: fingerprint(root) for hook, root in self.hook_requests.items()}


#: cc-lb at 273547c9, ``cc-lb-plugin-wire`` 0.2.0 (WIRE-V1.md).
CONTRACT_0_2 = Contract(
    name="0.2",
    source="cc-lb 273547c9 (cc-lb-plugin-wire 0.2.0)",
    hook_requests={"filter": FILTER_REQUEST, "shape": SHAPE_REQUEST, "observe": OBSERVE_EVENT},
    hook_responses={"filter": FILTER_RESPONSE, "shape": SHAPE_RESPONSE},
)
#: cc-lb 1.0 (1.0.1, ``cc-lb-plugin-wire`` 0.8.0; CONTRACT-1.0.md).
CONTRACT_1_0 = Contract(
    name="1.0",
    source="cc-lb 1.0 (cc-lb-plugin-wire 0.8.0)",
    hook_requests={
        "filter": FILTER_REQUEST_1_0,
        "shape": SHAPE_REQUEST,
        "transform_response": TRANSFORM_RESPONSE_REQUEST,
        "transform_sse_event": TRANSFORM_SSE_EVENT_REQUEST,
    },
    hook_responses={
        "filter": FILTER_RESPONSE,
        "shape": SHAPE_RESPONSE,
        "transform_response": TRANSFORM_RESPONSE_RESULT,
        "transform_sse_event": TRANSFORM_SSE_EVENT_RESULT,
    },
    noop_hooks=frozenset({"transform_response", "transform_sse_event"}),
    requires={"shape": frozenset({"transform_response", "transform_sse_event"})},
    needs_companion={"transform_response": "shape", "transform_sse_event": "shape"},
)
#: Every supported contract, oldest first.
CONTRACTS: Mapping[str, Contract] = {c.name: c for c in (CONTRACT_0_2, CONTRACT_1_0)}

#: Every archive root of every contract, by public name (0.2 first).
ROOT_TYPES: Mapping[str, NamedType] = {
    name: root for contract in CONTRACTS.values() for name, root in contract.roots.items()
}

#: Every named (struct or enum) type of every contract, by public name.
ALL_TYPES: Mapping[str, NamedType] = {
    name: t for contract in CONTRACTS.values() for name, t in contract.types.items()
}

#: hook kind -> the root type of its 0.2 request.
HOOK_REQUEST_TYPES: Mapping[str, NamedType] = CONTRACT_0_2.hook_requests
#: hook kind -> the root type of its 0.2 answer (observe answers nothing).
HOOK_RESPONSE_TYPES: Mapping[str, NamedType] = CONTRACT_0_2.hook_responses


def kind_of(wire_type: "WireType") -> str:
    """What a wire type is, for code that handles each kind its own way:
    ``int``, ``float``, ``str``, ``bytes``, ``option``, ``slice``, ``struct`` or ``enum``."""
    if isinstance(wire_type, Primitive):
        return "int"
    if isinstance(wire_type, Float):
        return "float"
    if wire_type is STR:
        return "str"
    if wire_type is BYTES:
        return "bytes"
    if isinstance(wire_type, OptionOf):
        return "option"
    if isinstance(wire_type, SliceOf):
        return "slice"
    return "struct" if isinstance(wire_type, StructType) else "enum"


# --- descriptors and fingerprints ------------------------------------------


def _fields_descriptor(fields: Tuple[Field, ...]) -> str:
    return ",".join(f"{f.name}:{f.type.rust}" for f in fields)


def descriptor(root: Union[StructType, EnumType]) -> str:
    """cc-lb's layout descriptor: struct fields sorted by name; enum variants in order, fields unsorted."""
    if isinstance(root, StructType):
        return f"{root.name}{{{_fields_descriptor(tuple(sorted(root.fields, key=lambda f: f.name)))}}}"
    variants = ",".join(f"{v.name}{{{_fields_descriptor(v.fields)}}}" for v in root.variants)
    return f"{root.name}[{variants}]"


def fingerprint(root: Union[StructType, EnumType]) -> bytes:
    """BLAKE3 of the descriptor: the 32 bytes a plugin stores in ``cc_lb.schema.<hook>.v1``."""
    return blake3.blake3(descriptor(root).encode("utf-8")).digest()


#: hook kind -> 32-byte fingerprint of its 0.2 request root type.
FINGERPRINTS: Dict[str, bytes] = CONTRACT_0_2.fingerprints

#: Fingerprints cc-lb once shipped and a host must refuse rather than guess a layout:
#: (hook, fingerprint) -> why.
REFUSED_FINGERPRINTS: Mapping[Tuple[str, bytes], str] = {
    (
        "filter",
        bytes.fromhex("e2ddd9c3418f5b5aabd0e2b5e156c31adef6b8d60592ee71f0019baad095d98d"),
    ): "the interim filter descriptor cc-lb shipped for two weeks of July 2026, whose struct did not match it",
}

#: (hook, fingerprint) -> the contracts whose request layout that fingerprint names.
FINGERPRINT_CONTRACTS: Mapping[Tuple[str, bytes], Tuple[Contract, ...]] = {}
for _contract in CONTRACTS.values():
    for _hook, _digest in _contract.fingerprints.items():
        FINGERPRINT_CONTRACTS.setdefault((_hook, _digest), ())  # type: ignore[attr-defined]
        FINGERPRINT_CONTRACTS[(_hook, _digest)] += (_contract,)  # type: ignore[index]
del _contract, _hook, _digest
