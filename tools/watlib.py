"""Pieces of the WAT test guests, shared by their generators.

tests/fixtures/hostile/gen_fixtures.py, tests/fixtures/proxy/gen_fixtures.py and
bench/guests/gen_guests.py build cc-lb V1 guests from these: WAT string literals, the
``cc_lb.plugin.v1`` metadata JSON, and a bump allocator exporting ``cc_lb_alloc``.
"""

from __future__ import annotations

import json
from typing import Any, Dict

#: A ``cc_lb_free`` that frees nothing (a bump allocator's memory dies with its instance).
NOOP_FREE = '  (func $free (export "cc_lb_free") (param i32 i32 i32))\n'


def wat_string(data: bytes) -> str:
    """``data`` as a WAT string literal: printable ASCII as it is, every other byte escaped."""
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:02x}" for b in data) + '"'


def plugin_metadata(name: str, description: str, usage: str, hooks: Dict[str, Any], /, **override: Any) -> bytes:
    """The ``cc_lb.plugin.v1`` JSON, compact; ``override`` replaces or adds top-level keys."""
    meta: Dict[str, Any] = {"name": name, "version": "0.0.1", "description": description, "usage": usage, "hooks": hooks}
    meta.update(override)
    return json.dumps(meta, separators=(",", ":")).encode("utf-8")


def bump_allocator(heap_base: int, *, export: bool = True, defect: str = "") -> str:
    """``$alloc``: 16-aligned blocks from ``heap_base`` up, memory grown on demand, 0 on
    failure (overflow, past 0xfff00000, or a refused grow). ``defect`` is WAT inserted
    right after the block's address is computed (``$p``), to break it on purpose."""
    export_alloc = '(export "cc_lb_alloc") ' if export else ""
    return f"""\
  ;; bump allocator: 16-aligned blocks from {heap_base} up, memory grown on demand, 0 on failure
  (global $top (mut i32) (i32.const {heap_base}))
  (func $alloc {export_alloc}(param $size i32) (param $align i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 15)) (i32.const -16))){defect}
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.or (i32.lt_u (local.get $end) (local.get $p))
                (i32.gt_u (local.get $end) (i32.const 0xfff00000)))
      (then (return (i32.const 0))))
    (if (i32.gt_u (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                  (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535))
                                                     (i32.const 16))
                                          (memory.size)))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (local.get $end))
    (local.get $p))
"""
