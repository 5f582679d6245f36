"""Coverage-guided, differential fuzzing of the extension's decoder entry points (atheris).

Usage: python fuzz/atheris_codec.py ENTRY [libFuzzer options...]
  ENTRY: decode | decode_filter_output | decode_shaped_request
  e.g.   python fuzz/atheris_codec.py decode -max_total_time=600 fuzz/corpus-decode

Each input goes to the Cython entry point and to the pure-Python fallback; any
crash, any exception other than the documented errors, and any difference in
outcome (value, or error class, kind and message) is a finding.

For coverage of the C code, build the extension with clang and libFuzzer's
instrumentation and preload the ASan runtime (see fuzz/README.md); an ordinary
build is fuzzed too, with coverage of the Python paths only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# libFuzzer (inside atheris) must export its coverage hooks to an instrumented extension.
sys.setdlopenflags(os.RTLD_NOW | os.RTLD_GLOBAL)

import atheris  # noqa: E402

# cclb_wire is imported in main(), after atheris.Setup() has loaded libFuzzer: an
# instrumented extension resolves its coverage hooks against it when it loads.
cclb_wire = _codec = _fallback = schema = wire = None
ROOTS: list = []
UPSTREAMS: list = []
POLICIES: list = []
EXPECTED_ERRORS: tuple = ()


def load_codec() -> None:
    global cclb_wire, _codec, _fallback, schema, wire, ROOTS, UPSTREAMS, POLICIES, EXPECTED_ERRORS
    with atheris.instrument_imports():
        import cclb_wire
        from cclb_wire import _codec, _fallback, schema, wire
    ROOTS = list(schema.ROOT_TYPES)
    UPSTREAMS = [
        cclb_wire.AnthropicDirect("https://api.anthropic.com"),
        cclb_wire.AnthropicDirect(None),
        cclb_wire.AnthropicDirect("http://127.0.0.1:8080/base/"),
    ]
    POLICIES = list(cclb_wire.ShapeOriginPolicy)
    EXPECTED_ERRORS = (cclb_wire.DecodeError, cclb_wire.FilterError, cclb_wire.DialectError)

def outcome(function, *args, **kwargs):
    try:
        return ("ok", function(*args, **kwargs))
    except EXPECTED_ERRORS as error:
        cause = type(error.__cause__) if error.__cause__ is not None else None
        return ("error", type(error), getattr(error, "kind", None), str(error), getattr(error, "offset", None), cause)


def same(label, fast, slow, data):
    if fast != slow:
        raise AssertionError(f"{label}: backends differ on {data.hex()}\n  cython: {fast!r}\n  python: {slow!r}")


def one_decode(data: bytes) -> None:
    if not data:
        return
    root, payload = ROOTS[data[0] % len(ROOTS)], data[1:]
    same("decode", outcome(_codec.decode, root, payload), outcome(_fallback.decode, root, payload), data)


def _bounds(byte: int):
    # Small bounds reach every limit with short inputs.
    return cclb_wire.WireBounds(
        output_body_bytes=(byte & 0x03) * 150 if byte & 0x80 else 100 * 1024 * 1024,
        max_headers=(byte >> 2) & 0x07,
        max_header_value_bytes=(byte >> 2) & 0x1F,
        reason_bytes=byte & 0x3F,
    )


def one_filter_output(data: bytes) -> None:
    if not data:
        return
    bounds, payload = _bounds(data[0]), data[1:]
    same(
        "decode_filter_output",
        outcome(_codec.decode_filter_output, payload, bounds),
        outcome(_fallback.decode_filter_output, payload, bounds),
        data,
    )


def one_shaped_request(data: bytes) -> None:
    if len(data) < 2:
        return
    bounds, upstream, policy, payload = _bounds(data[0]), UPSTREAMS[data[1] % 3], POLICIES[data[1] >> 7], data[2:]
    kwargs = {"origin_policy": policy, "bounds": bounds}
    same(
        "decode_shaped_request",
        outcome(_codec.decode_shaped_request, payload, upstream, **kwargs),
        outcome(_fallback.decode_shaped_request, payload, upstream, **kwargs),
        data,
    )


ENTRIES = {"decode": one_decode, "decode_filter_output": one_filter_output, "decode_shaped_request": one_shaped_request}


def seed_corpus(entry: str, directory: Path) -> None:
    """Seeds: the golden and mutation-base archives, with the entry's prefix bytes."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    vectors = Path(__file__).resolve().parent.parent / "tests" / "data"
    for file_name in ("valid.jsonl", "mutation_bases.jsonl"):
        for index, line in enumerate((vectors / file_name).open(encoding="utf-8")):
            item = json.loads(line)
            archive = bytes.fromhex(item["hex"])
            if len(archive) > 8192:
                continue
            if entry == "decode":
                seed = bytes([ROOTS.index(item["type"])]) + archive
            elif entry == "decode_filter_output" and item["type"] == "FilterResponse":
                seed = b"\x20" + archive
            elif entry == "decode_shaped_request" and item["type"] == "ShapeResponse":
                seed = b"\x7c\x80" + archive
            else:
                continue
            (directory / f"{file_name}-{index}").write_bytes(seed)
    for index, value in enumerate(
        [
            wire.FilterResponse((wire.PerCandidateReason("11111111-1111-1111-1111-111111111111", "accept", "é" * 40),)),
            wire.ShapeResponse("https://api.anthropic.com/v1", "POST", (wire.Header("X-Anthropic-Beta", b"1"),), b""),
        ]
    ):
        prefix = b"\x10" if index == 0 else b"\x7c\x80"
        if (entry == "decode_filter_output") == (index == 0) or entry == "decode":
            head = bytes([ROOTS.index(type(value).__name__)]) if entry == "decode" else prefix
            (directory / f"extra-{index}").write_bytes(head + _fallback.encode(value))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ENTRIES:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(ENTRIES)}}} [libFuzzer options] [corpus dir]")
    entry = sys.argv.pop(1)
    atheris.Setup(sys.argv, ENTRIES[entry])
    load_codec()
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        seed_corpus(entry, Path(corpus[0]))
    print(f"fuzzing {entry}; extension at {_codec.__file__}", flush=True)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
