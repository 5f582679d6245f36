"""The static types stay in step with the schema and the runtime."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import cclb_wire
from cclb_wire import schema, wire

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(cclb_wire.__file__).resolve().parent
CONSUMER = Path(__file__).resolve().parent / "typing_consumer.py"


def test_wire_stub_is_generated_from_the_schema():
    render = runpy.run_path(str(REPO / "tools" / "gen_wire_pyi.py"))["render"]
    assert (PACKAGE / "wire.pyi").read_text(encoding="utf-8") == render()


def test_package_is_marked_typed():
    assert (PACKAGE / "py.typed").exists()


def test_every_schema_type_has_its_class_with_fields_in_order():
    for name, wire_type in schema.ALL_TYPES.items():
        cls = getattr(wire, name)
        if isinstance(wire_type, schema.StructType):
            assert cls._fields == tuple(f.name for f in wire_type.fields)
        else:
            assert [v.__name__ for v in cls.VARIANTS] == [v.name for v in wire_type.variants]
            for variant_class, variant in zip(cls.VARIANTS, wire_type.variants):
                assert variant_class._fields == tuple(f.name for f in variant.fields)
                assert variant_class.TAG == variant.tag


# --- mypy --strict over the package and over a user's code (what CI runs) -------------


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for this module's mypy runs: the second reuses the package's analysis."""
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(cache: Path, *args: str) -> None:
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mypy --strict {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_package_passes_mypy_strict(mypy_cache: Path) -> None:
    run_mypy(mypy_cache, "-p", "cclb_wire")


def test_consumer_code_passes_mypy_strict(mypy_cache: Path) -> None:
    # Its assert_type() calls pin the public types; its "type: ignore[code]" lines must stay errors.
    run_mypy(mypy_cache, str(CONSUMER.relative_to(REPO)))


def test_consumer_code_runs() -> None:
    namespace = runpy.run_path(str(CONSUMER))  # defines functions only; main() does the work
    namespace["main"]()
