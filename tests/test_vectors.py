"""Golden vectors from real rkyv 0.8.16: byte-exact encoding, exact decoding,
and rkyv's own accept/reject verdict on every mutated archive."""

from __future__ import annotations

import pytest

import cclb_wire
from cclb_wire import jsonvalue, schema

from vectorlib import expand_body, read_jsonl

# Each set of vectors speaks one contract; its "type" names the Rust type of that contract
# (in the 1.0 set, "FilterRequest" is the 192-byte 1.0 struct).
SETS = {"0.2": "", "1.0": "cclb-1.0/"}


#: contract name -> (root, entry) of its invalid.jsonl
INVALID_BY_SET = {}


def _entries(files):
    entries = []
    for contract_name, folder in SETS.items():
        roots = {root.name: root for root in schema.CONTRACTS[contract_name].roots.values()}
        for file in files:
            for entry in read_jsonl(folder + file):
                root = roots[entry["type"]]
                entries.append(pytest.param(root, entry, id=f"{root.public_name}:{entry['name']}"))
                if file == "invalid.jsonl":
                    INVALID_BY_SET.setdefault(contract_name, []).append((root, entry))
    return entries


VALID = _entries(("valid.jsonl", "mutation_bases.jsonl"))
INVALID = _entries(("invalid.jsonl",))


@pytest.mark.parametrize("root, entry", VALID)
def test_valid_vector_encodes_byte_exact(root, entry):
    value = jsonvalue.from_json_value(root, entry["value"])
    archive = cclb_wire.encode(value)
    assert len(archive) == entry["len"]
    assert archive.hex() == entry["hex"]
    assert cclb_wire.encoded_size(value) == entry["len"]
    assert len(archive) - root.size == entry.get("root_pos", len(archive) - root.size)


@pytest.mark.parametrize("root, entry", VALID)
def test_valid_vector_decodes_to_value(root, entry):
    decoded = cclb_wire.decode(root, bytes.fromhex(entry["hex"]))
    assert type(decoded) is type(jsonvalue.from_json_value(root, entry["value"]))
    # JSON forms compare NaN as "nan"; the byte-exact re-encoding pins every bit.
    assert cclb_wire.encode(decoded).hex() == entry["hex"]
    assert jsonvalue.to_json_value(root, decoded) == expand_body(entry["value"])


@pytest.mark.parametrize("root, entry", VALID)
def test_valid_vector_through_json_interchange(root, entry):
    archive = cclb_wire.encode_json(root, entry["value"])
    assert archive.hex() == entry["hex"]
    assert cclb_wire.decode_json(root, archive) == expand_body(entry["value"])


@pytest.mark.parametrize("root, entry", VALID)
def test_valid_vector_encode_into_guest_like_buffer(root, entry):
    value = cclb_wire.decode(root, bytes.fromhex(entry["hex"]))
    buffer = bytearray(b"\xee" * (entry["len"] + 64))
    written = cclb_wire.encode_into(value, buffer, 32)
    assert written == entry["len"]
    assert buffer[32 : 32 + written].hex() == entry["hex"]
    assert buffer[:32] == b"\xee" * 32 and buffer[32 + written :] == b"\xee" * (64 - 32)


@pytest.mark.parametrize("root, entry", INVALID)
def test_corpus_verdict_matches_rkyv(root, entry):
    data = bytes.fromhex(entry["hex"])
    if entry["rkyv_ok"]:
        decoded = cclb_wire.decode(root, data)
        assert jsonvalue.to_json_value(root, decoded) == entry["value"]
        if entry["canonical"]:
            assert cclb_wire.encode(decoded) == data
        else:
            assert cclb_wire.encode(decoded) != data
    else:
        with pytest.raises(cclb_wire.DecodeError) as caught:
            cclb_wire.decode(root, data)
        assert caught.value.kind == entry["error_kind"]
        assert caught.value.type_name == entry["type"]
        error = caught.value
        assert isinstance(error.offset, int)
        assert str(error).startswith(f"invalid {entry['type']} archive: ")
        assert f"(offset {error.offset})" in str(error)
        if error.path:
            assert f"{entry['type']}.{error.path}" in str(error)


@pytest.mark.parametrize("contract_name", SETS)
def test_corpus_covers_every_kind_and_type(contract_name):
    contract = schema.CONTRACTS[contract_name]
    cases = INVALID_BY_SET[contract_name]
    kinds = {e["error_kind"] for _, e in cases if not e["rkyv_ok"]}
    assert kinds == {"subtree_pointer_out_of_range", "unaligned_pointer", "invalid_utf8", "invalid_discriminant"}
    # Every root of the contract that changed or is new has vectors of its own in its set.
    expected = {root.public_name for root in contract.roots.values()}
    if contract_name == "1.0":
        expected -= set(schema.CONTRACT_0_2.roots)
    assert {root.public_name for root, _ in cases} == expected
    assert any(e["rkyv_ok"] for _, e in cases) and any(not e["rkyv_ok"] for _, e in cases)


def test_every_root_of_every_contract_has_golden_vectors():
    covered = {case.values[0] for case in VALID}
    assert covered == set(schema.ROOT_TYPES.values())
