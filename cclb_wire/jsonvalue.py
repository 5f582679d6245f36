"""Wire values <-> JSON values, in the golden vectors' value format.

``Box<str>`` is a JSON string, ``Box<[u8]>`` lowercase hex, ``Option`` ``null`` or
the value, integers exact JSON integers, ``f64`` a JSON number or one of the strings
``"inf"``, ``"-inf"``, ``"nan"``, structs objects with exactly their fields, enums
``{"Variant": {fields}}`` (a unit variant ``{"Variant": {}}``). A bytes field also accepts the vectors'
``{"repeat_hex": "...", "len": N}`` form on input.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple, Type, Union

from . import schema
from .errors import EncodeError, EncodeTypeError, encode_error
from .wire import class_for

__all__ = ["from_json_value", "to_json_value", "encode_json", "decode_json"]

NamedType = Union[schema.StructType, schema.EnumType]

#: Largest body the ``repeat_hex`` form may describe (the archive limit).
_MAX_REPEAT_LEN = 0x7FFF_FFFF


class _JsonFault(Exception):
    def __init__(self, error_class: Type[EncodeError], detail: str):
        super().__init__(detail)
        self.error_class = error_class
        self.detail = detail
        self.path: List[str] = []


def _kind(obj: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(obj), "number" if isinstance(obj, (int, float)) else type(obj).__name__
    )


def _hex_bytes(obj: Any) -> bytes:
    if isinstance(obj, str):
        try:
            return bytes.fromhex(obj)
        except ValueError:
            raise _JsonFault(EncodeError, "expected a hex string (2 digits per byte)") from None
    if isinstance(obj, dict) and set(obj) == {"repeat_hex", "len"}:
        pattern = _hex_bytes(obj["repeat_hex"])
        length = obj["len"]
        if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= _MAX_REPEAT_LEN:
            raise _JsonFault(EncodeError, "repeat_hex 'len' must be an integer from 0 to 2147483647")
        if not pattern and length:
            raise _JsonFault(EncodeError, "repeat_hex pattern is empty but 'len' is not 0")
        return (pattern * (length // max(1, len(pattern)) + 1))[:length]
    raise _JsonFault(EncodeTypeError, f"expected a hex string, got {_kind(obj)}")


_NON_FINITE = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def _float_from_json(obj: Any) -> float:
    if isinstance(obj, str) and obj in _NON_FINITE:
        return _NON_FINITE[obj]
    if not isinstance(obj, (int, float)) or isinstance(obj, bool):
        raise _JsonFault(EncodeTypeError, f"expected a number or \"inf\", \"-inf\", \"nan\" (f64), got {_kind(obj)}")
    try:
        return float(obj)
    except OverflowError:
        raise _JsonFault(EncodeError, f"{obj} is out of range for f64") from None


def _float_to_json(value: float) -> Any:
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value


def _from_json(wire_type: Any, obj: Any) -> Any:
    if isinstance(wire_type, schema.Float):
        return _float_from_json(obj)
    if isinstance(wire_type, schema.Primitive):
        if not isinstance(obj, int) or isinstance(obj, bool):
            raise _JsonFault(EncodeTypeError, f"expected an integer ({wire_type.name}), got {_kind(obj)}")
        if not 0 <= obj <= wire_type.max_value:
            raise _JsonFault(EncodeError, f"{obj} is out of range for {wire_type.name}")
        return obj
    if wire_type is schema.STR:
        if not isinstance(obj, str):
            raise _JsonFault(EncodeTypeError, f"expected a string, got {_kind(obj)}")
        return obj
    if wire_type is schema.BYTES:
        return _hex_bytes(obj)
    if isinstance(wire_type, schema.OptionOf):
        return None if obj is None else _from_json(wire_type.inner, obj)
    if isinstance(wire_type, schema.SliceOf):
        if not isinstance(obj, list):
            raise _JsonFault(EncodeTypeError, f"expected an array, got {_kind(obj)}")
        items = []
        for index, item in enumerate(obj):
            try:
                items.append(_from_json(wire_type.elem, item))
            except _JsonFault as fault:
                fault.path.append(f"[{index}]")
                raise
        return tuple(items)
    if isinstance(wire_type, schema.StructType):
        return class_for(wire_type)(*_fields_from_json(wire_type.fields, obj))
    # enum: {"Variant": {fields}}
    if not isinstance(obj, dict) or len(obj) != 1:
        names = ", ".join(v.name for v in wire_type.variants)
        raise _JsonFault(EncodeTypeError, f"expected an object with one key naming a {wire_type.name} variant ({names})")
    ((name, fields_obj),) = obj.items()
    base = class_for(wire_type)
    for variant_class in base.VARIANTS:
        if variant_class.WIRE_VARIANT.name == name:
            try:
                return variant_class(*_fields_from_json(variant_class.WIRE_VARIANT.fields, fields_obj))
            except _JsonFault as fault:
                fault.path.append(name)
                raise
    raise _JsonFault(EncodeError, f"unknown {wire_type.name} variant {name!r}")


def _fields_from_json(fields: Tuple[schema.Field, ...], obj: Any) -> List[Any]:
    if not isinstance(obj, dict):
        raise _JsonFault(EncodeTypeError, f"expected an object, got {_kind(obj)}")
    expected = [f.name for f in fields]
    missing = [n for n in expected if n not in obj]
    extra = [n for n in obj if n not in expected]
    if missing or extra:
        problems = []
        if missing:
            problems.append("missing " + ", ".join(missing))
        if extra:
            problems.append("unknown " + ", ".join(map(str, extra)))
        raise _JsonFault(EncodeError, f"fields do not match ({'; '.join(problems)})")
    values = []
    for f in fields:
        try:
            values.append(_from_json(f.type, obj[f.name]))
        except _JsonFault as fault:
            fault.path.append(f.name)
            raise
    return values


def from_json_value(root: NamedType, obj: Any) -> Any:
    """A wire value of ``root`` from its JSON value. Raises EncodeError/EncodeTypeError."""
    try:
        return _from_json(root, obj)
    except _JsonFault as fault:
        path = ""
        for part in reversed(fault.path):
            path += part if part.startswith("[") or not path else "." + part
        raise encode_error(fault.error_class, root.name, path, fault.detail) from None


def _to_json(wire_type: Any, value: Any) -> Any:
    if isinstance(wire_type, schema.Float):
        return _float_to_json(value)
    if isinstance(wire_type, schema.Primitive) or wire_type is schema.STR:
        return value
    if wire_type is schema.BYTES:
        return bytes(value).hex()
    if isinstance(wire_type, schema.OptionOf):
        return None if value is None else _to_json(wire_type.inner, value)
    if isinstance(wire_type, schema.SliceOf):
        return [_to_json(wire_type.elem, item) for item in value]
    if isinstance(wire_type, schema.StructType):
        return _fields_to_json(wire_type.fields, value)
    variant = type(value).WIRE_VARIANT
    return {variant.name: _fields_to_json(variant.fields, value)}


def _fields_to_json(fields: Tuple[schema.Field, ...], value: Any) -> Dict[str, Any]:
    return {f.name: _to_json(f.type, item) for f, item in zip(fields, value)}


def to_json_value(root: NamedType, value: Any) -> Any:
    """The JSON value (dicts, lists, str, int, float, None) of a wire value of ``root``."""
    return _to_json(root, value)


def _root(type_name: Any, field: str) -> NamedType:
    from ._fallback import root_for

    return root_for(type_name, field)


def encode_json(type_name: Any, obj: Any) -> bytes:
    """The archive of a JSON value (a parsed object, or JSON text as str/bytes).

    JSON text is parsed with nesting bounded at 64 levels (:mod:`cclb_wire.jsontext`):
    text that is not JSON or nests deeper raises InvalidInput naming ``encode_json.obj``.
    A value that does not fit the type raises EncodeError/EncodeTypeError with its path.
    """
    from . import encode, jsontext

    root = _root(type_name, "encode_json.type_name")
    if isinstance(obj, (str, bytes, bytearray)):
        obj = jsontext.loads(obj, "encode_json.obj")
    return encode(from_json_value(root, obj))


def decode_json(type_name: Any, data: Any) -> Any:
    """The JSON value (vectors' format) of an archive; raises DecodeError like decode()."""
    from . import decode
    from ._fallback import check_buffer

    root = _root(type_name, "decode_json.type_name")
    check_buffer(data, "decode_json.data")
    return to_json_value(root, decode(root, data))
