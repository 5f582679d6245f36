"""Property tests: round trips for random values, nothing but DecodeError for random bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cclb_wire
from cclb_wire import jsonvalue, schema
from strategies import ANY_ROOT_VALUE, ROOT_VALUES

ROOTS = sorted(schema.ROOT_TYPES)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("root", ROOTS)
@SETTINGS
@given(data=st.data())
def test_decode_inverts_encode(root, data):
    value = data.draw(ROOT_VALUES[root])
    archive = cclb_wire.encode(value)
    assert cclb_wire.encoded_size(value) == len(archive)
    assert cclb_wire.decode(root, archive) == value
    # Deterministic: the same value always gives the same bytes.
    assert cclb_wire.encode(value) == archive


@pytest.mark.skipif(cclb_wire.BACKEND != "cython", reason="crosses the two backends: needs the extension")
@pytest.mark.parametrize("root", ROOTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_each_backend_decodes_what_the_other_encodes(root, data):
    # A bug shared by one backend's encoder and decoder would pass the round trip above.
    from cclb_wire import _codec, _fallback

    value = data.draw(ROOT_VALUES[root])
    assert _fallback.decode(root, _codec.encode(value)) == value
    assert _codec.decode(root, _fallback.encode(value)) == value


@pytest.mark.parametrize("root", ROOTS)
@SETTINGS
@given(data=st.data())
def test_json_interchange_round_trips(root, data):
    value = data.draw(ROOT_VALUES[root])
    obj = jsonvalue.to_json_value(schema.ROOT_TYPES[root], value)
    assert jsonvalue.from_json_value(schema.ROOT_TYPES[root], obj) == value
    assert cclb_wire.decode_json(root, cclb_wire.encode_json(root, obj)) == obj


@SETTINGS
@given(value=ANY_ROOT_VALUE, pad=st.sampled_from([0, 16, 48]))
def test_encode_into_writes_exactly_encode(value, pad):
    expected = cclb_wire.encode(value)
    buffer = bytearray(b"\x5a" * (pad + len(expected) + 7))
    assert cclb_wire.encode_into(value, buffer, pad) == len(expected)
    assert bytes(buffer[pad : pad + len(expected)]) == expected
    assert buffer[:pad] == b"\x5a" * pad and buffer[pad + len(expected) :] == b"\x5a" * 7


def _decode_or_reject(root, data):
    try:
        return cclb_wire.decode(root, data)
    except cclb_wire.DecodeError as error:
        assert error.kind in {"subtree_pointer_out_of_range", "unaligned_pointer", "invalid_utf8", "invalid_discriminant"}
        return None


@pytest.mark.parametrize("root", ROOTS)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(root, data):
    value = _decode_or_reject(root, data)
    if value is not None:
        assert cclb_wire.decode(root, cclb_wire.encode(value)) == value


@pytest.mark.parametrize("root", ROOTS)
@SETTINGS
@given(data=st.data())
def test_mutated_archives_raise_only_decode_error(root, data):
    archive = bytearray(cclb_wire.encode(data.draw(ROOT_VALUES[root])))
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(archive) - 1), st.integers(0, 255)), min_size=1, max_size=6))
    for position, byte in edits:
        archive[position] = byte
    cut = data.draw(st.integers(0, len(archive)))
    mutated = bytes(archive[: cut if data.draw(st.booleans()) else len(archive)])
    value = _decode_or_reject(root, mutated)
    if value is not None:  # compared as bytes: a mutated f64 may be NaN, which equals nothing
        again = cclb_wire.encode(value)
        assert cclb_wire.encode(cclb_wire.decode(root, again)) == again
