"""The cc-lb plugin wire schema V1, stated once, as data.

Every V1 type is declared here with its fields in declaration order. Archived
sizes, alignments and field offsets are *computed* from rkyv 0.8's layout rules
(``#[repr(C)]`` structs, ``#[repr(u8)]`` enums, 8-byte relative pointers,
``Option`` = tag byte + payload at the payload's alignment). The descriptor
strings and their BLAKE3 fingerprints are derived from the same declarations.

The pure-Python codec, the JSON interchange, the value classes, the CLI and the
tests all derive from this module; the Cython extension is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple, Union

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
class Primitive:
    """A little-endian unsigned integer, naturally aligned."""

    name: str  # Rust spelling: u16, u32, u64
    size: int

    @property
    def align(self) -> int:
        """Natural alignment: the size."""
        return self.size

    @property
    def rust(self) -> str:
        """The Rust spelling (``u32``)."""
        return self.name

    @property
    def max_value(self) -> int:
        """The largest value the type holds."""
        return (1 << (8 * self.size)) - 1


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

    inner: Union[Primitive, Pointer]
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


@dataclass(frozen=True)
class StructType:
    """A derived ``#[repr(C)]`` archived struct."""

    name: str
    fields: Tuple[Field, ...]
    size: int
    align: int

    @property
    def rust(self) -> str:
        """The Rust spelling: the name."""
        return self.name

    @classmethod
    def declare(cls, name: str, *declared: Tuple[str, "WireType"]) -> "StructType":
        """The struct of the ``(field name, type)`` pairs, in declaration order, laid out."""
        fields, end, align = _lay_out(0, declared)
        return cls(name, fields, _round_up(end, align), align)


@dataclass(frozen=True)
class Variant:
    """An enum variant: its name, tag byte and fields (laid out after the tag)."""

    name: str
    tag: int
    fields: Tuple[Field, ...]


@dataclass(frozen=True)
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


#: Any V1 wire type.
WireType = Union[Primitive, Pointer, SliceOf, OptionOf, StructType, EnumType]

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

#: The five archive roots, by name.
ROOT_TYPES: Mapping[str, Union[StructType, EnumType]] = {
    t.name: t for t in (FILTER_REQUEST, SHAPE_REQUEST, OBSERVE_EVENT, FILTER_RESPONSE, SHAPE_RESPONSE)
}

#: Every named (struct or enum) type, by name.
ALL_TYPES: Mapping[str, Union[StructType, EnumType]] = {
    t.name: t
    for t in (
        CLAIM,
        HEADER,
        PRINCIPAL,
        UPSTREAM_CANDIDATE,
        FILTER_REQUEST,
        PER_CANDIDATE_REASON,
        FILTER_RESPONSE,
        UPSTREAM,
        SHAPE_REQUEST,
        SHAPE_RESPONSE,
        OBSERVE_EVENT,
    )
}

#: hook kind -> the root type of its request.
HOOK_REQUEST_TYPES: Mapping[str, Union[StructType, EnumType]] = {
    "filter": FILTER_REQUEST,
    "shape": SHAPE_REQUEST,
    "observe": OBSERVE_EVENT,
}
#: hook kind -> the root type of its answer (observe answers nothing).
HOOK_RESPONSE_TYPES: Mapping[str, StructType] = {"filter": FILTER_RESPONSE, "shape": SHAPE_RESPONSE}


def kind_of(wire_type: "WireType") -> str:
    """What a wire type is, for code that handles each kind its own way:
    ``int``, ``str``, ``bytes``, ``option``, ``slice``, ``struct`` or ``enum``."""
    if isinstance(wire_type, Primitive):
        return "int"
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


#: hook kind -> 32-byte fingerprint of its request root type.
FINGERPRINTS: Dict[str, bytes] = {hook: fingerprint(root) for hook, root in HOOK_REQUEST_TYPES.items()}
