"""The static types stay in step with the schema and the runtime."""

from __future__ import annotations

import runpy
from pathlib import Path

import cclb_wire
from cclb_wire import schema, wire

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(cclb_wire.__file__).resolve().parent


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
