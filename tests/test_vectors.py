"""Golden vectors from real rkyv 0.8.16: byte-exact encoding, exact decoding,
and rkyv's own accept/reject verdict on every mutated archive."""

from __future__ import annotations

import pytest

import cclb_wire
from cclb_wire import jsonvalue, schema

from vectorlib import expand_body, read_jsonl

VALID = list(read_jsonl("valid.jsonl")) + list(read_jsonl("mutation_bases.jsonl"))
INVALID = list(read_jsonl("invalid.jsonl"))


def _id(entry):
    return entry["name"]


@pytest.mark.parametrize("entry", VALID, ids=_id)
def test_valid_vector_encodes_byte_exact(entry):
    root = schema.ROOT_TYPES[entry["type"]]
    value = jsonvalue.from_json_value(root, entry["value"])
    archive = cclb_wire.encode(value)
    assert len(archive) == entry["len"]
    assert archive.hex() == entry["hex"]
    assert cclb_wire.encoded_size(value) == entry["len"]
    assert len(archive) - root.size == entry.get("root_pos", len(archive) - root.size)


@pytest.mark.parametrize("entry", VALID, ids=_id)
def test_valid_vector_decodes_to_value(entry):
    root = schema.ROOT_TYPES[entry["type"]]
    decoded = cclb_wire.decode(entry["type"], bytes.fromhex(entry["hex"]))
    assert decoded == jsonvalue.from_json_value(root, entry["value"])
    assert jsonvalue.to_json_value(root, decoded) == expand_body(entry["value"])


@pytest.mark.parametrize("entry", VALID, ids=_id)
def test_valid_vector_through_json_interchange(entry):
    archive = cclb_wire.encode_json(entry["type"], entry["value"])
    assert archive.hex() == entry["hex"]
    assert cclb_wire.decode_json(entry["type"], archive) == expand_body(entry["value"])


@pytest.mark.parametrize("entry", VALID, ids=_id)
def test_valid_vector_encode_into_guest_like_buffer(entry):
    value = cclb_wire.decode(entry["type"], bytes.fromhex(entry["hex"]))
    buffer = bytearray(b"\xee" * (entry["len"] + 64))
    written = cclb_wire.encode_into(value, buffer, 32)
    assert written == entry["len"]
    assert buffer[32 : 32 + written].hex() == entry["hex"]
    assert buffer[:32] == b"\xee" * 32 and buffer[32 + written :] == b"\xee" * (64 - 32)


@pytest.mark.parametrize("entry", INVALID, ids=_id)
def test_corpus_verdict_matches_rkyv(entry):
    data = bytes.fromhex(entry["hex"])
    root = schema.ROOT_TYPES[entry["type"]]
    if entry["rkyv_ok"]:
        decoded = cclb_wire.decode(entry["type"], data)
        assert jsonvalue.to_json_value(root, decoded) == entry["value"]
        if entry["canonical"]:
            assert cclb_wire.encode(decoded) == data
        else:
            assert cclb_wire.encode(decoded) != data
    else:
        with pytest.raises(cclb_wire.DecodeError) as caught:
            cclb_wire.decode(entry["type"], data)
        assert caught.value.kind == entry["error_kind"]
        assert caught.value.type_name == entry["type"]
        error = caught.value
        assert isinstance(error.offset, int)
        assert str(error).startswith(f"invalid {entry['type']} archive: ")
        assert f"(offset {error.offset})" in str(error)
        if error.path:
            assert f"{entry['type']}.{error.path}" in str(error)


def test_corpus_covers_every_kind_and_type():
    kinds = {e["error_kind"] for e in INVALID if not e["rkyv_ok"]}
    assert kinds == {"subtree_pointer_out_of_range", "unaligned_pointer", "invalid_utf8", "invalid_discriminant"}
    assert {e["type"] for e in INVALID} == set(schema.ROOT_TYPES)
    assert any(e["rkyv_ok"] for e in INVALID) and any(not e["rkyv_ok"] for e in INVALID)
