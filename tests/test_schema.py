"""The schema against the spec's tables (WIRE-V1.md, CONTRACT-1.0.md and the 1.0 vectors'
LAYOUTS.md); expected values are typed from the spec."""

from __future__ import annotations

import pytest

import runpy
from pathlib import Path

from cclb_wire import FINGERPRINTS, schema

REPO = Path(__file__).resolve().parent.parent

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
    assert {n: t.size for n, t in schema.CONTRACT_0_2.roots.items()} == {
        "FilterRequest": 84,
        "ShapeRequest": 92,
        "ObserveEvent": 80,
        "FilterResponse": 8,
        "ShapeResponse": 32,
    }
    # vectors/cclb-1.0/README.md: FilterRequest 192 (align 8), TransformResponseRequest 92,
    # TransformSseEventRequest 100, TransformResponseResult 32, TransformSseEventResult 12
    assert {n: (t.size, t.align) for n, t in schema.CONTRACT_1_0.roots.items()} == {
        "FilterRequest10": (192, 8),
        "ShapeRequest": (92, 4),
        "TransformResponseRequest": (92, 4),
        "TransformSseEventRequest": (100, 4),
        "FilterResponse": (8, 4),
        "ShapeResponse": (32, 4),
        "TransformResponseResult": (32, 4),
        "TransformSseEventResult": (12, 4),
    }


# --- cc-lb 1.0: LAYOUTS.md "1.0 contract: new and changed types" and CONTRACT-1.0.md ----------

LAYOUTS_1_0 = {
    "UpstreamCandidate10": (80, 8, {
        "upstream_id": 0, "name": 8, "kind": 16, "observed_at_unix_secs": 24, "predicted_cache_read_tokens": 32,
        "predicted_cache_creation_tokens_5m": 36, "predicted_cache_creation_tokens_1h": 40,
        "predicted_uncached_input_tokens": 44, "plan_capacity_ratio": 48, "organization_type": 56,
        "rate_limit_tier": 64, "seat_tier": 72,
    }),
    "CachePricingSummary": (72, 8, {
        "status": 0, "input_micros_per_million": 8, "cache_creation_5m_micros_per_million": 24,
        "cache_creation_1h_micros_per_million": 40, "cache_read_micros_per_million": 56,
    }),
    "FilterRequest10": (192, 8, {
        "request_id": 0, "thread_id": 8, "service_tier": 20, "canonical_model_id": 32, "cache_pricing": 40,
        "method": 112, "path": 120, "query": 128, "headers": 140, "body": 148, "principal": 156, "candidates": 180,
    }),
    "TransformResponseRequest": (92, 4, {
        "request_id": 0, "principal": 8, "upstream": 32, "request_method": 48, "request_path": 56,
        "canonical_model_id": 64, "response_status": 72, "response_headers": 76, "body": 84,
    }),
    "SseEvent": (16, 4, {"event": 0, "data": 8}),
    "TransformSseEventRequest": (100, 4, {
        "request_id": 0, "principal": 8, "upstream": 32, "request_method": 48, "request_path": 56,
        "canonical_model_id": 64, "response_status": 72, "response_headers": 76, "event": 84,
    }),
}

ENUMS_1_0 = {
    "TransformResponseResult": (32, 4, {"Unchanged": {}, "Replace": {"status": 2, "headers": 8, "body": 20}}),
    "TransformSseEventResult": (12, 4, {"Unchanged": {}, "Replace": {"events": 4}, "Drop": {}}),
}

FINGERPRINTS_1_0 = {
    "filter": "f20f669542349c002acd04b2308ff0d83899bf0cb5a17b818c1d938adda52834",
    "shape": "4d8dc5140a59b01f57eed210a82d30acd078dd1e6a6e047237bd46990d10e8b6",
    "transform_response": "96aa46cba27a46674871a2a9e348c4f12d95cfd4f06b6e92374be2dbe84993c1",
    "transform_sse_event": "af8e6292457ad7bf56e77fa57813cb16005f46cb8fd2dfae01c9795f6ca31acb",
}

DESCRIPTORS_1_0 = {
    "filter": "FilterRequest{body:Box<[u8]>,cache_pricing:CachePricingSummary,candidates:Box<[UpstreamCandidate]>,"
    "canonical_model_id:Box<str>,headers:Box<[Header]>,method:Box<str>,path:Box<str>,principal:Principal,"
    "query:Option<Box<str>>,request_id:Box<str>,service_tier:Option<Box<str>>,thread_id:Option<Box<str>>}",
    "transform_response": "TransformResponseRequest{body:Box<[u8]>,canonical_model_id:Box<str>,principal:Principal,"
    "request_id:Box<str>,request_method:Box<str>,request_path:Box<str>,response_headers:Box<[Header]>,"
    "response_status:u16,upstream:Upstream}",
    "transform_sse_event": "TransformSseEventRequest{canonical_model_id:Box<str>,event:SseEvent,principal:Principal,"
    "request_id:Box<str>,request_method:Box<str>,request_path:Box<str>,response_headers:Box<[Header]>,"
    "response_status:u16,upstream:Upstream}",
}


@pytest.mark.parametrize("name", sorted(LAYOUTS_1_0))
def test_1_0_struct_layout_matches_measured(name):
    size, align, offsets = LAYOUTS_1_0[name]
    t = schema.CONTRACT_1_0.types[name]
    assert (t.size, t.align) == (size, align)
    assert [(f.name, f.offset) for f in t.fields] == list(offsets.items())


@pytest.mark.parametrize("name", sorted(ENUMS_1_0))
def test_1_0_enum_layout_matches_measured(name):
    size, align, variants = ENUMS_1_0[name]
    t = schema.CONTRACT_1_0.types[name]
    assert (t.size, t.align) == (size, align)
    assert [(v.name, v.tag) for v in t.variants] == [(name, tag) for tag, name in enumerate(variants)]
    for v in t.variants:
        assert {f.name: f.offset for f in v.fields} == variants[v.name]


def test_1_0_option_layouts_match_measured():
    # LAYOUTS.md "Options and primitives": (size, align, Some payload offset)
    for option, expected in (
        (schema.OPTION_U16, (4, 2, 2)),
        (schema.OPTION_BYTES, (12, 4, 4)),
        (schema.OPTION_HEADERS, (12, 4, 4)),
        (schema.OPTION_U64, (16, 8, 8)),
    ):
        assert (option.size, option.align, option.payload_offset) == expected


@pytest.mark.parametrize("hook", sorted(FINGERPRINTS_1_0))
def test_1_0_fingerprints_match_spec(hook):
    assert schema.CONTRACT_1_0.fingerprints[hook].hex() == FINGERPRINTS_1_0[hook]


@pytest.mark.parametrize("hook", sorted(DESCRIPTORS_1_0))
def test_1_0_descriptors_match_spec(hook):
    assert schema.descriptor(schema.CONTRACT_1_0.hook_requests[hook]) == DESCRIPTORS_1_0[hook]


def test_fingerprint_registry_names_each_contract():
    by_key = {(hook, digest.hex()[:8]): [c.name for c in contracts] for (hook, digest), contracts in schema.FINGERPRINT_CONTRACTS.items()}
    assert by_key == {
        ("filter", "049219a3"): ["0.2"],
        ("shape", "4d8dc514"): ["0.2", "1.0"],  # shape's layout did not change
        ("observe", "a488b2dd"): ["0.2"],
        ("filter", "f20f6695"): ["1.0"],
        ("transform_response", "96aa46cb"): ["1.0"],
        ("transform_sse_event", "af8e6292"): ["1.0"],
    }
    interim = bytes.fromhex("e2ddd9c3418f5b5aabd0e2b5e156c31adef6b8d60592ee71f0019baad095d98d")
    assert ("filter", interim) in schema.REFUSED_FINGERPRINTS
    assert ("filter", interim) not in schema.FINGERPRINT_CONTRACTS


def test_1_0_rules_are_data():
    c = schema.CONTRACT_1_0
    assert set(c.hooks) == {"filter", "shape", "transform_response", "transform_sse_event"}
    assert c.noop_hooks == {"transform_response", "transform_sse_event"}
    assert c.requires["shape"] == {"transform_response", "transform_sse_event"}
    assert "observe" not in c.hooks and "observe" in schema.CONTRACT_0_2.hooks


def test_generated_cython_units_are_current():
    # The Cython encoders and decoders of the 1.0 roots are generated from this schema.
    render = runpy.run_path(str(REPO / "tools" / "gen_codec_pxi.py"))["render"]
    assert (REPO / "cclb_wire" / "_generated.pxi").read_text(encoding="utf-8") == render()
