"""Rewriting a plugin module so the host can tell an out-of-memory trap from any other.

wasmtime's C API cannot make a refused ``memory.grow`` trap, and a guest that
sees -1 usually traps later for an unrelated-looking reason (``unreachable``,
an out-of-bounds store). So at admission every ``memory.grow`` becomes a
``call`` to an injected function that grows memory 0, sets an injected exported
mutable i32 global (``GROW_REFUSED_EXPORT``) to 1 when the grow returned -1,
and returns the grow result unchanged. After a trap the host reads the global.

A start function would run inside instantiation, where a trap leaves no instance
to read the global from. So the start section is removed and the start function
exported as ``START_EXPORT`` instead: the host calls it right after
instantiation, under the same limits, before anything else can observe the
instance (plugins import nothing), which is what the start section would do.

Nothing is renumbered: the new type, function, global and export are appended
to their sections (missing sections are inserted in the standard order), so
every existing index, element segment, start function and export stays valid,
and only vector counts, section sizes and the bodies that contain
``memory.grow`` change. Every instruction of every body is decoded (a 0x40
byte can sit inside an immediate), for exactly the proposals the host's
engine enables: MVP, mutable globals, sign extension, non-trapping
float-to-int, multi-value, bulk memory, reference types, SIMD, relaxed SIMD
and tail calls. Anything else is refused with ``WasmRewriteError``.

Pure Python, standard library only.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

__all__ = ["GROW_REFUSED_EXPORT", "START_EXPORT", "WasmRewriteError", "instrument_memory_grow"]

#: The injected exported i32 global that a refused ``memory.grow`` sets to 1.
GROW_REFUSED_EXPORT = "cclb_wire:memory_grow_refused"
_GROW_REFUSED_NAME = GROW_REFUSED_EXPORT.encode("utf-8")
#: The export that replaces the start section, when the module has one.
START_EXPORT = "cclb_wire:start"
_START_NAME = START_EXPORT.encode("utf-8")
_RESERVED_NAMES = (_GROW_REFUSED_NAME, _START_NAME)


class WasmRewriteError(ValueError):
    """The module cannot be instrumented: malformed, or uses something the rewriter does not decode."""


def _error(what: str, pos: int) -> WasmRewriteError:
    return WasmRewriteError(f"{what} at byte {pos}")


# ---------------------------------------------------------------------------
# LEB128


def _leb_u32(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_u32(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    """(value, next position) of a u32 LEB128 that must end before ``end``.

    As strict as wasmparser: at most 5 bytes, and the unused bits of a fifth
    byte must be zero; non-minimal encodings are otherwise fine.
    """
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _error("truncated LEB128 integer", start)
        b = data[pos]
        pos += 1
        if shift == 28:
            if b & 0xF0:
                raise _error("LEB128 u32 too long or out of range", start)
            return result | (b << 28), pos
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _skip_signed(data: bytes, pos: int, end: int, bits: int) -> int:
    """Position after a signed LEB128 of ``bits`` bits (s32, s33, s64), checked as wasmparser does."""
    start = pos
    max_bytes = (bits + 6) // 7
    for i in range(max_bytes):
        if pos >= end:
            raise _error("truncated LEB128 integer", start)
        b = data[pos]
        pos += 1
        if i == max_bytes - 1:
            # The last byte's bits above the value width must repeat its sign bit.
            used = bits - 7 * i
            if b & 0x80:
                raise _error(f"LEB128 s{bits} too long", start)
            sign_and_unused = b >> (used - 1)
            if sign_and_unused not in (0, (1 << (8 - used)) - 1):
                raise _error(f"LEB128 s{bits} out of range", start)
            return pos
        if not b & 0x80:
            return pos
    raise AssertionError("unreachable")  # pragma: no cover


def _read_s33(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    """(value, next position) of a block type's s33 type index."""
    start = pos
    after = _skip_signed(data, pos, end, 33)
    result = 0
    shift = 0
    for b in data[start:after]:
        result |= (b & 0x7F) << shift
        shift += 7
    if data[after - 1] & 0x40:
        result -= 1 << shift
    return result, after


# ---------------------------------------------------------------------------
# Instruction tables

# Immediate kinds of the single-byte opcodes.
_BAD = 0  # not decoded: refused
_NONE = 1
_U32 = 2  # one u32 LEB (label, function, local, global, table, data, element index)
_U32X2 = 3  # two u32 LEBs
_BLOCK = 4  # block type
_MEMARG = 5
_GROW = 6
_I32 = 7
_I64 = 8
_F32 = 9
_F64 = 10
_BR_TABLE = 11
_SELECT_T = 12
_REF_NULL = 13
_PREFIX_FC = 14
_PREFIX_FD = 15
_MEMIDX = 16  # memory.size: the memory index (a u32 LEB that wasmtime requires to be a single 0x00)

_VALTYPES = frozenset((0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F))
_REFTYPES = frozenset((0x70, 0x6F))


def _opcode_table() -> List[int]:
    kinds = [_BAD] * 256
    for op in (0x00, 0x01, 0x05, 0x0B, 0x0F, 0x1A, 0x1B, 0xD1):
        kinds[op] = _NONE
    for op in range(0x45, 0xC5):  # numeric MVP (0x45-0xBF) and sign extension (0xC0-0xC4)
        kinds[op] = _NONE
    for op in (0x02, 0x03, 0x04):  # block, loop, if
        kinds[op] = _BLOCK
    for op in (0x0C, 0x0D, 0x10, 0x12, 0xD2):  # br, br_if, call, return_call, ref.func
        kinds[op] = _U32
    for op in range(0x20, 0x27):  # local.get/set/tee, global.get/set, table.get/set
        kinds[op] = _U32
    for op in (0x11, 0x13):  # call_indirect, return_call_indirect: type index, table index
        kinds[op] = _U32X2
    for op in range(0x28, 0x3F):  # loads and stores
        kinds[op] = _MEMARG
    kinds[0x0E] = _BR_TABLE
    kinds[0x1C] = _SELECT_T
    kinds[0x3F] = _MEMIDX
    kinds[0x40] = _GROW
    kinds[0x41] = _I32
    kinds[0x42] = _I64
    kinds[0x43] = _F32
    kinds[0x44] = _F64
    kinds[0xD0] = _REF_NULL
    kinds[0xFC] = _PREFIX_FC
    kinds[0xFD] = _PREFIX_FD
    return kinds


_OPCODES = _opcode_table()

# Why a refused single-byte opcode is refused, for the error message.
_REFUSED_PROPOSAL: Dict[int, str] = {
    **{op: "exception handling" for op in (0x06, 0x07, 0x08, 0x09, 0x0A, 0x18, 0x19, 0x1F)},
    **{op: "typed function references" for op in (0x14, 0x15, 0xD4, 0xD5, 0xD6)},
    0xD3: "GC",
    0xFB: "GC",
    0xFE: "threads/atomics",
    **{op: "stack switching" for op in range(0xE0, 0xE7)},
}

# 0xFC sub-opcodes: count of u32 immediates (non-trapping float-to-int 0-7, bulk memory and tables 8-17).
_FC_IMMEDIATES = (0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 1, 2, 1, 2, 1, 1, 1)

# 0xFD (SIMD and relaxed SIMD) sub-opcode immediates.
_SIMD_BAD = 0
_SIMD_NONE = 1
_SIMD_MEMARG = 2
_SIMD_BYTES16 = 3  # v128.const, i8x16.shuffle
_SIMD_LANE = 4  # extract/replace lane
_SIMD_MEMARG_LANE = 5  # load/store lane
# Sub-opcodes in 0x5E-0xFF that the SIMD proposal left unassigned.
_SIMD_UNASSIGNED = (0x9A, 0xA2, 0xA5, 0xA6, 0xAF, 0xB0, 0xB2, 0xB3, 0xB4, 0xBB, 0xC2, 0xC5, 0xC6, 0xCF, 0xD0, 0xD2, 0xD3, 0xD4, 0xE2, 0xEE)


def _simd_table() -> List[int]:
    kinds = [_SIMD_NONE] * 0x114  # 0x00-0xFF SIMD, 0x100-0x113 relaxed SIMD
    for sub in range(0x00, 0x0C):  # v128.load*, v128.store
        kinds[sub] = _SIMD_MEMARG
    kinds[0x0C] = kinds[0x0D] = _SIMD_BYTES16
    for sub in range(0x15, 0x23):
        kinds[sub] = _SIMD_LANE
    for sub in range(0x54, 0x5C):
        kinds[sub] = _SIMD_MEMARG_LANE
    kinds[0x5C] = kinds[0x5D] = _SIMD_MEMARG  # v128.load32_zero, v128.load64_zero
    for sub in _SIMD_UNASSIGNED:
        kinds[sub] = _SIMD_BAD
    return kinds


_SIMD = _simd_table()


# ---------------------------------------------------------------------------
# Function bodies


def _rewrite_body(data: bytes, pos: int, end: int, call: bytes) -> Optional[bytes]:
    """The body in ``data[pos:end]`` (locals and expression, without its size) with
    every ``memory.grow`` replaced by ``call``, or None when it has none.

    Speed matters (modules can be megabytes): one index loop, a table lookup per
    opcode, the common one-byte LEB immediates skipped inline.
    """
    body_start = pos
    try:
        count, pos = _read_u32(data, pos, end)
        if count > (end - pos) // 2:
            raise _error("locals vector longer than the function body", body_start)
        for _ in range(count):
            if data[pos] < 0x80:
                pos += 1
            else:
                pos = _read_u32(data, pos, end)[1]
            if pos >= end:
                raise _error("function body truncated in its locals", pos)
            if data[pos] not in _VALTYPES:
                raise _error(f"unsupported local type 0x{data[pos]:02x}", pos)
            pos += 1

        opcodes = _OPCODES
        grows: List[Tuple[int, int]] = []  # (opcode position, position after the memory index)
        op = -1
        while pos < end:
            op_pos = pos
            op = data[pos]
            kind = opcodes[op]
            pos += 1
            if kind == _NONE:
                continue
            if kind == _U32:
                if data[pos] < 0x80:
                    pos += 1
                else:
                    pos = _read_u32(data, pos, end)[1]
            elif kind == _MEMARG:
                pos = _skip_memarg(data, pos, end, op_pos)
            elif kind == _I32:
                if data[pos] < 0x80:
                    pos += 1
                else:
                    pos = _skip_signed(data, pos, end, 32)
            elif kind == _BLOCK:
                b = data[pos]
                if b == 0x40 or b in _VALTYPES or b < 0x40:  # empty, one value type, small type index
                    pos += 1
                elif b & 0x80:
                    index, pos = _read_s33(data, pos, end)
                    if index < 0:
                        raise _error(f"unsupported block type {index}", pos)
                else:
                    raise _error(f"unsupported block type 0x{b:02x}", pos)
            elif kind == _U32X2:
                pos = _read_u32(data, pos, end)[1]
                pos = _read_u32(data, pos, end)[1]
            elif kind == _GROW:
                # wasmparser (multi-memory off) requires the memory index to be the byte 0x00.
                if data[pos] != 0:
                    index = _read_u32(data, pos, end)[0]
                    if index != 0:
                        raise _error(f"memory.grow of memory {index} (only memory 0 is supported)", op_pos)
                    raise _error("memory.grow with a non-minimal memory index", op_pos)
                pos += 1
                grows.append((op_pos, pos))
            elif kind == _I64:
                pos = _skip_signed(data, pos, end, 64)
            elif kind == _F32:
                pos += 4
            elif kind == _F64:
                pos += 8
            elif kind == _PREFIX_FC:
                sub, pos = _read_u32(data, pos, end)
                if sub >= len(_FC_IMMEDIATES):
                    raise _error(f"unsupported instruction 0xfc 0x{sub:02x}", op_pos)
                for _ in range(_FC_IMMEDIATES[sub]):
                    pos = _read_u32(data, pos, end)[1]
            elif kind == _PREFIX_FD:
                pos = _simd(data, pos, end, op_pos)
            elif kind == _BR_TABLE:
                count, pos = _read_u32(data, pos, end)
                if count >= end - pos:
                    raise _error("br_table longer than the function body", op_pos)
                for _ in range(count + 1):
                    if data[pos] < 0x80:
                        pos += 1
                    else:
                        pos = _read_u32(data, pos, end)[1]
            elif kind == _SELECT_T:
                count, pos = _read_u32(data, pos, end)
                if count > end - pos:
                    raise _error("select type vector longer than the function body", op_pos)
                for _ in range(count):
                    if data[pos] not in _VALTYPES:
                        raise _error(f"unsupported value type 0x{data[pos]:02x}", pos)
                    pos += 1
            elif kind == _REF_NULL:
                if data[pos] not in _REFTYPES:
                    raise _error(f"unsupported heap type 0x{data[pos]:02x}", pos)
                pos += 1
            elif kind == _MEMIDX:
                pos = _read_u32(data, pos, end)[1]
            else:
                reason = _REFUSED_PROPOSAL.get(op)
                suffix = f" ({reason} is not enabled)" if reason else ""
                raise _error(f"unsupported instruction 0x{op:02x}{suffix}", op_pos)
    except IndexError:
        # An immediate ran past the end of the whole module.
        raise _error("function body truncated", min(pos, len(data))) from None
    if pos != end:
        raise _error("last instruction runs past the end of its function body", end)
    if op != 0x0B:
        raise _error("function body does not end with `end`", end)
    if not grows:
        return None
    parts = []
    run = body_start
    for op_pos, after in grows:
        parts.append(data[run:op_pos])
        parts.append(call)
        run = after
    parts.append(data[run:end])
    return b"".join(parts)


def _skip_memarg(data: bytes, pos: int, end: int, op_pos: int) -> int:
    """Past a memarg (align, offset); the single-byte forms are the common case."""
    align = data[pos]
    if align < 0x80:
        pos += 1
    else:
        align, pos = _read_u32(data, pos, end)
    if align & 0x40:
        raise _error("memarg with an explicit memory index (multi-memory is not supported)", op_pos)
    if data[pos] < 0x80:
        return pos + 1
    return _read_u32(data, pos, end)[1]


def _simd(data: bytes, pos: int, end: int, op_pos: int) -> int:
    """Position after a 0xFD instruction whose sub-opcode starts at ``pos``."""
    sub = data[pos]
    if sub < 0x80:
        pos += 1
    else:
        sub, pos = _read_u32(data, pos, end)
    kind = _SIMD[sub] if sub < len(_SIMD) else _SIMD_BAD
    if kind == _SIMD_NONE:
        return pos
    if kind == _SIMD_MEMARG or kind == _SIMD_MEMARG_LANE:
        pos = _skip_memarg(data, pos, end, op_pos)
        return pos + 1 if kind == _SIMD_MEMARG_LANE else pos
    if kind == _SIMD_BYTES16:
        return pos + 16
    if kind == _SIMD_LANE:
        return pos + 1
    raise _error(f"unsupported instruction 0xfd 0x{sub:02x}", op_pos)


# ---------------------------------------------------------------------------
# Sections

# The order of the non-custom sections: type, import, function, table, memory,
# tag, global, export, start, element, data count, code, data.
_SECTION_RANK = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13}
_TYPE, _IMPORT, _FUNCTION, _MEMORY, _GLOBAL, _EXPORT, _START, _CODE = 1, 2, 3, 5, 6, 7, 8, 10


def _skip_name(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    """(start, end) of a name (u32 length + bytes), which must fit before ``end``."""
    length, pos = _read_u32(data, pos, end)
    if length > end - pos:
        raise _error("name runs past the end of its section", pos)
    return pos, pos + length


def _byte(data: bytes, pos: int, end: int) -> int:
    if pos >= end:
        raise _error("section truncated", pos)
    return data[pos]


def _skip_limits(data: bytes, pos: int, end: int) -> int:
    flags = _byte(data, pos, end)
    if flags > 1:  # shared, 64-bit and custom-page-size limits belong to disabled proposals
        raise _error(f"unsupported limits flags 0x{flags:02x}", pos)
    pos = _read_u32(data, pos + 1, end)[1]
    return _read_u32(data, pos, end)[1] if flags else pos


def _parse_imports(data: bytes, pos: int, end: int) -> Tuple[int, int, int]:
    """(imported functions, imported memories, imported globals)."""
    count, pos = _read_u32(data, pos, end)
    functions = memories = globals_ = 0
    for _ in range(count):
        pos = _skip_name(data, pos, end)[1]
        pos = _skip_name(data, pos, end)[1]
        kind = _byte(data, pos, end)
        pos += 1
        if kind == 0:  # function: type index
            pos = _read_u32(data, pos, end)[1]
            functions += 1
        elif kind == 1:  # table: reference type, limits
            if _byte(data, pos, end) not in _REFTYPES:
                raise _error(f"unsupported table element type 0x{data[pos]:02x}", pos)
            pos = _skip_limits(data, pos + 1, end)
        elif kind == 2:
            pos = _skip_limits(data, pos, end)
            memories += 1
        elif kind == 3:  # global: value type, mutability
            if _byte(data, pos, end) not in _VALTYPES:
                raise _error(f"unsupported global type 0x{data[pos]:02x}", pos)
            if _byte(data, pos + 1, end) > 1:
                raise _error("bad global mutability", pos + 1)
            pos += 2
            globals_ += 1
        elif kind == 4:  # tag: attribute, type index
            pos = _read_u32(data, pos + 1, end)[1]
        else:
            raise _error(f"unsupported import kind 0x{kind:02x}", pos - 1)
    if pos != end:
        raise _error("import section has trailing bytes", pos)
    return functions, memories, globals_


def _check_exports(data: bytes, pos: int, end: int) -> None:
    count, pos = _read_u32(data, pos, end)
    for _ in range(count):
        name_start, pos = _skip_name(data, pos, end)
        if data[name_start:pos] in _RESERVED_NAMES:
            raise _error(f"the module already exports {data[name_start:pos].decode()!r}, a name the host reserves", name_start)
        if _byte(data, pos, end) > 4:
            raise _error(f"unsupported export kind 0x{data[pos]:02x}", pos)
        pos = _read_u32(data, pos + 1, end)[1]
    if pos != end:
        raise _error("export section has trailing bytes", pos)


def _function_type_index(data: bytes, section: Tuple[int, int, int, int], defined: int) -> int:
    """The type index of the ``defined``-th function of the function section."""
    _, _, payload, end = section
    count, pos = _read_u32(data, payload, end)
    type_index = -1
    for _ in range(min(count, defined + 1)):
        type_index, pos = _read_u32(data, pos, end)
    return type_index


def _is_empty_func_type(data: bytes, known: Dict[int, Tuple[int, int, int, int]], type_index: int) -> bool:
    """Whether entry ``type_index`` of the type section is the function type [] -> []."""
    if _TYPE not in known or type_index < 0:
        return False
    _, _, payload, end = known[_TYPE]
    count, pos = _read_u32(data, payload, end)
    if type_index >= count:
        return False
    for index in range(type_index + 1):
        if _byte(data, pos, end) != 0x60:
            raise _error("unsupported type-section entry (only function types)", pos)
        params, pos = _read_u32(data, pos + 1, end)
        params_end = pos + params
        results, pos = _read_u32(data, params_end, end)
        if index == type_index:
            return params == 0 and results == 0
        pos += results
    return False


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes((section_id,)) + _leb_u32(len(payload)) + payload


def _append_entry(data: bytes, section: Optional[Tuple[int, int, int, int]], section_id: int, *entries: bytes) -> bytes:
    """The section with entries appended (count + n), or a new section of just them."""
    if section is None:
        return _section(section_id, _leb_u32(len(entries)) + b"".join(entries))
    _, _, payload, end = section
    count, pos = _read_u32(data, payload, end)
    if count + len(entries) > 0xFFFFFFFF:
        raise _error("vector too long to append to", payload)
    return _section(section_id, _leb_u32(count + len(entries)) + data[pos:end] + b"".join(entries))


def _export_entry(name: bytes, kind: int, index: int) -> bytes:
    return _leb_u32(len(name)) + name + bytes((kind,)) + _leb_u32(index)


def instrument_memory_grow(wasm: Union[bytes, bytearray, memoryview]) -> bytes:
    """The module with every ``memory.grow`` routed through an injected function that
    records a refused grow in the exported i32 global ``GROW_REFUSED_EXPORT``.

    The global starts at 0, is set to 1 (and never back) when a grow returns -1,
    and is always injected, even into a module without ``memory.grow``. Raises
    WasmRewriteError for a malformed module, an instruction outside the enabled
    proposals, a module without a memory (or with more than one), a ``memory.grow``
    of a memory other than 0, or a module that already exports the name.
    """
    data = bytes(wasm)
    if data[:4] != b"\0asm":
        raise _error("not a WebAssembly module (bad magic)", 0)
    if data[4:8] != b"\x01\x00\x00\x00":
        raise _error("unsupported binary version (only core modules, version 1)", 4)

    # (id, start of the section, start of its payload, end)
    sections: List[Tuple[int, int, int, int]] = []
    known: Dict[int, Tuple[int, int, int, int]] = {}
    pos, last_rank = 8, 0
    while pos < len(data):
        start = pos
        section_id = data[pos]
        size, pos = _read_u32(data, pos + 1, len(data))
        if size > len(data) - pos:
            raise _error(f"section {section_id} runs past the end of the module", start)
        section = (section_id, start, pos, pos + size)
        pos += size
        if section_id == 0:
            _skip_name(data, section[2], section[3])
        else:
            rank = _SECTION_RANK.get(section_id)
            if rank is None:
                raise _error(f"unknown section id {section_id}", start)
            if rank <= last_rank:
                raise _error(f"section {section_id} is duplicated or out of order", start)
            last_rank = rank
            known[section_id] = section
        sections.append(section)

    def count_of(section_id: int) -> int:
        section = known.get(section_id)
        return 0 if section is None else _read_u32(data, section[2], section[3])[0]

    imported_functions = imported_memories = imported_globals = 0
    if _IMPORT in known:
        imported_functions, imported_memories, imported_globals = _parse_imports(data, *known[_IMPORT][2:])
    memories = imported_memories + count_of(_MEMORY)
    if memories == 0:
        raise _error("the module has no memory", 8)
    if memories > 1:
        raise _error("the module has more than one memory (multi-memory is not supported)", 8)
    if _EXPORT in known:
        _check_exports(data, *known[_EXPORT][2:])
    defined_functions = count_of(_FUNCTION)
    type_index = count_of(_TYPE)
    func_index = imported_functions + defined_functions
    global_index = imported_globals + count_of(_GLOBAL)
    if max(type_index, func_index, global_index) >= 0xFFFFFFFF:
        raise _error("index space full", 8)

    exports = [_export_entry(_GROW_REFUSED_NAME, 3, global_index)]
    if _START in known:
        start_function, start_end = _read_u32(data, known[_START][2], known[_START][3])
        if start_end != known[_START][3]:
            raise _error("start section has trailing bytes", start_end)
        # Validation of the start section goes with it, so check here what it required: a
        # defined function of type [] -> [] (imports are refused anyway).
        defined = start_function - imported_functions
        if not 0 <= defined < defined_functions:
            raise _error(f"start function {start_function} is not a function defined by the module", known[_START][2])
        if not _is_empty_func_type(data, known, _function_type_index(data, known[_FUNCTION], defined)):
            raise _error(f"start function {start_function} must have type [] -> []", known[_START][2])
        exports.append(_export_entry(_START_NAME, 0, start_function))
    replacements: Dict[int, bytes] = {
        _TYPE: _append_entry(data, known.get(_TYPE), _TYPE, b"\x60\x01\x7f\x01\x7f"),
        _FUNCTION: _append_entry(data, known.get(_FUNCTION), _FUNCTION, _leb_u32(type_index)),
        # i32, mutable, initialised by `i32.const 0 end`
        _GLOBAL: _append_entry(data, known.get(_GLOBAL), _GLOBAL, b"\x7f\x01\x41\x00\x0b"),
        _EXPORT: _append_entry(data, known.get(_EXPORT), _EXPORT, *exports),
        _CODE: _rewrite_code(data, known.get(_CODE), defined_functions, func_index, global_index),
    }
    if _START in known:
        replacements[_START] = b""  # the host calls START_EXPORT instead

    # A missing section goes right before the first present section that follows it
    # in the standard order, or, if none does, right after the last present one: so
    # custom sections keep their neighbours ("before the first", "after the last",
    # "right after X") wherever that is possible.
    out: List[bytes] = [data[:8]]
    pending = sorted((sid for sid in replacements if sid not in known), key=_SECTION_RANK.__getitem__)
    after_last = 1  # index in `out` just after the last non-custom section
    for section_id, start, _, end in sections:
        if section_id:
            rank = _SECTION_RANK[section_id]
            while pending and _SECTION_RANK[pending[0]] < rank:
                out.append(replacements[pending.pop(0)])
            out.append(replacements[section_id] if section_id in replacements else data[start:end])
            after_last = len(out)
        else:
            out.append(data[start:end])
    out[after_last:after_last] = [replacements[sid] for sid in pending]
    return b"".join(out)


def _rewrite_code(
    data: bytes,
    section: Optional[Tuple[int, int, int, int]],
    defined_functions: int,
    func_index: int,
    global_index: int,
) -> bytes:
    """The code section with ``memory.grow`` rewritten and the injected body appended."""
    g = _leb_u32(global_index)
    # locals: one i32; local.get 0, memory.grow 0, local.tee 1, i32.const -1, i32.eq,
    # if, i32.const 1, global.set $refused, end, local.get 1, end
    injected = b"\x01\x01\x7f" + b"\x20\x00\x40\x00\x22\x01\x41\x7f\x46\x04\x40\x41\x01\x24" + g + b"\x0b\x20\x01\x0b"
    injected = _leb_u32(len(injected)) + injected
    if section is None:
        if defined_functions:
            raise _error("function section without a code section", len(data))
        return _section(_CODE, b"\x01" + injected)
    _, _, payload, end = section
    count, pos = _read_u32(data, payload, end)
    if count != defined_functions:
        raise _error(f"code section has {count} bodies for {defined_functions} functions", payload)
    call = b"\x10" + _leb_u32(func_index)
    parts = [_leb_u32(count + 1)]
    run = pos  # start of the bytes copied unchanged so far
    for _ in range(count):
        body_start = pos
        size, pos = _read_u32(data, pos, end)
        if size > end - pos:
            raise _error("function body runs past the end of the code section", body_start)
        new_body = _rewrite_body(data, pos, pos + size, call)
        pos += size
        if new_body is not None:
            parts.append(data[run:body_start])
            parts.append(_leb_u32(len(new_body)))
            parts.append(new_body)
            run = pos
    if pos != end:
        raise _error("code section has trailing bytes", pos)
    parts.append(data[run:end])
    parts.append(injected)
    return _section(_CODE, b"".join(parts))
