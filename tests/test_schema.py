"""The schema against the spec's tables (WIRE-V1.md); expected values are typed from the spec."""

from __future__ import annotations

import pytest

from cclb_wire import FINGERPRINTS, schema

# WIRE-V1.md "Archived layouts": (size, align, {field: offset})
SPEC_LAYOUTS = {
    "Header": (16, 4, {"name": 0, "value": 8}),
    "Claim": (16, 4, {"key": 0, "value": 8}),
    "Principal": (24, 4, {"id": 0, "kind": 8, "claims": 16}),
    "UpstreamCandidate": (
        40,
        8,
        {"upstream_id": 0, "name": 8, "kind": 16, "observed_at_unix_secs": 24, "predicted_cache_read_tokens": 32},
    ),
    "FilterRequest": (
        84,
        4,
        {"request_id": 0, "method": 8, "path": 16, "query": 24, "headers": 36, "body": 44, "principal": 52, "candidates": 76},
    ),
    "PerCandidateReason": (24, 4, {"upstream_id": 0, "decision": 8, "reason": 16}),
    "FilterResponse": (8, 4, {"results": 0}),
    "ShapeRequest": (
        92,
        4,
        {"request_id": 0, "method": 8, "path": 16, "query": 24, "headers": 36, "body": 44, "principal": 52, "upstream": 76},
    ),
    "ShapeResponse": (32, 4, {"url": 0, "method": 8, "headers": 16, "body": 24}),
}

SPEC_ENUMS = {
    "Upstream": (16, 4, {"AnthropicDirect": {"base_url": 4}}),
    "ObserveEvent": (
        80,
        8,
        {
            "RequestStarted": {"request_id": 4, "downstream_user_agent": 12},
            "AuthnComplete": {"principal_id": 4, "principal_kind": 12},
            "UpstreamChosen": {"upstream": 4},
            "Chunk": {"batch_index": 8, "event_count": 16, "total_bytes": 24},
            "RequestFinished": {
                "status": 2,
                "input_tokens": 8,
                "output_tokens": 24,
                "cache_creation_input_tokens": 40,
                "cache_read_input_tokens": 56,
                "duration_ms": 72,
            },
            "Error": {"code": 4, "message": 12, "source": 20},
        },
    ),
}

SPEC_FINGERPRINTS = {
    "filter": "049219a32497f8439572bab29c8d38cf1fde52c6d3085081c09dab3a73fa382e",
    "shape": "4d8dc5140a59b01f57eed210a82d30acd078dd1e6a6e047237bd46990d10e8b6",
    "observe": "a488b2dd3cfa89b8f586ca51e003d2fe5eee8f88bd99e41a7168523ac0e7429a",
}

SPEC_DESCRIPTORS = {
    "filter": "FilterRequest{body:Box<[u8]>,candidates:Box<[UpstreamCandidate]>,headers:Box<[Header]>,method:Box<str>,"
    "path:Box<str>,principal:Principal,query:Option<Box<str>>,request_id:Box<str>}",
    "shape": "ShapeRequest{body:Box<[u8]>,headers:Box<[Header]>,method:Box<str>,path:Box<str>,principal:Principal,"
    "query:Option<Box<str>>,request_id:Box<str>,upstream:Upstream}",
}


@pytest.mark.parametrize("name", sorted(SPEC_LAYOUTS))
def test_struct_layout_matches_spec(name):
    size, align, offsets = SPEC_LAYOUTS[name]
    t = schema.ALL_TYPES[name]
    assert (t.size, t.align) == (size, align)
    assert {f.name: f.offset for f in t.fields} == offsets
    assert [f.name for f in t.fields] == list(offsets)  # declaration order


@pytest.mark.parametrize("name", sorted(SPEC_ENUMS))
def test_enum_layout_matches_spec(name):
    size, align, variants = SPEC_ENUMS[name]
    t = schema.ALL_TYPES[name]
    assert (t.size, t.align) == (size, align)
    assert [v.name for v in t.variants] == list(variants)
    assert [v.tag for v in t.variants] == list(range(len(variants)))
    for v in t.variants:
        assert {f.name: f.offset for f in v.fields} == variants[v.name]


def test_option_layouts_match_spec():
    assert (schema.OptionOf(schema.STR).size, schema.OptionOf(schema.STR).align) == (12, 4)
    assert (schema.OptionOf(schema.U64).size, schema.OptionOf(schema.U64).align) == (16, 8)
    assert schema.OptionOf(schema.U64).payload_offset == 8


@pytest.mark.parametrize("hook", sorted(SPEC_FINGERPRINTS))
def test_fingerprints_match_spec(hook):
    assert FINGERPRINTS[hook].hex() == SPEC_FINGERPRINTS[hook]
    assert len(FINGERPRINTS[hook]) == 32


@pytest.mark.parametrize("hook", sorted(SPEC_DESCRIPTORS))
def test_descriptors_match_spec(hook):
    assert schema.descriptor(schema.HOOK_REQUEST_TYPES[hook]) == SPEC_DESCRIPTORS[hook]


def test_root_sizes_match_vectors_readme():
    # vectors/README.md: root sizes FilterRequest 84, ShapeRequest 92, ObserveEvent 80, FilterResponse 8, ShapeResponse 32
    assert {n: t.size for n, t in schema.ROOT_TYPES.items()} == {
        "FilterRequest": 84,
        "ShapeRequest": 92,
        "ObserveEvent": 80,
        "FilterResponse": 8,
        "ShapeResponse": 32,
    }
