"""Pure-Python wire codec: the reference behaviour both backends share.

Everything here is derived from :mod:`cclb_wire.schema`: at import, each schema
type is turned into a few small closures (size, write, read). Encoding is two
passes, like rkyv's serializer but without reallocation: a size pass (which also
type-checks the value) and one write pass into an exact-size buffer, or straight
into the caller's buffer. Decoding follows rkyv 0.8's ``access`` rules exactly
(see ``rkyv-0.8-format.md`` section 6): a window ``[lo, hi)`` that every pointee must fit
in, post-order, aligned, strict UTF-8, valid tags.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, TypeVar, Union, overload

from . import host_rules, host_types, schema, wire
from ._validate import check_bool, coerce_enum, plain_bytes, plain_int, plain_str
from .errors import (
    DecodeError,
    WireError,
    DialectError,
    EncodeError,
    EncodeTypeError,
    InvalidDiscriminant,
    InvalidInput,
    InvalidInputType,
    InvalidUtf8,
    FilterError,
    PointerOutOfRange,
    UnalignedPointer,
    decode_error,
    encode_error,
)
from .host_types import (
    AnthropicDirect,
    FilterOutput,
    Principal,
    RequestContext,
    ShapedRequest,
    ShapeOriginPolicy,
    UpstreamCandidate,
    WireBounds,
)
from .wire import WireValue, class_for, schema_for

DEFAULT_BOUNDS = WireBounds()

__all__ = [
    "encode",
    "encoded_size",
    "encode_into",
    "decode",
    "encode_filter_request",
    "encode_shape_request",
    "encode_observe_event",
    "decode_filter_output",
    "decode_shaped_request",
]

#: rkyv's relative pointers are i32: no archive may reach 2 GiB.
MAX_ARCHIVE_SIZE = 0x7FFF_FFFF

_POINTER = struct.Struct("<iI")
_PACK_POINTER = _POINTER.pack_into
_UNPACK_POINTER = _POINTER.unpack_from
_INT_STRUCTS = {2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}

NamedType = Union[schema.StructType, schema.EnumType]


class _Fault(Exception):
    """Internal: a failure deep in a walk; containers prepend their path part."""

    def __init__(self, error_class: Type[WireError], detail: str, offset: Optional[int] = None):
        super().__init__(detail)
        self.error_class = error_class
        self.detail = detail
        self.offset = offset
        self.path: List[str] = []  # innermost first


def _join_path(parts: List[str]) -> str:
    text = ""
    for part in reversed(parts):
        if part.startswith("["):
            text += part
        else:
            text += "." + part if text else part
    return text


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) & -align


# ============================================================================
# Encoding
# ============================================================================
#
# Per type, three closures:
#   size(cursor, value) -> cursor   out-of-line bytes of the value (checks types)
#   deps(buf, cursor, value) -> (cursor, resolver)   writes those bytes
#   put(buf, pos, value, resolver)  writes the archived value in place
# ``size`` and ``deps`` walk the same bytes in the same order, so the write
# pass lands exactly where the size pass said it would.

_Size = Callable[[int, Any], int]
_Deps = Callable[[Any, int, Any], Tuple[int, Any]]
_Put = Callable[[Any, int, Any, Any], None]


class _Encoder:
    __slots__ = ("size", "deps", "put")

    def __init__(self, size: _Size, deps: _Deps, put: _Put):
        self.size = size
        self.deps = deps
        self.put = put


def _type_name(value: Any) -> str:
    return type(value).__name__


# The encoders read a str, bytes or int subclass through the base type (plain_str, ...),
# as the extension does: what a subclass's methods say (__len__, encode, comparisons) is
# never what gets measured or written.


class _Changed(Exception):
    """Internal: a bytearray (or list) in the value was resized between the size pass and
    the write pass; the write pass never writes past the measured size."""


def _write_within(buf: Any, cursor: int, data: Any, length: int) -> int:
    end = cursor + length
    if end > len(buf):
        raise _Changed()
    buf[cursor:end] = data
    return end


def changed_error(root_name: str) -> InvalidInput:
    """The caller's error when a value changed while it was being encoded (both backends)."""
    return InvalidInput(
        root_name,
        "changed while it was being encoded: a bytearray or list in it (a body, the candidates) was "
        "resized meanwhile, by another thread or an into callback; pass a copy, or leave it unchanged "
        "until the call returns",
    )


def _str_encoder(pointer: schema.Pointer) -> _Encoder:
    def size(cursor: int, value: Any) -> int:
        if not isinstance(value, str):
            raise _Fault(EncodeTypeError, f"expected str, got {_type_name(value)}")
        text = plain_str(value)
        if text.isascii():
            return cursor + len(text)
        try:
            return cursor + len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise _Fault(EncodeError, f"str is not encodable as UTF-8 ({exc.reason} at index {exc.start})") from None

    def deps(buf: Any, cursor: int, value: str) -> Tuple[int, Tuple[int, int]]:
        data = plain_str(value).encode("utf-8")
        return _write_within(buf, cursor, data, len(data)), (cursor, len(data))

    return _Encoder(size, deps, _put_pointer)


def _bytes_encoder(pointer: schema.Pointer) -> _Encoder:
    def size(cursor: int, value: Any) -> int:
        if isinstance(value, (bytes, bytearray)):
            return cursor + len(plain_bytes(value))
        if isinstance(value, memoryview):
            if not value.c_contiguous:
                raise _Fault(EncodeTypeError, "expected bytes, got a non-contiguous memoryview")
            return cursor + value.nbytes
        raise _Fault(EncodeTypeError, f"expected bytes, got {_type_name(value)}")

    def deps(buf: Any, cursor: int, value: Any) -> Tuple[int, Tuple[int, int]]:
        if isinstance(value, memoryview):
            return _write_within(buf, cursor, value.cast("B"), value.nbytes), (cursor, value.nbytes)
        data = plain_bytes(value)
        return _write_within(buf, cursor, data, len(data)), (cursor, len(data))

    return _Encoder(size, deps, _put_pointer)


def _put_pointer(buf: Any, pos: int, value: Any, resolver: Tuple[int, int]) -> None:
    target, length = resolver
    _PACK_POINTER(buf, pos, target - pos, length)


def _int_encoder(primitive: schema.Primitive) -> _Encoder:
    limit = primitive.max_value
    pack_into = _INT_STRUCTS[primitive.size].pack_into

    def size(cursor: int, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Fault(EncodeTypeError, f"expected int ({primitive.name}), got {_type_name(value)}")
        number = plain_int(value)
        if not 0 <= number <= limit:
            raise _Fault(EncodeError, f"{number} is out of range for {primitive.name} (0..{limit})")
        return cursor

    def deps(buf: Any, cursor: int, value: int) -> Tuple[int, None]:
        return cursor, None

    def put(buf: Any, pos: int, value: int, resolver: None) -> None:
        pack_into(buf, pos, value)

    return _Encoder(size, deps, put)


_F64 = struct.Struct("<d")
#: The bytes rkyv writes for Rust's ``f64::NAN``: the canonical quiet NaN.
CANONICAL_NAN = bytes.fromhex("000000000000f87f")


def _plain_float(value: Any) -> float:
    """The value as a float, by the base classes' own conversion (a subclass cannot lie)."""
    return int.__float__(value) if isinstance(value, int) else float.__float__(value)


def _float_encoder(primitive: schema.Float) -> _Encoder:
    pack_into = _F64.pack_into

    def size(cursor: int, value: Any) -> int:
        if not isinstance(value, (float, int)) or isinstance(value, bool):
            raise _Fault(EncodeTypeError, f"expected float ({primitive.name}), got {_type_name(value)}")
        try:
            _plain_float(value)
        except OverflowError:
            raise _Fault(EncodeError, f"the integer is out of range for {primitive.name}") from None
        return cursor

    def deps(buf: Any, cursor: int, value: Any) -> Tuple[int, None]:
        return cursor, None

    def put(buf: Any, pos: int, value: Any, resolver: None) -> None:
        number = _plain_float(value)
        if number != number:  # every NaN is written as the canonical one, as Rust's f64::NAN
            buf[pos : pos + 8] = CANONICAL_NAN
        else:
            pack_into(buf, pos, number)

    return _Encoder(size, deps, put)


def _option_encoder(option: schema.OptionOf) -> _Encoder:
    inner = _encoder(option.inner)
    payload = option.payload_offset
    inner_size, inner_deps, inner_put = inner.size, inner.deps, inner.put

    def size(cursor: int, value: Any) -> int:
        return cursor if value is None else inner_size(cursor, value)

    def deps(buf: Any, cursor: int, value: Any) -> Tuple[int, Any]:
        return (cursor, None) if value is None else inner_deps(buf, cursor, value)

    def put(buf: Any, pos: int, value: Any, resolver: Any) -> None:
        # The region is zero-filled already: None is all zeros.
        if value is not None:
            buf[pos] = 1
            inner_put(buf, pos + payload, value, resolver)

    return _Encoder(size, deps, put)


def _items(value: Any) -> Any:
    """A tuple or list as it is; a subclass's items as a tuple (its own ``__len__`` is not asked)."""
    return value if type(value) is tuple or type(value) is list else tuple(value)


def _slice_encoder(slice_type: schema.SliceOf) -> _Encoder:
    elem = slice_type.elem
    elem_size, elem_align = elem.size, elem.align
    element = _encoder(elem)
    e_size, e_deps, e_put = element.size, element.deps, element.put

    def size(cursor: int, value: Any) -> int:
        if not isinstance(value, (tuple, list)):
            raise _Fault(EncodeTypeError, f"expected a tuple or list of {elem.name}, got {_type_name(value)}")
        value = _items(value)
        for index, item in enumerate(value):
            try:
                cursor = e_size(cursor, item)
            except _Fault as fault:
                fault.path.append(f"[{index}]")
                raise
        return _round_up(cursor, elem_align) + elem_size * len(value)

    def deps(buf: Any, cursor: int, value: Any) -> Tuple[int, Tuple[int, int]]:
        value = _items(value)
        resolvers = []
        for item in value:
            cursor, resolver = e_deps(buf, cursor, item)
            resolvers.append(resolver)
        start = _round_up(cursor, elem_align)
        zeros = start + elem_size * len(value) - cursor
        end = _write_within(buf, cursor, bytes(zeros), zeros)
        pos = start
        for item, resolver in zip(value, resolvers):
            e_put(buf, pos, item, resolver)
            pos += elem_size
        return end, (start, len(value))

    return _Encoder(size, deps, _put_pointer)


def _fields_encoder(fields: Tuple[schema.Field, ...]) -> Tuple[_Size, _Deps, _Put]:
    """size/deps/put over a tuple of field values laid out at the given offsets."""
    parts = [(f.name, f.offset, _encoder(f.type)) for f in fields]
    count = len(parts)

    def size(cursor: int, value: Any) -> int:
        for index in range(count):
            name, _, encoder = parts[index]
            try:
                cursor = encoder.size(cursor, value[index])
            except _Fault as fault:
                fault.path.append(name)
                raise
        return cursor

    def deps(buf: Any, cursor: int, value: Any) -> Tuple[int, List[Any]]:
        resolvers = []
        for index in range(count):
            cursor, resolver = parts[index][2].deps(buf, cursor, value[index])
            resolvers.append(resolver)
        return cursor, resolvers

    def put(buf: Any, pos: int, value: Any, resolvers: List[Any]) -> None:
        for index in range(count):
            _, offset, encoder = parts[index]
            encoder.put(buf, pos + offset, value[index], resolvers[index])

    return size, deps, put


def _struct_encoder(struct_type: schema.StructType) -> _Encoder:
    cls = class_for(struct_type)
    count = len(struct_type.fields)
    f_size, f_deps, f_put = _fields_encoder(struct_type.fields)

    def size(cursor: int, value: Any) -> int:
        # A struct field takes its value class or a plain tuple of its fields.
        kind = type(value)
        if (kind is not cls and kind is not tuple) or len(value) != count:
            raise _Fault(
                EncodeTypeError,
                f"expected {struct_type.name} (or a tuple of its {count} fields), got {_type_name(value)}",
            )
        return f_size(cursor, value)

    return _Encoder(size, f_deps, f_put)


def _enum_encoder(enum_type: schema.EnumType) -> _Encoder:
    base = class_for(enum_type)
    by_class: Dict[type, Tuple[str, int, Tuple[_Size, _Deps, _Put]]] = {}
    for variant_class in base.VARIANTS:
        variant = variant_class.WIRE_VARIANT
        by_class[variant_class] = (variant.name, variant.tag, _fields_encoder(variant.fields))

    def size(cursor: int, value: Any) -> int:
        entry = by_class.get(type(value))
        if entry is None:
            raise _Fault(EncodeTypeError, f"expected a {enum_type.name} variant, got {_type_name(value)}")
        try:
            return entry[2][0](cursor, value)
        except _Fault as fault:
            fault.path.append(entry[0])
            raise

    def deps(buf: Any, cursor: int, value: Any) -> Tuple[int, Any]:
        return by_class[type(value)][2][1](buf, cursor, value)

    def put(buf: Any, pos: int, value: Any, resolvers: Any) -> None:
        _, tag, (_, _, f_put) = by_class[type(value)]
        buf[pos] = tag
        f_put(buf, pos, value, resolvers)

    return _Encoder(size, deps, put)


_ENCODERS: Dict[Any, _Encoder] = {}
_ENCODER_BUILDERS: Dict[str, Callable[[Any], _Encoder]] = {
    "int": _int_encoder,
    "float": _float_encoder,
    "str": _str_encoder,
    "bytes": _bytes_encoder,
    "option": _option_encoder,
    "slice": _slice_encoder,
    "struct": _struct_encoder,
    "enum": _enum_encoder,
}


def _encoder(wire_type: Any) -> _Encoder:
    found = _ENCODERS.get(wire_type)
    if found is None:
        found = _ENCODERS[wire_type] = _ENCODER_BUILDERS[schema.kind_of(wire_type)](wire_type)
    return found


class _RootPlan:
    """A value whose exact archive size is known; ``write`` fills a buffer."""

    __slots__ = ("root", "value", "size", "root_pos")

    def __init__(self, root: NamedType, value: Any):
        encoder = _encoder(root)
        try:
            deps_end = encoder.size(0, value)
        except _Fault as fault:
            raise encode_error(fault.error_class, root.name, _join_path(fault.path), fault.detail) from None
        self.root = root
        self.value = value
        self.root_pos = _round_up(deps_end, root.align)
        self.size = self.root_pos + root.size
        if self.size > MAX_ARCHIVE_SIZE:
            raise encode_error(
                EncodeError, root.name, "", f"the archive would be {self.size} bytes; rkyv's i32 offsets allow at most {MAX_ARCHIVE_SIZE}"
            )

    def write(self, buf: Any) -> None:
        """Write the archive at ``buf[0:size]`` (a writable byte buffer starting 16-aligned)."""
        root = self.root
        encoder = _encoder(root)
        try:
            cursor, resolver = encoder.deps(buf, 0, self.value)
        except _Changed:
            raise changed_error(root.name) from None
        pos = self.root_pos
        if _round_up(cursor, root.align) != pos:  # what the extension refuses too
            raise changed_error(root.name)
        buf[cursor : pos + root.size] = bytes(pos + root.size - cursor)
        encoder.put(buf, pos, self.value, resolver)


def _root_of_value(value: Any, field: str) -> NamedType:
    if isinstance(value, WireValue) and type(value).WIRE_TYPE is not None:
        wire_type: NamedType = type(value).WIRE_TYPE
        if schema.ROOT_TYPES.get(wire_type.public_name) is wire_type:
            return wire_type
    raise EncodeTypeError(
        f"{field}: expected a root wire value ({', '.join(schema.ROOT_TYPES)}) from cclb_wire.wire, "
        f"got {_type_name(value)}"
    )


def encode_root(root: NamedType, value: Any) -> bytes:
    """Encode a tuple-shaped value of ``root`` (no class check at the top)."""
    plan = _RootPlan(root, value)
    buf = bytearray(plan.size)
    plan.write(buf)
    return bytes(buf)


def encode(value: WireValue) -> bytes:
    """The archive rkyv 0.8's ``to_bytes`` produces for ``value`` (a root wire value).

    Raises EncodeTypeError (also a TypeError) for a value that is not a root wire
    value or holds a field of the wrong type, EncodeError for one out of range."""
    return encode_root(_root_of_value(value, "encode.value"), value)


def encoded_size(value: WireValue) -> int:
    """The exact length of ``encode(value)``, computed without writing anything."""
    return _RootPlan(_root_of_value(value, "encoded_size.value"), value).size


def _writable_bytes(buffer: Any, field: str) -> memoryview:
    try:
        view = memoryview(buffer)
    except TypeError:
        raise InvalidInputType(field, f"needs a writable buffer, got {_type_name(buffer)}") from None
    if view.readonly:
        raise InvalidInputType(field, f"needs a writable buffer; this {_type_name(buffer)} is read-only")
    if not view.c_contiguous:
        raise InvalidInputType(field, "needs a C-contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def encode_into(value: WireValue, buffer: Any, offset: int = 0) -> int:
    """Write ``encode(value)`` into ``buffer`` at ``offset``; return the number of bytes written.

    ``offset`` must be a multiple of 16 (rkyv aligns relative to the archive's
    start, and readers check the archive's alignment). Nothing is written when
    the archive does not fit: InvalidInput names ``encode_into.buffer`` or
    ``encode_into.offset`` (InvalidInputType, also a TypeError, for a wrong type).
    """
    plan = _RootPlan(_root_of_value(value, "encode_into.value"), value)
    return write_plan(plan, buffer, offset, "encode_into")


def check_target(size: int, buffer: Any, offset: Any, root_name: str = "", where: str = "encode_into") -> memoryview:
    """The writable bytes of ``buffer`` where a ``size``-byte archive goes at ``offset``
    (errors name ``{where}.buffer`` and ``{where}.offset``)."""
    view = _writable_bytes(buffer, f"{where}.buffer")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise InvalidInputType(f"{where}.offset", f"expected an int, got {_type_name(offset)}")
    if offset < 0 or offset % 16:
        raise InvalidInput(f"{where}.offset", f"must be a non-negative multiple of 16, got {offset}")
    if offset > view.nbytes:
        raise InvalidInput(f"{where}.offset", f"{offset} is past the end of the {view.nbytes}-byte buffer")
    if offset + size > view.nbytes:
        what = f"the {root_name} archive" if root_name else "the archive"
        raise InvalidInput(
            f"{where}.buffer", f"{what} needs {size} bytes at offset {offset}, but the buffer has {view.nbytes} bytes"
        )
    return view[offset : offset + size]


def write_plan(plan: _RootPlan, buffer: Any, offset: int, where: str = "encode_into") -> int:
    plan.write(check_target(plan.size, buffer, offset, plan.root.name, where))
    return plan.size


def into_target(into: Any, size: int, where: str) -> Tuple[Any, Any]:
    """Call an ``into`` callback for ``size`` bytes; its answer must be ``(buffer, offset)``."""
    answer = into(size)
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise InvalidInputType(f"{where}.into", f"must return a (buffer, offset) pair, returned {_type_name(answer)}")
    return answer[0], answer[1]


# ============================================================================
# Decoding
# ============================================================================
#
# Per type, ``read(state, pos) -> value`` checks and reads the archived value at
# ``pos``; its position was already checked by whoever holds it. ``state`` holds
# the bytes and the validator's window [lo, hi). Entering a pointee at
# [t, t+n) requires lo <= t, t+n <= hi and t % align == 0; its own pointees
# must then lie in [lo, t), and afterwards the window is [t+n, hi).


class _State:
    __slots__ = ("data", "lo", "hi")

    def __init__(self, data: bytes):
        self.data = data
        self.lo = 0
        self.hi = len(data)


_Read = Callable[[_State, int], Any]


def _out_of_range(target: int, size: int, state: _State, pointer_pos: int) -> _Fault:
    return _Fault(
        PointerOutOfRange,
        f"pointee [{target}, {target + size}) is outside the allowed range [{state.lo}, {state.hi})",
        pointer_pos,
    )


def _unaligned(target: int, align: int, pointer_pos: int) -> _Fault:
    return _Fault(UnalignedPointer, f"pointee at {target} is not aligned to {align}", pointer_pos)


def _str_reader(pointer: schema.Pointer) -> _Read:
    def read(state: _State, pos: int) -> str:
        relative, length = _UNPACK_POINTER(state.data, pos)
        target = pos + relative
        if target < state.lo or target + length > state.hi:
            raise _out_of_range(target, length, state, pos)
        end = target + length
        try:
            text = state.data[target:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Fault(InvalidUtf8, f"invalid UTF-8 ({exc.reason})", target + exc.start) from None
        state.lo = end
        return text

    return read


def _bytes_reader(pointer: schema.Pointer) -> _Read:
    def read(state: _State, pos: int) -> bytes:
        relative, length = _UNPACK_POINTER(state.data, pos)
        target = pos + relative
        if target < state.lo or target + length > state.hi:
            raise _out_of_range(target, length, state, pos)
        end = target + length
        state.lo = end
        return state.data[target:end]

    return read


def _int_reader(primitive: schema.Primitive) -> _Read:
    unpack_from = _INT_STRUCTS[primitive.size].unpack_from

    def read(state: _State, pos: int) -> int:
        value: int = unpack_from(state.data, pos)[0]
        return value

    return read


def _float_reader(primitive: schema.Float) -> _Read:
    unpack_from = _F64.unpack_from

    def read(state: _State, pos: int) -> float:
        value: float = unpack_from(state.data, pos)[0]  # bytecheck accepts every bit pattern
        return value

    return read


def _option_reader(option: schema.OptionOf) -> _Read:
    inner = _reader(option.inner)
    payload = option.payload_offset

    def read(state: _State, pos: int) -> Any:
        tag = state.data[pos]
        if tag == 0:
            return None  # rkyv never looks at a None's payload
        if tag == 1:
            return inner(state, pos + payload)
        raise _Fault(InvalidDiscriminant, f"invalid discriminant {tag} for Option", pos)

    return read


def _slice_reader(slice_type: schema.SliceOf) -> _Read:
    elem = slice_type.elem
    elem_size, elem_align = elem.size, elem.align
    read_elem = _reader(elem)

    def read(state: _State, pos: int) -> Tuple[Any, ...]:
        relative, count = _UNPACK_POINTER(state.data, pos)
        target = pos + relative
        size = count * elem_size
        # Checked before anything is allocated for the elements.
        if target < state.lo or target + size > state.hi:
            raise _out_of_range(target, size, state, pos)
        if target % elem_align:
            raise _unaligned(target, elem_align, pos)
        saved_hi = state.hi
        state.hi = target
        items = []
        at = target
        for index in range(count):
            try:
                items.append(read_elem(state, at))
            except _Fault as fault:
                fault.path.append(f"[{index}]")
                raise
            at += elem_size
        state.lo = target + size
        state.hi = saved_hi
        return tuple(items)

    return read


def _fields_reader(fields: Tuple[schema.Field, ...]) -> _Read:
    parts = [(f.name, f.offset, _reader(f.type)) for f in fields]

    def read(state: _State, pos: int) -> List[Any]:
        values = []
        for name, offset, read_field in parts:
            try:
                values.append(read_field(state, pos + offset))
            except _Fault as fault:
                fault.path.append(name)
                raise
        return values

    return read


def _struct_reader(struct_type: schema.StructType) -> _Read:
    cls = class_for(struct_type)
    read_fields = _fields_reader(struct_type.fields)
    new = tuple.__new__

    def read(state: _State, pos: int) -> Any:
        return new(cls, read_fields(state, pos))

    return read


def _enum_reader(enum_type: schema.EnumType) -> _Read:
    base = class_for(enum_type)
    variants = [
        (variant_class, variant_class.WIRE_VARIANT.name, _fields_reader(variant_class.WIRE_VARIANT.fields))
        for variant_class in base.VARIANTS
    ]
    count = len(variants)
    new = tuple.__new__

    def read(state: _State, pos: int) -> Any:
        tag = state.data[pos]
        if tag >= count:
            raise _Fault(InvalidDiscriminant, f"invalid discriminant {tag} for enum {enum_type.name}", pos)
        cls, name, read_fields = variants[tag]
        try:
            return new(cls, read_fields(state, pos))
        except _Fault as fault:
            fault.path.append(name)
            raise

    return read


_READERS: Dict[Any, _Read] = {}
_READER_BUILDERS: Dict[str, Callable[[Any], _Read]] = {
    "int": _int_reader,
    "float": _float_reader,
    "str": _str_reader,
    "bytes": _bytes_reader,
    "option": _option_reader,
    "slice": _slice_reader,
    "struct": _struct_reader,
    "enum": _enum_reader,
}


def _reader(wire_type: Any) -> _Read:
    found = _READERS.get(wire_type)
    if found is None:
        found = _READERS[wire_type] = _READER_BUILDERS[schema.kind_of(wire_type)](wire_type)
    return found


def _readable_view(data: Any, field: str) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise InvalidInputType(field, f"needs a bytes-like object, got {_type_name(data)}") from None
    if not view.c_contiguous:
        raise InvalidInputType(field, "needs a C-contiguous buffer")
    return view


def check_buffer(data: Any, field: str) -> None:
    """Raise InvalidInputType (naming ``field``) unless ``data`` is a C-contiguous buffer."""
    if not isinstance(data, bytes):
        _readable_view(data, field)


def input_bytes(data: Any, field: str = "decode.data") -> bytes:
    """Any C-contiguous buffer as bytes (positions count from its first byte)."""
    if isinstance(data, bytes):
        return data
    return _readable_view(data, field).tobytes()


def decode_root(root: NamedType, data: Any, field: str = "decode.data") -> Any:
    """Validate ``data`` as an archive of ``root`` the way rkyv's ``access`` does, and read it."""
    raw = input_bytes(data, field)
    state = _State(raw)
    pos = max(0, len(raw) - root.size)
    try:
        if pos + root.size > len(raw):
            raise _Fault(
                PointerOutOfRange,
                f"the {root.size}-byte root does not fit in a {len(raw)}-byte buffer",
                pos,
            )
        if pos % root.align:
            raise _Fault(UnalignedPointer, f"root at {pos} is not aligned to {root.align}", pos)
        state.hi = pos
        return _reader(root)(state, pos)
    except _Fault as fault:
        offset = fault.offset if fault.offset is not None else pos
        raise decode_error(fault.error_class, root.name, _join_path(fault.path), offset, fault.detail) from None


def root_for(type_: Any, field: str) -> NamedType:
    """The root schema type a type argument names; InvalidInputType naming ``field`` otherwise."""
    try:
        root = schema_for(type_)
    except InvalidInputType as exc:
        raise InvalidInputType(field, exc.detail) from None
    if schema.ROOT_TYPES.get(root.public_name) is not root:
        raise InvalidInputType(
            field, f"{root.public_name} is not an archive root type; expected one of {', '.join(schema.ROOT_TYPES)}"
        )
    return root


_V = TypeVar("_V", bound=WireValue)


@overload
def decode(type_: Type[_V], data: Any) -> _V: ...
@overload
def decode(type_: Union[type, str, schema.StructType, schema.EnumType], data: Any) -> WireValue: ...
def decode(type_: Any, data: Any) -> Any:
    """Decode an archive of ``type_`` (a root type name, value class or schema type).

    Raises DecodeError for bytes rkyv would reject; InvalidInputType (also a
    TypeError) naming ``decode.type_`` or ``decode.data`` for a bad argument."""
    return decode_root(root_for(type_, "decode.type_"), data, "decode.data")


# ============================================================================
# Host level: host objects -> request archives, answer archives -> host objects
# ============================================================================

_log = logging.getLogger("cclb_wire")


def _check_request_args(where: str, ctx: Any, principal: Any, cookie_redaction: Any) -> None:
    if not isinstance(ctx, RequestContext):
        raise InvalidInputType(f"{where}.ctx", f"expected a cclb_wire.RequestContext, got {_type_name(ctx)}")
    if not isinstance(principal, Principal):
        raise InvalidInputType(f"{where}.principal", f"expected a cclb_wire.Principal, got {_type_name(principal)}")
    check_bool(cookie_redaction, f"{where}.cookie_redaction")


def _check_into(where: str, into: Any) -> None:
    if into is not None and not callable(into):
        raise InvalidInputType(
            f"{where}.into", f"expected None or a callable taking a size and returning (buffer, offset), got {_type_name(into)}"
        )


def _request_head(ctx: Any, principal: Any, cookie_redaction: bool) -> Tuple[Any, ...]:
    return (
        ctx.request_id,
        ctx.method,
        ctx.path,
        ctx.query,
        host_rules.wire_headers(ctx.headers, cookie_redaction),
        ctx.body,
        principal.wire_fields,
    )


def _wire_candidates(candidates: Any, field: str, layout: str = "wire_fields") -> Tuple[Tuple[Any, ...], ...]:
    """Each candidate's wire fields (``layout``: ``wire_fields`` for 0.2, ``wire_fields_1_0``)."""
    if isinstance(candidates, (str, bytes, bytearray, memoryview)):
        raise InvalidInputType(field, f"expected an iterable of cclb_wire.UpstreamCandidate, got {_type_name(candidates)}")
    try:
        iterator = iter(candidates)
    except TypeError:
        raise InvalidInputType(field, f"expected an iterable of cclb_wire.UpstreamCandidate, got {_type_name(candidates)}") from None
    fields = []
    for index, candidate in enumerate(iterator):
        if not isinstance(candidate, UpstreamCandidate):
            raise InvalidInputType(f"{field}[{index}]", f"expected a cclb_wire.UpstreamCandidate, got {_type_name(candidate)}")
        fields.append(getattr(candidate, layout))
    return tuple(fields)


def _check_upstream(upstream: Any, field: str) -> None:
    if not isinstance(upstream, AnthropicDirect):
        raise InvalidInputType(field, f"expected a cclb_wire.AnthropicDirect, got {_type_name(upstream)}")


def _wire_upstream(upstream: Any) -> Any:
    return wire.AnthropicDirect(upstream.base_url)


Into = Callable[[int], Tuple[Any, int]]


def _encode_host(root: NamedType, value: Any, into: Optional[Into], where: str) -> Union[bytes, int]:
    if into is None:
        return encode_root(root, value)
    plan = _RootPlan(root, value)
    buffer, offset = into_target(into, plan.size, where)
    return write_plan(plan, buffer, offset, f"{where}.into")


@overload
def encode_filter_request(
    ctx: RequestContext,
    principal: Principal,
    candidates: Iterable[UpstreamCandidate],
    *,
    cookie_redaction: bool = ...,
    into: None = ...,
) -> bytes: ...
@overload
def encode_filter_request(
    ctx: RequestContext,
    principal: Principal,
    candidates: Iterable[UpstreamCandidate],
    *,
    cookie_redaction: bool = ...,
    into: Into,
) -> int: ...
@overload
def encode_filter_request(
    ctx: RequestContext,
    principal: Principal,
    candidates: Iterable[UpstreamCandidate],
    *,
    cookie_redaction: bool = ...,
    into: Optional[Into] = ...,
) -> Union[bytes, int]: ...
def encode_filter_request(
    ctx: RequestContext,
    principal: Principal,
    candidates: Iterable[UpstreamCandidate],
    *,
    cookie_redaction: bool = False,
    into: Optional[Into] = None,
) -> Union[bytes, int]:
    """The FilterRequest archive a filter plugin receives for this request.

    With ``into``, a callable taking the exact size and returning ``(buffer, offset)``
    (e.g. a guest allocation), the archive is written there (offset a multiple of 16)
    and its size is returned instead of bytes.

    A bad argument raises InvalidInputType naming it (``encode_filter_request.ctx``,
    ``encode_filter_request.candidates[2]``, ...); ``cookie_redaction`` must be a bool.
    """
    where = "encode_filter_request"
    _check_request_args(where, ctx, principal, cookie_redaction)
    candidate_fields = _wire_candidates(candidates, f"{where}.candidates")
    _check_into(where, into)
    value = _request_head(ctx, principal, cookie_redaction) + (candidate_fields,)
    return _encode_host(schema.FILTER_REQUEST, value, into, where)


@overload
def encode_shape_request(
    ctx: RequestContext,
    principal: Principal,
    upstream: AnthropicDirect,
    *,
    cookie_redaction: bool = ...,
    into: None = ...,
) -> bytes: ...
@overload
def encode_shape_request(
    ctx: RequestContext,
    principal: Principal,
    upstream: AnthropicDirect,
    *,
    cookie_redaction: bool = ...,
    into: Into,
) -> int: ...
@overload
def encode_shape_request(
    ctx: RequestContext,
    principal: Principal,
    upstream: AnthropicDirect,
    *,
    cookie_redaction: bool = ...,
    into: Optional[Into] = ...,
) -> Union[bytes, int]: ...
def encode_shape_request(
    ctx: RequestContext,
    principal: Principal,
    upstream: AnthropicDirect,
    *,
    cookie_redaction: bool = False,
    into: Optional[Into] = None,
) -> Union[bytes, int]:
    """The ShapeRequest archive a shape plugin receives for this request and upstream
    (``into`` and argument errors: as for encode_filter_request)."""
    where = "encode_shape_request"
    _check_request_args(where, ctx, principal, cookie_redaction)
    _check_upstream(upstream, f"{where}.upstream")
    _check_into(where, into)
    value = _request_head(ctx, principal, cookie_redaction) + (_wire_upstream(upstream),)
    return _encode_host(schema.SHAPE_REQUEST, value, into, where)


def _wire_event(event: Any) -> Any:
    kind = type(event)
    if kind is host_types.RequestStarted:
        return wire.RequestStarted(event.request_id, event.downstream_user_agent)
    if kind is host_types.AuthnComplete:
        return wire.AuthnComplete(event.principal_id, host_rules.kind_text(event.principal_kind, "AuthnComplete.principal_kind"))
    if kind is host_types.UpstreamChosen:
        _check_upstream(event.upstream, "UpstreamChosen.upstream")
        return wire.UpstreamChosen(_wire_upstream(event.upstream))
    if kind is host_types.Chunk:
        return wire.Chunk(event.batch_index, event.event_count, event.total_bytes)
    if kind is host_types.RequestFinished:
        return wire.RequestFinished(
            event.status,
            event.input_tokens,
            event.output_tokens,
            event.cache_creation_input_tokens,
            event.cache_read_input_tokens,
            event.duration_ms,
        )
    if kind is host_types.ErrorEvent:
        return wire.Error(event.code, event.message, event.source)
    raise InvalidInputType(
        "encode_observe_event.event",
        f"expected a cclb_wire observe event (RequestStarted, AuthnComplete, UpstreamChosen, Chunk, "
        f"RequestFinished or ErrorEvent), got {_type_name(event)}",
    )


@overload
def encode_observe_event(event: host_types.ObserveEventInput, *, into: None = ...) -> bytes: ...
@overload
def encode_observe_event(event: host_types.ObserveEventInput, *, into: Into) -> int: ...
@overload
def encode_observe_event(
    event: host_types.ObserveEventInput, *, into: Optional[Into] = ...
) -> Union[bytes, int]: ...
def encode_observe_event(event: host_types.ObserveEventInput, *, into: Optional[Into] = None) -> Union[bytes, int]:
    """The ObserveEvent archive an observe plugin receives for this host event
    (``into`` and argument errors: as for encode_filter_request)."""
    where = "encode_observe_event"
    value = _wire_event(event)
    _check_into(where, into)
    return _encode_host(schema.OBSERVE_EVENT, value, into, where)


def _nbytes(data: Any, field: str) -> int:
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    return _readable_view(data, field).nbytes


def _bounds(bounds: Any, field: str) -> WireBounds:
    if bounds is None:
        return DEFAULT_BOUNDS
    if not isinstance(bounds, WireBounds):
        raise InvalidInputType(field, f"expected a cclb_wire.WireBounds or None, got {_type_name(bounds)}")
    return bounds


def decode_filter_output(data: Any, bounds: Optional[WireBounds] = DEFAULT_BOUNDS) -> FilterOutput:
    """Convert a filter plugin's FilterResponse archive the way the reference host does.

    Raises FilterError (kind ``"runtime"``) for an oversized output, an invalid
    archive (the DecodeError is the ``__cause__``) or an invalid upstream_id.
    ``bounds`` is a WireBounds (``None``: the defaults); a bad argument raises
    InvalidInputType naming ``decode_filter_output.data`` or ``.bounds``.
    """
    bounds = _bounds(bounds, "decode_filter_output.bounds")
    size = _nbytes(data, "decode_filter_output.data")
    if size > bounds.output_body_bytes:
        raise FilterError.runtime(
            f"filter output {size} bytes exceeds wire_bounds.output_body_bytes ({bounds.output_body_bytes})"
        )
    try:
        (results,) = decode_root(schema.FILTER_RESPONSE, data, "decode_filter_output.data")
    except DecodeError as exc:
        raise FilterError.runtime(f"rkyv access response: {exc}") from exc
    kept = []
    rejected = []
    reasons = []
    cap = bounds.reason_bytes
    for upstream_id, decision, reason in results:
        parsed = host_rules.parse_uuid(upstream_id)
        if parsed is None:
            raise FilterError.runtime(f"plugin returned invalid upstream_id `{upstream_id}`: {host_rules.UUID_FORMS_TEXT}")
        if decision == "accept":
            kept.append(parsed)
        else:
            rejected.append(host_rules.label_reason(decision))
        if reason:
            reasons.append(f"{upstream_id}: {host_rules.truncate_reason(reason, cap)}")
    return FilterOutput(tuple(kept), "; ".join(reasons), tuple(rejected))


def decode_shaped_request(
    data: Any,
    upstream: AnthropicDirect,
    *,
    origin_policy: Union[ShapeOriginPolicy, str] = ShapeOriginPolicy.UNRESTRICTED,
    bounds: Optional[WireBounds] = DEFAULT_BOUNDS,
) -> ShapedRequest:
    """Convert a shape plugin's ShapeResponse archive the way the reference host does.

    Raises DialectError (kind ``"unsupported_request"``): oversized output,
    invalid archive, too many headers, an unparsable URL, a URL off the selected
    upstream's origin (under ``SELECTED_UPSTREAM_ORIGIN``), an invalid method,
    an over-long or invalid header. Hop-by-hop and signer-owned headers are dropped.

    ``origin_policy`` is a ShapeOriginPolicy or its value as a string in any case
    (``"selected_upstream_origin"``); ``bounds`` a WireBounds (``None``: the
    defaults). A bad argument raises InvalidInput naming it.
    """
    where = "decode_shaped_request"
    _check_upstream(upstream, f"{where}.upstream")
    policy = coerce_enum(ShapeOriginPolicy, origin_policy, f"{where}.origin_policy")
    bounds = _bounds(bounds, f"{where}.bounds")
    size = _nbytes(data, f"{where}.data")
    unsupported = DialectError.unsupported_request
    if size > bounds.output_body_bytes:
        raise unsupported(f"shape output {size} bytes exceeds wire_bounds.output_body_bytes ({bounds.output_body_bytes})")
    try:
        url, method, headers, body = decode_root(schema.SHAPE_RESPONSE, data, "decode_shaped_request.data")
    except DecodeError as exc:
        raise unsupported(f"rkyv access ShapeResponse: {exc}") from exc
    if len(headers) > bounds.max_headers:
        raise unsupported(
            f"shape plugin returned {len(headers)} headers, exceeds wire_bounds.max_headers ({bounds.max_headers})"
        )
    href = host_rules.shape_url(url, upstream.origin, policy is ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN)
    if not host_rules.is_method_token(method):
        raise unsupported(f"plugin returned invalid method `{method}`: invalid HTTP method")
    kept = []
    value_cap = bounds.max_header_value_bytes
    for name, value in headers:
        lower = host_rules.ascii_lower(name)
        if host_rules.is_dropped_shape_header(lower):
            _log.debug("dropping shape-plugin output header %r per hop-by-hop/signer contract", name)
            continue
        if len(value) > value_cap:
            raise unsupported(
                f"shape plugin header `{name}` value {len(value)} bytes exceeds "
                f"wire_bounds.max_header_value_bytes ({value_cap})"
            )
        if not host_rules.is_header_name(name):
            raise unsupported(f"plugin returned invalid header name `{name}`: invalid HTTP header name")
        if not host_rules.is_header_value(value):
            raise unsupported(f"plugin returned invalid header value for `{name}`: invalid HTTP header value")
        kept.append((lower, value))
    return ShapedRequest(href, method, tuple(kept), body)
