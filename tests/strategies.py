"""Hypothesis strategies for wire values, derived from the schema."""

from __future__ import annotations

from hypothesis import strategies as st

from cclb_wire import schema, wire

# Arbitrary Unicode (no lone surrogates: they cannot be UTF-8), biased to edge sizes.
TEXT = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from("a\x00é한🧑\u200d💻\U0010ffff"), max_size=12),
)
BYTES = st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=4000, max_size=70000))


def _ints(primitive: schema.Primitive):
    return st.one_of(st.sampled_from([0, 1, primitive.max_value]), st.integers(0, primitive.max_value))


# NaN is left out: it never equals itself, and the properties compare values. The golden
# vectors pin NaN's bytes (every pattern decodes; encoding writes the canonical one).
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 0.75, float("inf"), float("-inf"), 5e-324]), st.floats(allow_nan=False))


def value_of(wire_type):
    if isinstance(wire_type, schema.Float):
        return FLOATS
    if isinstance(wire_type, schema.Primitive):
        return _ints(wire_type)
    if wire_type is schema.STR:
        return TEXT
    if wire_type is schema.BYTES:
        return BYTES
    if isinstance(wire_type, schema.OptionOf):
        return st.none() | value_of(wire_type.inner)
    if isinstance(wire_type, schema.SliceOf):
        return st.lists(value_of(wire_type.elem), max_size=6).map(tuple)
    if isinstance(wire_type, schema.StructType):
        cls = wire.class_for(wire_type)
        return st.tuples(*(value_of(f.type) for f in wire_type.fields)).map(lambda fields: cls(*fields))
    variants = []
    for variant_class in wire.class_for(wire_type).VARIANTS:
        fields = variant_class.WIRE_VARIANT.fields
        variants.append(
            st.tuples(*(value_of(f.type) for f in fields)).map(lambda values, c=variant_class: c(*values))
        )
    return st.one_of(*variants)


ROOT_VALUES = {name: value_of(t) for name, t in schema.ROOT_TYPES.items()}
ANY_ROOT_VALUE = st.one_of(*ROOT_VALUES.values())
