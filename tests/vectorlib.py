"""Reading the golden vectors (shared by the test modules)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

DATA_DIR = Path(__file__).resolve().parent / "data"
#: Point CCLB_WIRE_VECTORS at another directory of vectors (same file format),
#: e.g. a held-out set, to run the vector tests against it.
VECTORS_DIR = Path(os.environ.get("CCLB_WIRE_VECTORS", DATA_DIR))


def read_jsonl(name: str) -> Iterator[dict]:
    path = VECTORS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"vector file {path} is missing (CCLB_WIRE_VECTORS={VECTORS_DIR})")
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def expand_body(value):
    """The vectors' value with every repeat_hex body expanded to plain hex."""
    if isinstance(value, dict):
        if set(value) == {"repeat_hex", "len"}:
            pattern = bytes.fromhex(value["repeat_hex"])
            n = value["len"]
            return (pattern * (n // len(pattern) + 1))[:n].hex()
        return {k: expand_body(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_body(v) for v in value]
    return value
