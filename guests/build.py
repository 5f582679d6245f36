#!/usr/bin/env python3
"""Build the bundled cc-lb plugins (C -> wasm32) with a pinned toolchain.

    python guests/build.py             # build into guests/build/
    python guests/build.py --install   # build, then copy the .wasm into cclb_wire/plugins/
    python guests/build.py --check     # rebuild in a temp dir; exit 1 unless the bytes equal
                                       # the committed cclb_wire/plugins/*.wasm

Toolchain: `python -m ziglang cc` from the PyPI package `ziglang`, pinned to
ZIGLANG_VERSION below (clang inside zig). Another version is refused: a different
compiler gives different bytes, and --check would fail for no good reason.

Two sets of plugins are built: the 0.2-contract ones (PLUGINS: wire V1 as in
shared/spec/WIRE-V1.md) and the cc-lb 1.0-contract ones (PLUGINS_1_0:
shared/spec/CONTRACT-1.0.md, source names ending in `_1_0`).

The fingerprint bytes are generated into `cclb_fingerprints.h` (in the build
directory) from `cclb_wire.FINGERPRINTS` (0.2) and
`cclb_wire.schema.CONTRACTS["1.0"].fingerprints` (1.0); they are never typed by
hand. After linking, every module is parsed and checked: no imports; `memory`,
`cc_lb_alloc` (i32,i32)->i32, `cc_lb_free` (i32,i32,i32)->(), each declared hook
(i32,i32)->i64 exported; the `cc_lb.plugin.v1` JSON valid; one 32-byte
`cc_lb.schema.<kind>.v1` per declared hook, equal to cclb_wire's fingerprint of
the plugin's contract. 0.2 plugins go through cclb_wire's own admission
(`inspect_plugin`); 1.0 plugins through the structural checks of
`check_module_1_0` below (each hook's "mode" and the 1.0 hook rules included).

Output is deterministic: no debug info, the name/producers sections are stripped
(`-s`), source paths are mapped (`-ffile-prefix-map`), and the generated header is
the same for the same cclb_wire.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ZIGLANG_VERSION = "0.17.1"

GUESTS = Path(__file__).resolve().parent
REPO = GUESTS.parent
INCLUDE = GUESTS / "include"
PLUGINS_SRC = GUESTS / "plugins"
DEFAULT_OUT = GUESTS / "build"
INSTALL_DIR = REPO / "cclb_wire" / "plugins"

# The checkout's cclb_wire: the schema's fingerprints and the host's own admission rules.
sys.path.insert(0, str(REPO))
from cclb_wire.schema import CONTRACTS, FINGERPRINTS  # noqa: E402
from cclb_wire.runtime.wasm_module import HOOK_EXPORTS as HOOK_EXPORT, inspect_plugin  # noqa: E402

# 0.2 contract: plugin source name -> the hooks it declares (its metadata must say exactly these)
PLUGINS = {
    "cache_aware_filter": ("filter",),
    "shape_passthrough": ("shape",),
    "observe_counter": ("observe",),
}

# 1.0 contract: plugin source name -> {hook: mode} (its metadata must say exactly these)
PLUGINS_1_0 = {
    "cache_aware_filter_1_0": {"filter": "active"},
    "tool_rename_shape_1_0": {"shape": "active", "transform_response": "active", "transform_sse_event": "active"},
    "noop_transforms_1_0": {"shape": "active", "transform_response": "noop", "transform_sse_event": "noop"},
}

# The 1.0 hooks and their exports (CONTRACT-1.0.md "ABI and metadata").
HOOK_EXPORT_1_0 = {
    "filter": "cc_lb_filter",
    "shape": "cc_lb_shape",
    "transform_response": "cc_lb_transform_response",
    "transform_sse_event": "cc_lb_transform_sse_event",
}

CFLAGS = [
    "--target=wasm32-freestanding",
    "-mcpu=generic",
    "-std=c11",
    "-O2",
    "-g0",
    "-ffreestanding",
    "-nostdlib",
    "-fno-stack-protector",
    "-Wall",
    "-Wextra",
    "-Werror",
]
LDFLAGS = [
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=65536",
    "-s",  # no name, producers or debug sections
]
#: The memory layout rustc's wasm32 targets give a plugin, for the benchmark's Rust-laid-out
#: guest: the stack first, 1 MiB of it (its top at the 1 MiB mark), then static data, then
#: the heap, in 17 initial pages. zig's linker already puts the stack first.
RUST_LAYOUT_LDFLAGS = [flag for flag in LDFLAGS if not flag.startswith("-Wl,-z,stack-size=")] + [
    "-Wl,-z,stack-size=1048576",
    "-Wl,--initial-memory=1114112",
]
RUST_LAYOUT_PAGES = 17
RUST_LAYOUT_STACK_TOP = 1024 * 1024


class BuildError(Exception):
    pass


def check_toolchain() -> None:
    try:
        have = importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"the ziglang package is not installed: pip install ziglang=={ZIGLANG_VERSION}")
    if have != ZIGLANG_VERSION:
        raise BuildError(
            f"ziglang {have} is installed but the guests are pinned to ziglang {ZIGLANG_VERSION}: "
            f"pip install ziglang=={ZIGLANG_VERSION}"
        )


def fingerprints() -> dict[str, bytes]:
    """The 0.2 fingerprints (cclb_wire.FINGERPRINTS)."""
    fps = {k: bytes(v) for k, v in FINGERPRINTS.items()}
    for hook in sorted({h for hooks in PLUGINS.values() for h in hooks}):
        if len(fps.get(hook, b"")) != 32:
            raise BuildError(f"cclb_wire.FINGERPRINTS has no 32-byte fingerprint for {hook!r}")
    return fps


def fingerprints_1_0() -> dict[str, bytes]:
    """The 1.0 fingerprints (cclb_wire.schema.CONTRACTS["1.0"].fingerprints)."""
    try:
        contract = CONTRACTS["1.0"]
    except KeyError:
        raise BuildError("cclb_wire.schema.CONTRACTS has no 1.0 contract") from None
    fps = {k: bytes(v) for k, v in contract.fingerprints.items()}
    for hook in HOOK_EXPORT_1_0:
        if len(fps.get(hook, b"")) != 32:
            raise BuildError(f'cclb_wire.schema.CONTRACTS["1.0"].fingerprints has no 32-byte fingerprint for {hook!r}')
    return fps


def _asm_bytes(data: bytes) -> str:
    return ".byte " + ",".join(f"0x{b:02x}" for b in data)


def fingerprint_header(fps: dict[str, bytes], fps_1_0: dict[str, bytes]) -> str:
    lines = [
        "/* Generated by guests/build.py from cclb_wire.FINGERPRINTS (0.2) and",
        '   cclb_wire.schema.CONTRACTS["1.0"].fingerprints (1.0). Do not edit. */',
        "#ifndef CCLB_FINGERPRINTS_H",
        "#define CCLB_FINGERPRINTS_H",
        "#define CCLB_FINGERPRINTS_GENERATED 1",
        "#define CCLB_WIRE_VERSION 1",
    ]
    for hook in sorted(fps):
        lines.append(f"/* {hook}: {fps[hook].hex()} */")
        lines.append(f'#define CCLB_FINGERPRINT_ASM_{hook} "{_asm_bytes(fps[hook])}"')
    lines.append("/* cc-lb 1.0 contract (CCLB_HOOK_SCHEMA_1_0 in cclb_guest_1_0.h) */")
    lines.append("#define CCLB_FINGERPRINTS_1_0_GENERATED 1")
    for hook in sorted(HOOK_EXPORT_1_0):
        lines.append(f"/* 1.0 {hook}: {fps_1_0[hook].hex()} */")
        lines.append(f'#define CCLB_FINGERPRINT_1_0_ASM_{hook} "{_asm_bytes(fps_1_0[hook])}"')
    lines.append("#endif")
    return "\n".join(lines) + "\n"


# --- the post-link check: the host's own admission rules ------------------------------


def check_module(path: Path, hooks: tuple[str, ...], fps: dict[str, bytes]) -> dict:
    """Admission as cclb_wire's host does it (no imports, exports and signatures, metadata,
    fingerprints), plus: the module declares exactly ``hooks``."""
    inspection = inspect_plugin(path.read_bytes())
    problems = inspection.problems_for(None)
    if problems:
        raise BuildError(f"{path.name}: {problems[0]}")
    declared = {hook.kind for hook in inspection.hooks}
    if declared != set(hooks):
        raise BuildError(f"{path.name}: metadata declares hooks {sorted(declared)}, want {sorted(hooks)}")
    if any(hook.fingerprint != fps[hook.kind] for hook in inspection.hooks):
        raise BuildError(f"{path.name}: a fingerprint section is not cclb_wire's")
    return inspection.metadata or {}


# --- the post-link check of 1.0 plugins: structural, done here -------------------------
#
# TODO(contract-1.0 admission): cclb_wire.runtime.wasm_module.inspect_plugin knows only the
# 0.2 contract. Once it admits 1.0 plugins (hook modes, the transform hooks, the 1.0
# fingerprints), check_module_1_0 should call it like check_module does, keeping only the
# "declares exactly these hooks with these modes" comparison.

_VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128", 0x70: "funcref", 0x6F: "externref"}
_SIG_ALLOC = (("i32", "i32"), ("i32",))
_SIG_FREE = (("i32", "i32", "i32"), ())
_SIG_HOOK = (("i32", "i32"), ("i64",))
_HOOK_MODES = ("active", "noop")


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise BuildError("truncated wasm module")
        self.pos += 1
        return self.data[self.pos - 1]

    def u32(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise BuildError("bad LEB128 in wasm module")

    def s32(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value - (1 << shift) if b & 0x40 else value
            if shift > 28:
                raise BuildError("bad LEB128 in wasm module")

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise BuildError("truncated wasm module")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def name(self) -> str:
        return self.take(self.u32()).decode("utf-8")


def parse_wasm(wasm: bytes) -> tuple[int, dict[str, tuple[str, object]], list[tuple[str, bytes]]]:
    """(number of imports, export name -> (kind, signature or index), custom sections in order)."""
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise BuildError("not a wasm module (version 1)")
    r = _Reader(wasm, 8)
    types: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    funcs: list[int] = []
    imports = 0
    raw_exports: list[tuple[str, int, int]] = []
    customs: list[tuple[str, bytes]] = []
    while r.pos < r.end:
        sid = r.byte()
        size = r.u32()
        body = _Reader(wasm, r.pos, r.pos + size)
        r.take(size)
        if sid == 0:
            name = body.name()
            customs.append((name, body.take(body.end - body.pos)))
        elif sid == 1:
            for _ in range(body.u32()):
                if body.byte() != 0x60:
                    raise BuildError("unexpected type form in the type section")
                params = tuple(_VALTYPES.get(body.byte(), "?") for _ in range(body.u32()))
                results = tuple(_VALTYPES.get(body.byte(), "?") for _ in range(body.u32()))
                types.append((params, results))
        elif sid == 2:
            imports = body.u32()
        elif sid == 3:
            funcs = [body.u32() for _ in range(body.u32())]
        elif sid == 7:
            for _ in range(body.u32()):
                name = body.name()
                raw_exports.append((name, body.byte(), body.u32()))
    exports: dict[str, tuple[str, object]] = {}
    for name, kind, index in raw_exports:
        if kind == 0:
            if imports or index >= len(funcs) or funcs[index] >= len(types):
                exports[name] = ("func", None)
            else:
                exports[name] = ("func", types[funcs[index]])
        else:
            exports[name] = ({1: "table", 2: "memory", 3: "global"}.get(kind, "?"), index)
    return imports, exports, customs


def _nonblank(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_module_1_0(path: Path, modes: dict[str, str], fps_1_0: dict[str, bytes]) -> dict:
    """The structural admission of a cc-lb 1.0 plugin (CONTRACT-1.0.md), plus: the module
    declares exactly the hooks ``modes`` names, each with that mode."""

    def fail(why: str) -> BuildError:
        return BuildError(f"{path.name}: {why}")

    imports, exports, customs = parse_wasm(path.read_bytes())
    if imports:
        raise fail(f"the module has {imports} import(s); a plugin must have none")
    if exports.get("memory", ("?",))[0] != "memory":
        raise fail("no exported memory named `memory`")
    for name, sig in (("cc_lb_alloc", _SIG_ALLOC), ("cc_lb_free", _SIG_FREE)):
        if exports.get(name) != ("func", sig):
            raise fail(f"`{name}` is not exported as a function {sig[0]} -> {sig[1]}")

    payloads = [data for name, data in customs if name == "cc_lb.plugin.v1"]
    if len(payloads) != 1:
        raise fail(f"{len(payloads)} cc_lb.plugin.v1 sections, want 1")
    try:
        meta = json.loads(payloads[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"cc_lb.plugin.v1 is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise fail("cc_lb.plugin.v1 is not a JSON object")
    for key in ("name", "version", "description", "usage"):
        if not _nonblank(meta.get(key)):
            raise fail(f"metadata {key!r} is missing or blank")
    hooks = meta.get("hooks")
    if not isinstance(hooks, dict) or set(hooks) != set(modes):
        raise fail(f"metadata declares hooks {sorted(hooks) if isinstance(hooks, dict) else hooks!r}, want {sorted(modes)}")

    declared: dict[str, str] = {}
    for hook, entry in hooks.items():
        if hook not in HOOK_EXPORT_1_0:
            raise fail(f"unknown 1.0 hook {hook!r}")
        if not isinstance(entry, dict):
            raise fail(f"hook {hook!r}: the entry is not an object")
        version = entry.get("wire_version")
        if type(version) is not int or version != 1:
            raise fail(f"hook {hook!r}: wire_version {version!r}, want 1")
        for key in ("description", "usage"):
            if not _nonblank(entry.get(key)):
                raise fail(f"hook {hook!r}: {key!r} is missing or blank")
        if "mode" not in entry:  # absent = active for a host, but our plugins always say it (as cc-lb's PDK does)
            raise fail(f"hook {hook!r}: no explicit mode")
        if entry["mode"] not in _HOOK_MODES:
            raise fail(f"hook {hook!r}: mode {entry['mode']!r} is not one of {_HOOK_MODES}")
        if entry["mode"] != modes[hook]:
            raise fail(f"hook {hook!r}: mode {entry['mode']!r}, want {modes[hook]!r}")
        declared[hook] = entry["mode"]

    # The 1.0 rules (CONTRACT-1.0.md, "Rules of 1.0").
    if "shape" in declared and not {"transform_response", "transform_sse_event"} <= set(declared):
        raise fail("a plugin declaring shape must declare both transform hooks")
    if {"transform_response", "transform_sse_event"} & set(declared) and "shape" not in declared:
        raise fail("transform hooks are declared without shape")
    for hook in ("filter", "shape"):
        if declared.get(hook) == "noop":
            raise fail(f"{hook} cannot be noop")

    for hook, export in HOOK_EXPORT_1_0.items():
        if hook in declared:  # noop hooks included: they keep their export
            if exports.get(export) != ("func", _SIG_HOOK):
                raise fail(f"hook {hook!r}: `{export}` is not exported as a function (i32, i32) -> i64")
        elif export in exports:
            raise fail(f"`{export}` is exported but {hook!r} is not declared")

    schema_sections = [(name, data) for name, data in customs if name.startswith("cc_lb.schema.")]
    want = {f"cc_lb.schema.{hook}.v1": hook for hook in declared}
    seen = [name for name, _ in schema_sections]
    if sorted(seen) != sorted(want):
        raise fail(f"fingerprint sections {sorted(seen)}, want {sorted(want)}")
    for name, data in schema_sections:
        if bytes(data) != fps_1_0[want[name]]:
            raise fail(f"{name} holds {bytes(data).hex()}, not the 1.0 fingerprint {fps_1_0[want[name]].hex()}")
    return meta


# --- building --------------------------------------------------------------------------


def prepare(out_dir: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Check the toolchain, create `out_dir` and generate `out_dir/gen/cclb_fingerprints.h`;
    returns the 0.2 and the 1.0 fingerprints."""
    check_toolchain()
    fps = fingerprints()
    fps_1_0 = fingerprints_1_0()
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = out_dir / "gen"
    gen.mkdir(exist_ok=True)
    (gen / "cclb_fingerprints.h").write_text(fingerprint_header(fps, fps_1_0), encoding="ascii")
    return fps, fps_1_0


def compile_source(src: Path, wasm: Path, exports: list[str], out_dir: Path, ldflags: list[str] | None = None) -> None:
    """Compile one C source into `wasm` with the pinned flags, exporting `cc_lb_alloc`,
    `cc_lb_free` and `exports` (`prepare(out_dir)` must have run); `ldflags` replaces the
    linker flags (RUST_LAYOUT_LDFLAGS). No post-link check: the callers do theirs (tests use
    this for test-only guests)."""
    env = dict(os.environ)
    env["SOURCE_DATE_EPOCH"] = "0"
    cmd = (
        [sys.executable, "-m", "ziglang", "cc"]
        + CFLAGS
        + [
            f"-ffile-prefix-map={GUESTS}=guests",
            f"-ffile-prefix-map={out_dir}=build",
            "-I",
            str(INCLUDE),
            "-I",
            str(out_dir / "gen"),
        ]
        + (LDFLAGS if ldflags is None else ldflags)
        + [f"-Wl,--export={e}" for e in ["cc_lb_alloc", "cc_lb_free"] + exports]
        + [str(src), "-o", str(wasm)]
    )
    proc = subprocess.run(cmd, cwd=str(out_dir), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"compiling {src.name} failed:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def build(out_dir: Path) -> list[Path]:
    fps, fps_1_0 = prepare(out_dir)
    built = []
    jobs = [(plugin, [HOOK_EXPORT[h] for h in hooks], lambda wasm, hooks=hooks: check_module(wasm, hooks, fps))
            for plugin, hooks in PLUGINS.items()]
    jobs += [(plugin, [HOOK_EXPORT_1_0[h] for h in modes], lambda wasm, modes=modes: check_module_1_0(wasm, modes, fps_1_0))
             for plugin, modes in PLUGINS_1_0.items()]
    for plugin, hook_exports, check in jobs:
        wasm = out_dir / f"{plugin}.wasm"
        compile_source(PLUGINS_SRC / f"{plugin}.c", wasm, hook_exports, out_dir)
        check(wasm)
        built.append(wasm)
    return built


def build_rust_layout(out_dir: Path) -> Path:
    """cache_aware_filter.c laid out as rustc lays out a plugin (RUST_LAYOUT_LDFLAGS), checked
    like the shipped plugins and for that layout: what bench/bench_host.py's fresh-instance
    target is measured on. Not shipped."""
    fps, _ = prepare(out_dir)
    wasm = out_dir / "cache_aware_filter_rust_layout.wasm"
    compile_source(PLUGINS_SRC / "cache_aware_filter.c", wasm, [HOOK_EXPORT["filter"]], out_dir, RUST_LAYOUT_LDFLAGS)
    check_module(wasm, PLUGINS["cache_aware_filter"], fps)
    pages, stack_top, data_at = memory_layout(wasm.read_bytes())
    if (pages, stack_top) != (RUST_LAYOUT_PAGES, RUST_LAYOUT_STACK_TOP) or data_at < RUST_LAYOUT_STACK_TOP:
        raise BuildError(f"{wasm.name}: {pages} initial pages, stack top {stack_top}, data at {data_at}: not Rust's layout")
    return wasm


def memory_layout(module: bytes) -> tuple[int, int, int]:
    """(initial memory pages, the first global's initial value (the stack pointer), the
    lowest data segment offset) of a linked module: what RUST_LAYOUT_LDFLAGS decides."""
    pages = stack_top = -1
    data_at = 1 << 32
    reader = _Reader(module, 8)
    while reader.pos < reader.end:
        section_id = reader.byte()
        size = reader.u32()
        body = _Reader(module, reader.pos, reader.pos + size)
        reader.take(size)
        if section_id == 5:  # memory: count, then flags and the initial pages
            body.u32()
            body.byte()
            pages = body.u32()
        elif section_id == 6 and body.u32():  # globals: the first is (i32, mut, i32.const N, end)
            body.take(2)
            if body.byte() == 0x41:
                stack_top = body.s32()
        elif section_id == 11:  # active data segments of memory 0: (0, i32.const N, end, bytes)
            for _ in range(body.u32()):
                if body.u32() != 0 or body.byte() != 0x41:
                    raise BuildError("memory_layout: a data segment that is not active in memory 0")
                data_at = min(data_at, body.s32())
                body.byte()
                body.take(body.u32())
    return pages, stack_top, data_at


def install(built: list[Path]) -> None:
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    for wasm in built:
        shutil.copyfile(wasm, INSTALL_DIR / wasm.name)
        print(f"installed {INSTALL_DIR / wasm.name} ({wasm.stat().st_size} bytes)")


def check_committed() -> int:
    with tempfile.TemporaryDirectory(prefix="cclb-guests-") as tmp:
        built = build(Path(tmp))
        bad = []
        names = {w.name for w in built}
        for wasm in built:
            committed = INSTALL_DIR / wasm.name
            if not committed.exists():
                bad.append(f"{committed} is missing")
            elif not filecmp.cmp(wasm, committed, shallow=False):
                bad.append(f"{committed} differs from a fresh build ({committed.stat().st_size} vs {wasm.stat().st_size} bytes)")
        if INSTALL_DIR.is_dir():
            for extra in sorted(INSTALL_DIR.glob("*.wasm")):
                if extra.name not in names:
                    bad.append(f"{extra} is not built from guests/plugins")
    if bad:
        for line in bad:
            print(f"guests --check: {line}", file=sys.stderr)
        print("guests --check: run `python guests/build.py --install`", file=sys.stderr)
        return 1
    print(f"guests --check: {len(built)} plugins identical to cclb_wire/plugins/")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--install", action="store_true", help="also copy the modules into cclb_wire/plugins/")
    group.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with cclb_wire/plugins/")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="build directory (default guests/build)")
    args = ap.parse_args(argv)
    try:
        if args.check:
            return check_committed()
        built = build(args.out.resolve())
        for wasm in built:
            print(f"built {wasm} ({wasm.stat().st_size} bytes)")
        if args.install:
            install(built)
    except BuildError as exc:
        print(f"guests/build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
