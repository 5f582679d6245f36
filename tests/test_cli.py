"""The cclb-wire command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cclb_wire import FINGERPRINTS, schema


def run_cli(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "cclb_wire", *args], input=stdin, capture_output=True, cwd=os.path.dirname(__file__))


@pytest.mark.parametrize("root", sorted(schema.ROOT_TYPES))
def test_sample_encode_decode_pipeline(root):
    sample = run_cli("sample", root)
    assert sample.returncode == 0
    encoded = run_cli("encode", "--type", root, "--hex", stdin=sample.stdout)
    assert encoded.returncode == 0, encoded.stderr
    decoded = run_cli("decode", "--type", root, "--hex", stdin=encoded.stdout)
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout) == json.loads(sample.stdout)
    binary = run_cli("encode", "--type", root, stdin=sample.stdout)
    assert binary.stdout.hex() == encoded.stdout.decode().strip()
    assert json.loads(run_cli("decode", "--type", root, stdin=binary.stdout).stdout) == json.loads(sample.stdout)


def test_decode_invalid_archive_exits_1_with_one_line():
    result = run_cli("decode", "--type", "FilterResponse", stdin=b"\x00\x01\x02")
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cclb-wire: invalid FilterResponse archive")


def test_encode_invalid_json_exits_1():
    result = run_cli("encode", "--type", "FilterResponse", stdin=b'{"results": [{"upstream_id": 1}]}')
    assert result.returncode == 1
    assert b"FilterResponse.results[0]" in result.stderr


def test_encode_not_json_exits_1():
    result = run_cli("encode", "--type", "FilterResponse", stdin=b"{nope")
    assert result.returncode == 1 and b"not valid JSON" in result.stderr


def test_unknown_type_is_a_usage_error():
    assert run_cli("decode", "--type", "Header").returncode == 2


def test_schema_dump_shows_fingerprints_and_layouts():
    result = run_cli("schema")
    assert result.returncode == 0
    text = result.stdout.decode()
    for hook, digest in FINGERPRINTS.items():
        assert f"cc_lb.schema.{hook}.v1" in text and digest.hex() in text
    assert "FilterRequest: size 84, align 4" in text


# --- the plugin host commands ---------------------------------------------------------

from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

PLUGINS = resources.files("cclb_wire") / "plugins"
HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"


def test_demo_runs_every_bundled_plugin():
    result = run_cli("demo", "--json")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "[filter] cache-aware-filter" in text and "[shape] shape-passthrough" in text and "[observe] observe-counter" in text
    outputs = json.loads(text[text.index("{\n") :])
    # keep_k = 2 in the demo request: the two candidates with the most predicted cache reads
    assert outputs["filter"]["kept_upstream_ids"] == ["6f1c3a8e-2d4b-4c7a-9e1f-0a2b3c4d5e02", "6f1c3a8e-2d4b-4c7a-9e1f-0a2b3c4d5e04"]
    assert outputs["shape"]["url"] == "https://api.anthropic.com/v1/messages?beta=true"
    assert all(name not in ("host", "x-api-key") for name, _ in outputs["shape"]["headers"])


def test_inspect_shows_hooks_fingerprints_and_exports():
    result = run_cli("inspect", str(PLUGINS / "shape_passthrough.wasm"))
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "hook shape: wire v1, export cc_lb_shape (i32, i32) -> i64, fingerprint ok" in text
    assert "cc_lb_alloc (func (i32, i32) -> i32)" in text and "admission:   ok" in text


def test_inspect_reports_a_rejected_module(tmp_path):
    import wasmtime

    path = tmp_path / "wrong_fingerprint.wasm"
    path.write_bytes(wasmtime.wat2wasm((HOSTILE / "wrong_fingerprint.wat").read_text()))
    result = run_cli("inspect", str(path))
    assert result.returncode == 1
    assert b"fingerprint MISMATCH" in result.stdout and b"admission:   REJECTED: `cc_lb.schema.filter.v1` hash mismatch" in result.stdout


@pytest.mark.parametrize(
    "hook, plugin, check",
    [
        ("filter", "cache_aware_filter", lambda out: out["kept_upstream_ids"] == ["00000000-0000-0000-0000-000000000002"]),
        ("shape", "shape_passthrough", lambda out: out["url"] == "https://upstream.example/v1/messages" and out["body"] == "{}"),
        ("observe", "observe_counter", lambda out: out == {"observed": True}),
    ],
)
def test_call_prints_the_host_output(tmp_path, hook, plugin, check):
    request = {
        "request": {"request_id": "r", "method": "POST", "path": "/v1/messages", "headers": [["content-type", "application/json"]], "body": "{}"},
        "principal": {"id": "t", "kind": "api_key", "claims": {}},
        "candidates": [
            {"upstream_id": "00000000-0000-0000-0000-000000000001", "name": "a", "predicted_cache_read_tokens": 5},
            {"upstream_id": "00000000-0000-0000-0000-000000000002", "name": "b", "predicted_cache_read_tokens": 9},
        ],
        "upstream": {"base_url": "https://upstream.example/"},
        "event": {"Chunk": {"batch_index": 1, "event_count": 2, "total_bytes": 3}},
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    result = run_cli("call", str(PLUGINS / f"{plugin}.wasm"), "--hook", hook, "--request", str(path))
    assert result.returncode == 0, result.stderr
    assert check(json.loads(result.stdout))


def test_call_failure_is_one_line_and_exit_1(tmp_path):
    import wasmtime

    plugin = tmp_path / "loop.wasm"
    plugin.write_bytes(wasmtime.wat2wasm((HOSTILE / "infinite_loop.wat").read_text()))
    request = tmp_path / "request.json"
    request.write_text("{}")
    result = run_cli("call", str(plugin), "--hook", "filter", "--request", str(request), "--deadline", "0.2")
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "runtime probe failed for hook filter" in lines[0] and "deadline" in lines[0]
