"""Importing cclb_wire from a source checkout in which the extension is not built.

Python started in the repository root finds the checkout's cclb_wire/ before the installed
package. Without a compiled extension there, the import used to fall back to the 30x
slower pure-Python codec silently, or (with CCLB_WIRE_REQUIRE_EXTENSION=1) to fail with
"cannot import name '_codec' from partially initialized module". Each test runs a fresh
interpreter on a temporary copy of the package tree (no compiled extension in it) beside
another copy standing for the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import cclb_wire

REPO = Path(__file__).resolve().parent.parent
COMPILED = tuple(EXTENSION_SUFFIXES) + (".so", ".pyd", ".c", ".html")


def _copy_package(destination: Path) -> Path:
    """The checkout's cclb_wire/ sources, without anything built from them."""
    shutil.copytree(
        REPO / "cclb_wire", destination / "cclb_wire",
        ignore=lambda folder, names: [n for n in names if n == "__pycache__" or n.endswith(COMPILED)],
    )
    return destination / "cclb_wire"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """(checkout, installed): a source tree (pyproject.toml and setup.py beside the package)
    and a copy of the package alone, as pip installs it."""
    base = tmp_path_factory.mktemp("trees")
    checkout, installed = base / "checkout", base / "site-packages"
    _copy_package(checkout)
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy(REPO / name, checkout / name)
    _copy_package(installed)
    (base / "elsewhere").mkdir()
    return checkout, installed


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory) -> Path:
    """This interpreter's installed packages (cclb_wire's dependencies) but cclb_wire itself:
    links in a folder of their own, so that the only installed cclb_wire is a test's."""
    folder = tmp_path_factory.mktemp("dependencies")
    for library in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(library).iterdir():
            if not entry.name.lower().startswith(("cclb_wire", "__editable__")) and not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture(scope="module")
def run(dependencies):
    def run(cwd: Path, code: str, *, path: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
        """``python -S -c code`` in ``cwd``: no site (so no editable install's finder),
        ``path`` and the dependencies on PYTHONPATH, no CCLB_WIRE_* variable but ``env``."""
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("CCLB_WIRE_", "PYTHON"))}
        environment["PYTHONPATH"] = os.pathsep.join([*map(str, path), str(dependencies)])
        environment.update(env)
        return subprocess.run(
            [sys.executable, "-S", "-c", code], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
        )

    return run
IMPORT = "import cclb_wire; print(cclb_wire.BACKEND); print(cclb_wire.__file__)"


def test_the_checkout_in_the_current_directory_warns_that_it_shadows_the_install(trees, run):
    checkout, installed = trees
    result = run(checkout, IMPORT, path=[installed])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", str(checkout / "cclb_wire" / "__init__.py")]
    assert "RuntimeWarning: cclb_wire was imported from its source tree" in result.stderr
    for said in (
        f"source tree {checkout},",
        f"no {checkout / 'cclb_wire' / ('_codec' + EXTENSION_SUFFIXES[0])}",
        f"It shadows the installed cclb_wire in {installed / 'cclb_wire'}, because {checkout} is on sys.path",
        "Run Python from another directory",
        f"`pip install -e .` in {checkout}",
        "Falling back to the pure-Python codec",
    ):
        assert said in result.stderr, (said, result.stderr)


def test_with_the_extension_required_the_import_error_says_what_happened(trees, run):
    checkout, installed = trees
    result = run(checkout, IMPORT, path=[installed], CCLB_WIRE_REQUIRE_EXTENSION="1")
    assert result.returncode == 1 and result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: cclb_wire was imported from its source tree {checkout},"), last
    assert f"It shadows the installed cclb_wire in {installed / 'cclb_wire'}" in last
    assert last.endswith("CCLB_WIRE_REQUIRE_EXTENSION is set: no fallback."), last
    assert "circular import" not in result.stderr


def test_a_checkout_with_nothing_installed_says_to_build_the_extension(trees, run):
    checkout, _ = trees
    result = run(checkout, IMPORT, path=[], CCLB_WIRE_REQUIRE_EXTENSION="1")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1
    assert last.startswith(f"ImportError: cclb_wire was imported from its source tree {checkout},"), last
    assert f"No installed cclb_wire is on sys.path. Build the extension here (`pip install -e .` in {checkout})" in last


def test_the_fallback_chosen_on_purpose_says_nothing(trees, run):
    checkout, installed = trees
    result = run(checkout, IMPORT, path=[installed], CCLB_WIRE_PUREPYTHON="1")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.split()[0] == "python"


def test_from_another_directory_the_installed_package_is_imported(trees, run):
    checkout, installed = trees
    result = run(checkout.parent / "elsewhere", IMPORT, path=[installed])
    # This installed copy was built pure (no extension beside it): a quiet fallback, as
    # such a build is made on purpose; only the extension's absence when required is an error.
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.split() == ["python", str(installed / "cclb_wire" / "__init__.py")]
    required = run(checkout.parent / "elsewhere", IMPORT, path=[installed], CCLB_WIRE_REQUIRE_EXTENSION="1")
    last = required.stderr.strip().splitlines()[-1]
    assert required.returncode == 1
    assert last.startswith(f"ImportError: cclb_wire in {installed / 'cclb_wire'} has no extension built for this Python"), last
    assert "built pure (CCLB_WIRE_PUREPYTHON=1 at build time)" in last


@pytest.mark.skipif(cclb_wire.BACKEND != "cython", reason="needs the extension built for this Python")
def test_a_checkout_with_the_extension_built_loads_it_quietly(tmp_path, run):
    checkout = _copy_package(tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(cclb_wire._backend.__file__, checkout)
    result = run(tmp_path, IMPORT, path=[], CCLB_WIRE_REQUIRE_EXTENSION="1")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.split() == ["cython", str(checkout / "__init__.py")]
