"""The cc-lb 1.0 contract guests (guests/plugins/*_1_0.c), driven with wasmtime directly.

cclb_wire's runtime does not host 1.0 plugins yet, so these tests load the modules with the
`wasmtime` package themselves and follow the 1.0 ABI (CONTRACT-1.0.md): the archive is
copied into guest memory at a 16-aligned `cc_lb_alloc` pointer, the hook returns
`(ptr << 32) | len`, and each call gets a fresh instance (as the reference host does) unless
a test says otherwise.

Inputs are the golden 1.0 archives made by real rkyv (tests/data/cclb-1.0/valid.jsonl, a
copy of shared/vectors/cclb-1.0/valid.jsonl) and archives built here. Answers are compared
byte for byte with what rkyv writes: the small encoder below follows rkyv 0.8's `to_bytes`
rules and is itself checked against every golden archive of the types it writes.

The modules are built from guests/ into a temporary directory with guests/build.py when
the pinned ziglang is installed, else the shipped copies in cclb_wire/plugins/ are used.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

import wasmtime

from cclb_wire.schema import CONTRACTS  # noqa: E402
from vectorlib import expand_body  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VECTORS_1_0 = REPO / "tests" / "data" / "cclb-1.0"
VECTORS_0_2 = REPO / "tests" / "data" / "valid.jsonl"
SHIPPED = REPO / "cclb_wire" / "plugins"
HOSTILE_1_0 = REPO / "tests" / "fixtures" / "hostile_1_0"
FPS_1_0 = {hook: bytes(fp) for hook, fp in CONTRACTS["1.0"].fingerprints.items()}
PLUGINS_1_0 = ("cache_aware_filter_1_0", "tool_rename_shape_1_0", "noop_transforms_1_0")


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


VALID = read_jsonl(VECTORS_1_0 / "valid.jsonl")
BY_NAME = {line["name"]: line for line in VALID}


def lines_of(type_name: str) -> List[Dict[str, Any]]:
    return [line for line in VALID if line["type"] == type_name]


def ids(lines: Sequence[Dict[str, Any]]) -> List[str]:
    return [line["name"].split("/", 1)[1] for line in lines]


def archive(line: Dict[str, Any]) -> bytes:
    return bytes.fromhex(line["hex"])


def value(line: Dict[str, Any]) -> Any:
    return expand_body(line["value"])


# --- building / loading the guests ------------------------------------------------------


@pytest.fixture(scope="session")
def wasm_dir(tmp_path_factory) -> Path:
    try:
        pinned = importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        pinned = None
    if pinned is None or pinned != load_build().ZIGLANG_VERSION:
        return SHIPPED  # no pinned toolchain here: test what ships
    out = tmp_path_factory.mktemp("guests-1-0")
    proc = subprocess.run([sys.executable, str(REPO / "guests" / "build.py"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


class Guest:
    """One compiled plugin; `call` runs a hook on a fresh instance (or on `instance`)."""

    def __init__(self, wasm: bytes):
        self.engine = wasmtime.Engine()
        self.module = wasmtime.Module(self.engine, wasm)
        self.wasm = wasm

    def instance(self) -> Tuple[Any, Any]:
        store = wasmtime.Store(self.engine)
        return store, wasmtime.Instance(store, self.module, []).exports(store)

    def call(self, export: str, data: bytes, inst: Optional[Tuple[Any, Any]] = None, free_output: bool = False) -> bytes:
        store, exports = inst or self.instance()
        memory = exports["memory"]
        ptr = exports["cc_lb_alloc"](store, len(data), 16) & 0xFFFFFFFF
        assert ptr != 0 and ptr % 16 == 0
        memory.write(store, data, ptr)
        packed = exports[export](store, ptr, len(data)) & 0xFFFFFFFFFFFFFFFF
        out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
        assert out_ptr != 0 and out_len != 0, "a 1.0 hook must return a non-zero pointer and length"
        assert out_ptr + out_len <= memory.data_len(store)
        out = bytes(memory.read(store, out_ptr, out_ptr + out_len))
        if free_output:
            exports["cc_lb_free"](store, out_ptr, out_len, 1)
        return out


@pytest.fixture(scope="session")
def guests(wasm_dir) -> Dict[str, Guest]:
    return {name: Guest((wasm_dir / f"{name}.wasm").read_bytes()) for name in PLUGINS_1_0}


# --- an rkyv 0.8 encoder for the types these tests build or expect ----------------------
#
# rkyv's to_bytes is a post-order walk: each object's out-of-line data first (fields in
# declaration order), then padding to the object's alignment, then the object; strings and
# byte slices have alignment 1 and an empty one points at the current position; a slice of
# structs writes its elements' data, pads to 4 (even when empty), then the elements; every
# gap is zero; the root comes last.

Ptr = Tuple[int, int]  # (absolute target position, length)


class Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def pad(self, align: int) -> None:
        self.buf += bytes(-len(self.buf) % align)

    def data(self, raw: bytes) -> Ptr:
        pos = len(self.buf)
        self.buf += raw
        return pos, len(raw)

    def pairs(self, items: Sequence[Tuple[bytes, bytes]]) -> Ptr:
        """A slice of 16-byte two-pointer structs (Header, Claim, SseEvent, ...)."""
        deps = [(self.data(a), self.data(b)) for a, b in items]
        self.pad(4)
        start = len(self.buf)
        for (pa, la), (pb, lb) in deps:
            e = len(self.buf)
            self.buf += struct.pack("<iIiI", pa - e, la, pb - (e + 8), lb)
        return start, len(items)

    def triples(self, items: Sequence[Tuple[bytes, bytes, bytes]]) -> Ptr:
        """A slice of 24-byte three-pointer structs (PerCandidateReason)."""
        deps = [tuple(self.data(x) for x in item) for item in items]
        self.pad(4)
        start = len(self.buf)
        for ptrs in deps:
            e = len(self.buf)
            for i, (p, n) in enumerate(ptrs):
                self.buf += struct.pack("<iI", p - (e + 8 * i), n)
        return start, len(items)

    def root(self, size: int, align: int) -> "Root":
        self.pad(align)
        return Root(self, len(self.buf), size)


class Root:
    def __init__(self, w: Writer, pos: int, size: int):
        self.w, self.pos, self.obj = w, pos, bytearray(size)

    def ptr(self, off: int, target: Ptr) -> None:
        struct.pack_into("<iI", self.obj, off, target[0] - (self.pos + off), target[1])

    def done(self) -> bytes:
        self.w.buf += self.obj
        return bytes(self.w.buf)


def _pairs(items: Sequence[Dict[str, str]], a: str, b: str) -> List[Tuple[bytes, bytes]]:
    return [(item[a].encode(), bytes.fromhex(item[b])) for item in items]


def enc_filter_response(results: Sequence[Tuple[str, str, str]]) -> bytes:
    w = Writer()
    res = w.triples([tuple(s.encode() for s in r) for r in results])
    root = w.root(8, 4)
    root.ptr(0, res)
    return root.done()


def enc_shape_response(url: str, method: str, headers: Sequence[Tuple[bytes, bytes]], body: bytes) -> bytes:
    w = Writer()
    u, m, h, b = w.data(url.encode()), w.data(method.encode()), w.pairs(headers), w.data(body)
    root = w.root(32, 4)
    for off, p in ((0, u), (8, m), (16, h), (24, b)):
        root.ptr(off, p)
    return root.done()


def enc_transform_response_result(v: Dict[str, Any]) -> bytes:
    if "Unchanged" in v:
        return bytes(32)
    rep = v["Replace"]
    w = Writer()
    headers = w.pairs(_pairs(rep["headers"], "name", "value")) if rep["headers"] is not None else None
    body = w.data(bytes.fromhex(rep["body"])) if rep["body"] is not None else None
    root = w.root(32, 4)
    root.obj[0] = 1
    if rep["status"] is not None:
        root.obj[2] = 1
        struct.pack_into("<H", root.obj, 4, rep["status"])
    if headers is not None:
        root.obj[8] = 1
        root.ptr(12, headers)
    if body is not None:
        root.obj[20] = 1
        root.ptr(24, body)
    return root.done()


def enc_transform_sse_event_result(v: Dict[str, Any]) -> bytes:
    if "Unchanged" in v:
        return bytes(12)
    if "Drop" in v:
        return b"\x02" + bytes(11)
    w = Writer()
    events = w.pairs(_pairs(v["Replace"]["events"], "event", "data"))
    root = w.root(12, 4)
    root.obj[0] = 1
    root.ptr(4, events)
    return root.done()


def _principal(w: Writer, p: Dict[str, Any]) -> Tuple[Ptr, Ptr, Ptr]:
    return w.data(p["id"].encode()), w.data(p["kind"].encode()), w.pairs(_pairs(p["claims"], "key", "value"))


def _put_principal(root: Root, off: int, ptrs: Tuple[Ptr, Ptr, Ptr]) -> None:
    for i, p in enumerate(ptrs):
        root.ptr(off + 8 * i, p)


def _put_upstream(root: Root, off: int, base: Optional[Ptr]) -> None:
    # Upstream::AnthropicDirect (tag 0) { base_url: Option<Str> @4 (tag), payload @8 }
    if base is not None:
        root.obj[off + 4] = 1
        root.ptr(off + 8, base)


def enc_transform_request(v: Dict[str, Any]) -> bytes:
    """TransformResponseRequest (92 B) or TransformSseEventRequest (100 B), by the value's keys."""
    sse = "event" in v
    w = Writer()
    rid = w.data(v["request_id"].encode())
    principal = _principal(w, v["principal"])
    base_url = v["upstream"]["AnthropicDirect"]["base_url"]
    base = w.data(base_url.encode()) if base_url is not None else None
    method, path, model = (w.data(v[k].encode()) for k in ("request_method", "request_path", "canonical_model_id"))
    headers = w.pairs(_pairs(v["response_headers"], "name", "value"))
    if sse:
        tail: List[Ptr] = [w.data(v["event"]["event"].encode()), w.data(bytes.fromhex(v["event"]["data"]))]
    else:
        tail = [w.data(bytes.fromhex(v["body"]))]
    root = w.root(100 if sse else 92, 4)
    root.ptr(0, rid)
    _put_principal(root, 8, principal)
    _put_upstream(root, 32, base)
    root.ptr(48, method)
    root.ptr(56, path)
    root.ptr(64, model)
    struct.pack_into("<H", root.obj, 72, v["response_status"])
    root.ptr(76, headers)
    for i, p in enumerate(tail):
        root.ptr(84 + 8 * i, p)
    return root.done()


def enc_shape_request(v: Dict[str, Any]) -> bytes:
    """ShapeRequest (unchanged from 0.2; 92 B)."""
    w = Writer()
    rid, method, path = (w.data(v[k].encode()) for k in ("request_id", "method", "path"))
    query = w.data(v["query"].encode()) if v["query"] is not None else None
    headers = w.pairs(_pairs(v["headers"], "name", "value"))
    body = w.data(bytes.fromhex(v["body"]))
    principal = _principal(w, v["principal"])
    base_url = v["upstream"]["AnthropicDirect"]["base_url"]
    base = w.data(base_url.encode()) if base_url is not None else None
    root = w.root(92, 4)
    root.ptr(0, rid)
    root.ptr(8, method)
    root.ptr(16, path)
    if query is not None:
        root.obj[24] = 1
        root.ptr(28, query)
    root.ptr(36, headers)
    root.ptr(44, body)
    _put_principal(root, 52, principal)
    _put_upstream(root, 76, base)
    return root.done()


# --- a small decoder for FilterResponse (checks pointers and UTF-8 as it goes) ------------


def dec_filter_response(buf: bytes) -> List[Tuple[str, str, str]]:
    assert len(buf) >= 8 and len(buf) % 4 == 0
    root = len(buf) - 8

    def target(field: int, size: int, limit: int) -> Tuple[int, int]:
        off, n = struct.unpack_from("<iI", buf, field)
        start = field + off
        assert 0 <= start and start + n * size <= limit
        return start, n

    arr, n = target(root, 24, root)
    assert arr % 4 == 0
    out = []
    for i in range(n):
        e = arr + 24 * i
        fields = []
        for f in range(3):
            s, ln = target(e + 8 * f, 1, arr)
            fields.append(buf[s : s + ln].decode("utf-8"))
        out.append(tuple(fields))
    return out


# --- the encoder is rkyv: every golden archive of the types it writes ----------------------

ENCODED_1_0 = {
    "TransformResponseResult": enc_transform_response_result,
    "TransformSseEventResult": enc_transform_sse_event_result,
    "TransformResponseRequest": enc_transform_request,
    "TransformSseEventRequest": enc_transform_request,
}
ENCODER_LINES = [line for line in VALID if line["type"] in ENCODED_1_0]


@pytest.mark.parametrize("line", ENCODER_LINES, ids=ids(ENCODER_LINES))
def test_the_test_encoder_reproduces_rkyv_1_0(line):
    assert ENCODED_1_0[line["type"]](value(line)) == archive(line)


LINES_0_2 = [line for line in read_jsonl(VECTORS_0_2) if line["type"] in ("FilterResponse", "ShapeResponse", "ShapeRequest")]


@pytest.mark.parametrize("line", LINES_0_2, ids=ids(LINES_0_2))
def test_the_test_encoder_reproduces_rkyv_0_2(line):
    v = expand_body(line["value"])
    if line["type"] == "FilterResponse":
        got = enc_filter_response([(r["upstream_id"], r["decision"], r["reason"]) for r in v["results"]])
        assert dec_filter_response(got) == [(r["upstream_id"], r["decision"], r["reason"]) for r in v["results"]]
    elif line["type"] == "ShapeResponse":
        got = enc_shape_response(v["url"], v["method"], _pairs(v["headers"], "name", "value"), bytes.fromhex(v["body"]))
    else:
        got = enc_shape_request(v)
    assert got == bytes.fromhex(line["hex"])


# --- metadata and fingerprints ----------------------------------------------------------


def custom_sections(wasm: bytes) -> List[Tuple[str, bytes]]:
    def leb(pos: int) -> Tuple[int, int]:
        val = shift = 0
        while True:
            b = wasm[pos]
            pos += 1
            val |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return val, pos

    assert wasm[:8] == b"\0asm\x01\0\0\0"
    pos, out = 8, []
    while pos < len(wasm):
        sid = wasm[pos]
        size, body = leb(pos + 1)
        if sid == 0:
            nlen, npos = leb(body)
            out.append((wasm[npos : npos + nlen].decode(), wasm[npos + nlen : body + size]))
        pos = body + size
    return out


MODES = {
    "cache_aware_filter_1_0": {"filter": "active"},
    "tool_rename_shape_1_0": {"shape": "active", "transform_response": "active", "transform_sse_event": "active"},
    "noop_transforms_1_0": {"shape": "active", "transform_response": "noop", "transform_sse_event": "noop"},
}
EXPORTS = {"filter": "cc_lb_filter", "shape": "cc_lb_shape", "transform_response": "cc_lb_transform_response",
           "transform_sse_event": "cc_lb_transform_sse_event"}


@pytest.mark.parametrize("name", PLUGINS_1_0)
def test_metadata_modes_exports_and_1_0_fingerprints(guests, name):
    guest = guests[name]
    sections = custom_sections(guest.wasm)
    meta = [json.loads(data) for sname, data in sections if sname == "cc_lb.plugin.v1"]
    assert len(meta) == 1
    hooks = meta[0]["hooks"]
    assert {hook: entry["mode"] for hook, entry in hooks.items()} == MODES[name]
    assert all(entry["wire_version"] == 1 for entry in hooks.values())
    schemas = {sname: bytes(data) for sname, data in sections if sname.startswith("cc_lb.schema.")}
    assert schemas == {f"cc_lb.schema.{hook}.v1": FPS_1_0[hook] for hook in MODES[name]}
    exports = {e.name: e.type for e in guest.module.exports}
    assert not list(guest.module.imports)
    for hook in EXPORTS:
        if hook in MODES[name]:  # a noop hook keeps its export
            sig = exports[EXPORTS[hook]]
            assert [str(p) for p in sig.params] == ["i32", "i32"] and [str(r) for r in sig.results] == ["i64"]
        else:
            assert EXPORTS[hook] not in exports


def test_the_1_0_filter_fingerprint_is_not_the_0_2_one():
    assert FPS_1_0["filter"] != bytes(CONTRACTS["0.2"].fingerprints["filter"])
    assert FPS_1_0["filter"].hex() == "f20f669542349c002acd04b2308ff0d83899bf0cb5a17b818c1d938adda52834"


# --- cache_aware_filter_1_0 ---------------------------------------------------------------

_JSON_INT = re.compile(rb"[ \t\n\r]*(-?)(0|[1-9][0-9]*)(?:\.0+)?[ \t\n\r]*")


def expected_filter_results(v: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """What guests/plugins/cache_aware_filter_1_0.c answers, from the request's JSON value."""
    cands = v["candidates"]
    n = len(cands)
    k = 1
    for claim in v["principal"]["claims"]:
        if claim["key"] == "keep_k":
            m = _JSON_INT.fullmatch(bytes.fromhex(claim["value"]))
            if m:
                k = 0 if m.group(1) else int(m.group(2))
            break
    k = min(k, n)
    tokens = [c["predicted_cache_read_tokens"] for c in cands]
    kept = set(sorted(range(n), key=lambda i: -tokens[i])[:k])  # sorted() is stable
    parts = []
    if v["service_tier"] == "priority":
        parts.append("tier=priority")
    if v["cache_pricing"]["cache_read_micros_per_million"] is not None:
        parts.append(f"cache_read={v['cache_pricing']['cache_read_micros_per_million']}")
    context = ("; " + " ".join(parts)) if parts else ""
    out = []
    for i, c in enumerate(cands):
        if i in kept:
            out.append((c["upstream_id"], "accept", f"top-{k} by predicted cache read tokens ({tokens[i]}){context}"))
        else:
            out.append((c["upstream_id"], "reject", f"outside top-{k} ({tokens[i]} predicted cache read tokens){context}"))
    return out


FILTER_LINES = lines_of("FilterRequest")


def test_every_kind_of_golden_filter_request_is_here():
    assert len(FILTER_LINES) == 11
    assert all(line["root_size"] == 192 for line in FILTER_LINES)


@pytest.mark.parametrize("line", FILTER_LINES, ids=ids(FILTER_LINES))
def test_filter_answers_each_golden_request_byte_exactly(guests, line):
    v = value(line)
    answer = guests["cache_aware_filter_1_0"].call("cc_lb_filter", archive(line))
    results = dec_filter_response(answer)
    assert len(results) == len(v["candidates"])
    assert [r[0] for r in results] == [c["upstream_id"] for c in v["candidates"]]
    expected = expected_filter_results(v)
    assert results == expected
    assert answer == enc_filter_response(expected)


def reasons_of(guests, name: str) -> List[str]:
    return [r[2] for r in dec_filter_response(guests["cache_aware_filter_1_0"].call("cc_lb_filter", archive(BY_NAME[name])))]


def test_filter_reasons_show_the_priority_tier_and_the_cache_read_price(guests):
    # messages_korean: service_tier "priority", cache_read_micros_per_million Some(1500000)
    reasons = reasons_of(guests, "public/filter10/messages_korean")
    assert len(reasons) == 3 and all(r.endswith("; tier=priority cache_read=1500000") for r in reasons)
    assert reasons[2] == "top-1 by predicted cache read tokens (1024); tier=priority cache_read=1500000"
    # body_1000_random: no tier, cache_read Some(300000)
    assert reasons_of(guests, "public/filter10/body_1000_random") == [
        "top-1 by predicted cache read tokens (0); cache_read=300000"
    ]
    # int_extremes: cache_read 2^63 (read as a full u64)
    assert all(r.endswith("; cache_read=9223372036854775808") for r in reasons_of(guests, "public/filter10/int_extremes"))
    # plan_capacity_ratio_specials: tier "batch" (not priority) and cache_read None: no suffix
    assert not any(";" in r for r in reasons_of(guests, "public/filter10/plan_capacity_ratio_specials"))
    # messages_realistic: keep_k claim 3 keeps the three largest (u32 max, 131072, 65535)
    kept = [r for r in reasons_of(guests, "public/filter10/messages_realistic") if r.startswith("top-3")]
    assert [r.split("(")[1].split(")")[0] for r in kept] == ["65535", "131072", "4294967295"]


def test_filter_traps_on_a_0_2_request_and_on_a_misplaced_root(guests):
    guest = guests["cache_aware_filter_1_0"]
    # a 0.2 FilterRequest shorter than the 1.0 root (192 bytes): no 1.0 root fits
    request_0_2 = next(line for line in read_jsonl(VECTORS_0_2) if line["type"] == "FilterRequest" and line["len"] < 192)
    with pytest.raises(wasmtime.Trap):
        guest.call("cc_lb_filter", bytes.fromhex(request_0_2["hex"]))
    # 4 leading bytes put the 8-aligned root at an address that is only 4-aligned (rkyv: rejected)
    with pytest.raises(wasmtime.Trap):
        guest.call("cc_lb_filter", bytes(4) + archive(BY_NAME["public/filter10/all_empty"]))
    # 8 leading bytes keep it aligned (rkyv: accepted)
    assert guest.call("cc_lb_filter", bytes(8) + archive(BY_NAME["public/filter10/all_empty"])) == enc_filter_response([])


# --- rkyv's verdicts on mutated requests ------------------------------------------------------

INVALID_1_0 = VECTORS_1_0 / "invalid.jsonl"
REQUEST_HOOKS = {
    "FilterRequest": ("cache_aware_filter_1_0", "cc_lb_filter"),
    "TransformResponseRequest": ("tool_rename_shape_1_0", "cc_lb_transform_response"),
    "TransformSseEventRequest": ("tool_rename_shape_1_0", "cc_lb_transform_sse_event"),
}


@pytest.mark.parametrize("root_type", sorted(REQUEST_HOOKS))
def test_readers_accept_exactly_what_rkyv_accepts(guests, root_type):
    plugin, export = REQUEST_HOOKS[root_type]
    lines = [line for line in read_jsonl(INVALID_1_0) if line["type"] == root_type]
    assert lines and any(line["rkyv_ok"] for line in lines) and not all(line["rkyv_ok"] for line in lines)
    wrong = []
    for line in lines:
        try:
            answer: Optional[bytes] = guests[plugin].call(export, bytes.fromhex(line["hex"]))
        except wasmtime.Trap:
            answer = None
        if (answer is not None) != line["rkyv_ok"]:
            wrong.append(f"{line['name']}: {'accepted' if answer is not None else 'trapped'}")
        elif answer is not None:  # accepted: the answer follows rkyv's decoded value
            v = expand_body(line["value"])
            if root_type == "FilterRequest":
                expected = enc_filter_response(expected_filter_results(v))
            elif root_type == "TransformResponseRequest":
                expected = expected_transform_response(bytes.fromhex(v["body"]))
            else:
                expected = expected_sse(v["event"]["event"], bytes.fromhex(v["event"]["data"]))
            if answer != expected:
                wrong.append(f"{line['name']}: wrong answer")
    assert not wrong, f"{len(wrong)} of {len(lines)} differ from rkyv: {wrong[:10]}"


# --- tool_rename_shape_1_0: transform_response ----------------------------------------------

UNCHANGED_32 = archive(BY_NAME["public/transform_response_result/unchanged"])
UNCHANGED_12 = archive(BY_NAME["public/transform_sse_event_result/unchanged"])
DROP_12 = archive(BY_NAME["public/transform_sse_event_result/drop"])


def map_down(data: bytes) -> bytes:
    return re.sub(rb'"name":( ?)"Bash"', rb'"name":\1"bash"', data)


def map_up(data: bytes) -> bytes:
    return re.sub(rb'"name":( ?)"bash"', rb'"name":\1"Bash"', data)


def expected_transform_response(body: bytes) -> bytes:
    new = map_down(body)
    if new == body:
        return enc_transform_response_result({"Unchanged": {}})
    return enc_transform_response_result({"Replace": {"status": None, "headers": None, "body": new.hex()}})


TRREQ_LINES = lines_of("TransformResponseRequest")


def test_the_unit_answers_are_rkyvs():
    assert UNCHANGED_32 == bytes(32) and UNCHANGED_12 == bytes(12) and DROP_12 == b"\x02" + bytes(11)


@pytest.mark.parametrize("line", TRREQ_LINES, ids=ids(TRREQ_LINES))
def test_transform_response_leaves_golden_responses_unchanged(guests, line):
    body = bytes.fromhex(value(line)["body"])
    assert b'"name":"Bash"' not in body and b'"name": "Bash"' not in body
    assert guests["tool_rename_shape_1_0"].call("cc_lb_transform_response", archive(line)) == UNCHANGED_32


TOOL_USE_BODY = (
    b'{"id":"msg_01","type":"message","role":"assistant","content":['
    b'{"type":"text","text":"Running it."},'
    b'{"type":"tool_use","id":"toolu_01","name":"Bash","input":{"command":"ls"}},'
    b'{"type":"tool_use","id":"toolu_02", "name": "Bash", "input":{"command":"pwd"}},'
    b'{"type":"tool_use","id":"toolu_03","name":"Read","input":{"toolname":"Bash","x":"name\\":\\"Bash"}},'
    b'{"type":"tool_use","id":"toolu_04","name":"Bashful","input":{}},'
    b'{"type":"tool_use","id":"toolu_05","name":"bash","input":{}}'
    b'],"stop_reason":"tool_use"}'
)


def with_body(line_name: str, body: bytes) -> Dict[str, Any]:
    v = value(BY_NAME[line_name])
    v["body"] = body.hex()
    return v


@pytest.mark.parametrize(
    "body",
    [
        TOOL_USE_BODY,
        b'"name":"Bash"',  # the token is the whole body
        b'"name": "Bash"',
        b'x"name":"Bash"',  # at the very end
        b'"name":"Bas',  # cut short: no match
        b'"name":  "Bash"',  # two spaces: not a token
        bytes(range(256)) + b'"name":"Bash"' + b"\xff\xfe",  # binary around it (bytes are not UTF-8-checked)
        b'"name":"Bash"' * 1000,
        b"",
    ],
    ids=["tool_use", "whole", "whole_spaced", "at_end", "cut", "two_spaces", "binary", "repeated", "empty"],
)
def test_transform_response_maps_bash_back(guests, body):
    request = enc_transform_request(with_body("public/transform_response/ok_json_10_headers", body))
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_transform_response", request)
    assert answer == expected_transform_response(body)
    if map_down(body) != body:
        # Replace{status: None, headers: None, body: Some(..)}: tag 1, status and headers None
        root = answer[-32:]
        assert (root[0], root[2], root[8], root[20]) == (1, 0, 0, 1)
        off, n = struct.unpack_from("<iI", answer, len(answer) - 32 + 24)
        start = len(answer) - 32 + 24 + off
        assert answer[start : start + n] == map_down(body) and n == len(body)


def test_transform_response_tool_use_body_renames_exactly_the_two_tokens():
    new = map_down(TOOL_USE_BODY)
    assert new.count(b'"name":"bash"') == 2 and new.count(b'"name": "bash"') == 1  # toolu_05 was bash already
    assert b'"toolname":"Bash"' in new and b'"name":"Bashful"' in new and b'"name\\":\\"Bash"' in new


def test_transform_response_maps_back_in_a_100000_byte_body(guests):
    line = BY_NAME["public/transform_response/body_100000"]
    body = bytearray(bytes.fromhex(value(line)["body"]))
    body[:13] = b'"name":"Bash"'
    body[50_000:50_014] = b'"name": "Bash"'
    body[-13:] = b'"name":"Bash"'
    request = enc_transform_request(with_body(line["name"], bytes(body)))
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_transform_response", request)
    assert answer == expected_transform_response(bytes(body))
    assert len(answer) == 100_000 + 32


def test_transform_response_traps_on_an_invalid_request(guests):
    request = bytearray(archive(BY_NAME["public/transform_response/status_max_one_header"]))
    request[-92 + 32] = 1  # Upstream tag 1: no such variant
    with pytest.raises(wasmtime.Trap):
        guests["tool_rename_shape_1_0"].call("cc_lb_transform_response", bytes(request))


# --- tool_rename_shape_1_0: transform_sse_event -----------------------------------------------

TSREQ_LINES = lines_of("TransformSseEventRequest")


@pytest.mark.parametrize("line", TSREQ_LINES, ids=ids(TSREQ_LINES))
def test_transform_sse_event_on_golden_events(guests, line):
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_transform_sse_event", archive(line))
    expected = DROP_12 if value(line)["event"]["event"] == "ping" else UNCHANGED_12
    assert answer == expected
    assert (line["name"].endswith("/ping")) == (answer == DROP_12)


def sse_request(event: str, data: bytes, base: str = "public/transform_sse_event/message_start") -> bytes:
    v = value(BY_NAME[base])
    v["event"] = {"event": event, "data": data.hex()}
    return enc_transform_request(v)


def expected_sse(event: str, data: bytes) -> bytes:
    if event == "ping":
        return DROP_12
    new = map_down(data)
    if new == data:
        return UNCHANGED_12
    return enc_transform_sse_event_result({"Replace": {"events": [{"event": event, "data": new.hex()}]}})


TOOL_START = b'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"Bash","input":{}}}'


@pytest.mark.parametrize(
    "event,data",
    [
        ("content_block_start", TOOL_START),
        ("content_block_start", TOOL_START.replace(b'"name":"Bash"', b'"name": "Bash"')),
        ("이벤트-🦀", b'"name":"Bash"'),  # the event name is kept as it came
        ("", b'"name":"Bash","name":"Bash"'),
        ("content_block_delta", b'{"type":"content_block_delta","delta":{"partial_json":"{\\"name\\":\\"Bash\\"}"}}'),
        ("message_stop", b'{"type":"message_stop"}'),
        ("pingx", b'"name":"Bash"'),  # only the exact name "ping" is dropped
    ],
    ids=["tool_start", "tool_start_spaced", "utf8_name", "empty_name_twice", "escaped_json", "no_token", "not_ping"],
)
def test_transform_sse_event_maps_bash_back(guests, event, data):
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_transform_sse_event", sse_request(event, data))
    assert answer == expected_sse(event, data)
    if map_down(data) == data:
        assert answer == UNCHANGED_12
    else:
        assert answer[-12] == 1 and struct.unpack_from("<I", answer, len(answer) - 4)[0] == 1


def test_transform_sse_event_drops_ping_even_with_a_token(guests):
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_transform_sse_event", sse_request("ping", b'"name":"Bash"'))
    assert answer == DROP_12


def test_a_replace_with_one_event_has_rkyvs_layout(guests):
    # The guest's Replace and rkyv's replace_1_event differ only in content: same framing.
    golden = archive(BY_NAME["public/transform_sse_event_result/replace_1_event"])
    ev = value(BY_NAME["public/transform_sse_event_result/replace_1_event"])["Replace"]["events"][0]
    data = bytes.fromhex(ev["data"]) + b'"name":"Bash"'
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_transform_sse_event", sse_request(ev["event"], data))
    assert answer[-12:-8] == golden[-12:-8] and answer[-4:] == golden[-4:]  # tag + padding, len 1
    assert answer == enc_transform_sse_event_result({"Replace": {"events": [{"event": ev["event"], "data": map_down(data).hex()}]}})


# --- tool_rename_shape_1_0 and noop_transforms_1_0: shape -------------------------------------

SHAPE_BASE = {
    "request_id": "0b7c3f0e-1d2a-4c5b-8e9f-0a1b2c3d4e5f",
    "method": "POST",
    "path": "/v1/messages",
    "query": "beta=true",
    "headers": [{"name": "content-type", "value": b"application/json".hex()}, {"name": "anthropic-version", "value": b"2023-06-01".hex()}],
    "principal": {"id": "key_org-7f3a9c2e", "kind": "api_key", "claims": [{"key": "keep_k", "value": "32"}]},
    "upstream": {"AnthropicDirect": {"base_url": "https://example.test/"}},
}
TOOLS_BODY = (
    b'{"model":"claude-sonnet-4-5","tools":[{"name":"bash","description":"Run a command"},'
    b'{"name": "bash","type":"bash_20250124"},{"name":"bash_x"},{"toolname":"bash"}],'
    b'"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"toolu_01","name":"bash","input":{}}]}]}'
)


def shape_request(body: bytes, **over: Any) -> bytes:
    v = dict(SHAPE_BASE, body=body.hex())
    v.update(over)
    return enc_shape_request(v)


def expected_shape(body: bytes, base: str = "https://example.test", query: Optional[str] = "beta=true") -> bytes:
    url = base + "/v1/messages" + (f"?{query}" if query is not None else "")
    return enc_shape_response(url, "POST", _pairs(SHAPE_BASE["headers"], "name", "value"), body)


@pytest.mark.parametrize("body", [TOOLS_BODY, b'"name":"bash"', b'{"name": "bash"}', b'{"name":"Bash"}', b""],
                         ids=["tools", "whole", "spaced", "already_Bash", "empty"])
def test_shape_renames_bash_on_the_way_up(guests, body):
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_shape", shape_request(body))
    assert answer == expected_shape(map_up(body))
    if body == TOOLS_BODY:
        up = map_up(body)
        assert up.count(b'"name":"Bash"') == 2 and up.count(b'"name": "Bash"') == 1
        assert b'"name":"bash_x"' in up and b'"toolname":"bash"' in up and b'"type":"bash_20250124"' in up


def test_shape_url_defaults_without_a_base_url(guests):
    request = shape_request(TOOLS_BODY, query=None, upstream={"AnthropicDirect": {"base_url": None}})
    answer = guests["tool_rename_shape_1_0"].call("cc_lb_shape", request)
    assert answer == expected_shape(map_up(TOOLS_BODY), base="https://api.anthropic.com", query=None)


def test_noop_transforms_shape_is_a_passthrough(guests):
    answer = guests["noop_transforms_1_0"].call("cc_lb_shape", shape_request(TOOLS_BODY))
    assert answer == expected_shape(TOOLS_BODY)


@pytest.mark.parametrize("export,line", [
    ("cc_lb_transform_response", "public/transform_response/ok_json_10_headers"),
    ("cc_lb_transform_sse_event", "public/transform_sse_event/message_start"),
])
def test_noop_transform_hooks_exist_but_trap_if_called(guests, export, line):
    with pytest.raises(wasmtime.Trap):
        guests["noop_transforms_1_0"].call(export, archive(BY_NAME[line]))


# --- one instance, many calls (a host may reuse an instance) ------------------------------


def test_one_instance_answers_many_calls_without_leaking(guests):
    guest = guests["tool_rename_shape_1_0"]
    inst = guest.instance()
    store, exports = inst
    trreq = enc_transform_request(with_body("public/transform_response/ok_json_10_headers", TOOL_USE_BODY))
    tsreq = sse_request("content_block_start", TOOL_START)
    big = archive(BY_NAME["public/transform_response/body_100000"])
    ping = archive(BY_NAME["public/transform_sse_event/ping"])
    pages = []
    for _ in range(40):
        # the hooks free their inputs; this host frees each output after reading it
        assert guest.call("cc_lb_transform_response", trreq, inst, True) == expected_transform_response(TOOL_USE_BODY)
        assert guest.call("cc_lb_transform_response", big, inst, True) == UNCHANGED_32
        assert guest.call("cc_lb_transform_sse_event", tsreq, inst, True) == expected_sse("content_block_start", TOOL_START)
        assert guest.call("cc_lb_transform_sse_event", ping, inst, True) == DROP_12
        assert guest.call("cc_lb_shape", shape_request(TOOLS_BODY), inst, True) == expected_shape(map_up(TOOLS_BODY))
        pages.append(exports["memory"].size(store))
    assert len(set(pages)) == 1, pages  # nothing leaks: the first round's pages serve all 40
    # outputs left alive (a host need not free them) stay intact while the instance works on
    memory = exports["memory"]
    kept = []
    for _ in range(5):
        ptr = exports["cc_lb_alloc"](store, len(trreq), 16) & 0xFFFFFFFF
        memory.write(store, trreq, ptr)
        packed = exports["cc_lb_transform_response"](store, ptr, len(trreq)) & 0xFFFFFFFFFFFFFFFF
        kept.append((packed >> 32, packed & 0xFFFFFFFF))
    assert guest.call("cc_lb_transform_response", big, inst, True) == UNCHANGED_32
    assert guest.call("cc_lb_shape", shape_request(TOOLS_BODY), inst, True) == expected_shape(map_up(TOOLS_BODY))
    assert len(set(kept)) == 5
    for ptr, n in kept:
        assert bytes(memory.read(store, ptr, ptr + n)) == expected_transform_response(TOOL_USE_BODY)


# --- the hostile 1.0 fixtures (tests/fixtures/hostile_1_0): the facts they are built on ------

HOSTILE_NAMES = sorted(p.stem for p in HOSTILE_1_0.glob("*.wat"))
SHAPE_HOOKS = {"shape": "active", "transform_response": "active", "transform_sse_event": "active"}
FIXTURE_HOOKS: Dict[str, Dict[str, Optional[str]]] = {
    "control_filter_1_0": {"filter": "active"},
    "control_noop_transforms_trap": {"shape": "active", "transform_response": "noop", "transform_sse_event": "noop"},
    "shape_without_transform_sse_event": {"shape": "active", "transform_response": "active"},
    "transforms_without_shape": {"transform_response": "active", "transform_sse_event": "active"},
    "transform_hooks_without_mode": {"shape": "active", "transform_response": None, "transform_sse_event": None},
    "filter_noop": {"filter": "noop"},
    "shape_noop": {"shape": "noop", "transform_response": "active", "transform_sse_event": "active"},
    "noop_transform_missing_export": {"shape": "active", "transform_response": "noop", "transform_sse_event": "noop"},
    "noop_transform_missing_fingerprint": {"shape": "active", "transform_response": "noop", "transform_sse_event": "noop"},
    "filter_interim_fingerprint": {"filter": "active"},
}
INTERIM = bytes.fromhex("e2ddd9c3418f5b5aabd0e2b5e156c31adef6b8d60592ee71f0019baad095d98d")


def fixture(name: str) -> Guest:
    return Guest(bytes(wasmtime.wat2wasm((HOSTILE_1_0 / f"{name}.wat").read_text(encoding="utf-8"))))


def raw_call(guest: Guest, export: str, data: bytes) -> Tuple[int, int, bytes]:
    store, exports = guest.instance()
    ptr = exports["cc_lb_alloc"](store, len(data), 16) & 0xFFFFFFFF
    exports["memory"].write(store, data, ptr)
    packed = exports[export](store, ptr, len(data)) & 0xFFFFFFFFFFFFFFFF
    out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
    return out_ptr, out_len, bytes(exports["memory"].read(store, out_ptr, out_ptr + out_len))


TRREQ = archive(BY_NAME["public/transform_response/ok_json_10_headers"])
TSREQ = archive(BY_NAME["public/transform_sse_event/message_start"])


def test_the_hostile_1_0_fixtures_are_current():
    proc = subprocess.run([sys.executable, str(HOSTILE_1_0 / "gen_fixtures.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(HOSTILE_NAMES) == 21 and (HOSTILE_1_0 / "README.md").exists()
    readme = (HOSTILE_1_0 / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in HOSTILE_NAMES)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_1_0_fixture_declares_what_its_readme_says(name):
    guest = fixture(name)
    guest.instance()  # no imports: instantiates
    sections = custom_sections(guest.wasm)
    (meta,) = [json.loads(data) for sname, data in sections if sname == "cc_lb.plugin.v1"]
    hooks = {hook: entry.get("mode") for hook, entry in meta["hooks"].items()}
    assert hooks == FIXTURE_HOOKS.get(name, SHAPE_HOOKS)
    assert all(entry["wire_version"] == 1 for entry in meta["hooks"].values())
    schemas = {sname: bytes(data) for sname, data in sections if sname.startswith("cc_lb.schema.")}
    want = {f"cc_lb.schema.{hook}.v1": FPS_1_0[hook] for hook in hooks}
    if name == "noop_transform_missing_fingerprint":
        del want["cc_lb.schema.transform_response.v1"]
    if name == "filter_interim_fingerprint":
        want = {"cc_lb.schema.filter.v1": INTERIM}
        assert INTERIM not in {bytes(fp) for c in CONTRACTS.values() for fp in c.fingerprints.values()}
    assert schemas == want
    exported = {e.name for e in guest.module.exports}
    want_exports = {EXPORTS[hook] for hook in hooks} - ({"cc_lb_transform_sse_event"} if name == "noop_transform_missing_export" else set())
    assert exported == {"memory", "cc_lb_alloc", "cc_lb_free"} | want_exports


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if FIXTURE_HOOKS.get(n, SHAPE_HOOKS).get("shape") is not None])
def test_hostile_1_0_shape_answers_a_valid_shape_response(name):
    _, _, answer = raw_call(fixture(name), "cc_lb_shape", b"")
    assert answer == enc_shape_response("https://example.test/v1/messages", "POST", [], b"")


def test_hostile_1_0_transform_answers():
    def trr(name: str) -> bytes:
        return raw_call(fixture(name), "cc_lb_transform_response", TRREQ)[2]

    def tse(name: str) -> bytes:
        return raw_call(fixture(name), "cc_lb_transform_sse_event", TSREQ)[2]

    assert trr("control_shape_1_0") == UNCHANGED_32 and tse("control_shape_1_0") == UNCHANGED_12
    assert trr("transform_response_bad_tag") == b"\x07" + bytes(31)
    assert tse("transform_sse_event_bad_tag") == b"\x05" + bytes(11)
    for status in (42, 1000, 100, 999):
        assert trr(f"transform_response_status_{status}") == enc_transform_response_result(
            {"Replace": {"status": status, "headers": None, "body": None}}
        )
    trailing = trr("transform_response_trailing_zeros")
    replace_404 = enc_transform_response_result({"Replace": {"status": 404, "headers": None, "body": None}})
    assert trailing == replace_404 + bytes(32) and trailing[-32:] == UNCHANGED_32  # rkyv's root: Unchanged

    huge = tse("transform_sse_event_huge_count")
    assert len(huge) == 28 and huge[-12] == 1
    off, count = struct.unpack_from("<iI", huge, 20)
    assert 20 + off == 0 and count == 2**28 and count * 16 > len(huge)

    ptr, length, _ = raw_call(fixture("transform_sse_event_len_zero"), "cc_lb_transform_sse_event", TSREQ)
    assert (ptr, length) == (512, 0)


def test_hostile_1_0_16_mib_event():
    _, length, answer = raw_call(fixture("transform_sse_event_data_16mib"), "cc_lb_transform_sse_event", TSREQ)
    n = 16 * 1024 * 1024 + 1
    assert length == len(answer) == 16_777_248
    root = length - 12
    assert answer[root] == 1 and answer[root + 1 : root + 4] == bytes(3)
    off, count = struct.unpack_from("<iI", answer, root + 4)
    elem = root + 4 + off
    assert count == 1 and elem == root - 16
    eoff, elen, doff, dlen = struct.unpack_from("<iIiI", answer, elem)
    assert answer[elem + eoff : elem + eoff + elen] == b"big"
    data = answer[elem + 8 + doff : elem + 8 + doff + dlen]
    assert dlen == n and data == b"a" * n


@pytest.mark.parametrize("export", ["cc_lb_transform_response", "cc_lb_transform_sse_event"])
def test_hostile_1_0_noop_control_traps_if_called(export):
    with pytest.raises(wasmtime.Trap):
        raw_call(fixture("control_noop_transforms_trap"), export, TRREQ)


@pytest.mark.parametrize("name", ["control_filter_1_0", "filter_noop", "filter_interim_fingerprint"])
def test_hostile_1_0_filters_answer_an_empty_filter_response(name):
    _, _, answer = raw_call(fixture(name), "cc_lb_filter", archive(BY_NAME["public/filter10/messages_korean"]))
    assert answer == enc_filter_response([]) == bytes(8)


# --- the header's writers in every shape rkyv wrote (a test-only guest) ----------------------
#
# The shipped guests answer only Unchanged, Drop, Replace{None, None, Some(body)} and
# Replace{[one event]}. This guest, compiled here from cclb_guest_1_0.h with guests/build.py's
# pinned flags, writes whatever the request asks for, so every golden TransformResponseResult
# and TransformSseEventResult can be compared with rkyv's own bytes.

WRITER_GUEST_C = r"""
#include "cclb_guest_1_0.h"

static int path_is(cclb_str request_path, const char *word) {
    return cclb_mem_eq(request_path.ptr, request_path.len, word, cclb_strlen(word));
}

/* request_path "unchanged" -> Unchanged; otherwise Replace with Some(status) if the path
 * holds 's', Some(response_headers) if it holds 'h', Some(body) if it holds 'b'. */
CCLB_EXPORT("cc_lb_transform_response") cclb_u64 cc_lb_transform_response(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_transform_response_request req;
    cclb_read_transform_response_request(in_ptr, in_len, &req);
    cclb_u64 out;
    if (path_is(req.request_path, "unchanged")) {
        out = cclb_write_transform_response_unchanged();
    } else {
        int s = 0, h = 0, b = 0;
        for (cclb_u32 i = 0; i < req.request_path.len; i++) {
            s |= req.request_path.ptr[i] == 's';
            h |= req.request_path.ptr[i] == 'h';
            b |= req.request_path.ptr[i] == 'b';
        }
        cclb_u32 n = req.response_headers.len;
        cclb_header *headers = (cclb_header *)cclb_xalloc(n * (cclb_u32)sizeof(cclb_header));
        for (cclb_u32 i = 0; i < n; i++) headers[i] = cclb_header_at(req.response_headers, i);
        out = cclb_write_transform_response_replace(s ? cclb_some_u16(req.response_status) : cclb_none_u16(),
                                                    h ? cclb_some_headers(headers, n) : cclb_none_headers(),
                                                    b ? cclb_some_bytes(req.body) : cclb_none_bytes());
        cclb_xfree(headers);
    }
    cclb_free_input(in_ptr);
    return out;
}

/* request_path "unchanged" / "drop" -> Unchanged / Drop; otherwise Replace with the
 * response_headers as the events (name -> event, value -> data). */
CCLB_EXPORT("cc_lb_transform_sse_event") cclb_u64 cc_lb_transform_sse_event(cclb_u32 in_ptr, cclb_u32 in_len) {
    cclb_transform_sse_event_request req;
    cclb_read_transform_sse_event_request(in_ptr, in_len, &req);
    cclb_u64 out;
    if (path_is(req.request_path, "unchanged")) {
        out = cclb_write_sse_event_unchanged();
    } else if (path_is(req.request_path, "drop")) {
        out = cclb_write_sse_event_drop();
    } else {
        cclb_u32 n = req.response_headers.len;
        cclb_sse_event *events = (cclb_sse_event *)cclb_xalloc(n * (cclb_u32)sizeof(cclb_sse_event));
        for (cclb_u32 i = 0; i < n; i++) {
            cclb_header h = cclb_header_at(req.response_headers, i);
            events[i].event = h.name;
            events[i].data = h.value;
        }
        out = cclb_write_sse_event_replace(events, n);
        cclb_xfree(events);
    }
    cclb_free_input(in_ptr);
    return out;
}
"""


def load_build() -> Any:
    """guests/build.py as a module (its pinned flags, compile_source and check_module_1_0)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("guests_build", REPO / "guests" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def require_zig(what: str) -> None:
    try:
        importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        # CI installs the pinned zig and sets CCLB_WIRE_REQUIRE_ZIG=1 for this module, so the
        # tests of built guests run there on every change.
        if os.environ.get("CCLB_WIRE_REQUIRE_ZIG") == "1":
            pytest.fail("CCLB_WIRE_REQUIRE_ZIG=1 but the pinned ziglang is not installed")
        pytest.skip(f"the pinned ziglang is not installed (pip install ziglang==0.17.1): {what} cannot be built")


@pytest.fixture(scope="session")
def writer_guest(tmp_path_factory) -> Guest:
    require_zig("the test-only writer guest")
    build = load_build()
    out = tmp_path_factory.mktemp("writer-guest")
    src = out / "writer_guest.c"
    src.write_text(WRITER_GUEST_C, encoding="utf-8")
    build.prepare(out)
    build.compile_source(src, out / "writer_guest.wasm", ["cc_lb_transform_response", "cc_lb_transform_sse_event"], out)
    return Guest((out / "writer_guest.wasm").read_bytes())


def writer_request(path: str, status: int, headers: List[Dict[str, str]], body: str, sse: bool) -> bytes:
    base = "public/transform_sse_event/all_empty" if sse else "public/transform_response/all_empty"
    v = value(BY_NAME[base])
    v.update(request_path=path, response_status=status, response_headers=headers)
    if not sse:
        v["body"] = body
    return enc_transform_request(v)


TRR_LINES = lines_of("TransformResponseResult")
TSE_LINES = lines_of("TransformSseEventResult")


@pytest.mark.parametrize("line", TRR_LINES, ids=ids(TRR_LINES))
def test_transform_response_writer_is_byte_exact_with_rkyv(writer_guest, line):
    v = value(line)
    if "Unchanged" in v:
        request = writer_request("unchanged", 0, [], "", sse=False)
    else:
        rep = v["Replace"]
        flags = "".join(f for f, key in (("s", "status"), ("h", "headers"), ("b", "body")) if rep[key] is not None)
        request = writer_request("replace:" + flags, rep["status"] or 0, rep["headers"] or [], rep["body"] or "", sse=False)
    assert writer_guest.call("cc_lb_transform_response", request) == archive(line)


@pytest.mark.parametrize("line", TSE_LINES, ids=ids(TSE_LINES))
def test_transform_sse_event_writer_is_byte_exact_with_rkyv(writer_guest, line):
    v = value(line)
    if "Replace" in v:
        headers = [{"name": e["event"], "value": e["data"]} for e in v["Replace"]["events"]]
        request = writer_request("replace", 0, headers, "", sse=True)
    else:
        request = writer_request("unchanged" if "Unchanged" in v else "drop", 0, [], "", sse=True)
    assert writer_guest.call("cc_lb_transform_sse_event", request) == archive(line)


# --- guests/build.py's structural 1.0 check against the hostile fixtures ---------------------

REFUSED_AT_ADMISSION = {
    "filter_interim_fingerprint": "not the 1.0 fingerprint",
    "filter_noop": "filter cannot be noop",
    "noop_transform_missing_export": "`cc_lb_transform_sse_event` is not exported",
    "noop_transform_missing_fingerprint": "fingerprint sections",
    "shape_noop": "shape cannot be noop",
    "shape_without_transform_sse_event": "must declare both transform hooks",
    "transform_hooks_without_mode": "no explicit mode",
    "transforms_without_shape": "declared without shape",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_build_check_refuses_exactly_the_fixtures_the_1_0_rules_refuse(tmp_path, name):
    build = load_build()
    guest = fixture(name)
    path = tmp_path / f"{name}.wasm"
    path.write_bytes(guest.wasm)
    (meta,) = [json.loads(data) for sname, data in custom_sections(guest.wasm) if sname == "cc_lb.plugin.v1"]
    modes = {hook: entry.get("mode") for hook, entry in meta["hooks"].items()}
    if name in REFUSED_AT_ADMISSION:
        with pytest.raises(build.BuildError, match=re.escape(REFUSED_AT_ADMISSION[name])):
            build.check_module_1_0(path, modes, build.fingerprints_1_0())
    else:
        assert build.check_module_1_0(path, modes, build.fingerprints_1_0())["hooks"].keys() == modes.keys()


# --- the benchmark's Rust-laid-out guest (guests/build.py build_rust_layout) ---------------


def test_the_rust_laid_out_guest_has_rusts_layout_and_answers_as_the_shipped_filter(tmp_path):
    """bench_host.py's fresh-instance target is measured on this build: 17 pages, the stack
    pointer at 1 MiB, data above it, and the same answers as the shipped cache_aware_filter,
    call after fresh call; where the page-resetting pool serves, its dirty pages near the
    1 MiB mark are all kept resident (no decommit)."""
    require_zig("the Rust-laid-out guest")
    import cclb_wire as cw
    from cclb_wire.runtime import HostConfig, PluginHost

    build = load_build()
    wasm = build.build_rust_layout(tmp_path).read_bytes()
    pages, stack_top, data_at = build.memory_layout(wasm)
    assert (pages, stack_top) == (17, 1024 * 1024) and data_at >= 1024 * 1024
    assert build.memory_layout((build.INSTALL_DIR / "cache_aware_filter.wasm").read_bytes())[:2] == (2, 65536)
    shipped = (build.INSTALL_DIR / "cache_aware_filter.wasm").read_bytes()
    ctx = cw.RequestContext("r", "POST", "/v1/messages", None, [(b"content-type", b"application/json")], b'{"a":1}')
    principal = cw.Principal("p", claims={"keep_k": 2})
    candidates = [
        cw.UpstreamCandidate(uuid.UUID(int=i + 1), f"u{i}", "anthropic_api_key", 1767225600, cw.CacheScore(tokens))
        for i, tokens in enumerate((5, 50, 0, 20))
    ]
    with PluginHost(HostConfig(probe=False)) as host:
        rust_layout = host.register_filter("rust", "rust-layout", wasm)
        reference = host.register_filter("shipped", "shipped", shipped)
        before = host.memory_pool_stats()
        answers = [rust_layout.filter(ctx, principal, candidates) for _ in range(5)]
        after = host.memory_pool_stats()
        expected = reference.filter(ctx, principal, candidates)
    assert expected.kept_upstream_ids == (candidates[1].upstream_id, candidates[3].upstream_id)
    assert answers == [expected] * 5
    if before is not None and after is not None:
        assert after.resets - before.resets == 5 and after.decommits == before.decommits
