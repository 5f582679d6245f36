"""Wire-level values: one immutable class per wire struct and enum variant, of both contracts.

The classes are generated from :mod:`cclb_wire.schema` (``wire.pyi`` carries
their static types and is checked against the schema by the tests). Each is a
``namedtuple`` subclass, so construction and field access cost what a tuple
costs; equality and hashing also compare the class, so two variants with equal
fields (``RequestStarted("a", None)`` vs ``AuthnComplete("a", None)``) differ.

Field values: ``Box<str>`` -> ``str``; ``Box<[u8]>`` -> ``bytes``; ``Box<[T]>`` ->
``tuple`` of ``T``; ``Option<T>`` -> ``T`` or ``None``; integers -> ``int``; ``f64`` ->
``float``; enums -> an instance of one of the enum's variant classes.

The cc-lb 1.0 contract changed two structs in place under their Rust names: here they are
``FilterRequest10`` and ``UpstreamCandidate10``. Its new types keep their Rust names.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Dict, Union

from . import schema

__all__ = [
    "WireValue",
    "WireEnum",
    "Claim",
    "Header",
    "Principal",
    "UpstreamCandidate",
    "FilterRequest",
    "PerCandidateReason",
    "FilterResponse",
    "Upstream",
    "AnthropicDirect",
    "ShapeRequest",
    "ShapeResponse",
    "ObserveEvent",
    "RequestStarted",
    "AuthnComplete",
    "UpstreamChosen",
    "Chunk",
    "RequestFinished",
    "Error",
    "CachePricingSummary",
    "UpstreamCandidate10",
    "FilterRequest10",
    "SseEvent",
    "TransformResponseRequest",
    "TransformSseEventRequest",
    "TransformResponseResult",
    "TransformSseEventResult",
    "class_for",
    "schema_for",
]


class WireValue(tuple):
    """Base of every wire-level value class (a tuple of the fields in order)."""

    __slots__ = ()
    WIRE_TYPE: Any = None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, tuple(self)))


class WireEnum(WireValue):
    """Base of the variant classes of one wire enum."""

    __slots__ = ()
    VARIANTS: tuple = ()
    TAG: int = -1


def _fields_text(fields: Any) -> str:
    return f"a tuple of its fields ({', '.join(f.name for f in fields)})" if fields else "no fields"


def _value_class(name: str, qualname: str, fields, base: type, namespace: Dict[str, Any], doc: str) -> type:
    plain = namedtuple(name, [f.name for f in fields])  # type: ignore[misc]
    body = {"__slots__": (), "__qualname__": qualname, "__module__": __name__, "__doc__": doc}
    body.update(namespace)
    cls = type(name, (plain, base), body)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{f.name}={v!r}" for f, v in zip(fields, self))
        return f"{qualname}({inner})"

    cls.__repr__ = __repr__  # type: ignore[assignment]
    return cls


def _enum_classes(enum_type: schema.EnumType) -> type:
    doc = (
        f"The wire enum ``{enum_type.name}``: a value is an instance of one of its variant "
        f"classes ({', '.join(v.name for v in enum_type.variants)})."
    )
    enum_base = type(
        enum_type.name, (WireEnum,), {"__slots__": (), "__module__": __name__, "__doc__": doc, "WIRE_TYPE": enum_type}
    )
    variants = []
    for variant in enum_type.variants:
        cls = _value_class(
            variant.name,
            f"{enum_type.name}.{variant.name}",
            variant.fields,
            enum_base,
            {"WIRE_TYPE": enum_type, "WIRE_VARIANT": variant, "TAG": variant.tag},
            f"The ``{enum_type.name}::{variant.name}`` variant (tag {variant.tag}): {_fields_text(variant.fields)}.",
        )
        setattr(enum_base, variant.name, cls)
        variants.append(cls)
    enum_base.VARIANTS = tuple(variants)  # type: ignore[attr-defined]
    return enum_base


_CLASSES: Dict[str, type] = {}  # by public name
for _wire_type in schema.ALL_TYPES.values():
    if isinstance(_wire_type, schema.StructType):
        _CLASSES[_wire_type.public_name] = _value_class(
            _wire_type.public_name,
            _wire_type.public_name,
            _wire_type.fields,
            WireValue,
            {"WIRE_TYPE": _wire_type},
            f"The wire struct ``{_wire_type.name}``"
            + (" of the cc-lb 1.0 contract" if _wire_type.alias else "")
            + f": {_fields_text(_wire_type.fields)}.",
        )
    else:
        _CLASSES[_wire_type.public_name] = _enum_classes(_wire_type)

Claim = _CLASSES["Claim"]
Header = _CLASSES["Header"]
Principal = _CLASSES["Principal"]
UpstreamCandidate = _CLASSES["UpstreamCandidate"]
FilterRequest = _CLASSES["FilterRequest"]
PerCandidateReason = _CLASSES["PerCandidateReason"]
FilterResponse = _CLASSES["FilterResponse"]
ShapeRequest = _CLASSES["ShapeRequest"]
ShapeResponse = _CLASSES["ShapeResponse"]
Upstream = _CLASSES["Upstream"]
AnthropicDirect = Upstream.AnthropicDirect  # type: ignore[attr-defined]
ObserveEvent = _CLASSES["ObserveEvent"]
RequestStarted = ObserveEvent.RequestStarted  # type: ignore[attr-defined]
AuthnComplete = ObserveEvent.AuthnComplete  # type: ignore[attr-defined]
UpstreamChosen = ObserveEvent.UpstreamChosen  # type: ignore[attr-defined]
Chunk = ObserveEvent.Chunk  # type: ignore[attr-defined]
RequestFinished = ObserveEvent.RequestFinished  # type: ignore[attr-defined]
Error = ObserveEvent.Error  # type: ignore[attr-defined]
CachePricingSummary = _CLASSES["CachePricingSummary"]
UpstreamCandidate10 = _CLASSES["UpstreamCandidate10"]
FilterRequest10 = _CLASSES["FilterRequest10"]
SseEvent = _CLASSES["SseEvent"]
TransformResponseRequest = _CLASSES["TransformResponseRequest"]
TransformSseEventRequest = _CLASSES["TransformSseEventRequest"]
TransformResponseResult = _CLASSES["TransformResponseResult"]
TransformSseEventResult = _CLASSES["TransformSseEventResult"]



def class_for(wire_type: Union[schema.StructType, schema.EnumType]) -> type:
    """The value class (for an enum: the enum base class) of a named schema type."""
    return _CLASSES[wire_type.public_name]


def schema_for(type_: Any) -> Union[schema.StructType, schema.EnumType]:
    """Resolve a root-type argument: a value class, a schema type, or a type name.

    Anything else raises InvalidInputType (also a TypeError) naming ``type_``."""
    if isinstance(type_, (schema.StructType, schema.EnumType)):
        found = schema.ALL_TYPES.get(type_.public_name)
        if found is type_:
            return type_
    elif isinstance(type_, str):
        found = schema.ALL_TYPES.get(type_)
        if found is not None:
            return found
    elif isinstance(type_, type) and issubclass(type_, WireValue) and type_.WIRE_TYPE is not None:
        return type_.WIRE_TYPE
    from .errors import InvalidInputType

    shown = repr(type_) if isinstance(type_, (str, type)) else f"of type {type(type_).__name__}"
    raise InvalidInputType(
        "type_",
        f"unknown wire type {shown[:200]}: expected one of {', '.join(schema.ALL_TYPES)} "
        "(a name, a cclb_wire.wire class or a cclb_wire.schema type)",
    )
