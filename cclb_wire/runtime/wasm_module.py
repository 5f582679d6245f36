"""Reading a plugin module before it runs: sections, exports, metadata, fingerprints.

A small parser of the WebAssembly binary format (only what admission needs:
the type, import, function and export sections, and custom sections), plus
cc-lb's admission rules (``HOST.md``) with the reference host's reason texts, and the
contract a plugin speaks, read from its fingerprints (``CONTRACT-1.0.md``).
Pure Python: no wasmtime needed to inspect a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import PluginRejected
from ..jsontext import loads as load_json
from ..schema import CONTRACTS, FINGERPRINT_CONTRACTS, REFUSED_FINGERPRINTS, WIRE_VERSION, Contract

__all__ = [
    "WasmParseError",
    "FuncType",
    "Export",
    "ModuleInfo",
    "HookInfo",
    "PluginInspection",
    "parse_module",
    "inspect_plugin",
    "METADATA_SECTION",
    "MAX_METADATA_BYTES",
    "HOOK_EXPORTS",
    "HOOK_MODES",
    "SUPPORTED_WIRE_VERSIONS",
]

#: The custom section holding a plugin's metadata JSON.
METADATA_SECTION = "cc_lb.plugin.v1"
#: The largest metadata section admitted, in bytes; a larger one is refused before it
#: is decoded or parsed. Real metadata is a few hundred bytes (429 to 588 in the
#: shipped plugins, about 200 in cc-lb's own admission tests): a name, a version and
#: a few one-line descriptions. 64 KiB leaves room for 100 times that, or for
#: paragraphs of usage text on every hook, and keeps admission's work on metadata small.
MAX_METADATA_BYTES = 64 * 1024
SCHEMA_SECTION_PREFIX = "cc_lb.schema."
#: hook kind -> the function export that implements it (every hook of every contract).
HOOK_EXPORTS = {
    "filter": "cc_lb_filter",
    "shape": "cc_lb_shape",
    "observe": "cc_lb_observe",
    "transform_response": "cc_lb_transform_response",
    "transform_sse_event": "cc_lb_transform_sse_event",
}
#: A hook's ``mode`` in the metadata (absent: active). A noop hook is never probed or called.
HOOK_MODES = ("active", "noop")
#: hook kind -> the wire versions this host accepts for it.
SUPPORTED_WIRE_VERSIONS = {hook: (WIRE_VERSION,) for hook in HOOK_EXPORTS}
HOOK_SIGNATURE = (("i32", "i32"), ("i64",))
REQUIRED_FUNCTIONS = {"cc_lb_alloc": (("i32", "i32"), ("i32",)), "cc_lb_free": (("i32", "i32", "i32"), ())}

_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128", 0x70: "funcref", 0x6F: "externref"}
_EXPORT_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


class WasmParseError(ValueError):
    """The bytes are not a WebAssembly module this parser can read."""


@dataclass(frozen=True)
class FuncType:
    """A function type: parameter and result value types (``"i32"``, ``"i64"``, ...)."""

    params: Tuple[str, ...]
    results: Tuple[str, ...]

    def __str__(self) -> str:
        results = self.results[0] if len(self.results) == 1 else f"({', '.join(self.results)})"
        return f"({', '.join(self.params)}) -> {results}"


@dataclass(frozen=True)
class Export:
    """One export of a module: its name, kind and, for a function, its type."""

    name: str
    kind: str  # func, table, memory, global, tag
    signature: Optional[FuncType] = None  # for functions


@dataclass(frozen=True)
class ModuleInfo:
    """What admission reads from a module: imports, exports and custom sections."""

    imports: Tuple[Tuple[str, str], ...]
    import_count: int
    exports: Mapping[str, Export]
    custom_sections: Tuple[Tuple[str, bytes], ...]
    #: A table of externref or a global of it: an instance then needs a GC heap.
    externref_storage: bool = False

    def custom(self, name: str) -> List[bytes]:
        """The payloads of every custom section called ``name``, in module order."""
        return [payload for section_name, payload in self.custom_sections if section_name == name]


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise WasmParseError(f"unexpected end of section at byte {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u32(self) -> int:
        result = shift = 0
        for _ in range(5):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if result > 0xFFFFFFFF:
                    raise WasmParseError(f"LEB128 u32 out of range at byte {self.pos}")
                return result
            shift += 7
        raise WasmParseError(f"LEB128 u32 too long at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise WasmParseError(f"{n} bytes at byte {self.pos} run past the end of the section")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def name(self) -> str:
        raw = self.take(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WasmParseError(f"a name before byte {self.pos} is not UTF-8") from None


def _parse_types(r: _Reader) -> List[Optional[FuncType]]:
    types: List[Optional[FuncType]] = []
    for _ in range(r.u32()):
        form = r.byte()
        if form != 0x60:
            raise WasmParseError(f"unsupported type-section entry 0x{form:02x} (only plain function types)")
        params = _valtypes(r)
        types.append(FuncType(params, _valtypes(r)))
    return types


def _valtypes(r: _Reader) -> Tuple[str, ...]:
    """A vector of value types (a function's parameters or results)."""
    names = []
    for _ in range(r.u32()):
        code = r.byte()
        if code not in _VALTYPES:
            raise WasmParseError(f"unsupported value type 0x{code:02x}")
        names.append(_VALTYPES[code])
    return tuple(names)


def _parse_imports(r: _Reader) -> Tuple[int, List[Tuple[str, str]], int]:
    """(count, names, imported functions). Names are best effort: any import is refused anyway."""
    count = r.u32()
    names: List[Tuple[str, str]] = []
    functions = 0
    try:
        for _ in range(count):
            module, item = r.name(), r.name()
            names.append((module, item))
            kind = r.byte()
            if kind == 0x00:
                r.u32()
                functions += 1
            else:
                break  # other import kinds: the count is all admission needs
    except WasmParseError:
        pass
    return count, names, functions


#: Constant-expression opcodes with no immediate (extended-const arithmetic).
_CONST_ARITHMETIC = frozenset({0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E})


def _skip_const_expr(r: _Reader) -> bool:
    """Skip a constant expression through its ``end``; False at an opcode it does not know."""
    while True:
        op = r.byte()
        if op == 0x0B:
            return True
        if op in (0x41, 0x42):  # i32.const, i64.const: a signed LEB128
            while r.byte() & 0x80:
                pass
        elif op in (0x43, 0x44):  # f32.const, f64.const
            r.take(4 if op == 0x43 else 8)
        elif op in (0x23, 0xD2):  # global.get, ref.func
            r.u32()
        elif op == 0xD0:  # ref.null: a heap type
            r.byte()
        elif op == 0xFD and r.u32() == 0x0C:  # v128.const
            r.take(16)
        elif op not in _CONST_ARITHMETIC:
            return False


def _has_externref_storage(table_section: Optional[_Reader], global_section: Optional[_Reader]) -> bool:
    """Whether a table holds externref or a global is one (wasmtime then gives the instance
    a GC heap). Best effort: an entry it cannot read ends the search (with what it found)."""
    try:
        if table_section is not None:
            for _ in range(table_section.u32()):
                element = table_section.byte()
                if element == 0x40:  # a table with an initializer (typed function references)
                    table_section.byte()
                    return table_section.byte() == 0x6F
                if element == 0x6F:
                    return True
                flags = table_section.byte()
                if flags > 1:
                    break
                table_section.u32()
                if flags:
                    table_section.u32()
        if global_section is not None:
            for _ in range(global_section.u32()):
                if global_section.byte() == 0x6F:
                    return True
                global_section.byte()  # mutability
                if not _skip_const_expr(global_section):
                    break
    except WasmParseError:
        pass
    return False


def parse_module(wasm: bytes) -> ModuleInfo:
    """The parts of a WebAssembly module that admission reads. Raises WasmParseError."""
    data = bytes(wasm)
    if data[:4] != b"\0asm":
        raise WasmParseError("not a WebAssembly module (bad magic)")
    if data[4:8] != b"\x01\x00\x00\x00":
        raise WasmParseError("unsupported WebAssembly binary version (only core modules, version 1)")
    r = _Reader(data, 8)
    types: List[Optional[FuncType]] = []
    function_types: List[int] = []
    raw_exports: List[Tuple[str, int, int]] = []
    customs: List[Tuple[str, bytes]] = []
    import_count, imported_functions = 0, 0
    import_names: List[Tuple[str, str]] = []
    tables: Optional[_Reader] = None
    globals_: Optional[_Reader] = None
    while r.pos < r.end:
        section_id = r.byte()
        size = r.u32()
        body = _Reader(data, r.pos, r.pos + size)
        if size > r.end - r.pos:
            raise WasmParseError(f"section {section_id} of {size} bytes runs past the end of the module")
        r.pos += size
        if section_id == 0:
            name = body.name()
            customs.append((name, data[body.pos : body.end]))
        elif section_id == 1:
            types = _parse_types(body)
        elif section_id == 2:
            import_count, import_names, imported_functions = _parse_imports(body)
        elif section_id == 3:
            function_types = [body.u32() for _ in range(body.u32())]
        elif section_id == 4:
            tables = body
        elif section_id == 6:
            globals_ = body
        elif section_id == 7:
            for _ in range(body.u32()):
                name = body.name()
                kind = body.byte()
                raw_exports.append((name, kind, body.u32()))
    exports: Dict[str, Export] = {}
    for name, kind, index in raw_exports:
        signature = None
        if kind == 0:
            defined = index - imported_functions
            if 0 <= defined < len(function_types) and function_types[defined] < len(types):
                signature = types[function_types[defined]]
        exports[name] = Export(name, _EXPORT_KINDS.get(kind, f"kind {kind}"), signature)
    return ModuleInfo(tuple(import_names), import_count, exports, tuple(customs),
                      _has_externref_storage(tables, globals_))


# --- cc-lb's view of a module ---------------------------------------------------------


@dataclass(frozen=True)
class HookInfo:
    """One hook a plugin declares in its metadata, with what the module has for it."""

    kind: str
    wire_version: object
    description: str
    usage: str
    export: str
    export_signature: Optional[str]
    fingerprint: Optional[bytes]  # the plugin's cc_lb.schema.<kind>.v<version> section
    #: The metadata's ``mode`` ("active" or "noop"); None when the entry has none (active).
    mode: Optional[str] = None

    @property
    def active(self) -> bool:
        """Whether the hook is called (its mode is not ``noop``)."""
        return self.mode != "noop"

    @property
    def contracts(self) -> Tuple[Contract, ...]:
        """The contracts whose request layout the fingerprint names (empty: none this host knows)."""
        return FINGERPRINT_CONTRACTS.get((self.kind, self.fingerprint or b""), ())

    @property
    def fingerprint_ok(self) -> bool:
        """Whether the plugin's schema fingerprint is one this host speaks for the hook."""
        return bool(self.contracts)


@dataclass(frozen=True)
class PluginInspection:
    """Everything admission looks at, and every rule the module breaks, in order."""

    module: Optional[ModuleInfo]
    metadata: Optional[Dict[str, Any]]
    hooks: Tuple[HookInfo, ...]
    problems: Tuple[str, ...] = field(default=())
    #: The contract the plugin speaks (None: it breaks a rule that decides it).
    contract: Optional[Contract] = None

    @property
    def active_hooks(self) -> Tuple[str, ...]:
        """The declared hooks that are called (not ``noop``), in HOOK_EXPORTS order."""
        active = {hook.kind for hook in self.hooks if hook.active}
        return tuple(kind for kind in HOOK_EXPORTS if kind in active)

    def problems_for(self, slot_kind: Optional[str]) -> List[str]:
        """Every rule the module breaks, in order, for a slot of ``slot_kind`` (None: any slot)."""
        found = list(self.problems)
        if slot_kind is not None and self.metadata is not None:
            if slot_kind not in (self.metadata.get("hooks") or {}):
                found.append(f"metadata does not declare required `{slot_kind}` hook for this slot")
        return found

    def check(self, slot_kind: Optional[str], plugin: str = "") -> None:
        """Raise PluginRejected with the first problem (the reference host's order)."""
        problems = self.problems_for(slot_kind)
        if problems:
            raise PluginRejected(f"module rejected at load time: {problems[0]}", plugin=plugin, hook=slot_kind or "")


def _metadata(payloads: List[bytes], problems: List[str]) -> Optional[Dict[str, Any]]:
    if not payloads:
        problems.append(f"missing required `{METADATA_SECTION}` custom section")
        return None
    if len(payloads) > 1:
        problems.append(f"duplicate `{METADATA_SECTION}` custom section")
        return None
    if len(payloads[0]) > MAX_METADATA_BYTES:
        problems.append(
            f"invalid `{METADATA_SECTION}` metadata JSON: the section is {len(payloads[0])} bytes,"
            f" over the limit of {MAX_METADATA_BYTES} bytes"
        )
        return None
    try:
        # Nesting is bounded: deep metadata is a rejection, not a RecursionError.
        metadata = load_json(payloads[0].decode("utf-8"), "metadata")
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: {getattr(exc, 'detail', exc)}")
        return None
    if not isinstance(metadata, dict):
        problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: expected an object")
        return None
    for key in ("name", "version", "description", "usage"):
        if key not in metadata:
            problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: missing field `{key}`")
            return None
        if not isinstance(metadata[key], str):
            problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: `{key}` must be a string")
            return None
    hooks = metadata.get("hooks", {})
    if not isinstance(hooks, dict) or not all(isinstance(v, dict) for v in hooks.values()):
        problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: `hooks` must map hook names to objects")
        return None
    for hook, entry in hooks.items():
        version = entry.get("wire_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= 255:
            problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: hook `{hook}` wire_version must be an integer 0..255")
            return None
        for key in ("description", "usage"):
            if not isinstance(entry.get(key), str):
                problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: hook `{hook}` `{key}` must be a string")
                return None
        if entry.get("mode", "active") not in HOOK_MODES:
            problems.append(f"invalid `{METADATA_SECTION}` metadata JSON: hook `{hook}` mode must be \"active\" or \"noop\"")
            return None
    for key in ("name", "version", "description", "usage"):
        if not metadata[key].strip():
            problems.append(f"invalid `{METADATA_SECTION}` metadata: missing plugin {key}")
    if not hooks:
        problems.append(f"invalid `{METADATA_SECTION}` metadata: plugin declares no hooks")
    for hook, entry in hooks.items():
        if hook not in HOOK_EXPORTS:
            problems.append(f"invalid `{METADATA_SECTION}` metadata: unknown hook name: {hook}")
            continue
        for key in ("description", "usage"):
            if not entry[key].strip():
                problems.append(f"invalid `{METADATA_SECTION}` metadata: hook '{hook}' missing {key}")
    return metadata


def inspect_plugin(wasm: bytes) -> PluginInspection:
    """Parse a plugin module and list every admission rule it breaks, in order."""
    try:
        module = parse_module(wasm)
    except WasmParseError as exc:
        return PluginInspection(None, None, (), (f"wasm parse error: {exc}",))
    problems: List[str] = []
    if module.import_count:
        names = ", ".join(f"{m}.{n}" for m, n in module.imports[:3])
        problems.append(
            f"plugin module imports {module.import_count} item(s) ({names}); cc-lb plugins may not import anything"
        )
    seen_schemas = set()
    for name, payload in module.custom_sections:
        if name.startswith(SCHEMA_SECTION_PREFIX):
            if len(payload) != 32:
                problems.append(f"`{name}` section is {len(payload)} bytes; expected 32")
            if name in seen_schemas:
                problems.append(f"duplicate `{name}` custom section")
            seen_schemas.add(name)
    metadata = _metadata(module.custom(METADATA_SECTION), problems)
    memory = module.exports.get("memory")
    if memory is None or memory.kind != "memory":
        problems.append("missing required export `memory` (Memory)")
    for function, (params, results) in REQUIRED_FUNCTIONS.items():
        export = module.exports.get(function)
        if export is None or export.kind != "func":
            problems.append(f"missing required function export `{function}`")
        elif export.signature != FuncType(params, results):
            problems.append(f"export `{function}` has type {export.signature}; expected {FuncType(params, results)}")
    hooks = []
    for hook, entry in ((metadata or {}).get("hooks") or {}).items():
        if hook not in HOOK_EXPORTS:
            continue
        version = entry["wire_version"]
        export_name = HOOK_EXPORTS[hook]
        export = module.exports.get(export_name)
        section = f"{SCHEMA_SECTION_PREFIX}{hook}.v{version}"
        payloads = module.custom(section)
        fingerprint = payloads[0] if payloads else None
        hooks.append(
            HookInfo(hook, version, entry["description"], entry["usage"], export_name,
                     str(export.signature) if export is not None and export.signature else None, fingerprint,
                     entry.get("mode"))
        )
        if version not in SUPPORTED_WIRE_VERSIONS[hook]:
            problems.append(f"host does not support hook `{hook}` wire version {version}")
            continue
        if export is None or export.kind != "func":
            problems.append(f"missing required function export `{export_name}` for declared hook `{hook}`")
        elif export.signature != FuncType(*HOOK_SIGNATURE):
            problems.append(f"export `{export_name}` has type {export.signature}; expected {FuncType(*HOOK_SIGNATURE)}")
        if fingerprint is None:
            problems.append(f"missing `{section}` custom section for declared hook `{hook}`")
        elif len(fingerprint) == 32 and not hooks[-1].contracts:
            problems.append(_fingerprint_problem(hook, section, fingerprint))
    contract = None
    if not problems and hooks:
        contract = _contract_of(tuple(hooks), problems)
    return PluginInspection(module, metadata, tuple(hooks), tuple(problems), contract)


def _expected_fingerprints(hook: str) -> str:
    known = [(digest, contracts) for (kind, digest), contracts in FINGERPRINT_CONTRACTS.items() if kind == hook]
    return " or ".join(f"{digest.hex()} (cc-lb {'/'.join(c.name for c in contracts)})" for digest, contracts in known)


def _fingerprint_problem(hook: str, section: str, fingerprint: bytes) -> str:
    refused = REFUSED_FINGERPRINTS.get((hook, fingerprint))
    if refused is not None:
        return f"`{section}` fingerprint {fingerprint.hex()} is refused ({refused}); expected {_expected_fingerprints(hook)}"
    return f"`{section}` hash mismatch (host expects {_expected_fingerprints(hook)} but plugin shipped {fingerprint.hex()})"


def _contract_rules(contract: Contract, hooks: Tuple[HookInfo, ...]) -> List[str]:
    """The contract's rules the declared hooks break."""
    declared = {hook.kind: hook for hook in hooks}
    broken = []
    for hook in hooks:
        if hook.mode == "noop" and hook.kind not in contract.noop_hooks:
            broken.append(f"hook `{hook.kind}` cannot be \"noop\" under the cc-lb {contract.name} contract")
    for kind, required in contract.requires.items():
        if kind in declared:
            for other in sorted(required):
                entry = declared.get(other)
                if entry is None:
                    broken.append(f"a cc-lb {contract.name} `{kind}` plugin must also declare `{other}`")
                elif entry.mode is None:
                    broken.append(f"hook `{other}` needs an explicit \"mode\" beside `{kind}` (cc-lb {contract.name})")
    for kind, companion in contract.needs_companion.items():
        if kind in declared and companion not in declared:
            broken.append(f"hook `{kind}` is declared without `{companion}` (cc-lb {contract.name} forbids it)")
    return broken


def _contract_of(hooks: Tuple[HookInfo, ...], problems: List[str]) -> Optional[Contract]:
    """The one contract every hook's fingerprint names and whose rules the plugin keeps
    (oldest first: a lone 0.2 shape plugin's fingerprint is also 1.0's); else a problem."""
    candidates = [c for c in CONTRACTS.values() if all(c in hook.contracts for hook in hooks)]
    if not candidates:
        names = ", ".join(f"`{h.kind}` is cc-lb {'/'.join(c.name for c in h.contracts)}" for h in hooks)
        problems.append(f"hooks of different contracts in one plugin ({names})")
        return None
    broken: List[str] = []
    for contract in candidates:
        broken = _contract_rules(contract, hooks)
        if not broken:
            return contract
    problems.append(broken[0])
    return None
