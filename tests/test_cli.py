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
