"""cclb-wire: run cc-lb V1 plugins, and encode, decode and inspect wire archives.

  cclb-wire demo                             run the bundled plugins on a realistic request
  cclb-wire inspect PLUGIN                   metadata, hooks, fingerprints, exports, admission
  cclb-wire call PLUGIN --hook H --request REQ.json    host output as JSON
  cclb-wire sample TYPE                      print a bundled sample value (JSON)
  cclb-wire encode --type TYPE [--hex]       JSON value on stdin  -> archive on stdout
  cclb-wire decode --type TYPE [--hex]       archive on stdin     -> JSON value on stdout
  cclb-wire schema                           layouts, descriptors and fingerprints

PLUGIN is a .wasm file, or cclb_wire:NAME.wasm for a plugin shipped in the package
(cclb_wire.plugin_paths). Values use the golden vectors' JSON format (bytes as lowercase
hex); request files for ``call`` use the host-level format of cclb_wire.host_json, with
no unknown keys and every part the hook's request is built from. Every failure exits non-zero
with a one-line error on stderr and no traceback: status 1 for a bad input or a failed
plugin, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, List, NoReturn, Optional, Sequence, Tuple

from . import BACKEND, schema
from .errors import CclbWireError, InvalidInput
from .host_rules import shown
from .jsontext import loads
from .jsonvalue import decode_json, encode_json
from .plugin_paths import SHIPPED_PREFIX, resolve_plugin_path, shipped_plugins

if TYPE_CHECKING:  # the plugin host (and wasmtime) load only for the commands that run plugins
    from .runtime import PluginHost

ROOT_NAMES = list(schema.ROOT_TYPES)


#: Largest input any command reads (stdin, a request file, a plugin): a bound, so that
#: ``< /dev/zero`` is an error instead of a process that eats memory forever.
MAX_INPUT_BYTES = 256 * 1024 * 1024


def _read_bounded(stream: BinaryIO, what: str) -> bytes:
    data = stream.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidInput(what, f"larger than {MAX_INPUT_BYTES} bytes")
    return data


def _read_file(path: str, what: str) -> bytes:
    with open(path, "rb") as stream:
        return _read_bounded(stream, f"{what} {path}")


def _read_stdin_bytes() -> bytes:
    if sys.stdin is None:  # started with stdin closed (`<&-`)
        raise InvalidInput("stdin", "is closed")
    return _read_bounded(sys.stdin.buffer, "stdin")


def _indent(text: str) -> int:
    """``--indent``: 0 to 16 spaces."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= value <= 16:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0..16)")
    return value


def _fail(message: str) -> int:
    print(f"cclb-wire: {message.splitlines()[0] if message else 'error'}", file=sys.stderr)
    return 1


def _cmd_encode(args: argparse.Namespace) -> int:
    try:
        archive = encode_json(args.type, loads(_read_stdin_bytes(), "stdin"))
    except CclbWireError as exc:
        return _fail(str(exc))
    if args.hex:
        sys.stdout.write(archive.hex() + "\n")
    else:
        sys.stdout.buffer.write(archive)
    sys.stdout.flush()
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    try:
        data = _read_stdin_bytes()
    except CclbWireError as exc:
        return _fail(str(exc))
    if args.hex:
        try:
            data = bytes.fromhex(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return _fail("--hex input is not a hex string")
    try:
        value = decode_json(args.type, data)
    except CclbWireError as exc:
        return _fail(str(exc))
    json.dump(value, sys.stdout, ensure_ascii=False, indent=args.indent)
    sys.stdout.write("\n")
    return 0


def sample_text(type_name: str) -> str:
    """The bundled sample value of a root type, as JSON text."""
    # One joinpath() per part: Traversable.joinpath takes several only from Python 3.11.
    return resources.files("cclb_wire").joinpath("samples").joinpath(f"{type_name}.json").read_text(encoding="utf-8")


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
    for name, wire_type in schema.ALL_TYPES.items():
        shown = name if name == wire_type.name else f"{name} (cc-lb 1.0's {wire_type.name})"
        lines.append(f"{shown}: size {wire_type.size}, align {wire_type.align}")
        _describe(wire_type, "  ", lines)
    for contract in schema.CONTRACTS.values():
        lines.append("")
        lines.append(f"contract {contract.name}: {contract.source}")
        for hook, root in contract.hook_requests.items():
            lines.append(f"hook {hook}: section cc_lb.schema.{hook}.v{schema.WIRE_VERSION}")
            lines.append(f"  descriptor  {schema.descriptor(root)}")
            lines.append(f"  fingerprint {contract.fingerprints[hook].hex()}")
    print("\n".join(lines))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .runtime.wasm_module import inspect_plugin

    try:
        path, data = _read_plugin(args.plugin)
    except OSError as exc:
        return _fail(f"cannot read {args.plugin}: {exc.strerror}")
    except CclbWireError as exc:
        return _fail(str(exc))
    inspection = inspect_plugin(data)
    metadata = inspection.metadata or {}
    shown_as = args.plugin if str(path) == args.plugin else f"{args.plugin} ({path})"
    lines = [f"{shown_as}: {len(data)} bytes"]
    if metadata:
        lines.append(f"name:        {metadata.get('name')} {metadata.get('version')}")
        lines.append(f"description: {metadata.get('description')}")
        lines.append(f"usage:       {metadata.get('usage')}")
    for hook in inspection.hooks:
        if hook.fingerprint is None:
            status = "missing"
        else:
            status = "ok" if hook.fingerprint_ok else f"MISMATCH ({hook.fingerprint.hex()})"
        mode = "" if hook.mode is None else f", mode {hook.mode}"
        lines.append(
            f"hook {hook.kind}: wire v{hook.wire_version}, export {hook.export} {hook.export_signature or '(missing)'}, "
            f"fingerprint {status}{mode}"
        )
    if inspection.contract is not None:
        lines.append(f"contract:    {inspection.contract.name}: {inspection.contract.source}; read from its fingerprints")
    if inspection.module is not None:
        lines.append("exports:     " + ", ".join(f"{e.name} ({e.kind}{' ' + str(e.signature) if e.signature else ''})"
                                            for e in inspection.module.exports.values()))
        lines.append(f"imports:     {inspection.module.import_count}")
        lines.append("sections:    " + ", ".join(f"{name} ({len(payload)} B)" for name, payload in inspection.module.custom_sections))
    problems = inspection.problems_for(None)
    lines.append("admission:   " + ("ok" if not problems else "REJECTED: " + "; ".join(problems)))
    print("\n".join(lines))
    if problems:
        return _fail(f"{args.plugin}: admission rejected: {problems[0]}")
    return 0


def _read_plugin(text: str) -> Tuple[Path, bytes]:
    """The file a PLUGIN argument names (cclb_wire.plugin_paths) and its bytes."""
    path = resolve_plugin_path(text, "plugin")
    return path, _read_file(str(path), "plugin")


#: The keys of each object of a host-level request file (cclb_wire.host_json); claims,
#: bodies and the event's fields are checked there.
_FILE_KEYS = ("request", "principal", "candidates", "upstream", "event")
_CONTEXT_KEYS = ("request_id", "method", "path", "query", "headers", "body")
_PRINCIPAL_KEYS = ("id", "kind", "claims")
_CANDIDATE_KEYS = ("upstream_id", "name", "kind", "observed_at_unix_secs", "predicted_cache_read_tokens")
_UPSTREAM_KEYS = ("base_url",)

#: The parts of a request file each hook's wire request is built from: each must be there
#: (inside a part, host_json's defaults apply). The others may be, for the other hooks.
_HOOK_PARTS: Dict[str, Tuple[str, ...]] = {
    "filter": ("request", "principal", "candidates"),
    "shape": ("request", "principal", "upstream"),
    "observe": ("event",),
}


def _wire_root_like(obj: Dict[str, Any]) -> Optional[str]:
    """The wire root type whose JSON value (as ``cclb-wire sample`` prints it) has exactly
    the keys of ``obj``, if any."""
    for name, root in schema.ROOT_TYPES.items():
        if isinstance(root, schema.StructType):
            if set(obj) == {f.name for f in root.fields}:
                return name
        elif len(obj) == 1 and set(obj) <= {v.name for v in root.variants}:
            return name
    return None


def _refuse_unknown_keys(obj: object, path: str, known: Sequence[str]) -> None:
    """InvalidInput naming the keys of ``obj`` that are not ``known``. A value that is not
    an object is left to host_json, which names the JSON type it expects there."""
    if not isinstance(obj, dict):
        return
    unknown = [key for key in obj if key not in known]
    if not unknown:
        return
    named = []
    for key in unknown[:5]:
        guess = difflib.get_close_matches(key, known, n=1)
        named.append(shown(key) + (f" (did you mean {guess[0]!r}?)" if guess else ""))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    plural = "s" if len(unknown) > 1 else ""
    raise InvalidInput(path, f"unknown key{plural} {', '.join(named)}{more}; the keys here are {', '.join(known)}")


def _check_request_keys(root: Dict[str, Any]) -> None:
    from .host_json import _object

    wire_root = _wire_root_like(root)
    if wire_root is not None:
        raise InvalidInput(
            "$", f"this is the JSON of a wire archive ({wire_root}, for `cclb-wire encode --type {wire_root}`), "
            f"not a host-level request file, whose keys are {', '.join(_FILE_KEYS)} (see cclb_wire.host_json)"
        )
    _refuse_unknown_keys(root, "$", _FILE_KEYS)
    _refuse_unknown_keys(root.get("request"), "$.request", _CONTEXT_KEYS)
    principal = root.get("principal")
    _refuse_unknown_keys(principal, "$.principal", _PRINCIPAL_KEYS)
    if isinstance(principal, dict):
        # Checked before host_json builds the Principal, whose errors it re-aims at "$.principal".
        _object(principal.get("claims"), "$.principal.claims", null_is_empty=True)
    candidates = root.get("candidates")
    for index, candidate in enumerate(candidates if isinstance(candidates, list) else ()):
        _refuse_unknown_keys(candidate, f"$.candidates[{index}]", _CANDIDATE_KEYS)
    _refuse_unknown_keys(root.get("upstream"), "$.upstream", _UPSTREAM_KEYS)


def _load_request(path: str, hook: str) -> Any:
    """The host objects of a request file for ``hook``: the event for ``observe``, else
    host_json.request_from_json's parts. Every mistake raises InvalidInput naming its JSON path."""
    from .host_json import event_from_json, request_from_json

    obj = loads(_read_file(path, "request"), f"request {path}")
    if isinstance(obj, dict):
        _check_request_keys(obj)
    request = event_from_json(obj) if hook == "observe" else request_from_json(obj)
    missing = [part for part in _HOOK_PARTS[hook] if part not in obj]
    if missing:
        raise InvalidInput("$", f"missing {', '.join(missing)}; a {hook} call needs {', '.join(_HOOK_PARTS[hook])}")
    return request


def _run_hook(host: PluginHost, path: Path, wasm: bytes, hook: str, request: Any) -> object:
    if hook == "observe":
        host.register_observe("cli", path.name, wasm).observe(request)
        return None
    if hook == "filter":
        return host.register_filter("cli", path.name, wasm).filter(request["ctx"], request["principal"], request["candidates"])
    return host.register_shape("cli", path.name, wasm).shape(request["ctx"], request["upstream"], request["principal"])


def _cmd_call(args: argparse.Namespace) -> int:
    from .host_json import output_to_json
    from .runtime import HostConfig, PluginHost

    try:
        config = HostConfig(deadline_s=args.deadline, fuel=args.fuel)
        path, wasm = _read_plugin(args.plugin)
        request = _load_request(args.request, args.hook)  # a bad request file is reported before the plugin is loaded
        with PluginHost(config) as host:
            output = _run_hook(host, path, wasm, args.hook, request)
    except (CclbWireError, OSError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    json.dump(output_to_json(output), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .host_json import event_from_json, output_to_json, request_from_json
    from .runtime import HostConfig, InstanceStrategy, PluginHost

    def shipped(name: str) -> bytes:
        return resolve_plugin_path(SHIPPED_PREFIX + name).read_bytes()

    request = loads(sample_text("demo_request"), "demo_request.json")
    parts = request_from_json(request)
    print(f"cclb_wire demo (codec backend: {BACKEND}); request {parts['ctx'].request_id}: "
          f"{parts['ctx'].method} {parts['ctx'].path}, {len(parts['ctx'].headers)} headers, "
          f"{len(parts['ctx'].body)}-byte body, {len(parts['candidates'])} candidates")
    with PluginHost(HostConfig(instance_strategy=InstanceStrategy.REUSE_PER_THREAD)) as host:
        started = time.perf_counter()
        filter_plugin = host.register_filter("demo", "cache-aware-filter", shipped("cache_aware_filter.wasm"))
        shape_plugin = host.register_shape("demo", "shape-passthrough", shipped("shape_passthrough.wasm"))
        observe_plugin = host.register_observe("demo", "observe-counter", shipped("observe_counter.wasm"))
        admitted = time.perf_counter() - started
        output = filter_plugin.filter(parts["ctx"], parts["principal"], parts["candidates"])
        print(f"\n[filter] {filter_plugin.plugin_name} (keep_k from the principal's claims):")
        print("\n".join(_filter_lines(output, parts["candidates"])))
        shaped = shape_plugin.shape(parts["ctx"], parts["upstream"], parts["principal"])
        print(f"\n[shape] {shape_plugin.plugin_name}: {shaped.method} {shaped.url}")
        print(f"  {len(shaped.headers)} headers (credentials and host never reached the plugin), {len(shaped.body)}-byte body")
        observe_plugin.observe(event_from_json(request))
        print(f"\n[observe] {observe_plugin.plugin_name}: RequestFinished delivered")
        runs = 200
        started = time.perf_counter()
        for _ in range(runs):
            filter_plugin.filter(parts["ctx"], parts["principal"], parts["candidates"])
        per_call = (time.perf_counter() - started) / runs
        print(f"\nadmitted 3 plugins in {admitted * 1000:.1f} ms; filter call {per_call * 1e6:.1f} µs (reused instance)")
        if args.json:
            print(json.dumps({"filter": output_to_json(output), "shape": output_to_json(shaped)}, ensure_ascii=False, indent=2))
    return 0


#: One "{upstream_id}: {text}" entry of FilterOutput.reason (entries are joined by "; ").
_REASON_ENTRY = re.compile(r"(?:^|; )([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}): ")


def _filter_lines(output: Any, candidates: Sequence[Any]) -> List[str]:
    """The demo's filter answer: a line per candidate, kept or rejected, with the plugin's reason."""
    marks = list(_REASON_ENTRY.finditer(output.reason))
    ends = [mark.start() for mark in marks[1:]] + [len(output.reason)]
    why = {mark.group(1).lower(): output.reason[mark.end() : end] for mark, end in zip(marks, ends)}
    names = {c.upstream_id: c.name for c in candidates}
    rejected = [c.upstream_id for c in candidates if c.upstream_id not in output.kept_upstream_ids]
    # One label per rejected result, in the plugin's order: the bundled filter answers in the
    # candidates' order.
    labels = [reason.value for reason in output.per_candidate_reasons]
    return [f"  kept:     {names[u]} ({u}): {why.get(str(u), '')}" for u in output.kept_upstream_ids] + [
        f"  rejected: {names[u]} ({u}): {label}: {why.get(str(u), '')}" for u, label in zip(rejected, labels)
    ]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``cclb-wire call: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cclb-wire", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    plugin_help = "the plugin: a .wasm file, or one shipped in the package: " + ", ".join(
        SHIPPED_PREFIX + name for name in shipped_plugins()
    )
    parts_help = "; ".join(f"{hook} needs {', '.join(parts)}" for hook, parts in _HOOK_PARTS.items())

    demo = commands.add_parser("demo", help="run the bundled plugins on a realistic request")
    demo.add_argument("--json", action="store_true", help="also print the outputs as JSON")
    demo.set_defaults(run=_cmd_demo)

    inspect = commands.add_parser("inspect", help="show a plugin's metadata, hooks, fingerprints and exports")
    inspect.add_argument("plugin", help=plugin_help)
    inspect.set_defaults(run=_cmd_inspect)

    call = commands.add_parser("call", help="run one hook of a plugin on a host-level JSON request")
    call.add_argument("plugin", help=plugin_help)
    call.add_argument("--hook", required=True, choices=list(_HOOK_PARTS), help="the hook to call")
    call.add_argument(
        "--request", required=True, help=f"a host-level request JSON file (format: cclb_wire.host_json); {parts_help}"
    )
    call.add_argument("--deadline", type=float, default=1.0, help="seconds per call (default 1.0)")
    call.add_argument("--fuel", type=int, default=None, help="fuel per call (default: off)")
    call.set_defaults(run=_cmd_call)

    encode = commands.add_parser("encode", help="JSON value on stdin -> archive on stdout")
    encode.add_argument("--type", required=True, choices=ROOT_NAMES, help="the archive's root type")
    encode.add_argument("--hex", action="store_true", help="write the archive as hex text")
    encode.set_defaults(run=_cmd_encode)

    decode = commands.add_parser("decode", help="archive on stdin -> JSON value on stdout")
    decode.add_argument("--type", required=True, choices=ROOT_NAMES, help="the archive's root type")
    decode.add_argument("--hex", action="store_true", help="read the archive as hex text")
    decode.add_argument("--indent", type=_indent, default=None, help="pretty-print the JSON (0..16 spaces)")
    decode.set_defaults(run=_cmd_decode)

    sample = commands.add_parser("sample", help="print a bundled sample value (JSON)")
    sample.add_argument("type", choices=ROOT_NAMES, help="a root type")
    sample.set_defaults(run=_cmd_sample)

    dump = commands.add_parser("schema", help="print layouts, descriptors and fingerprints")
    dump.set_defaults(run=_cmd_schema)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command (``argv`` without the program name; default ``sys.argv[1:]``) and
    return its exit status. Nothing escapes as a traceback for a bad input: a usage error
    returns 2, any other failure 1, each with one line on stderr."""
    for stream in (sys.stdout, sys.stderr):
        # Output that the terminal's encoding cannot show (µs, non-ASCII header values) is
        # escaped, not a UnicodeEncodeError.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already reported)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        status: int = args.run(args)
        return status
    except BrokenPipeError:
        return 1
    except (CclbWireError, OSError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
