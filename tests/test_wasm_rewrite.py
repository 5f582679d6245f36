"""The memory.grow rewrite (cclb_wire.wasm_rewrite): valid output, unchanged behaviour, a
recorded refusal, every instruction class decoded, and only WasmRewriteError for bad input.

Expected bytes never come from the code under test: they come from wasmtime (validation,
execution, ``wat2wasm`` of a hand-edited WAT) or from the binary format itself.
"""

from __future__ import annotations

import re
import time
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cclb_wire.runtime.wasm_rewrite import GROW_REFUSED_EXPORT, START_EXPORT, WasmRewriteError, instrument_memory_grow

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
PLUGIN_DIR = resources.files("cclb_wire") / "plugins"
PLUGINS = {p.name: p.read_bytes() for p in PLUGIN_DIR.iterdir() if p.name.endswith(".wasm")}
# Every hostile fixture, of both contracts: each is a valid module the rewrite must instrument.
FIXTURES = sorted(str(p.relative_to(HOSTILE.parent)) for d in (HOSTILE, HOSTILE.parent / "hostile_1_0") for p in d.glob("*.wat"))
PAGE = 65536


def make_engine() -> wasmtime.Engine:
    """An engine with exactly the proposals the plugin host enables."""
    c = wasmtime.Config()
    c.wasm_threads = False
    c.wasm_multi_memory = False
    c.wasm_memory64 = False
    c.wasm_exceptions = False
    c.wasm_gc = False
    c.wasm_function_references = False
    c.wasm_stack_switching = False
    c.wasm_custom_page_sizes = False
    c.wasm_wide_arithmetic = False
    c.wasm_simd = True
    c.wasm_relaxed_simd = True
    c.wasm_bulk_memory = True
    c.wasm_reference_types = True
    c.wasm_tail_call = True
    c.wasm_multi_value = True
    return wasmtime.Engine(c)


ENGINE = make_engine()


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def valid(wasm: bytes) -> bool:
    try:
        wasmtime.Module.validate(ENGINE, wasm)
    except wasmtime.WasmtimeError:
        return False
    return True


def rejection(wasm: bytes) -> str:
    """wasmtime's reason for refusing the module ("" if it is valid)."""
    try:
        wasmtime.Module.validate(ENGINE, wasm)
    except wasmtime.WasmtimeError as e:
        return str(e)
    return ""


# --- a small, independent reader of the binary format ----------------------------------


def leb(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def read_leb(data: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def sections(wasm: bytes) -> List[Tuple[int, bytes]]:
    assert wasm[:8] == b"\0asm\x01\0\0\0"
    out, pos = [], 8
    while pos < len(wasm):
        size, start = read_leb(wasm, pos + 1)
        out.append((wasm[pos], wasm[start : start + size]))
        pos = start + size
    assert pos == len(wasm)
    return out


def section_bounds(wasm: bytes) -> List[Tuple[int, int]]:
    """(first byte of the section id, end) of each section."""
    out, pos = [], 8
    while pos < len(wasm):
        size, start = read_leb(wasm, pos + 1)
        out.append((pos, start + size))
        pos = start + size
    return out


def section(wasm: bytes, section_id: int) -> Optional[bytes]:
    found = [payload for sid, payload in sections(wasm) if sid == section_id]
    assert len(found) <= 1
    return found[0] if found else None


def split_vector(payload: Optional[bytes]) -> Tuple[int, bytes]:
    """(count, entries) of a vector section; (0, b"") for a missing one."""
    if payload is None:
        return 0, b""
    count, pos = read_leb(payload, 0)
    return count, payload[pos:]


def binary_module(body: bytes, *, memory: bool = True, exports: bytes = b"") -> bytes:
    """A module with one `() -> ()` function whose body (expression, without locals) is given."""
    out = b"\0asm\x01\0\0\0" + b"\x01\x04\x01\x60\x00\x00" + b"\x03\x02\x01\x00"
    if memory:
        out += b"\x05\x03\x01\x00\x01"
    if exports:
        out += b"\x07" + leb(len(exports)) + exports
    code = b"\x00" + body
    code_section = b"\x01" + leb(len(code)) + code
    return out + b"\x0a" + leb(len(code_section)) + code_section


# --- checks shared by the tests ----------------------------------------------------------

TYPE, FUNCTION, GLOBAL, EXPORT, START, CODE = 1, 3, 6, 7, 8, 10


def assert_only_appended(original: bytes, rewritten: bytes) -> None:
    """Every section of the original is still there, in the same order, byte for byte,
    except that type/function/global/export gained one entry at the end (export two, and
    the start section is gone, when the module had a start function) and the code section
    one body; new sections are only those five kinds."""
    before, after = sections(original), sections(rewritten)
    had_start = any(sid == START for sid, _ in before)
    assert not any(sid == START for sid, _ in after)
    before = [(sid, payload) for sid, payload in before if sid != START]
    original_ids = {sid for sid, _ in before}
    inserted = [sid for sid, _ in after if sid != 0 and sid not in original_ids]
    assert set(inserted) <= {TYPE, FUNCTION, GLOBAL, EXPORT, CODE}
    kept = [(sid, payload) for sid, payload in after if sid == 0 or sid in original_ids]
    assert [sid for sid, _ in kept] == [sid for sid, _ in before]
    for (sid, old), (_, new) in zip(before, kept):
        if sid in (TYPE, FUNCTION, GLOBAL, EXPORT, CODE):
            old_count, old_entries = split_vector(old)
            new_count, new_entries = split_vector(new)
            assert new_count == old_count + (2 if sid == EXPORT and had_start else 1)
            if sid != CODE:
                assert new_entries.startswith(old_entries)
        else:
            assert new == old, f"section {sid} changed"


def appended_entry(original: bytes, rewritten: bytes, section_id: int) -> bytes:
    old = split_vector(section(original, section_id))[1]
    new = split_vector(section(rewritten, section_id))[1]
    assert new.startswith(old)
    return new[len(old) :]


def imported(wasm: bytes, kind: int) -> int:
    """How many imports of this kind (0 function, 3 global) the module has."""
    payload = section(wasm, 2)
    if payload is None:
        return 0
    count, pos = read_leb(payload, 0)
    found = 0
    for _ in range(count):
        for _ in range(2):
            n, pos = read_leb(payload, pos)
            pos += n
        k = payload[pos]
        pos += 1
        found += k == kind
        if k == 0:
            pos = read_leb(payload, pos)[1]
        elif k in (1, 2):
            pos += k == 1  # table element type
            flags = payload[pos]
            pos = read_leb(payload, pos + 1)[1]
            if flags & 1:
                pos = read_leb(payload, pos)[1]
        elif k == 3:
            pos += 2
        else:
            raise AssertionError(f"import kind {k}")
    return found


def assert_instrumented(original: bytes, rewritten: bytes) -> None:
    """Valid under the host's engine, exports the flag as a mutable i32, appended entries right."""
    assert valid(rewritten), rejection(rewritten)
    exports = {e.name: e.type for e in wasmtime.Module(ENGINE, rewritten).exports}
    flag = exports[GROW_REFUSED_EXPORT]
    assert isinstance(flag, wasmtime.GlobalType)
    assert str(flag.content) == "i32" and flag.mutable
    assert_only_appended(original, rewritten)
    types = split_vector(section(original, TYPE))[0]
    functions = split_vector(section(original, FUNCTION))[0]
    globals_ = split_vector(section(original, GLOBAL))[0] + imported(original, 3)
    assert appended_entry(original, rewritten, TYPE) == b"\x60\x01\x7f\x01\x7f"  # (i32) -> (i32)
    assert appended_entry(original, rewritten, FUNCTION) == leb(types)
    assert appended_entry(original, rewritten, GLOBAL) == b"\x7f\x01\x41\x00\x0b"  # mut i32 = 0
    name = GROW_REFUSED_EXPORT.encode()
    expected_exports = leb(len(name)) + name + b"\x03" + leb(globals_)
    start = section(original, START)
    if start is not None:  # the start function is exported instead, for the host to call
        start_name = START_EXPORT.encode()
        expected_exports += leb(len(start_name)) + start_name + b"\x00" + start
        assert isinstance(exports[START_EXPORT], wasmtime.FuncType)
    else:
        assert START_EXPORT not in exports
    assert appended_entry(original, rewritten, EXPORT) == expected_exports
    # The module's function count grew by exactly one.
    assert split_vector(section(rewritten, FUNCTION))[0] == functions + 1


INJECTED_WAT = """
  (func $__cclb_grow (param i32) (result i32) (local i32)
    local.get 0
    memory.grow
    local.tee 1
    i32.const -1
    i32.eq
    if
      i32.const 1
      global.set $__cclb_refused
    end
    local.get 1)
  (global $__cclb_refused (mut i32) (i32.const 0))
"""


def expected_code(source: str) -> Tuple[bytes, int]:
    """The code section the rewrite must produce, assembled by wasmtime from the source with
    every `memory.grow` replaced by a call of the injected function written out in WAT (the
    last function; the flag is the last global), and how many sites were replaced."""
    body, replaced = re.subn(r"\bmemory\.grow\b", "call $__cclb_grow", source)
    body = body.rstrip()
    assert body.endswith(")")
    code = section(wat(body[:-1] + INJECTED_WAT + ")"), CODE)
    assert code is not None
    return code, replaced


def assert_rewrites_exactly(source: str) -> bytes:
    original = wat(source)
    assert valid(original), rejection(original)
    rewritten = instrument_memory_grow(original)
    assert_instrumented(original, rewritten)
    code, replaced = expected_code(source)
    assert section(rewritten, CODE) == code
    return rewritten


# --- bundled plugins and hostile fixtures ----------------------------------------------


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_bundled_plugins_instrument(name: str) -> None:
    original = PLUGINS[name]
    assert valid(original), rejection(original)
    assert_instrumented(original, instrument_memory_grow(original))


@pytest.mark.parametrize("name", FIXTURES)
def test_hostile_fixtures_instrument(name: str) -> None:
    original = wat((HOSTILE.parent / name).read_text())
    assert valid(original), f"{name} is not valid: {rejection(original)}"
    assert_instrumented(original, instrument_memory_grow(original))


def test_both_fixture_sets_are_there() -> None:
    assert any(name.startswith("hostile/") for name in FIXTURES)
    assert any(name.startswith("hostile_1_0/") for name in FIXTURES)


def describe(t: object) -> str:
    if isinstance(t, wasmtime.FuncType):
        return f"func {[str(p) for p in t.params]} -> {[str(r) for r in t.results]}"
    if isinstance(t, wasmtime.MemoryType):
        return f"memory {t.limits.min}..{t.limits.max}"
    if isinstance(t, wasmtime.GlobalType):
        return f"global {t.content} mut={t.mutable}"
    if isinstance(t, wasmtime.TableType):
        return f"table {t.element} {t.limits.min}..{t.limits.max}"
    raise AssertionError(t)


def test_rewritten_plugin_keeps_its_exports_and_imports() -> None:
    for original in list(PLUGINS.values()) + [wat((HOSTILE / "has_import.wat").read_text())]:
        before = wasmtime.Module(ENGINE, original)
        after = wasmtime.Module(ENGINE, instrument_memory_grow(original))
        old_exports = [(e.name, describe(e.type)) for e in before.exports]
        assert [(e.name, describe(e.type)) for e in after.exports] == old_exports + [
            (GROW_REFUSED_EXPORT, "global i32 mut=True")
        ]
        old_imports = [(i.module, i.name, describe(i.type)) for i in before.imports]
        assert [(i.module, i.name, describe(i.type)) for i in after.imports] == old_imports


# --- behaviour ---------------------------------------------------------------------------

GROWER = """
(module
  (memory (export "memory") 1)
  (func (export "grow_until_refused") (param $step i32) (result i32)
    (local $n i32)
    (block $done
      (loop $again
        (br_if $done (i32.eq (memory.grow (local.get $step)) (i32.const -1)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $again)))
    (local.get $n))
  (func (export "grow") (param $pages i32) (result i32)
    (memory.grow (local.get $pages)))
  (func (export "size") (result i32) (memory.size)))
"""


class Guest:
    def __init__(self, wasm: bytes, memory_limit: Optional[int] = None):
        self.store = wasmtime.Store(ENGINE)
        if memory_limit is not None:
            self.store.set_limits(memory_size=memory_limit)
        self.instance = wasmtime.Instance(self.store, wasmtime.Module(ENGINE, wasm), [])
        self.exports = self.instance.exports(self.store)
        start = self.exports.get(START_EXPORT)
        if start is not None:  # what the host does for a rewritten module's start function
            assert isinstance(start, wasmtime.Func)
            start(self.store)

    def __call__(self, name: str, *args: int) -> object:
        func = self.exports[name]
        assert isinstance(func, wasmtime.Func)
        return func(self.store, *args)

    @property
    def refused(self) -> object:
        flag = self.exports[GROW_REFUSED_EXPORT]
        assert isinstance(flag, wasmtime.Global)
        return flag.value(self.store)


@pytest.mark.parametrize("step", [1, 16, 160])
def test_grow_until_refused_is_unchanged_and_recorded(step: int) -> None:
    original = wat(GROWER)
    rewritten = instrument_memory_grow(original)
    limit_pages = 64
    before = Guest(original, limit_pages * PAGE)
    after = Guest(rewritten, limit_pages * PAGE)
    assert after.refused == 0
    grows = after("grow_until_refused", step)
    assert grows == before("grow_until_refused", step) == (limit_pages - 1) // step
    assert after("size") == before("size") == 1 + grows * step
    assert after.refused == 1
    # The flag stays set (the host reads it after the trap) until the host clears it.
    assert after("grow", 0) == after("size")
    assert after.refused == 1


def test_no_refusal_leaves_the_flag_clear() -> None:
    guest = Guest(instrument_memory_grow(wat(GROWER)), 64 * PAGE)
    assert [guest("grow", 1) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert guest.refused == 0


def test_grow_by_zero_at_the_limit_never_sets_the_flag() -> None:
    guest = Guest(instrument_memory_grow(wat(GROWER)), PAGE)  # already at the limit
    assert guest("grow", 0) == 1
    assert guest.refused == 0
    assert guest("grow", 1) == -1
    assert guest.refused == 1


@pytest.mark.parametrize(
    "start, valid_before",
    [
        ("(func $s)", True),
        ("(func $s (param i32))", False),
        ("(func $s (result i32) i32.const 0)", False),
    ],
)
def test_the_start_function_keeps_the_type_check_its_section_had(start: str, valid_before: bool) -> None:
    original = wat(f"(module (memory 1) (type (func (param i64))) {start} (start $s))")
    assert valid(original) is valid_before  # wasmtime's own verdict on the start section
    if valid_before:
        rewritten = instrument_memory_grow(original)
        assert section(rewritten, START) is None and valid(rewritten)
        assert START_EXPORT in {e.name for e in wasmtime.Module(ENGINE, rewritten).exports}
    else:
        with pytest.raises(WasmRewriteError, match=r"must have type \[\] -> \[\]"):
            instrument_memory_grow(original)


def test_refusal_by_the_declared_maximum_is_recorded() -> None:
    source = GROWER.replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 1 3)")
    original, rewritten = wat(source), instrument_memory_grow(wat(source))
    assert Guest(original)("grow_until_refused", 1) == Guest(rewritten)("grow_until_refused", 1) == 2
    guest = Guest(rewritten)
    assert guest("grow", 2) == 1 and guest.refused == 0
    assert guest("grow", 1) == -1 and guest.refused == 1


def test_host_can_clear_the_flag() -> None:
    guest = Guest(instrument_memory_grow(wat(GROWER)), PAGE)
    assert guest("grow", 1) == -1
    flag = guest.exports[GROW_REFUSED_EXPORT]
    assert isinstance(flag, wasmtime.Global)
    flag.set_value(guest.store, 0)
    assert guest.refused == 0


def test_memory_bomb_fixture_trap_is_attributable() -> None:
    rewritten = instrument_memory_grow(wat((HOSTILE / "memory_bomb.wat").read_text()))
    guest = Guest(rewritten, 32 * PAGE)
    with pytest.raises(wasmtime.Trap):
        guest("cc_lb_filter", 0, 0)
    assert guest.refused == 1


def test_grow_exactly_to_the_limit_is_not_a_refusal() -> None:
    guest = Guest(instrument_memory_grow(wat(GROWER)), 16 * PAGE)
    assert guest("grow", 15) == 1
    assert guest.refused == 0


# --- every instruction class -------------------------------------------------------------

MANY_LOCALS = 200

KITCHEN_SINK = f"""
(module
  (type $ii (func (param i32) (result i32)))
  (type $pair (func (param i32) (result i32 i32)))
  (memory (export "memory") 1 200)
  (table $t 4 funcref)
  (table $ext 2 externref)
  (global $started (mut i32) (i32.const 0))
  (global $k i64 (i64.const 0x4040404040404040))
  (data $d "\\40\\40\\40\\40hello")
  (elem $e func $double $inc)
  (elem declare func $double $inc)
  (start $init)
  (func $init
    (global.set $started (i32.add (memory.grow (i32.const 1)) (i32.const 10))))
  (func $double (type $ii) (i32.mul (local.get 0) (i32.const 2)))
  (func $inc (type $ii) (i32.add (local.get 0) (i32.const 1)))
  (func (export "started") (param i32) (result i32) (i32.add (global.get $started) (local.get 0)))

  (func (export "simd") (param $x i32) (result i32)
    (local $v v128)
    (v128.store offset=64 (i32.const 0) (v128.const i8x16 64 64 64 64 1 2 3 4 5 6 7 8 9 10 11 64))
    (local.set $v (v128.load offset=64 align=4 (i32.const 0)))
    (local.set $v (i8x16.shuffle 3 2 1 0 4 5 6 7 16 17 18 19 31 30 29 28
      (local.get $v) (i32x4.splat (local.get $x))))
    (local.set $v (i32x4.replace_lane 1 (local.get $v) (memory.grow (i32.const 0))))
    (local.set $v (v128.load32_lane offset=64 2 (i32.const 0) (local.get $v)))
    (v128.store16_lane offset=128 5 (i32.const 0) (local.get $v))
    (local.set $v (i16x8.add (local.get $v) (v128.load16_splat offset=64 (i32.const 2))))
    (i32.add
      (i32.add (i32x4.extract_lane 0 (local.get $v)) (i32x4.extract_lane 1 (local.get $v)))
      (i32.add (i8x16.extract_lane_u 15 (local.get $v)) (i32.load16_u offset=128 (i32.const 0)))))

  (func (export "relaxed") (param $x i32) (result i32)
    (i32.add
      (i32x4.extract_lane 2
        (i32x4.relaxed_laneselect
          (i32x4.splat (local.get $x))
          (v128.const i32x4 64 64 64 64)
          (v128.const i32x4 -1 0 -1 0)))
      (i8x16.extract_lane_u 0
        (i8x16.relaxed_swizzle
          (v128.const i8x16 64 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
          (i8x16.splat (i32.and (local.get $x) (i32.const 15)))))))

  (func (export "bulk") (param $n i32) (result i32)
    (memory.fill (i32.const 256) (local.get $n) (i32.const 16))
    (memory.copy (i32.const 300) (i32.const 256) (i32.const 8))
    (memory.init $d (i32.const 400) (i32.const 0) (i32.const 9))
    (data.drop $d)
    (drop (memory.grow (i32.const 64)))
    (i32.add (i32.load (i32.const 300)) (i32.load8_u (i32.const 404))))

  (func (export "refs") (param $i i32) (result i32)
    (table.init $t $e (i32.const 0) (i32.const 0) (i32.const 2))
    (elem.drop $e)
    (table.set $t (i32.const 2) (ref.func $double))
    (table.copy $t $t (i32.const 3) (i32.const 1) (i32.const 1))
    (drop (table.grow $t (ref.null func) (i32.const 2)))
    (table.fill $ext (i32.const 0) (ref.null extern) (i32.const 2))
    (i32.add
      (i32.add
        (call_indirect $t (type $ii) (local.get $i) (i32.const 2))
        (call_indirect $t (type $ii) (local.get $i) (i32.const 3)))
      (i32.add
        (table.size $t)
        (select (result i32) (i32.const 100) (i32.const 200)
          (i32.and (ref.is_null (table.get $t (i32.const 5)))
                   (ref.is_null (table.get $ext (i32.const 1))))))))

  (func $countdown (param $n i32) (param $acc i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (local.get $acc))
      (else (return_call $countdown
        (i32.sub (local.get $n) (i32.const 1))
        (i32.add (local.get $acc) (memory.grow (i32.const 0)))))))
  (func (export "tail") (param $n i32) (result i32)
    (table.set $t (i32.const 0) (ref.func $inc))
    (return_call_indirect $t (type $ii) (call $countdown (local.get $n) (i32.const 0)) (i32.const 0)))

  (func (export "branch") (param $i i32) (result i32)
    (block $c (block $b (block $a
      (br_table $a $b $c $b (local.get $i)))
      (return (i32.add (i32.const -64) (memory.grow (i32.const 0)))))
     (return (i32.const 64)))
    (i32.const 7))

  (func (export "multi") (param $x i32) (result i32)
    local.get $x
    block (type $pair)
      i32.const 64
      memory.grow
    end
    i32.add)

  (func (export "nested") (param $n i32) (result i32)
    (local $i i32) (local $ok i32)
    (block $out
      (loop $l
        (br_if $out (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.and (local.get $i) (i32.const 1))
          (then
            (block
              (loop
                (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1))
                  (then (local.set $ok (i32.add (local.get $ok) (i32.const 1))))))))
          (else nop))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.add (local.get $ok) (i32.mul (memory.size) (i32.const 1000))))

  (func (export "consts") (param $x i32) (result i32)
    (local i64 f32 f64 v128 funcref externref)
    (local {" ".join(["i32"] * MANY_LOCALS)})
    (local.set 64 (i32.const 64))
    (local.set {MANY_LOCALS} (memory.grow (i32.const 0)))
    (i32.add
      (i32.add
        (i32.add (local.get 64) (local.get {MANY_LOCALS}))
        (i32.add (i32.wrap_i64 (global.get $k)) (i32.wrap_i64 (i64.const 0x40404040))))
      (i32.add
        (i32.add (i32.trunc_sat_f32_s (f32.const 3.0)) (i32.trunc_sat_f64_u (f64.const 2.0)))
        (i32.add (i32.extend8_s (local.get $x)) (i64.eqz (i64.extend32_s (i64.const -64)))))))
)
"""

KITCHEN_CALLS = [
    ("started", 1),
    ("simd", 0x01020304),
    ("simd", -64),
    ("relaxed", 5),
    ("relaxed", 64),
    ("bulk", 0x40),
    ("refs", 21),
    ("tail", 10),
    ("branch", 0),
    ("branch", 1),
    ("branch", 2),
    ("branch", 9),
    ("multi", 3),
    ("nested", 9),
    ("consts", 0xC0),
]


def test_kitchen_sink_rewrites_exactly() -> None:
    rewritten = assert_rewrites_exactly(KITCHEN_SINK)
    original = wat(KITCHEN_SINK)
    # 0x40 bytes that are not memory.grow (block types, immediates) are really there.
    grows = KITCHEN_SINK.count("memory.grow")
    assert grows >= 8
    assert (section(original, CODE) or b"").count(0x40) > 3 * grows
    assert section(rewritten, 12) == section(original, 12)  # data count


@pytest.mark.parametrize("name,arg", KITCHEN_CALLS)
def test_kitchen_sink_computes_the_same(name: str, arg: int) -> None:
    original = wat(KITCHEN_SINK)
    before, after = Guest(original), Guest(instrument_memory_grow(original))
    assert after(name, arg) == before(name, arg)
    assert after("started", 0) == before("started", 0) == 11  # the start function grew 1 -> 2 pages
    assert after.refused == 0


def test_kitchen_sink_values() -> None:
    # A few values worked out by hand, so "the same" is not "the same garbage". Each call
    # gets a fresh instance: the start function has grown memory from 1 to 2 pages.
    def call(name: str, arg: int) -> object:
        return Guest(instrument_memory_grow(wat(KITCHEN_SINK)))(name, arg)

    assert call("branch", 0) == -64 + 2
    assert call("branch", 1) == 64 and call("branch", 3) == 64
    assert call("branch", 2) == 7 and call("branch", 9) == 64  # 9 takes the default, $b
    assert call("multi", 3) == 3 + 2
    assert call("tail", 4) == 4 * 2 + 1  # countdown adds the page count 4 times, then $inc
    assert call("nested", 9) == 4 + 6 * 1000  # odd i in 0..8 each grow one page
    assert call("refs", 21) == 42 + 22 + 6 + 100  # double, inc, table size, both null
    # local 64, the page count, two wrapped 0x40404040, trunc_sat 3 and 2, extend8_s(0xC0), eqz
    wrapped = (64 + 2 + 0x40404040 * 2 + 3 + 2 - 64 + 0 + 2**31) % 2**32 - 2**31
    assert call("consts", 0xC0) == wrapped


def test_memory_grow_in_nested_control_is_rewritten() -> None:
    source = """
    (module
      (memory 1)
      (func (param $n i32) (result i32)
        (block (result i32)
          (loop (result i32)
            (if (result i32) (local.get $n)
              (then (block (result i32) (memory.grow (i32.const 64))))
              (else (memory.grow (memory.grow (i32.const 0))))))))
      (start 1)
      (func (drop (memory.grow (i32.const 64)))))
    """
    assert_rewrites_exactly(source)


def test_no_memory_grow_still_injects() -> None:
    source = """(module (memory (export "memory") 1) (func (export "f") (result i32) (i32.const 64)))"""
    original = wat(source)
    rewritten = assert_rewrites_exactly(source)
    old_code, new_code = split_vector(section(original, CODE)), split_vector(section(rewritten, CODE))
    assert new_code[1].startswith(old_code[1])  # the only body is unchanged
    assert Guest(rewritten).refused == 0


def test_missing_sections_are_inserted_in_order_and_customs_stay() -> None:
    source = """
    (module
      (@custom "a" (before first) "1")
      (memory 1)
      (@custom "b" (after memory) "2")
      (data (i32.const 0) "x")
      (@custom "c" (after last) "3"))
    """
    original = wat(source)
    assert [sid for sid, _ in sections(original)] == [0, 5, 0, 11, 0]
    rewritten = instrument_memory_grow(original)
    assert_instrumented(original, rewritten)
    ids = [sid for sid, _ in sections(rewritten)]
    assert [sid for sid in ids if sid in (0, 5, 11)] == [0, 5, 0, 11, 0]
    # Inserted sections go in the standard order without separating a custom section from
    # its neighbours: "a" is still before the first section, "b" right after the memory
    # section, "c" after the last.
    assert ids == [0, 1, 3, 5, 0, 6, 7, 10, 11, 0]
    assert Guest(rewritten).refused == 0


def test_memory_only_module() -> None:
    original = wat("(module (memory 1))")
    rewritten = instrument_memory_grow(original)
    assert_instrumented(original, rewritten)
    assert [sid for sid, _ in sections(rewritten)] == [1, 3, 5, 6, 7, 10]


def test_imported_memory_functions_and_globals_shift_the_new_indices() -> None:
    source = """
    (module
      (import "env" "f" (func $f (param i32)))
      (import "env" "mem" (memory 1))
      (import "env" "t" (table 1 funcref))
      (import "env" "g" (global $g i32))
      (import "env" "h" (func $h))
      (global $mine (mut i32) (global.get $g))
      (func (export "grow") (param i32) (result i32)
        (call $h)
        (memory.grow (local.get 0))))
    """
    rewritten = assert_rewrites_exactly(source)
    store = wasmtime.Store(ENGINE)
    store.set_limits(memory_size=2 * PAGE)
    mem = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(1, None)))
    noop_i = wasmtime.Func(store, wasmtime.FuncType([wasmtime.ValType.i32()], []), lambda x: None)
    noop = wasmtime.Func(store, wasmtime.FuncType([], []), lambda: None)
    table = wasmtime.Table(store, wasmtime.TableType(wasmtime.ValType.funcref(), wasmtime.Limits(1, None)), None)
    g = wasmtime.Global(store, wasmtime.GlobalType(wasmtime.ValType.i32(), False), 5)
    instance = wasmtime.Instance(store, wasmtime.Module(ENGINE, rewritten), [noop_i, mem, table, g, noop])
    exports = instance.exports(store)
    flag = exports[GROW_REFUSED_EXPORT]
    assert isinstance(flag, wasmtime.Global)
    grow = exports["grow"]
    assert isinstance(grow, wasmtime.Func)
    assert grow(store, 1) == 1 and flag.value(store) == 0
    assert grow(store, 1) == -1 and flag.value(store) == 1


# Every SIMD and relaxed-SIMD instruction, spelled in WAT (assembled by wasmtime, not by us).
_SIMD_MEMARG = (
    "v128.load v128.load8x8_s v128.load8x8_u v128.load16x4_s v128.load16x4_u v128.load32x2_s "
    "v128.load32x2_u v128.load8_splat v128.load16_splat v128.load32_splat v128.load64_splat v128.store "
    "v128.load32_zero v128.load64_zero"
).split()
_SIMD_LANE = [
    "i8x16.extract_lane_s 15", "i8x16.extract_lane_u 1", "i8x16.replace_lane 2", "i16x8.extract_lane_s 7",
    "i16x8.extract_lane_u 0", "i16x8.replace_lane 3", "i32x4.extract_lane 3", "i32x4.replace_lane 0",
    "i64x2.extract_lane 1", "i64x2.replace_lane 0", "f32x4.extract_lane 2", "f32x4.replace_lane 1",
    "f64x2.extract_lane 1", "f64x2.replace_lane 0",
]
_SIMD_MEMARG_LANE = [
    f"v128.{op}{bits}_lane{memarg} {lane}"
    for op in ("load", "store")
    for bits, lane in (("8", 15), ("16", 7), ("32", 3), ("64", 1))
    for memarg in ("", " offset=64 align=1")
]
_CMP = "eq ne lt_s lt_u gt_s gt_u le_s le_u ge_s ge_u".split()
_FCMP = "eq ne lt gt le ge".split()
_INT_COMMON = "abs neg all_true bitmask shl shr_s shr_u add sub".split()
_SIMD_PLAIN = (
    ["i8x16.swizzle"]
    + [f"{s}.splat" for s in ("i8x16", "i16x8", "i32x4", "i64x2", "f32x4", "f64x2")]
    + [f"{s}.{c}" for s in ("i8x16", "i16x8", "i32x4") for c in _CMP]
    + [f"{s}.{c}" for s in ("f32x4", "f64x2") for c in _FCMP]
    + "v128.not v128.and v128.andnot v128.or v128.xor v128.bitselect v128.any_true".split()
    + ["f32x4.demote_f64x2_zero", "f64x2.promote_low_f32x4"]
    + [f"i8x16.{c}" for c in _INT_COMMON]
    + [f"i8x16.{c}" for c in "popcnt narrow_i16x8_s narrow_i16x8_u add_sat_s add_sat_u sub_sat_s sub_sat_u "
       "min_s min_u max_s max_u avgr_u".split()]
    + [f"{s}.{c}" for s in ("f32x4", "f64x2") for c in "ceil floor trunc nearest".split()]
    + [f"i16x8.{c}" for c in _INT_COMMON]
    + [f"i16x8.{c}" for c in "extadd_pairwise_i8x16_s extadd_pairwise_i8x16_u q15mulr_sat_s narrow_i32x4_s "
       "narrow_i32x4_u extend_low_i8x16_s extend_high_i8x16_s extend_low_i8x16_u extend_high_i8x16_u "
       "add_sat_s add_sat_u sub_sat_s sub_sat_u mul min_s min_u max_s max_u avgr_u extmul_low_i8x16_s "
       "extmul_high_i8x16_s extmul_low_i8x16_u extmul_high_i8x16_u".split()]
    + [f"i32x4.{c}" for c in _INT_COMMON]
    + [f"i32x4.{c}" for c in "extadd_pairwise_i16x8_s extadd_pairwise_i16x8_u extend_low_i16x8_s "
       "extend_high_i16x8_s extend_low_i16x8_u extend_high_i16x8_u mul min_s min_u max_s max_u dot_i16x8_s "
       "extmul_low_i16x8_s extmul_high_i16x8_s extmul_low_i16x8_u extmul_high_i16x8_u".split()]
    + [f"i64x2.{c}" for c in _INT_COMMON]
    + [f"i64x2.{c}" for c in "mul eq ne lt_s gt_s le_s ge_s extend_low_i32x4_s extend_high_i32x4_s "
       "extend_low_i32x4_u extend_high_i32x4_u extmul_low_i32x4_s extmul_high_i32x4_s extmul_low_i32x4_u "
       "extmul_high_i32x4_u".split()]
    + [f"{s}.{c}" for s in ("f32x4", "f64x2") for c in "abs neg sqrt add sub mul div min max pmin pmax".split()]
    + "i32x4.trunc_sat_f32x4_s i32x4.trunc_sat_f32x4_u f32x4.convert_i32x4_s f32x4.convert_i32x4_u "
      "i32x4.trunc_sat_f64x2_s_zero i32x4.trunc_sat_f64x2_u_zero f64x2.convert_low_i32x4_s "
      "f64x2.convert_low_i32x4_u".split()
)
_RELAXED = (
    "i8x16.relaxed_swizzle i32x4.relaxed_trunc_f32x4_s i32x4.relaxed_trunc_f32x4_u "
    "i32x4.relaxed_trunc_f64x2_s_zero i32x4.relaxed_trunc_f64x2_u_zero f32x4.relaxed_madd f32x4.relaxed_nmadd "
    "f64x2.relaxed_madd f64x2.relaxed_nmadd i8x16.relaxed_laneselect i16x8.relaxed_laneselect "
    "i32x4.relaxed_laneselect i64x2.relaxed_laneselect f32x4.relaxed_min f32x4.relaxed_max f64x2.relaxed_min "
    "f64x2.relaxed_max i16x8.relaxed_q15mulr_s i16x8.relaxed_dot_i8x16_i7x16_s "
    "i32x4.relaxed_dot_i8x16_i7x16_add_s"
).split()
SIMD_INSTRUCTIONS = (
    _SIMD_MEMARG
    + [f"{op} offset=64 align=1" for op in _SIMD_MEMARG]
    + [f"{op} offset=1000000" for op in _SIMD_MEMARG]
    + ["v128.const i8x16 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64 64", "v128.const i64x2 0x40 -1"]
    + ["i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", "i8x16.shuffle 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17 16"]
    + _SIMD_LANE
    + _SIMD_MEMARG_LANE
    + _SIMD_PLAIN
    + _RELAXED
)

_NUMERIC = (
    [f"i32.{c}" for c in ["eqz"] + _CMP]
    + [f"i64.{c}" for c in ["eqz"] + _CMP]
    + [f"{s}.{c}" for s in ("f32", "f64") for c in _FCMP]
    + [f"{s}.{c}" for s in ("i32", "i64") for c in "clz ctz popcnt add sub mul div_s div_u rem_s rem_u and or xor "
       "shl shr_s shr_u rotl rotr".split()]
    + [f"{s}.{c}" for s in ("f32", "f64") for c in "abs neg ceil floor trunc nearest sqrt add sub mul div min max "
       "copysign".split()]
    + "i32.wrap_i64 i32.trunc_f32_s i32.trunc_f32_u i32.trunc_f64_s i32.trunc_f64_u i64.extend_i32_s "
      "i64.extend_i32_u i64.trunc_f32_s i64.trunc_f32_u i64.trunc_f64_s i64.trunc_f64_u f32.convert_i32_s "
      "f32.convert_i32_u f32.convert_i64_s f32.convert_i64_u f32.demote_f64 f64.convert_i32_s f64.convert_i32_u "
      "f64.convert_i64_s f64.convert_i64_u f64.promote_f32 i32.reinterpret_f32 i64.reinterpret_f64 "
      "f32.reinterpret_i32 f64.reinterpret_i64".split()
    + "i32.extend8_s i32.extend16_s i64.extend8_s i64.extend16_s i64.extend32_s".split()
    + [f"{s}.trunc_sat_{f}_{u}" for s in ("i32", "i64") for f in ("f32", "f64") for u in "su"]
)
_LOADS_STORES = (
    "i32.load i64.load f32.load f64.load i32.load8_s i32.load8_u i32.load16_s i32.load16_u i64.load8_s "
    "i64.load8_u i64.load16_s i64.load16_u i64.load32_s i64.load32_u i32.store i64.store f32.store f64.store "
    "i32.store8 i32.store16 i64.store8 i64.store16 i64.store32"
).split()
OTHER_INSTRUCTIONS = (
    _NUMERIC
    + _LOADS_STORES
    + [f"{op} offset=64 align=1" for op in _LOADS_STORES]
    + [f"{op} offset=4294967295" for op in _LOADS_STORES]
    + [
        "unreachable", "nop", "block end", "loop end", "if end", "if else end", "block (result i32) unreachable end",
        "block (type $ii) end", "br 0", "br_if 0", "br_table 0 0 0", "return", "call $f", "call_indirect (type $ii)",
        "return_call $f", "return_call_indirect (type $v)", "drop", "select", "select (result i64)",
        "select (result externref)", "local.get 0", "local.set 0", "local.tee 0", "global.get 0", "global.set 0",
        "table.get 0", "table.set 0", "table.get $ext", "memory.size", "memory.grow", "i32.const 64",
        "i32.const -64", "i32.const 0x40404040", "i32.const -2147483648", "i64.const 0x4040404040404040",
        "i64.const -9223372036854775808", "f32.const 3.0", "f64.const 2.0", "f64.const nan:0x4040404040404",
        "ref.null func", "ref.null extern", "ref.is_null", "ref.func $f", "memory.init $d", "data.drop $d",
        "memory.copy", "memory.fill", "table.init $e", "elem.drop $e", "table.copy", "table.grow 0", "table.size 0",
        "table.fill 0", "table.grow $ext",
    ]
)
ALL_INSTRUCTIONS = SIMD_INSTRUCTIONS + OTHER_INSTRUCTIONS


def wrapper_module(instructions: List[str]) -> str:
    """One function per instruction: the instruction never runs (unreachable makes every
    operand type fit), then a memory.grow whose rewrite shows the decoder kept in step."""
    funcs = "\n".join(
        f"  (func (type $v) (if (i32.const 0) (then unreachable {ins} drop)) (drop (memory.grow (i32.const 1))))"
        for ins in instructions
    )
    return f"""
(module
  (type $v (func (param i32)))
  (type $ii (func (param i32) (result i32)))
  (memory 1)
  (table 2 funcref)
  (table $ext 1 externref)
  (global (mut i32) (i32.const 0))
  (data $d "abc")
  (elem $e func $f)
  (elem declare func $f)
  (func $f (type $v))
{funcs})
"""


def instruction_bytes(module: bytes, first_function: int) -> List[bytes]:
    """The bytes of each wrapped instruction, cut from wasmtime's encoding of wrapper_module."""
    count, pos = read_leb(section(module, CODE) or b"", 0)
    code = section(module, CODE) or b""
    prefix, suffix = b"\x00\x41\x00\x04\x40\x00", b"\x1a\x0b\x41\x01\x40\x00\x1a\x0b"
    out = []
    for i in range(count):
        size, pos = read_leb(code, pos)
        body = code[pos : pos + size]
        pos += size
        if i >= first_function:
            assert body.startswith(prefix) and body.endswith(suffix), body.hex()
            out.append(body[len(prefix) : -len(suffix)])
    return out


def test_every_instruction_decodes_and_stays_in_step() -> None:
    source = wrapper_module(ALL_INSTRUCTIONS)
    assert valid(wat(source)), rejection(wat(source))
    assert_rewrites_exactly(source)


def _opcode_key(encoded: bytes) -> Tuple[int, int]:
    """(opcode byte, sub-opcode or -1) of an instruction's encoding."""
    if encoded[0] in (0xFC, 0xFD):
        return encoded[0], read_leb(encoded, 1)[0]
    return encoded[0], -1


@pytest.fixture(scope="module")
def known_opcodes() -> set:
    module = wat(wrapper_module(ALL_INSTRUCTIONS))
    keys = {_opcode_key(b) for b in instruction_bytes(module, 1)}
    keys |= {(0x05, -1), (0x0B, -1)}  # else, end
    return keys


def test_instruction_lists_are_complete(known_opcodes: set) -> None:
    # Every SIMD/relaxed sub-opcode not in the list is unknown to wasmtime too (so the list
    # misses nothing), and the rewrite refuses it.
    simd = {sub for op, sub in known_opcodes if op == 0xFD}
    assert len(simd) == 236 + 20
    for sub in range(0x200):
        if sub in simd:
            continue
        module = binary_module(b"\x00\xfd" + leb(sub) + b"\x1a\x0b")
        assert "unknown 0xfd subopcode" in rejection(module), hex(sub)
        with pytest.raises(WasmRewriteError, match="unsupported instruction"):
            instrument_memory_grow(module)
    fc = {sub for op, sub in known_opcodes if op == 0xFC}
    assert fc == set(range(18))
    for sub in range(18, 0x80):
        module = binary_module(b"\x00\xfc" + leb(sub) + b"\x1a\x0b")
        assert rejection(module), hex(sub)
        with pytest.raises(WasmRewriteError, match="unsupported instruction"):
            instrument_memory_grow(module)
    single = {op for op, _ in known_opcodes}
    for op in range(256):
        if op in single:
            continue
        # (Zero padding: some opcodes read their immediates before checking their proposal.)
        module = binary_module(bytes([0x00, op]) + bytes(16) + b"\x1a\x0b")
        assert re.search(r"illegal opcode|not enabled|feature required|outside", rejection(module)), hex(op)
        with pytest.raises(WasmRewriteError, match="unsupported instruction"):
            instrument_memory_grow(module)


@pytest.mark.parametrize("chunk", range(4))
def test_each_instruction_alone(chunk: int) -> None:
    # One instruction per module too, so an error in one cannot hide behind another.
    for instruction in ALL_INSTRUCTIONS[chunk::4]:
        assert_rewrites_exactly(wrapper_module([instruction]))


def test_non_minimal_leb_immediates_are_decoded() -> None:
    # local.get, i32.const, memarg, call_indirect table, block type index and the 0xFC / 0xFD
    # sub-opcodes padded to five bytes: wasmtime accepts them, so the rewrite must too.
    body = (
        b"\x41\x80\x80\x80\x80\x00"  # i32.const 0 (5 bytes)
        + b"\x28\x82\x80\x80\x80\x00\xc0\x80\x80\x80\x00"  # i32.load align=4 offset=64
        + b"\x40\x00\x1a"  # memory.grow, drop
        + b"\x43\x00\x00\x40\x40\xfc\x80\x80\x80\x80\x00\x1a"  # f32.const 3.0, i32.trunc_sat_f32_s
        + b"\x41\x00\xfd\x80\x80\x00\x00\x40\x1a"  # v128.load offset=64 (sub-opcode 3 bytes)
        + b"\x02\x80\x80\x80\x80\x00\x0b"  # block (type 0), type index as a 5-byte s33
        + b"\x0b"
    )
    original = binary_module(body)
    assert valid(original), rejection(original)
    rewritten = instrument_memory_grow(original)
    assert valid(rewritten), rejection(rewritten)
    new_body = split_vector(section(rewritten, CODE))[1]
    size, pos = read_leb(new_body, 0)
    assert new_body[pos : pos + size] == b"\x00" + body.replace(b"\x40\x00\x1a", b"\x10\x01\x1a", 1)


# --- lookalike bytes ---------------------------------------------------------------------

LOOKALIKES = """
(module
  (memory (export "memory") 1)
  (global $g i64 (i64.const 0x4040404040404040))
  (data (i32.const 64) "\\40\\00\\40\\00")
  (func (export "f") (param $x i32) (result i32)
    (local $v v128) (local $l i64)
    (block (block (block
      (br_table 0 1 2 (local.get $x)))))
    (drop (i32.const -64))
    (drop (i32.const 64))
    (drop (memory.grow (i32.const 64)))
    (local.set $l (i64.const 0x40004000400040))
    (local.set $l (i64.const -64))
    (drop (f32.const 3.0))
    (drop (f64.const 2.0))
    (local.set $v (v128.const i8x16 64 0 64 0 64 0 64 0 64 0 64 0 64 0 64 0))
    (drop (memory.grow (i32.const 0)))
    (i32.store offset=64 (i32.const 0) (i32.load offset=64 (i32.const 0)))
    (i32.add (i32.wrap_i64 (local.get $l)) (i8x16.extract_lane_u 2 (local.get $v)))))
"""


def test_lookalike_bytes_are_not_rewritten() -> None:
    original = wat(LOOKALIKES)
    code = section(original, CODE) or b""
    assert code.count(b"\x40\x00") >= 8  # plenty of bytes that read like `memory.grow 0`
    rewritten = assert_rewrites_exactly(LOOKALIKES)
    assert_only_appended(original, rewritten)
    # `call 1` is as long as `memory.grow 0`, so the one body keeps its size and the code
    # sections differ exactly at the call sites: one per memory.grow in the source.
    old_count, old_bodies = split_vector(section(original, CODE))
    new_count, new_bodies = split_vector(section(rewritten, CODE))
    assert (old_count, new_count) == (1, 2)
    sites = []
    i = 0
    while i < len(old_bodies):
        if old_bodies[i] != new_bodies[i]:
            assert (old_bodies[i : i + 2], new_bodies[i : i + 2]) == (b"\x40\x00", b"\x10\x01")
            sites.append(i)
            i += 2
        else:
            i += 1
    assert len(sites) == LOOKALIKES.count("memory.grow") == 2
    assert Guest(original)("f", 1) == Guest(rewritten)("f", 1)


# --- errors ------------------------------------------------------------------------------


def test_bad_magic_and_version() -> None:
    good = wat("(module (memory 1))")
    for bad in (b"", b"\0as", b"\0asn\x01\0\0\0", good[:4] + b"\x02\0\0\0", b"\0asm\x0d\0\x01\0", b"\0asm"):
        with pytest.raises(WasmRewriteError, match="at byte"):
            instrument_memory_grow(bad)


def test_truncations_raise() -> None:
    for original in [wat(GROWER), wat(LOOKALIKES), PLUGINS["cache_aware_filter.wasm"]]:
        inside: set = set()
        for start, end in section_bounds(original):
            inside.update(range(start + 1, end))
        step = max(1, len(original) // 400)
        for cut in sorted(inside)[::step]:
            with pytest.raises(WasmRewriteError):
                instrument_memory_grow(original[:cut])


def test_truncated_function_body() -> None:
    body = b"\x41\xc0\x00\x40\x00\x1a\x0b"
    module = binary_module(body)
    code_at = section_bounds(module)[-1][0]
    # The body's declared size one short: its `end` falls outside.
    broken = module[:code_at] + b"\x0a" + leb(len(body) + 2) + b"\x01" + leb(len(body)) + b"\x00" + body[:-1]
    assert not valid(broken)
    with pytest.raises(WasmRewriteError):
        instrument_memory_grow(broken)
    # An immediate running past the end of the whole module.
    for tail in (b"\x41\x80", b"\x44\x00\x00", b"\xfd\x0c\x00", b"\x0e\x05\x00", b"\x28\x02", b"\xfd"):
        with pytest.raises(WasmRewriteError):
            instrument_memory_grow(binary_module(tail))


@pytest.mark.parametrize(
    "body,message",
    [
        (b"\x41\x00\xfe\x10\x02\x00\x1a\x0b", "0xfe"),  # i32.atomic.load
        (b"\xfe\x03\x00\x0b", "0xfe"),  # atomic.fence
        (b"\x41\x00\x28\x42\x00\x00\x1a\x0b", "multi-memory"),  # i32.load with memory index 0 in the memarg
        (b"\x41\x00\xfd\x00\x44\x00\x00\x1a\x0b", "multi-memory"),  # v128.load, same
        (b"\x41\x01\x40\x01\x1a\x0b", "memory 1"),  # memory.grow 1
        (b"\x41\x01\x40\x80\x00\x1a\x0b", "non-minimal"),  # wasmtime refuses it with multi-memory off
        (b"\x06\x40\x0b\x0b", "exception"),  # try
        (b"\x14\x00\x0b", "0x14"),  # call_ref
        (b"\xfb\x00\x0b", "GC"),
        (b"\xfc\x13\x0b", "0xfc"),  # wide arithmetic
        (b"\xfd\x9a\x01\x0b", "0xfd"),  # an unassigned SIMD sub-opcode
        (b"\x02\x63\x00\x0b\x0b", "block type"),  # (ref null 0): typed function references
        (b"\x02\x7f\x0b\x1a\x0b\x01", "end"),  # bytes after the function's end
        (b"\x41\x80\x80\x80\x80\x80\x00\x1a\x0b", "LEB128"),  # 6-byte s32
        (b"\x41\x80\x80\x80\x80\x10\x1a\x0b", "LEB128"),  # s32 out of range
        (b"\x20\x80\x80\x80\x80\x10\x1a\x0b", "LEB128"),  # u32 out of range
        (b"\x41\x00", "end"),  # no `end`
    ],
)
def test_bad_instructions_raise(body: bytes, message: str) -> None:
    module = binary_module(body)
    assert not valid(module)
    with pytest.raises(WasmRewriteError, match=message) as info:
        instrument_memory_grow(module)
    assert re.search(r"at byte \d+", str(info.value))


def test_unsupported_instruction_message_names_the_opcode_and_offset() -> None:
    module = binary_module(b"\x41\x00\xfe\x10\x02\x00\x1a\x0b")
    with pytest.raises(WasmRewriteError) as info:
        instrument_memory_grow(module)
    assert str(info.value).startswith("unsupported instruction 0xfe")
    offset = int(re.search(r"at byte (\d+)", str(info.value)).group(1))  # type: ignore[union-attr]
    assert module[offset] == 0xFE


def test_reserved_export_raises() -> None:
    source = f'(module (memory 1) (global (export "{GROW_REFUSED_EXPORT}") (mut i32) (i32.const 0)))'
    with pytest.raises(WasmRewriteError, match="already exports"):
        instrument_memory_grow(wat(source))
    # Another export with the same prefix is fine.
    instrument_memory_grow(wat(f'(module (memory 1) (func (export "{GROW_REFUSED_EXPORT}x")))'))


def test_no_memory_or_two_memories_raise() -> None:
    with pytest.raises(WasmRewriteError, match="no memory"):
        instrument_memory_grow(wat("(module (func))"))
    with pytest.raises(WasmRewriteError, match="no memory"):
        instrument_memory_grow(b"\0asm\x01\0\0\0")
    two = b"\0asm\x01\0\0\0" + b"\x05\x05\x02\x00\x01\x00\x01"
    with pytest.raises(WasmRewriteError, match="more than one memory"):
        instrument_memory_grow(two)
    with pytest.raises(WasmRewriteError, match="more than one memory"):
        instrument_memory_grow(wat('(module (import "m" "m" (memory 1)) (memory 1))'))


def test_malformed_sections_raise() -> None:
    base = wat(GROWER)
    secs = sections(base)
    raw = [bytes([sid]) + leb(len(p)) + p for sid, p in secs]
    header = base[:8]
    cases = {
        "duplicated": header + raw[0] + raw[0] + b"".join(raw[1:]),
        "out of order": header + b"".join(reversed(raw)),
        "unknown id": base + b"\x0e\x00",
        "oversized section": base + b"\x00\x05\x01a",
        "function/code mismatch": header + b"".join(r for (sid, _), r in zip(secs, raw) if sid != CODE),
        "custom name too long": base + b"\x00\x02\x05a",
        "export trailing bytes": header
        + b"".join(r if sid != EXPORT else bytes([EXPORT]) + leb(len(p) + 1) + p + b"\x00" for (sid, p), r in zip(secs, raw)),
    }
    for what, module in cases.items():
        assert not valid(module), what
        with pytest.raises(WasmRewriteError):
            instrument_memory_grow(module)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_raise_only_wasm_rewrite_error(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PLUGINS)))
    buf = bytearray(PLUGINS[name])
    code_start = section_bounds(bytes(buf))[-1][0]  # the bundled plugins end with the code or a custom section
    for _ in range(data.draw(st.integers(1, 4))):
        near_code = min(code_start, len(buf) - 1)
        where = data.draw(st.one_of(st.integers(0, len(buf) - 1), st.integers(near_code, len(buf) - 1)))
        action = data.draw(st.sampled_from(["set", "insert", "delete", "truncate", "flip"]))
        if action == "set":
            buf[where] = data.draw(st.integers(0, 255))
        elif action == "flip":
            buf[where] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            buf[where:where] = data.draw(st.binary(min_size=1, max_size=6))
        elif action == "delete":
            del buf[where : where + data.draw(st.integers(1, 6))]
        else:
            del buf[where:]
        if not buf:
            break
    check_against_wasmtime(bytes(buf))


# Refusals of modules that wasmtime accepts: the host needs a memory and the export name.
DOCUMENTED_REFUSALS = r"no memory|already exports"


def check_against_wasmtime(module: bytes) -> None:
    """Only WasmRewriteError comes out; a module wasmtime accepts is instrumented (unless it
    has no memory or already has the export) and its rewrite is accepted too."""
    try:
        rewritten = instrument_memory_grow(module)
    except WasmRewriteError as e:
        if valid(module):
            assert re.search(DOCUMENTED_REFUSALS, str(e)), f"refused a valid module: {e}"
        return
    if valid(module):
        assert_instrumented(module, rewritten)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_random_bodies_raise_only_wasm_rewrite_error(body: bytes) -> None:
    check_against_wasmtime(binary_module(body))


# --- size --------------------------------------------------------------------------------


def test_two_megabyte_module() -> None:
    snippet = """
    (module (memory 1)
      (func (param i32) (result i32) (local i32 i64 v128)
        (block (loop
          (local.set 1 (i32.add (i32.load offset=64 (local.get 0)) (i32.const -64)))
          (br_if 1 (i32.eqz (local.get 1)))
          (i64.store offset=8 (local.get 0) (i64.const 0x40404040))
          (local.set 3 (i32x4.add (v128.load (local.get 0)) (v128.const i32x4 64 64 64 64)))
          (drop (memory.grow (i32.const 0)))
          (local.set 1 (select (local.get 1) (i32.const 7) (local.get 0)))
          (f64.store (i32.const 16) (f64.add (f64.const 2.0) (f64.load (i32.const 32))))))
        (local.get 1)))
    """
    one = wat(snippet)
    body = split_vector(section(one, CODE))[1]  # one body, with its size
    copies = 2_000_000 // len(body)
    type_section, memory_section = section(one, TYPE) or b"", section(one, 5) or b""

    def sec(sid: int, payload: bytes) -> bytes:
        return bytes([sid]) + leb(len(payload)) + payload

    big = (
        b"\0asm\x01\0\0\0"
        + sec(TYPE, type_section)
        + sec(FUNCTION, leb(copies) + b"\x00" * copies)
        + sec(5, memory_section)
        + sec(CODE, leb(copies) + body * copies)
    )
    assert len(big) > 2_000_000
    rewritten = instrument_memory_grow(big)  # its speed is bench's (and admission's compile_timeout_s) to judge
    assert valid(rewritten), rejection(rewritten)
    new_count, new_bodies = split_vector(section(rewritten, CODE))
    assert new_count == copies + 1
    # Each body changed in exactly one place: `memory.grow 0` became `call <copies>`.
    size, start = read_leb(body, 0)
    content = body[start:]
    assert len(content) == size and content.count(b"\x40\x00\x1a") == 1
    changed = content.replace(b"\x40\x00\x1a", b"\x10" + leb(copies) + b"\x1a")
    assert new_bodies.startswith((leb(len(changed)) + changed) * copies)
