"""Plugin metadata costs admission linear time, and its size is bounded (issue 14, Part 2 item 4).

Metadata ``{"name":"`` followed by ``\\"`` repeated, unterminated, made the depth scan
in ``cclb_wire.jsontext`` start again at every quote: quadratic time, holding the GIL.
These tests count the scan's work instead of timing it: the scan examines each
character of the text once, so its calls grow with the tokens, never with the text
inside strings. Metadata over ``MAX_METADATA_BYTES`` is refused before it is parsed.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, List, Optional, Tuple
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cclb_wire import PluginRejected, jsontext
from cclb_wire.errors import InvalidInput
from cclb_wire.runtime import wasm_module
from cclb_wire.runtime.wasm_module import MAX_METADATA_BYTES, METADATA_SECTION, inspect_plugin
from test_wasm_rewrite import leb, read_leb, sections  # the tests' own reader of the binary format

PLUGIN = (resources.files("cclb_wire") / "plugins" / "cache_aware_filter.wasm").read_bytes()
MIB = 1 << 20


# --- a shipped plugin with its metadata section replaced -----------------------------


def _custom_name(body: bytes) -> str:
    length, pos = read_leb(body, 0)
    return body[pos : pos + length].decode("utf-8")


def with_metadata(metadata: bytes, module: bytes = PLUGIN) -> bytes:
    """``module`` with its metadata section's payload replaced by ``metadata``."""
    out = bytearray(module[:8])
    for section_id, body in sections(module):
        if section_id == 0 and _custom_name(body) == METADATA_SECTION:
            name = METADATA_SECTION.encode()
            body = leb(len(name)) + name + metadata
        out += bytes([section_id]) + leb(len(body)) + body
    return bytes(out)


def metadata_payload(module: bytes) -> bytes:
    for section_id, body in sections(module):
        if section_id == 0 and _custom_name(body) == METADATA_SECTION:
            length, pos = read_leb(body, 0)
            return body[pos + length :]
    raise AssertionError("the module has no metadata section")


def shipped_metadata() -> dict:
    return json.loads(metadata_payload(PLUGIN))


def metadata_of_size(size: int) -> bytes:
    """The shipped plugin's metadata, valid, padded to exactly ``size`` bytes in its usage text."""
    metadata = shipped_metadata()
    base = len(json.dumps(metadata).encode())
    metadata["usage"] += "x" * (size - base)
    encoded = json.dumps(metadata).encode()
    assert len(encoded) == size
    return encoded


# --- hostile shapes ------------------------------------------------------------------


def escaped_quotes(size: int) -> bytes:
    """``{"name":"\\"\\"\\"...`` unterminated: the issue's reproduction."""
    head = b'{"name":"'
    return head + b'\\"' * ((size - len(head)) // 2)


def deep_brackets(size: int) -> bytes:
    return b"[" * size


def many_small_keys(size: int) -> bytes:
    """``{"k0":0,"k1":1,...}`` (distinct keys)."""
    parts: List[bytes] = []
    total = 2
    index = 0
    while total < size:
        part = b'"k%d":%d' % (index, index)
        parts.append(part)
        total += len(part) + 1
        index += 1
    return b"{" + b",".join(parts) + b"}"


def duplicate_keys(size: int) -> bytes:
    """``{"name":"a","name":"a",...}``: one key, repeated."""
    pair = b'"name":"a",'
    return b"{" + pair * (size // len(pair)) + b'"name":"a"}'


def long_string(size: int) -> bytes:
    return b'{"name":"' + b"a" * size + b'"}'


HOSTILE = [escaped_quotes, deep_brackets, many_small_keys, duplicate_keys, long_string]


# --- the depth scan's work, counted ----------------------------------------------------


class CountingPattern:
    """Stands in for the scan's token pattern and records the span of text each call examines."""

    def __init__(self, pattern: "re.Pattern[str]"):
        self.pattern = pattern
        self.spans: List[Tuple[int, int]] = []

    def search(self, text: str, pos: int = 0) -> "Optional[re.Match[str]]":
        match = self.pattern.search(text, pos)
        self.spans.append((pos, len(text) if match is None else match.end()))
        return match


@pytest.fixture
def counting(monkeypatch) -> CountingPattern:
    pattern = CountingPattern(jsontext._TOKEN)
    monkeypatch.setattr(jsontext, "_TOKEN", pattern)
    return pattern


def assert_single_pass(spans: List[Tuple[int, int]], text: str) -> None:
    """Each call starts where the previous one ended, so no character is examined twice."""
    assert spans, "the scan made no calls"
    assert spans[0][0] == 0
    for (_, previous_end), (start, _) in zip(spans, spans[1:]):
        assert start == previous_end
    assert sum(end - start for start, end in spans) <= len(text)


@pytest.mark.parametrize("shape", HOSTILE, ids=lambda shape: shape.__name__)
def test_the_depth_scan_examines_each_character_once(counting, shape):
    for size in (1000, 100_000):
        counting.spans.clear()
        text = shape(size).decode()
        jsontext.nesting_depth(text)
        assert_single_pass(counting.spans, text)


def test_the_scan_of_escaped_quotes_makes_the_same_calls_at_n_and_2n(counting):
    # The tokens of {"name":"\"\"...: the brace, the string "name", and the unterminated
    # string that runs to the end; then one search that finds nothing.
    calls = []
    for size in (MIB // 2, MIB):
        counting.spans.clear()
        text = escaped_quotes(size).decode()
        assert jsontext.nesting_depth(text) == 1
        assert counting.spans[-1][1] == len(text)
        calls.append(len(counting.spans))
    assert calls == [4, 4]


def test_calls_grow_with_the_tokens_not_with_the_text(counting):
    # {"k0":0,...}: one call per key string, one for each brace, one that finds nothing.
    for keys in (1000, 2000):
        counting.spans.clear()
        text = "{" + ",".join(f'"k{i}":{i}' for i in range(keys)) + "}"
        jsontext.nesting_depth(text)
        assert len(counting.spans) == keys + 3
    # The same number of tokens with 100 times the text inside the strings: the same calls.
    counting.spans.clear()
    jsontext.nesting_depth("{" + ",".join(f'"{"k" * 100}{i}":{i}' for i in range(2000)) + "}")
    assert len(counting.spans) == 2000 + 3


def test_a_deep_text_stops_the_scan_just_past_the_limit(counting):
    with pytest.raises(InvalidInput, match="deeper than 64 levels"):
        jsontext.loads("[" * MIB, "request")
    assert len(counting.spans) == 65  # one call per bracket up to the 65th


def test_1_mib_of_escaped_quotes_outside_metadata_is_one_pass_and_still_not_json(counting):
    # jsontext also parses request files and encode_json text, which have no size bound.
    text = escaped_quotes(MIB).decode()
    with pytest.raises(InvalidInput, match=r"request: not valid JSON \(Unterminated string"):
        jsontext.loads(text, "request")
    assert_single_pass(counting.spans, text)
    assert len(counting.spans) == 4


# --- what the scan counts: strings as json.loads reads them ----------------------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('["[[[", {"a": "{{"}]', 2),  # brackets inside strings don't count
        ('["\\"[[", []]', 2),  # an escaped quote does not end the string
        ('["\\\\", [[]]]', 3),  # an escaped backslash does not escape the quote after it
        ('["\\\\\\"[", []]', 2),  # \\ then \" : still inside the string
        ("]][[", 2),  # closers never take the count below zero
        ('["' + "[" * 100, 1),  # an unterminated string runs to the end: json.loads stops at it
        ('[["\\', 2),  # a lone backslash at the very end
        ('"' + '\\"' * 50 + "[", 0),
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(counting, text, depth):
    assert jsontext.nesting_depth(text) == depth
    assert_single_pass(counting.spans, text)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


JSON_TEXT = st.text(alphabet=st.sampled_from('ab"\\[]{}\n\u00e9'), max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.integers() | JSON_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(JSON_TEXT, children, max_size=4),
    max_leaves=30,
)


@given(JSON_VALUES, st.booleans())
def test_nesting_depth_is_the_depth_of_any_valid_json_in_one_pass(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    counting = CountingPattern(jsontext._TOKEN)
    with mock.patch.object(jsontext, "_TOKEN", counting):
        assert jsontext.nesting_depth(text) == _depth(value)
    assert_single_pass(counting.spans, text)
    if _depth(value) <= jsontext.DEFAULT_MAX_DEPTH:
        assert jsontext.loads(text, "value") == value


# --- the size bound ----------------------------------------------------------------------


def test_the_bound_is_far_above_real_metadata_and_far_below_a_mebibyte():
    plugins = resources.files("cclb_wire") / "plugins"
    shipped = [len(metadata_payload((plugins / f"{name}.wasm").read_bytes()))
               for name in ("cache_aware_filter", "observe_counter", "shape_passthrough")]
    assert 100 * max(shipped) <= MAX_METADATA_BYTES <= MIB // 8


@pytest.mark.parametrize("shape", HOSTILE, ids=lambda shape: shape.__name__)
def test_1_mib_of_hostile_metadata_is_refused_for_its_size_before_it_is_parsed(monkeypatch, shape):
    parsed: List[Any] = []
    monkeypatch.setattr(wasm_module, "load_json", lambda *args: parsed.append(args))
    monkeypatch.setattr(jsontext, "nesting_depth", lambda *args: parsed.append(args))
    metadata = shape(MIB)
    inspection = inspect_plugin(with_metadata(metadata))
    assert inspection.metadata is None
    with pytest.raises(PluginRejected) as caught:
        inspection.check("filter", "hostile")
    message = str(caught.value)
    assert f"{len(metadata)} bytes" in message
    assert f"limit of {MAX_METADATA_BYTES} bytes" in message
    assert "cc_lb.plugin.v1" in message
    assert parsed == []


def test_metadata_at_the_bound_is_parsed_and_admitted_and_one_byte_more_is_refused(monkeypatch):
    scans: List[str] = []
    real_scan = jsontext.nesting_depth

    def scan(text: str, *rest: int) -> int:
        scans.append(text)
        return real_scan(text, *rest)

    monkeypatch.setattr(jsontext, "nesting_depth", scan)

    metadata = metadata_of_size(MAX_METADATA_BYTES)
    inspection = inspect_plugin(with_metadata(metadata))
    assert inspection.problems_for("filter") == []
    inspection.check("filter", "at-the-bound")
    assert inspection.metadata == json.loads(metadata)
    assert scans == [metadata.decode()]  # scanned once, as one document

    scans.clear()
    over = metadata_of_size(MAX_METADATA_BYTES + 1)
    with pytest.raises(PluginRejected, match=f"{MAX_METADATA_BYTES + 1} bytes, over the limit of {MAX_METADATA_BYTES}"):
        inspect_plugin(with_metadata(over)).check("filter", "over-the-bound")
    assert scans == []


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        (escaped_quotes, "Unterminated string"),
        (deep_brackets, "deeper than 64 levels"),
        (many_small_keys, "missing field `name`"),
        (duplicate_keys, "missing field `version`"),
    ],
    ids=lambda case: getattr(case, "__name__", None),
)
def test_hostile_metadata_under_the_bound_is_refused_for_what_it_is_in_one_pass(counting, shape, reason):
    metadata = shape(MAX_METADATA_BYTES - 100)
    assert len(metadata) <= MAX_METADATA_BYTES
    with pytest.raises(PluginRejected, match=f"invalid `cc_lb.plugin.v1` metadata JSON: .*{re.escape(reason)}") as caught:
        inspect_plugin(with_metadata(metadata)).check("filter", "hostile")
    assert "over the limit" not in str(caught.value)
    text = metadata.decode()
    assert_single_pass(counting.spans, text)
    if reason != "deeper than 64 levels":
        assert counting.spans[-1][1] == len(text)  # the whole document, in that one pass
