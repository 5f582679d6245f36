"""Generate cclb_wire/_generated.pxi: the Cython encoders and decoders of the roots that
the hand-written units do not cover (the cc-lb 1.0 roots), from cclb_wire.schema.

Usage: python tools/gen_codec_pxi.py > cclb_wire/_generated.pxi
tests/test_schema.py checks the committed file equals this output, so the schema is the one
source of every offset, size, alignment and tag in it.

Per named type T the file has a resolver struct ``R_T`` (the spans of T's pointers), a
dependency pass ``_gdep_T`` (writes, or measures, what T points to, in rkyv's order), a
``_gput_T`` that writes T's inline bytes, and a reader ``_gread_T`` with rkyv's ``access``
rules; slices of T get ``_gslice_T`` / ``_gread_slice_T``. Every refusal hands the call to the
fallback, which raises the canonical error, exactly as in the hand-written units.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Tuple

from cclb_wire import schema

#: The roots the generated code encodes and decodes: every root the 0.2 units do not.
GENERATED_ROOTS: Tuple[Any, ...] = tuple(
    root for name, root in schema.ROOT_TYPES.items() if root not in schema.CONTRACT_0_2.roots.values()
)

_C_INT = {2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}


def _named(roots: Tuple[Any, ...]) -> Dict[str, Any]:
    return schema._named_types(roots)  # dependencies first


def _ident(wire_type: Any) -> str:
    return wire_type.public_name


def _slices(types: Dict[str, Any]) -> List[Any]:
    """Element types of every slice (also inside options) in the generated types, in order."""
    found: Dict[str, Any] = {}
    for t in types.values():
        for f in _all_fields(t):
            inner = f.type.inner if isinstance(f.type, schema.OptionOf) else f.type
            if isinstance(inner, schema.SliceOf):
                found.setdefault(_ident(inner.elem), inner.elem)
    return [types[name] for name in types if name in found]


def _all_fields(t: Any) -> List[Any]:
    if isinstance(t, schema.StructType):
        return list(t.fields)
    return [f for v in t.variants for f in v.fields]


def _resolver_slots(t: Any) -> List[Tuple[str, str]]:
    """(C type, slot name) of T's resolver: a Span per pointer, a nested resolver per inline type."""
    slots = []
    groups = [("", t.fields)] if isinstance(t, schema.StructType) else [(f"v{v.tag}_", v.fields) for v in t.variants]
    for prefix, fields in groups:
        for f in fields:
            inner = f.type.inner if isinstance(f.type, schema.OptionOf) else f.type
            if isinstance(inner, (schema.Pointer, schema.SliceOf)):
                slots.append(("Span", f"{prefix}{f.name}"))
            elif isinstance(inner, (schema.StructType, schema.EnumType)):
                slots.append((f"R_{_ident(inner)}", f"{prefix}{f.name}"))
    return slots or [("char", "unused")]


def _dep_lines(f: Any, item: str, slot: str, indent: str) -> List[str]:
    """Dependency pass of one field whose value is the expression ``item``."""
    wire_type = f.type
    if isinstance(wire_type, schema.OptionOf):
        inner_field = schema.Field(f.name, wire_type.inner, 0)
        return [f"{indent}x = {item}", f"{indent}if x is not None:"] + _dep_lines(inner_field, "x", slot, indent + "    ")
    kind = schema.kind_of(wire_type)
    if kind == "int":
        return [f"{indent}_u64({item}, {wire_type.max_value:#x})"]
    if kind == "float":
        return [f"{indent}_f64({item})"]
    if kind == "str":
        return [f"{indent}_put_str(o, {item}, &r.{slot})"]
    if kind == "bytes":
        return [f"{indent}_put_bytes(o, {item}, &r.{slot})"]
    if kind == "slice":
        return [f"{indent}_gslice_{_ident(wire_type.elem)}(o, {item}, &r.{slot})"]
    return [f"{indent}_gdep_{_ident(wire_type)}(o, {item}, &r.{slot})"]


def _put_lines(f: Any, item: str, at: str, slot: str, indent: str) -> List[str]:
    """Write pass of one field's inline bytes at ``at`` (the region is zeroed already)."""
    wire_type = f.type
    if isinstance(wire_type, schema.OptionOf):
        inner_field = schema.Field(f.name, wire_type.inner, 0)
        return [f"{indent}x = {item}", f"{indent}if x is not None:", f"{indent}    base[{at}] = 1"] + _put_lines(
            inner_field, "x", f"{at} + {wire_type.payload_offset}", slot, indent + "    "
        )
    kind = schema.kind_of(wire_type)
    if kind == "int":
        c_type = _C_INT[wire_type.size]
        return [
            f"{indent}u{wire_type.size * 8} = <{c_type}>_u64({item}, {wire_type.max_value:#x})",
            f"{indent}memcpy(base + {at}, &u{wire_type.size * 8}, {wire_type.size})",
        ]
    if kind == "float":
        return [f"{indent}_put_f64(base, {at}, _f64({item}))"]
    if kind in ("str", "bytes", "slice"):
        return [f"{indent}_put_span(base, {at}, &r.{slot})"]
    return [f"{indent}_gput_{_ident(wire_type)}(base, {at}, {item}, &r.{slot})"]


def _read_expr(wire_type: Any, at: str) -> str:
    kind = schema.kind_of(wire_type)
    if kind == "int":
        reader = {2: "_rd_u16", 4: "_rd_u32", 8: "_rd_u64"}[wire_type.size]
        return f"PyLong_FromUnsignedLongLong({reader}(s, {at}))"
    if kind == "float":
        return f"PyFloat_FromDouble(_rd_f64(s, {at}))"
    if kind == "str":
        return f"_read_str(s, {at})"
    if kind == "bytes":
        return f"_read_bytes(s, {at})"
    if kind == "slice":
        return f"_gread_slice_{_ident(wire_type.elem)}(s, {at})"
    if kind == "option":
        return f"_gread_opt_{_option_ident(wire_type)}(s, {at})"
    return f"_gread_{_ident(wire_type)}(s, {at})"


def _option_ident(option: Any) -> str:
    inner = option.inner
    if isinstance(inner, schema.SliceOf):
        return f"slice_{_ident(inner.elem)}"
    return inner.name


def _options(types: Dict[str, Any]) -> List[Any]:
    found: Dict[str, Any] = {}
    for t in types.values():
        for f in _all_fields(t):
            if isinstance(f.type, schema.OptionOf):
                found.setdefault(_option_ident(f.type), f.type)
    return list(found.values())


def _class_const(t: Any, variant: Any = None) -> str:
    return f"G_{_ident(t)}" + (f"_{variant.name}" if variant is not None else "")


def _fields_block(fields: Tuple[Any, ...], slot_prefix: str, cls: str, count: int, mode: str) -> List[str]:
    lines = [f"    t = _fields(v, {cls}, {count})" if count else f"    t = <tuple>v"]
    for index, f in enumerate(fields):
        item = f"_item(t, {index})"
        if mode == "dep":
            lines += _dep_lines(f, item, slot_prefix + f.name, "    ")
        else:
            lines += _put_lines(f, item, f"at + {f.offset}", slot_prefix + f.name, "    ")
    return lines


def render() -> str:
    types = _named(GENERATED_ROOTS)
    out: List[str] = [
        "# Generated by tools/gen_codec_pxi.py from cclb_wire.schema: do not edit by hand.",
        "# Included by _codec.pyx after _encoder.pxi and _decoder.pxi, whose primitives it uses.",
        "",
        "",
        "cdef inline double _f64(object v) except? -1.0:",
        "    # Exact floats only; ints and float subclasses go to the fallback (same result, slower).",
        "    if not PyFloat_CheckExact(v):",
        "        _refuse()",
        "    return PyFloat_AS_DOUBLE(v)",
        "",
        "",
        "cdef inline void _put_f64(char* base, Py_ssize_t at, double x) noexcept:",
        "    cdef uint64_t canonical_nan = 0x7FF8000000000000",
        "    if x != x:  # every NaN is written as Rust's f64::NAN",
        "        memcpy(base + at, &canonical_nan, 8)",
        "    else:",
        "        memcpy(base + at, &x, 8)",
        "",
        "",
        "cdef inline double _rd_f64(In* s, Py_ssize_t at) noexcept:",
        "    cdef double v",
        "    memcpy(&v, s.p + at, 8)",
        "    return v",
        "",
        "",
    ]
    # classes
    for t in types.values():
        if isinstance(t, schema.StructType):
            out.append(f"cdef object {_class_const(t)} = wire.{_ident(t)}")
        else:
            for v in t.variants:
                out.append(f"cdef object {_class_const(t, v)} = wire.{_ident(t)}.{v.name}")
    out += ["", ""]
    # resolvers
    for t in types.values():
        out.append(f"cdef struct R_{_ident(t)}:")
        out += [f"    {c_type} {slot}" for c_type, slot in _resolver_slots(t)]
        out += ["", ""]
    # encoders
    for t in types.values():
        name = _ident(t)
        for mode in ("dep", "put"):
            if mode == "dep":
                out.append(f"cdef int _gdep_{name}(Out* o, object v, R_{name}* r) except -1:")
            else:
                out.append(f"cdef int _gput_{name}(char* base, Py_ssize_t at, object v, R_{name}* r) except -1:")
            out += ["    cdef tuple t", "    cdef object x", "    cdef uint16_t u16", "    cdef uint32_t u32", "    cdef uint64_t u64"]
            if isinstance(t, schema.StructType):
                out += _fields_block(t.fields, "", _class_const(t), len(t.fields), mode)
            else:
                out.append("    cdef type cls = type(v)")
                for index, v in enumerate(t.variants):
                    keyword = "if" if index == 0 else "elif"
                    out.append(f"    {keyword} cls is {_class_const(t, v)}:")
                    if mode == "put":
                        out.append(f"        base[at] = {v.tag}")
                    body = _fields_block(v.fields, f"v{v.tag}_", "cls", len(v.fields), mode)
                    out += ["    " + line for line in body] if v.fields else ["        pass"]
                out += ["    else:", "        _refuse()"]
            out += ["    return 0", "", ""]
    for elem in _slices(types):
        name = _ident(elem)
        out += [
            f"cdef int _gslice_{name}(Out* o, object items, Span* sp) except -1:",
            "    cdef object seq = _sequence(items)",
            "    cdef Py_ssize_t i, n = _seq_len(seq), start",
            f"    cdef R_{name} r",
            "    cdef Out deps = o[0]",
            "    for i in range(n):",
            f"        _gdep_{name}(o, _seq_item(seq, i), &r)",
            f"    _pad(o, {elem.align})",
            "    start = o.cur",
            f"    _grow(o, n * {elem.size})",
            "    if o.base != NULL:",
            f"        memset(o.base + start, 0, n * {elem.size})",
            "        deps.base = NULL  # re-walk the dependencies to recover their positions",
            "        for i in range(n):",
            "            if i >= _seq_len(seq):",
            "                _refuse()",
            "            item = _seq_item(seq, i)",
            f"            _gdep_{name}(&deps, item, &r)",
            f"            _gput_{name}(o.base, start + i * {elem.size}, item, &r)",
            "    sp.pos = start",
            "    sp.len = n",
            "    return 0",
            "",
            "",
        ]
    # root walks
    for index, root in enumerate(GENERATED_ROOTS):
        name = _ident(root)
        out += [
            f"cdef int _gwalk_{name}(Out* o, object v) except -1:",
            f"    cdef R_{name} r",
            "    cdef Py_ssize_t root",
            f"    _gdep_{name}(o, v, &r)",
            f"    _pad(o, {root.align})",
            "    root = o.cur",
            f"    _grow(o, {root.size})",
            "    if o.base != NULL:",
            f"        memset(o.base + root, 0, {root.size})",
            f"        _gput_{name}(o.base, root, v, &r)",
            "    return 0",
            "",
            "",
        ]
    out.append("cdef int _gwalk(int which, Out* o, object v) except -1:")
    for index, root in enumerate(GENERATED_ROOTS):
        keyword = "if" if index == 0 else "elif"
        out += [f"    {keyword} which == {index}:", f"        return _gwalk_{_ident(root)}(o, v)"]
    out += ["    _refuse()", "", ""]
    # decoders
    for option in _options(types):
        out += [
            f"cdef object _gread_opt_{_option_ident(option)}(In* s, Py_ssize_t at):",
            "    cdef uint8_t tag = s.p[at]",
            "    if tag == 0:",
            "        return None  # rkyv never reads a None's payload",
            "    if tag != 1:",
            "        _refuse()",
            f"    return {_read_expr(option.inner, f'at + {option.payload_offset}')}",
            "",
            "",
        ]
    for t in types.values():
        name = _ident(t)
        out.append(f"cdef object _gread_{name}(In* s, Py_ssize_t at):")
        if isinstance(t, schema.StructType):
            out.append(f"    value = _new_value({_class_const(t)}, {len(t.fields)})")
            for index, f in enumerate(t.fields):
                out.append(f"    _set(value, {index}, {_read_expr(f.type, f'at + {f.offset}')})")
        else:
            out += ["    cdef uint8_t tag = s.p[at]", f"    if tag >= {len(t.variants)}:", "        _refuse()"]
            for v in t.variants:
                out.append(f"    if tag == {v.tag}:")
                out.append(f"        value = _new_value({_class_const(t, v)}, {len(v.fields)})")
                for index, f in enumerate(v.fields):
                    out.append(f"        _set(value, {index}, {_read_expr(f.type, f'at + {f.offset}')})")
                out.append("        return value")
            out.append("    _refuse()")
        out += ["    return value", "", ""] if isinstance(t, schema.StructType) else ["", ""]
    for elem in _slices(types):
        name = _ident(elem)
        out += [
            f"cdef object _gread_slice_{name}(In* s, Py_ssize_t field):",
            "    cdef Span sp",
            "    cdef Py_ssize_t i, saved_hi = s.hi",
            "    cdef tuple items",
            f"    _enter(s, field, {elem.size}, {elem.align}, &sp)",
            "    s.hi = sp.pos  # an element's pointees lie before the array",
            "    items = PyTuple_New(sp.len)",
            "    for i in range(sp.len):",
            f"        _set(items, i, _gread_{name}(s, sp.pos + {elem.size} * i))",
            f"    s.lo = sp.pos + {elem.size} * sp.len",
            "    s.hi = saved_hi",
            "    return items",
            "",
            "",
        ]
    out.append("cdef object _gread_root(In* s, int which):")
    for index, root in enumerate(GENERATED_ROOTS):
        out += [
            f"    if which == {index}:",
            f"        return _gread_{_ident(root)}(s, _enter_root(s, {root.size}, {root.align}))",
        ]
    out += ["    _refuse()", "", ""]
    out.append("#: the generated roots, in the order of ``which``")
    out.append(
        "cdef tuple _GENERATED_ROOTS = ("
        + ", ".join(f"schema.ROOT_TYPES[{_ident(r)!r}]" for r in GENERATED_ROOTS)
        + ",)"
    )
    out += [
        "# Registered with the hand-written units' dispatch (a 1.0 root and a 0.2 root may share a",
        "# Rust name: decode's keys are the schema type, its public name and its class).",
        "for _index, _root in enumerate(_GENERATED_ROOTS):",
        "    _root_class = wire.class_for(_root)",
        "    for _key in (_root, _root.public_name, _root_class):",
        "        _DECODE_ROOTS[_key] = GENERATED_ROOT_KIND + _index",
        "    for _cls in getattr(_root_class, \"VARIANTS\", (_root_class,)):",
        "        _GENERATED_ENCODE[_cls] = _index",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
