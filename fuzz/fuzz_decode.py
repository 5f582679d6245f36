"""Random and mutated input for the decoders: nothing but WireError may come out.

Usage: python fuzz/fuzz_decode.py [--seconds N] [--type ROOT ...] [--seed S] [--vectors DIR]

For each root type it feeds, for ``--seconds`` each:
  * archives of random values (schema-driven), mutated: byte flips, pointer
    offsets and lengths re-aimed, truncation, insertion, deletion, splicing;
  * the golden and mutation-base archives, mutated the same way;
  * plain random bytes.
Every accepted input must re-encode and decode to the same value. Prints one
summary line per type; exits 1 on the first finding (and prints a reproducer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time
from pathlib import Path

import cclb_wire
from cclb_wire import jsonvalue, schema, wire

HERE = Path(__file__).resolve().parent

DEFAULT_VECTORS = HERE.parent / "tests" / "data"


def random_text(rng: random.Random) -> str:
    pools = ["", "a", "abc", "é", "한국어", "🧑‍💻", "\x00", "\ud7ff", "\U0010ffff", "x" * 40]
    return "".join(rng.choice(pools) for _ in range(rng.randrange(0, 4)))


def random_value(wire_type, rng: random.Random):
    if isinstance(wire_type, schema.Float):  # no NaN: values are compared (NaN's bytes are in the vectors)
        return rng.choice([0.0, -0.0, 1.0, 0.75, float("inf"), float("-inf"), 5e-324, rng.uniform(-1e300, 1e300)])
    if isinstance(wire_type, schema.Primitive):
        return rng.choice([0, 1, wire_type.max_value, rng.randrange(0, wire_type.max_value + 1)])
    if wire_type is schema.STR:
        return random_text(rng)
    if wire_type is schema.BYTES:
        return rng.randbytes(rng.choice([0, 1, 3, 17, 100]))
    if isinstance(wire_type, schema.OptionOf):
        return None if rng.random() < 0.4 else random_value(wire_type.inner, rng)
    if isinstance(wire_type, schema.SliceOf):
        return tuple(random_value(wire_type.elem, rng) for _ in range(rng.choice([0, 0, 1, 2, 3, 5])))
    if isinstance(wire_type, schema.StructType):
        return wire.class_for(wire_type)(*(random_value(f.type, rng) for f in wire_type.fields))
    variant_class = rng.choice(wire.class_for(wire_type).VARIANTS)
    return variant_class(*(random_value(f.type, rng) for f in variant_class.WIRE_VARIANT.fields))


def mutate(data: bytes, rng: random.Random, others: list) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        choice = rng.randrange(9)
        if not buf:
            buf = bytearray(rng.randbytes(rng.randrange(0, 100)))
            continue
        pos = rng.randrange(len(buf))
        if choice == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buf[pos] = rng.choice([0, 1, 2, 5, 6, 0x7F, 0x80, 0xC0, 0xED, 0xF4, 0xFF])
        elif choice in (2, 3) and len(buf) >= 8:
            # Re-aim a pointer or set a length: 4-aligned i32/u32 slots.
            slot = rng.randrange(len(buf) // 4) * 4
            if slot + 4 <= len(buf):
                value = rng.choice(
                    [0, 1, -1, -4, -8, -len(buf), -slot, -slot - 1, len(buf), 0x7FFFFFFF, -0x80000000, rng.randrange(-300, 300)]
                )
                if choice == 3:
                    value = rng.choice([0, 1, 2, 0xFFFFFFFF, 0x7FFFFFFF, 1 << 28, rng.randrange(0, 300)])
                    struct.pack_into("<I", buf, slot, value & 0xFFFFFFFF)
                else:
                    struct.pack_into("<i", buf, slot, value)
        elif choice == 4:
            del buf[rng.randrange(len(buf)) :]
        elif choice == 5:
            buf[pos:pos] = rng.randbytes(rng.choice([1, 4, 8, 16]))
        elif choice == 6:
            del buf[pos : pos + rng.choice([1, 4, 8])]
        elif choice == 7 and others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        else:
            buf += bytes(rng.choice([1, 4, 8, 16]))
    return bytes(buf)


def load_seeds(vectors: Path) -> dict:
    seeds = {name: [] for name in schema.ROOT_TYPES}
    for file_name in ("valid.jsonl", "mutation_bases.jsonl"):
        path = vectors / file_name
        if path.exists():
            for line in path.open(encoding="utf-8"):
                entry = json.loads(line)
                if entry["len"] <= 4096:
                    seeds[entry["type"]].append(bytes.fromhex(entry["hex"]))
    return seeds


def check(root, data: bytes) -> str:
    """'ok' or 'rejected'; raises on a finding."""
    try:
        value = cclb_wire.decode(root.name, data)
    except cclb_wire.WireError as exc:
        if not isinstance(exc, cclb_wire.DecodeError):
            raise AssertionError(f"decode raised a non-decode WireError: {exc!r}")
        return "rejected"
    again = cclb_wire.decode(root.name, cclb_wire.encode(value))
    if again != value:
        raise AssertionError("accepted value does not survive encode/decode")
    jsonvalue.to_json_value(root, value)
    return "ok"


def fuzz_type(root, seconds: float, rng: random.Random, seeds: list) -> dict:
    stats = {"inputs": 0, "accepted": 0, "rejected": 0}
    deadline = time.monotonic() + seconds
    pool = list(seeds)
    while time.monotonic() < deadline:
        for _ in range(200):
            roll = rng.random()
            if roll < 0.45 and pool:
                data = mutate(rng.choice(pool), rng, pool)
            elif roll < 0.9:
                data = mutate(cclb_wire.encode(random_value(root, rng)), rng, pool)
            else:
                data = rng.randbytes(rng.choice([0, 1, 7, 8, 16, 80, 84, 92, 200]))
            try:
                verdict = check(root, data)
            except Exception as exc:  # a finding: anything but WireError
                print(f"FINDING {root.name}: {type(exc).__name__}: {exc}\n  input hex: {data.hex()}", flush=True)
                raise SystemExit(1)
            stats["inputs"] += 1
            stats["accepted" if verdict == "ok" else "rejected"] += 1
            if verdict == "ok" and len(pool) < 2000 and rng.random() < 0.05:
                pool.append(data)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per root type")
    parser.add_argument("--type", action="append", choices=list(schema.ROOT_TYPES), help="root type(s); default all")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    parser.add_argument("--vectors", type=Path, default=DEFAULT_VECTORS)
    args = parser.parse_args()
    seeds = load_seeds(args.vectors)
    print(f"backend={cclb_wire.BACKEND} seed={args.seed} seconds/type={args.seconds}", flush=True)
    total = 0
    for name in args.type or list(schema.ROOT_TYPES):
        rng = random.Random(f"{args.seed}/{name}")
        started = time.monotonic()
        stats = fuzz_type(schema.ROOT_TYPES[name], args.seconds, rng, seeds[name])
        total += stats["inputs"]
        print(
            f"{name}: {stats['inputs']} inputs in {time.monotonic() - started:.0f}s "
            f"({stats['accepted']} accepted, {stats['rejected']} rejected), no finding",
            flush=True,
        )
    print(f"total: {total} inputs, no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
