#!/usr/bin/env python3
"""Generate the benchmark guests (*.wat) in this directory.

    python bench/guests/gen_guests.py           # (re)write every .wat
    python bench/guests/gen_guests.py --check   # exit 1 if a .wat is stale or does not assemble

The .wat files are generated, like tests/fixtures/hostile/, because they embed bytes
that must never be typed by hand: the layout fingerprint (`cclb_wire.FINGERPRINTS`)
and the constant answer, a FilterResponse archive encoded by cclb_wire. Custom
sections use the annotation syntax `(@custom "name" "bytes")`, which
`wasmtime.wat2wasm` assembles into real custom sections.

bench/bench_host.py imports this module for the shared constants (the candidate ids,
the answer, the spin-count pattern) and refuses to run on stale .wat files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The benchmark request's 8 candidates (bench_host.py builds them with these ids).
CANDIDATE_IDS = tuple(uuid.UUID(int=0x5EED0100 + i) for i in range(8))
#: Where the constant answer lives in guest memory, and where the heap starts.
ANSWER_AT = 1024
HEAP_BASE = 4096
#: The spin guest's loop count as written in the file; bench_host.py calibrates it.
DEFAULT_SPIN_ITERATIONS = 1_000_000
SPIN_GLOBAL = re.compile(r"\(global \$spin_iterations i32 \(i32\.const (\d+)\)\)")


def constant_answer() -> bytes:
    """The FilterResponse archive the constant guest (and the extism guest) answer:
    one result per candidate, the first two accepted."""
    from cclb_wire import encode, wire

    results = tuple(
        wire.PerCandidateReason(
            str(upstream_id),
            "accept" if index < 2 else "reject",
            f"top-K by predicted cache read tokens ({4096 * (8 - index)})"
            if index < 2
            else f"outside top-K ({4096 * (8 - index)} predicted cache read tokens)",
        )
        for index, upstream_id in enumerate(CANDIDATE_IDS)
    )
    return encode(wire.FilterResponse(results))


def with_spin_iterations(wat: str, iterations: int) -> str:
    """The spin guest's text with another loop count (one call spins that many times)."""
    text, replaced = SPIN_GLOBAL.subn(f"(global $spin_iterations i32 (i32.const {iterations}))", wat)
    if replaced != 1:
        raise ValueError("the spin guest has no `(global $spin_iterations i32 (i32.const N))`")
    return text


def wat_string(data: bytes) -> str:
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:02x}" for b in data) + '"'


def metadata(name: str, description: str) -> bytes:
    meta = {
        "name": name,
        "version": "0.0.1",
        "description": description,
        "usage": "Benchmark guest (bench/bench_host.py); never deploy.",
        "hooks": {"filter": {"wire_version": 1, "description": description, "usage": "No configuration."}},
    }
    return json.dumps(meta, separators=(",", ":")).encode("utf-8")


# The cc-lb allocator exports. The host's order is alloc(request) -> hook frees the
# request -> host frees the output, so a bump allocator that takes back its most recent
# block keeps a reused instance's memory flat (a 1 MiB request every call included).
ALLOCATOR = f"""\
  ;; bump allocator: 16-aligned blocks from {HEAP_BASE} up, memory grown on demand, 0 on failure
  (global $top (mut i32) (i32.const {HEAP_BASE}))
  (func $alloc (export "cc_lb_alloc") (param $size i32) (param $align i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 15)) (i32.const -16)))
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
  ;; gives back the most recent block only; static data (below {HEAP_BASE}) is never freed
  (func $free (export "cc_lb_free") (param $ptr i32) (param $size i32) (param $align i32)
    (if (i32.and (i32.ge_u (local.get $ptr) (i32.const {HEAP_BASE}))
                 (i32.eq (i32.add (local.get $ptr) (local.get $size)) (global.get $top)))
      (then (global.set $top (local.get $ptr)))))
"""


def cclb_filter_module(name: str, doc: str, fingerprint: bytes, description: str, *, answer: bytes,
                       globals_: str = "", locals_: str = "", before_answer: str = "") -> str:
    """A complete cc-lb V1 filter plugin that frees its input, runs `before_answer` (with
    the hook's `locals_`), and answers `answer` (stored at ANSWER_AT)."""
    lines = [f";; {name}: {line}" if i == 0 else f";; {line}" for i, line in enumerate(doc.strip().splitlines())]
    lines += [
        ";; Generated by gen_guests.py; edit that script, not this file.",
        "(module",
        '  (memory (export "memory") 1)',
        f"  ;; the answer: a {len(answer)}-byte FilterResponse archive",
        f"  (data (i32.const {ANSWER_AT}) {wat_string(answer)})",
    ]
    if globals_:
        lines.append(globals_.rstrip())
    lines.append(ALLOCATOR.rstrip())
    lines.append('  (func $hook (export "cc_lb_filter") (param $in_ptr i32) (param $in_len i32) (result i64)')
    if locals_:
        lines.append(f"    {locals_}")
    lines.append("    (call $free (local.get $in_ptr) (local.get $in_len) (i32.const 16))")
    if before_answer:
        lines.append("    " + before_answer.strip().replace("\n", "\n    "))
    lines.append(f"    (i64.or (i64.shl (i64.const {ANSWER_AT}) (i64.const 32)) (i64.const {len(answer)})))")
    lines.append(f'  (@custom "cc_lb.plugin.v1" {wat_string(metadata(name, description))})')
    lines.append(f'  (@custom "cc_lb.schema.filter.v1" {wat_string(fingerprint)})')
    lines.append(")")
    return "\n".join(lines) + "\n"


# An empty FilterResponse: results offset 0, length 0.
EMPTY_ANSWER = bytes(8)

SPIN_LOOP = """\
(local.set $i (global.get $spin_iterations))
(block $done
  (loop $spin
    (br_if $done (i32.eqz (local.get $i)))
    (local.set $i (i32.sub (local.get $i) (i32.const 1)))
    (br $spin)))"""


def extism_module(answer: bytes) -> str:
    """An extism plugin with the constant guest's payloads: it copies its input into its
    own memory the way a PDK's `input()` does (8 bytes per kernel call), then outputs the
    constant answer through the kernel's memory (`alloc`, `store_u64`, `output_set`)."""
    copy_to = HEAP_BASE
    return f""";; extism_filter: an extism plugin with the same payloads as constant_filter: it copies its
;; input (the FilterRequest archive) into its own memory and outputs the {len(answer)}-byte constant answer.
;; Export `filter() -> i32`; imports extism's kernel ("extism:host/env").
;; Generated by gen_guests.py; edit that script, not this file.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  (data (i32.const {ANSWER_AT}) {wat_string(answer)})
  (func (export "filter") (result i32)
    (local $len i64) (local $i i64) (local $out i64) (local $pages i32)
    ;; the input, copied to {copy_to}.. (memory grown to fit)
    (local.set $len (call $input_length))
    (local.set $pages (i32.wrap_i64 (i64.shr_u (i64.add (i64.add (local.get $len) (i64.const {copy_to})) (i64.const 65535))
                                               (i64.const 16))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
              (then (return (i32.const 1))))))
    (local.set $i (i64.const 0))
    (block $words_done
      (loop $words
        (br_if $words_done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $len)))
        (i64.store (i32.add (i32.const {copy_to}) (i32.wrap_i64 (local.get $i))) (call $input_load_u64 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $words)))
    (block $bytes_done
      (loop $bytes
        (br_if $bytes_done (i64.ge_u (local.get $i) (local.get $len)))
        (i32.store8 (i32.add (i32.const {copy_to}) (i32.wrap_i64 (local.get $i))) (call $input_load_u8 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $bytes)))
    ;; the answer, copied into the kernel's memory and set as the output
    (local.set $out (call $alloc (i64.const {len(answer)})))
    (local.set $i (i64.const 0))
    (block $out_words_done
      (loop $out_words
        (br_if $out_words_done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (i64.const {len(answer)})))
        (call $store_u64 (i64.add (local.get $out) (local.get $i))
                         (i64.load (i32.add (i32.const {ANSWER_AT}) (i32.wrap_i64 (local.get $i)))))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $out_words)))
    (block $out_bytes_done
      (loop $out_bytes
        (br_if $out_bytes_done (i64.ge_u (local.get $i) (i64.const {len(answer)})))
        (call $store_u8 (i64.add (local.get $out) (local.get $i))
                        (i32.load8_u (i32.add (i32.const {ANSWER_AT}) (i32.wrap_i64 (local.get $i)))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $out_bytes)))
    (call $output_set (local.get $out) (i64.const {len(answer)}))
    (i32.const 0))
)
"""


def guests() -> dict[str, str]:
    from cclb_wire import FINGERPRINTS

    fingerprint = bytes(FINGERPRINTS["filter"])
    answer = constant_answer()
    if ANSWER_AT + len(answer) > HEAP_BASE:
        raise ValueError(f"the {len(answer)}-byte answer does not fit below the heap at {HEAP_BASE}")
    return {
        "constant_filter": cclb_filter_module(
            "constant_filter",
            "a cc-lb V1 filter plugin that frees its input and answers the same\n"
            f"{len(answer)}-byte FilterResponse (8 results, 2 accepted) every call: the cost of a\n"
            "call with the guest's own work taken out.",
            fingerprint,
            "Answers a constant FilterResponse.",
            answer=answer,
        ),
        "spin_filter": cclb_filter_module(
            "spin_filter",
            "a cc-lb V1 filter plugin that counts down $spin_iterations in a loop, then\n"
            "answers an empty FilterResponse; bench_host.py rewrites the count so a call\n"
            "takes about 2.5 ms (the thread-scaling workload: guest time, no Python).",
            fingerprint,
            "Spins a counted loop, then answers an empty FilterResponse.",
            answer=EMPTY_ANSWER,
            globals_=f"  (global $spin_iterations i32 (i32.const {DEFAULT_SPIN_ITERATIONS}))",
            locals_="(local $i i32)",
            before_answer=SPIN_LOOP,
        ),
        "extism_filter": extism_module(answer),
    }


class StaleGuest(RuntimeError):
    """A .wat file is missing or differs from what this script generates."""


def load(name: str) -> str:
    """The text of a generated guest; raises StaleGuest if the file is missing or stale."""
    text = guests()[name]
    path = HERE / f"{name}.wat"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        raise StaleGuest(f"{path} is missing or stale: run `python bench/guests/gen_guests.py`")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the .wat files are current and assemble")
    args = parser.parse_args(argv)
    generated = guests()
    if not args.check:
        for name, text in generated.items():
            (HERE / f"{name}.wat").write_text(text, encoding="utf-8")
        print(f"wrote {len(generated)} guests to {HERE}")
        return 0
    import wasmtime

    problems = []
    for name, text in generated.items():
        path = HERE / f"{name}.wat"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            problems.append(f"{path.name} is missing or stale")
        try:
            wasmtime.wat2wasm(text)
        except Exception as exc:  # noqa: BLE001 - any assembler error is a finding
            problems.append(f"{name}.wat does not assemble: {exc}")
    for line in problems:
        print(f"bench guests: {line}", file=sys.stderr)
    if problems:
        print("bench guests: run `python bench/guests/gen_guests.py`", file=sys.stderr)
        return 1
    print(f"bench guests: {len(generated)} current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
