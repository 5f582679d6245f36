"""``cclb-wire``: encode, decode and inspect cc-lb V1 wire archives from the shell.

  cclb-wire sample TYPE                      print a bundled sample value (JSON)
  cclb-wire encode --type TYPE [--hex]       JSON value on stdin  -> archive on stdout
  cclb-wire decode --type TYPE [--hex]       archive on stdin     -> JSON value on stdout
  cclb-wire schema                           layouts, descriptors and fingerprints

Values use the golden vectors' JSON format (bytes as lowercase hex). An invalid
value or archive exits with status 1 and a one-line error on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from typing import List, Optional

from . import BACKEND, schema
from .errors import WireError
from .jsonvalue import decode_json, encode_json

ROOT_NAMES = list(schema.ROOT_TYPES)


def _read_stdin_bytes() -> bytes:
    return sys.stdin.buffer.read()


def _fail(message: str) -> int:
    print(f"cclb-wire: {message.splitlines()[0] if message else 'error'}", file=sys.stderr)
    return 1


def _cmd_encode(args: argparse.Namespace) -> int:
    try:
        archive = encode_json(args.type, _read_stdin_bytes())
    except WireError as exc:
        return _fail(str(exc))
    if args.hex:
        sys.stdout.write(archive.hex() + "\n")
    else:
        sys.stdout.buffer.write(archive)
    sys.stdout.flush()
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    data = _read_stdin_bytes()
    if args.hex:
        try:
            data = bytes.fromhex(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return _fail("--hex input is not a hex string")
    try:
        value = decode_json(args.type, data)
    except WireError as exc:
        return _fail(str(exc))
    json.dump(value, sys.stdout, ensure_ascii=False, indent=args.indent)
    sys.stdout.write("\n")
    return 0


def sample_text(type_name: str) -> str:
    """The bundled sample value of a root type, as JSON text."""
    return resources.files("cclb_wire").joinpath("samples", f"{type_name}.json").read_text(encoding="utf-8")


def _cmd_sample(args: argparse.Namespace) -> int:
    sys.stdout.write(sample_text(args.type))
    return 0


def _describe(wire_type: object, indent: str, lines: List[str]) -> None:
    if isinstance(wire_type, schema.StructType):
        for f in wire_type.fields:
            lines.append(f"{indent}@{f.offset:<3} {f.name}: {f.type.rust} (size {f.type.size}, align {f.type.align})")
    elif isinstance(wire_type, schema.EnumType):
        lines.append(f"{indent}@0   tag: u8")
        for v in wire_type.variants:
            lines.append(f"{indent}{v.tag} {v.name}")
            for f in v.fields:
                lines.append(f"{indent}  @{f.offset:<3} {f.name}: {f.type.rust} (size {f.type.size}, align {f.type.align})")


def _cmd_schema(args: argparse.Namespace) -> int:
    lines = [f"cc-lb plugin wire V{schema.WIRE_VERSION} (rkyv 0.8), codec backend: {BACKEND}", ""]
    for wire_type in schema.ALL_TYPES.values():
        lines.append(f"{wire_type.name}: size {wire_type.size}, align {wire_type.align}")
        _describe(wire_type, "  ", lines)
    lines.append("")
    for hook, root in schema.HOOK_REQUEST_TYPES.items():
        lines.append(f"hook {hook}: section cc_lb.schema.{hook}.v{schema.WIRE_VERSION}")
        lines.append(f"  descriptor  {schema.descriptor(root)}")
        lines.append(f"  fingerprint {schema.FINGERPRINTS[hook].hex()}")
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cclb-wire", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    encode = commands.add_parser("encode", help="JSON value on stdin -> archive on stdout")
    encode.add_argument("--type", required=True, choices=ROOT_NAMES)
    encode.add_argument("--hex", action="store_true", help="write the archive as hex text")
    encode.set_defaults(run=_cmd_encode)

    decode = commands.add_parser("decode", help="archive on stdin -> JSON value on stdout")
    decode.add_argument("--type", required=True, choices=ROOT_NAMES)
    decode.add_argument("--hex", action="store_true", help="read the archive as hex text")
    decode.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
    decode.set_defaults(run=_cmd_decode)

    sample = commands.add_parser("sample", help="print a bundled sample value (JSON)")
    sample.add_argument("type", choices=ROOT_NAMES)
    sample.set_defaults(run=_cmd_sample)

    dump = commands.add_parser("schema", help="print layouts, descriptors and fingerprints")
    dump.set_defaults(run=_cmd_schema)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
