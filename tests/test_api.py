"""The codec API at its edges: inputs, buffers, errors, memory, backend selection."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import cclb_wire
from cclb_wire import wire

ONE = wire.FilterResponse((wire.PerCandidateReason("id", "accept", "ok"),))
# Hand-assembled (rkyv rules, rkyv-0.8-format.md section 5): "id" "accept" "ok" = 10 bytes,
# pad to 12, element [12, 36), root [36, 44).
ONE_HEX = (
    "6964" "616363657074" "6f6b" "0000"
    "f4ffffff02000000" "eeffffff06000000" "ecffffff02000000"
    "e8ffffff01000000"
)


def test_encode_matches_hand_assembled_archive():
    assert cclb_wire.encode(ONE).hex() == ONE_HEX
    assert cclb_wire.encoded_size(ONE) == 44


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8), lambda b: np.frombuffer(b, dtype=np.uint8).copy()],
    ids=["bytes", "bytearray", "memoryview", "numpy-readonly", "numpy"],
)
def test_decode_takes_any_buffer(make):
    assert cclb_wire.decode("FilterResponse", make(bytes.fromhex(ONE_HEX))) == ONE


@pytest.mark.parametrize("shift", [1, 2, 3, 5, 8])
def test_unaligned_input_decodes_as_if_copied_aligned(shift):
    raw = bytearray(shift) + bytearray.fromhex(ONE_HEX)
    view = memoryview(raw)[shift:]
    assert cclb_wire.decode(wire.FilterResponse, view) == ONE


def test_decode_rejects_non_contiguous_and_non_buffers():
    array = np.zeros(88, dtype=np.uint8)[::2]
    with pytest.raises(TypeError, match="contiguous"):
        cclb_wire.decode("FilterResponse", array)
    with pytest.raises(TypeError, match="bytes-like"):
        cclb_wire.decode("FilterResponse", "not bytes")


def test_decode_type_argument_forms():
    data = bytes.fromhex(ONE_HEX)
    from cclb_wire import schema

    for type_ in ("FilterResponse", wire.FilterResponse, schema.FILTER_RESPONSE):
        assert cclb_wire.decode(type_, data) == ONE
    with pytest.raises(TypeError, match="unknown wire type"):
        cclb_wire.decode("Nope", data)
    with pytest.raises(TypeError, match="not an archive root"):
        cclb_wire.decode("Header", data)


def test_decode_error_names_type_path_and_offset():
    data = bytearray.fromhex(ONE_HEX)
    struct.pack_into("<i", data, 36 + 0, -1000)  # results pointer far before the buffer
    with pytest.raises(cclb_wire.PointerOutOfRange) as caught:
        cclb_wire.decode("FilterResponse", bytes(data))
    error = caught.value
    assert (error.kind, error.type_name, error.path, error.offset) == ("subtree_pointer_out_of_range", "FilterResponse", "results", 36)
    assert "FilterResponse.results" in str(error) and "offset 36" in str(error)
    assert isinstance(error, ValueError) and isinstance(error, cclb_wire.WireError)


def test_utf8_error_points_at_the_bad_byte():
    data = bytearray.fromhex(ONE_HEX)
    data[3] = 0xFF  # inside "accept" = results[0].decision, which starts at 2
    with pytest.raises(cclb_wire.InvalidUtf8) as caught:
        cclb_wire.decode("FilterResponse", bytes(data))
    assert (caught.value.path, caught.value.offset) == ("results[0].decision", 3)


def test_discriminant_error_for_enum_tag():
    archive = bytearray(cclb_wire.encode(wire.Chunk(1, 2, 3)))
    archive[len(archive) - 80] = 6
    with pytest.raises(cclb_wire.InvalidDiscriminant) as caught:
        cclb_wire.decode("ObserveEvent", bytes(archive))
    assert caught.value.offset == len(archive) - 80 and caught.value.path == ""


def test_huge_declared_length_is_rejected_before_allocating():
    data = bytearray.fromhex(ONE_HEX)
    struct.pack_into("<I", data, 40, 0xFFFFFFFF)  # results len
    tracemalloc.start()
    try:
        with pytest.raises(cclb_wire.PointerOutOfRange):
            cclb_wire.decode("FilterResponse", bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_encode_into_checks_offset_and_room():
    size = cclb_wire.encoded_size(ONE)
    buffer = bytearray(b"\x11" * 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        cclb_wire.encode_into(ONE, buffer, 8)
    with pytest.raises(ValueError, match="multiple of 16"):
        cclb_wire.encode_into(ONE, buffer, -16)
    with pytest.raises(ValueError, match=f"needs {size} bytes at offset 32"):
        cclb_wire.encode_into(ONE, buffer, 32)
    assert buffer == bytearray(b"\x11" * 64)  # nothing written on failure
    with pytest.raises(TypeError, match="read-only"):
        cclb_wire.encode_into(ONE, bytes(64), 0)
    array = np.zeros(64, dtype=np.uint8)
    assert cclb_wire.encode_into(ONE, array, 16) == size
    assert array[16 : 16 + size].tobytes().hex() == ONE_HEX


def test_encode_rejects_non_root_and_wrong_types():
    with pytest.raises(TypeError, match="root wire value"):
        cclb_wire.encode(wire.Header("a", b"b"))
    with pytest.raises(cclb_wire.EncodeTypeError) as caught:
        cclb_wire.encode(wire.FilterResponse((wire.PerCandidateReason("a", b"bytes", "c"),)))
    assert caught.value.path == "results[0].decision" and isinstance(caught.value, TypeError)
    with pytest.raises(cclb_wire.EncodeTypeError, match="expected PerCandidateReason"):
        cclb_wire.encode(wire.FilterResponse((wire.Header("a", b"b"),)))
    with pytest.raises(cclb_wire.EncodeTypeError, match="expected int"):
        cclb_wire.encode(wire.Chunk(True, 0, 0))


@pytest.mark.parametrize(
    "value, path",
    [
        (wire.Chunk(-1, 0, 0), "Chunk.batch_index"),
        (wire.Chunk(0, 1 << 64, 0), "Chunk.event_count"),
        (wire.RequestFinished(65536, None, None, None, None, 0), "RequestFinished.status"),
        (wire.Error("ok", "lone \ud800 surrogate", ""), "Error.message"),
    ],
)
def test_encode_out_of_range_values(value, path):
    with pytest.raises(cclb_wire.EncodeError) as caught:
        cclb_wire.encode(value)
    assert caught.value.path == path and not isinstance(caught.value, TypeError)


def test_plain_tuples_stand_for_structs():
    value = wire.FilterResponse((("id", "accept", "ok"),))
    assert cclb_wire.encode(value).hex() == ONE_HEX


def test_variants_with_equal_fields_are_not_equal():
    assert wire.RequestStarted("a", "b") != wire.AuthnComplete("a", "b")
    assert wire.RequestStarted("a", "b") == wire.RequestStarted("a", "b")
    assert hash(wire.RequestStarted("a", "b")) == hash(wire.RequestStarted("a", "b"))
    assert isinstance(wire.Chunk(0, 0, 0), wire.ObserveEvent)
    assert wire.ObserveEvent.Error is wire.Error
    assert repr(wire.Chunk(1, 2, 3)) == "ObserveEvent.Chunk(batch_index=1, event_count=2, total_bytes=3)"


def _run_python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CCLB_WIRE_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=os.path.dirname(__file__))


def test_purepython_env_forces_the_fallback():
    result = _run_python("import cclb_wire; print(cclb_wire.BACKEND)", CCLB_WIRE_PUREPYTHON="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python"


def test_require_extension_env_fails_without_extension_or_loads_it():
    result = _run_python("import cclb_wire; print(cclb_wire.BACKEND)", CCLB_WIRE_REQUIRE_EXTENSION="1")
    try:
        import cclb_wire._codec  # noqa: F401

        has_extension = True
    except ImportError:
        has_extension = False
    if has_extension:
        assert result.returncode == 0 and result.stdout.strip() == "cython"
    else:
        assert result.returncode != 0 and "ImportError" in result.stderr


def test_codec_import_does_not_import_wasmtime():
    result = _run_python("import sys, cclb_wire; print('wasmtime' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
