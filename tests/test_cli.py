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

#: A request file with every part, for every hook.
REQUEST = {
    "request": {"request_id": "r", "method": "POST", "path": "/v1/messages", "headers": [["content-type", "application/json"]], "body": "{}"},
    "principal": {"id": "t", "kind": "api_key", "claims": {}},
    "candidates": [
        {"upstream_id": "00000000-0000-0000-0000-000000000001", "name": "a", "predicted_cache_read_tokens": 5},
        {"upstream_id": "00000000-0000-0000-0000-000000000002", "name": "b", "predicted_cache_read_tokens": 9},
    ],
    "upstream": {"base_url": "https://upstream.example/"},
    "event": {"Chunk": {"batch_index": 1, "event_count": 2, "total_bytes": 3}},
}


def write_request(tmp_path, request):
    path = tmp_path / "request.json"
    path.write_text(request if isinstance(request, str) else json.dumps(request))
    return path


def one_line_failure(result):
    """The single stderr line of a failed command."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cclb-wire: "), lines
    return lines[0]


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


@pytest.mark.parametrize(
    "plugin, contract, hook_line",
    [
        ("cache_aware_filter", "0.2: cc-lb 273547c9", "hook filter: wire v1, export cc_lb_filter (i32, i32) -> i64, fingerprint ok\n"),
        (
            "noop_transforms_1_0",
            "1.0: cc-lb 1.0",
            "hook transform_response: wire v1, export cc_lb_transform_response (i32, i32) -> i64, fingerprint ok, mode noop\n",
        ),
    ],
)
def test_inspect_shows_the_contract_and_each_hook_mode(plugin, contract, hook_line):
    result = run_cli("inspect", f"cclb_wire:{plugin}.wasm")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert f"contract:    {contract}" in text and hook_line in text


def test_schema_lists_both_contracts_with_their_fingerprints():
    text = run_cli("schema").stdout.decode()
    assert "contract 0.2: cc-lb 273547c9" in text and "contract 1.0: cc-lb 1.0" in text
    assert "fingerprint f20f669542349c002acd04b2308ff0d83899bf0cb5a17b818c1d938adda52834" in text
    assert "FilterRequest10 (cc-lb 1.0's FilterRequest): size 192, align 8" in text


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
    path = write_request(tmp_path, REQUEST)
    result = run_cli("call", str(PLUGINS / f"{plugin}.wasm"), "--hook", hook, "--request", str(path))
    assert result.returncode == 0, result.stderr
    assert check(json.loads(result.stdout))


def test_call_failure_is_one_line_and_exit_1(tmp_path):
    import wasmtime

    plugin = tmp_path / "loop.wasm"
    plugin.write_bytes(wasmtime.wat2wasm((HOSTILE / "infinite_loop.wat").read_text()))
    request = write_request(tmp_path, REQUEST)
    result = run_cli("call", str(plugin), "--hook", "filter", "--request", str(request), "--deadline", "0.2")
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "runtime probe failed for hook filter" in lines[0] and "deadline" in lines[0]


# --- request files: JSON paths, unknown keys, missing parts, wire samples ---------------

import argparse  # noqa: E402
import copy  # noqa: E402
import re  # noqa: E402

import cclb_wire  # noqa: E402
from cclb_wire import cli  # noqa: E402
from cclb_wire.errors import CclbWireError, InvalidInput, InvalidInputType  # noqa: E402
from cclb_wire.plugin_paths import resolve_plugin_path  # noqa: E402

PLUGIN_FOR_HOOK = {"filter": "cache_aware_filter", "shape": "shape_passthrough", "observe": "observe_counter"}


def request_with(keys, value):
    """REQUEST with the value at ``keys`` (dict keys and list indexes) replaced, or deleted
    when ``value`` is DELETE."""
    request = copy.deepcopy(REQUEST)
    parent = request
    for key in keys[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[keys[-1]]
    else:
        parent[keys[-1]] = value
    return request


DELETE = object()


def call(tmp_path, hook, request, plugin=None):
    path = write_request(tmp_path, request)
    return run_cli("call", plugin or str(PLUGINS / f"{PLUGIN_FOR_HOOK[hook]}.wasm"), "--hook", hook, "--request", str(path))


def reported_path(line):
    """The JSON path a ``cclb-wire: ErrorClass: $.path: detail`` line names."""
    match = re.match(r"cclb-wire: \w+: (\$\S*): ", line)
    assert match, line
    return match.group(1)


@pytest.mark.parametrize(
    "hook, keys, value, path",
    [
        ("filter", ("principal", "claims"), [], "$.principal.claims"),
        ("filter", ("principal", "claims"), "keep_k=2", "$.principal.claims"),
        ("filter", ("principal", "id"), 5, "$.principal.id"),
        ("filter", ("principal", "kind"), [], "$.principal.kind"),
        ("filter", ("principal",), [], "$.principal"),
        ("filter", ("request", "method"), 5, "$.request.method"),
        ("filter", ("request", "headers", 0), [5, "x"], "$.request.headers[0][0]"),
        ("filter", ("request", "headers", 0, 1), {"hex": "zz"}, "$.request.headers[0][1].hex"),
        ("filter", ("request", "body"), 5, "$.request.body"),
        ("filter", ("candidates", 1, "upstream_id"), "x", "$.candidates[1].upstream_id"),
        ("filter", ("candidates", 1, "name"), 5, "$.candidates[1].name"),
        ("filter", ("candidates", 0, "predicted_cache_read_tokens"), -1, "$.candidates[0].predicted_cache_read_tokens"),
        ("filter", ("candidates", 0, "observed_at_unix_secs"), "now", "$.candidates[0].observed_at_unix_secs"),
        ("shape", ("upstream", "base_url"), 5, "$.upstream.base_url"),
        ("shape", ("upstream",), [], "$.upstream"),
        ("observe", ("event", "Chunk", "batch_index"), "x", "$.event.Chunk.batch_index"),
        ("observe", ("event",), {"UpstreamChosen": {"upstream": {"base_url": 5}}}, "$.event.UpstreamChosen.upstream.base_url"),
    ],
)
def test_call_names_the_json_path_of_a_nested_mistake(tmp_path, hook, keys, value, path):
    line = one_line_failure(call(tmp_path, hook, request_with(keys, value)))
    assert reported_path(line) == path


@pytest.mark.parametrize(
    "keys, key, path",
    [
        ((), "candidatez", "$"),
        (("request",), "header", "$.request"),
        (("principal",), "claim", "$.principal"),
        (("candidates", 1), "predicted_cache_tokens", "$.candidates[1]"),
        (("upstream",), "baseurl", "$.upstream"),
    ],
)
def test_call_refuses_an_unknown_key_naming_it_and_its_path(tmp_path, keys, key, path):
    request = copy.deepcopy(REQUEST)
    target = request
    for part in keys:
        target = target[part]
    target[key] = 1
    line = one_line_failure(call(tmp_path, "filter", request))
    assert reported_path(line) == path and repr(key) in line


@pytest.mark.parametrize("hook", ["filter", "shape", "observe"])
def test_unknown_keys_are_all_named_whatever_the_hook(tmp_path, hook):
    request = dict(REQUEST, candidatez=[], extra=1)
    line = one_line_failure(call(tmp_path, hook, request))
    assert reported_path(line) == "$" and "'candidatez'" in line and "'extra'" in line


# The parts each hook's wire request is built from (FilterRequest: the request, the
# principal and the candidates; ShapeRequest: the request, the principal and the upstream;
# ObserveEvent: the event).
@pytest.mark.parametrize(
    "hook, part",
    [
        ("filter", "request"),
        ("filter", "principal"),
        ("filter", "candidates"),
        ("shape", "request"),
        ("shape", "principal"),
        ("shape", "upstream"),
        ("observe", "event"),
    ],
)
def test_call_refuses_a_request_file_without_a_part_the_hook_needs(tmp_path, hook, part):
    line = one_line_failure(call(tmp_path, hook, request_with((part,), DELETE)))
    assert part in line.split(": ", 2)[2]


@pytest.mark.parametrize("hook", ["filter", "shape", "observe"])
def test_call_refuses_an_empty_request_file(tmp_path, hook):
    result = call(tmp_path, hook, {})
    one_line_failure(result)
    assert result.stdout == b""


@pytest.mark.parametrize("hook, plugin", [("filter", "cache_aware_filter"), ("shape", "shape_passthrough")])
def test_parts_another_hook_needs_may_be_left_out(tmp_path, hook, plugin):
    request = {key: value for key, value in REQUEST.items() if key != ("upstream" if hook == "filter" else "candidates")}
    request.pop("event")
    result = call(tmp_path, hook, request)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "hook, sample",
    [("filter", "FilterRequest"), ("shape", "ShapeRequest"), ("observe", "ObserveEvent"), ("filter", "FilterResponse"), ("shape", "ShapeResponse")],
)
def test_call_says_a_wire_sample_is_an_archive_for_encode(tmp_path, hook, sample):
    printed = run_cli("sample", sample)
    assert printed.returncode == 0
    line = one_line_failure(call(tmp_path, hook, printed.stdout.decode()))
    assert "wire archive" in line and f"cclb-wire encode --type {sample}" in line and "not a host-level request" in line


# --- plugin paths ---------------------------------------------------------------------

SHIPPED = sorted(entry.name for entry in PLUGINS.iterdir() if entry.name.endswith(".wasm"))


def test_inspect_takes_a_shipped_plugin_by_name():
    result = run_cli("inspect", "cclb_wire:cache_aware_filter.wasm")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "hook filter: wire v1, export cc_lb_filter (i32, i32) -> i64, fingerprint ok" in text and "admission:   ok" in text
    assert f"{(PLUGINS / 'cache_aware_filter.wasm').stat().st_size} bytes" in text


def test_call_takes_a_shipped_plugin_by_name(tmp_path):
    result = call(tmp_path, "filter", REQUEST, plugin="cclb_wire:cache_aware_filter.wasm")
    assert result.returncode == 0, result.stderr
    # keep_k defaults to 1: the candidate with the most predicted cache reads
    assert json.loads(result.stdout)["kept_upstream_ids"] == ["00000000-0000-0000-0000-000000000002"]


@pytest.mark.parametrize("name", ["cclb_wire:nope.wasm", "cclb_wire:cache_aware_filter", "cclb_wire:../samples/FilterRequest.json"])
@pytest.mark.parametrize("command", ["inspect", "call"])
def test_an_unknown_shipped_name_lists_the_shipped_plugins(tmp_path, command, name):
    argv = [command, name] + (["--hook", "filter", "--request", str(write_request(tmp_path, REQUEST))] if command == "call" else [])
    line = one_line_failure(run_cli(*argv))
    assert repr(name) in line
    assert SHIPPED and all(f"cclb_wire:{plugin}" in line for plugin in SHIPPED)


def test_resolve_plugin_path():
    assert resolve_plugin_path("cclb_wire:observe_counter.wasm").read_bytes() == (PLUGINS / "observe_counter.wasm").read_bytes()
    assert resolve_plugin_path("cclb_wire:observe_counter.wasm").is_absolute()
    assert resolve_plugin_path("plugins/my.wasm") == Path("plugins/my.wasm")
    assert resolve_plugin_path("/abs/cclb_wire:x.wasm") == Path("/abs/cclb_wire:x.wasm")  # only a leading prefix names a shipped one
    with pytest.raises(InvalidInput, match=r"^register_filter\.wasm: 'cclb_wire:x\.wasm' names no plugin shipped") as caught:
        resolve_plugin_path("cclb_wire:x.wasm", "register_filter.wasm")
    assert isinstance(caught.value, CclbWireError) and caught.value.field == "register_filter.wasm"
    with pytest.raises(InvalidInputType, match="^plugin: "):
        resolve_plugin_path(b"cclb_wire:observe_counter.wasm")


def _load_proxy_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cclb_proxy_config_under_test", Path(__file__).resolve().parents[1] / "examples" / "proxy" / "config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_proxy_config_resolves_shipped_plugins_through_plugin_paths(tmp_path):
    proxy_config = _load_proxy_config()
    (tmp_path / "mine.wasm").write_bytes((PLUGINS / "shape_passthrough.wasm").read_bytes())
    config = tmp_path / "proxy.toml"
    base = 'keys = []\n[[upstreams]]\nid = "00000000-0000-0000-0000-000000000001"\nname = "x"\nbase_url = "http://127.0.0.1:1"\napi_key = "k"\n'
    config.write_text(base + '[plugins.filter]\nwasm = "cclb_wire:cache_aware_filter.wasm"\n[plugins.shape]\nwasm = "mine.wasm"\n')
    slots = proxy_config.load(config).slots
    assert slots["filter"].path == (Path(cclb_wire.__file__).resolve().parent / "plugins" / "cache_aware_filter.wasm")
    assert slots["shape"].path == tmp_path / "mine.wasm"  # relative to the config file
    config.write_text(base + '[plugins.filter]\nwasm = "cclb_wire:cache_aware.wasm"\n')
    with pytest.raises(proxy_config.ConfigError, match=r"^plugins\.filter\.wasm: 'cclb_wire:cache_aware\.wasm' names no plugin shipped") as caught:
        proxy_config.load(config)
    assert all(f"cclb_wire:{plugin}" in str(caught.value) for plugin in SHIPPED)


# --- what the user reads ------------------------------------------------------------------


def _subcommands():
    (commands,) = [action for action in cli.build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices


def test_help_texts_show_no_markup():
    for argv in [["--help"]] + [[name, "--help"] for name in _subcommands()]:
        result = run_cli(*argv)
        assert result.returncode == 0, result.stderr
        assert b"``" not in result.stdout, (argv, result.stdout.decode())


def test_every_argument_has_a_help_text():
    for name, parser in _subcommands().items():
        for action in parser._actions:
            assert action.help, f"cclb-wire {name} {action.dest}"
    for command in ("inspect", "call"):
        assert b"cclb_wire:cache_aware_filter.wasm" in run_cli(command, "--help").stdout


@pytest.mark.parametrize("stdin", [b"{nope", b"", b"[" * 50_000 + b"]" * 50_000])
def test_bad_json_on_stdin_is_named_stdin(stdin):
    line = one_line_failure(run_cli("encode", "--type", "FilterResponse", stdin=stdin))
    assert line.startswith("cclb-wire: stdin: ") and "encode_json" not in line


def test_demo_names_each_rejected_upstream_and_why():
    demo = json.loads(cli.sample_text("demo_request"))
    keep_k = demo["principal"]["claims"]["keep_k"]
    ranked = sorted(demo["candidates"], key=lambda c: -c["predicted_cache_read_tokens"])
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    # The bundled filter's reasons (guests/plugins/cache_aware_filter.c): "outside top-K (N
    # predicted cache read tokens)" for a rejected candidate.
    for candidate in ranked[keep_k:]:
        expected = f"{candidate['name']} ({candidate['upstream_id']}): rejected_by_plugin: outside top-{keep_k} ({candidate['predicted_cache_read_tokens']} predicted cache read tokens)"
        assert [line for line in lines if expected in line and "rejected" in line.split(candidate["name"])[0]], (expected, lines)
    for candidate in ranked[:keep_k]:
        assert not [line for line in lines if candidate["upstream_id"] in line and "rejected" in line]
