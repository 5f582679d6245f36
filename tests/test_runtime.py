"""The plugin host: admission, each hook end to end, limits, hostile guests, threads, reload."""

from __future__ import annotations

import logging

import gc
import threading
import time
import uuid
from importlib import resources
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire import PluginRejected
from cclb_wire.runtime import FailurePolicy, HostConfig, InstanceStrategy, PluginHost

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
PLUGINS = resources.files("cclb_wire") / "plugins"
STRATEGIES = [InstanceStrategy.FRESH, InstanceStrategy.REUSE_PER_THREAD]


def fixture(name: str) -> bytes:
    return wasmtime.wat2wasm((HOSTILE / f"{name}.wat").read_text())


def plugin(name: str) -> bytes:
    return (PLUGINS / f"{name}.wasm").read_bytes()


def candidates(*tokens):
    return [
        cw.UpstreamCandidate(uuid.UUID(int=i + 1), f"up-{i}", "anthropic_api_key", 1767225600, cw.CacheScore(t))
        for i, t in enumerate(tokens)
    ]


CTX = cw.RequestContext(
    "req-1", "POST", "/v1/messages", "beta=true",
    [("Content-Type", "application/json"), ("Authorization", "Bearer secret"), ("x-trace", "t1")], b'{"model":"m"}',
)


@pytest.fixture(params=STRATEGIES, ids=lambda s: s.value)
def host(request):
    with PluginHost(HostConfig(instance_strategy=request.param, deadline_s=0.25)) as h:
        yield h


# --- admission ----------------------------------------------------------------------

REJECTIONS = {
    "has_import": "imports 1 item(s)",
    "missing_alloc": "missing required function export `cc_lb_alloc`",
    "missing_memory": "missing required export `memory` (Memory)",
    "wrong_signature": "export `cc_lb_filter` has type (i32) -> i32; expected (i32, i32) -> i64",
    "no_metadata": "missing required `cc_lb.plugin.v1` custom section",
    "bad_metadata_json": "invalid `cc_lb.plugin.v1` metadata JSON",
    "blank_name_metadata": "invalid `cc_lb.plugin.v1` metadata: missing plugin name",
    "unknown_hook_metadata": "unknown hook name: transform",
    "wire_version_2": "host does not support hook `filter` wire version 2",
    "wrong_fingerprint": "`cc_lb.schema.filter.v1` hash mismatch (host expects 049219a3",
    "schema_wrong_size": "`cc_lb.schema.filter.v1` section is 31 bytes; expected 32",
    "missing_fingerprint": "missing `cc_lb.schema.filter.v1` custom section for declared hook `filter`",
}


@pytest.mark.parametrize("name", sorted(REJECTIONS))
def test_bad_modules_are_rejected_with_their_reason(host, name):
    with pytest.raises(PluginRejected) as caught:
        host.register_filter("slot", name, fixture(name))
    assert REJECTIONS[name] in str(caught.value)
    assert caught.value.plugin == name and caught.value.hook == "filter"
    assert len(str(caught.value).splitlines()) == 1


def test_not_wasm_and_wrong_slot_kind_are_rejected(host):
    with pytest.raises(PluginRejected, match="wasm parse error: not a WebAssembly module"):
        host.register_filter("slot", "junk", b"not wasm at all")
    with pytest.raises(PluginRejected, match="metadata does not declare required `shape` hook for this slot"):
        host.register_shape("slot", "filter-only", plugin("cache_aware_filter"))


@pytest.mark.parametrize(
    "name, cause",
    [
        ("infinite_loop", cw.PluginTimeout),
        ("unreachable", cw.PluginTrap),
        ("stack_overflow", cw.PluginTrap),
        ("out_ptr_zero", cw.PluginOutputError),
        ("out_of_bounds", cw.PluginOutputError),
    ],
)
def test_the_probe_rejects_runtime_misbehaviour(host, name, cause):
    with pytest.raises(PluginRejected, match="runtime probe failed for hook filter") as caught:
        host.register_filter("slot", name, fixture(name))
    assert isinstance(caught.value.__cause__, cause)


def test_valid_minimal_is_admitted_and_answers_nothing(host):
    output = host.register_filter("slot", "valid_minimal", fixture("valid_minimal")).filter(CTX, cw.Principal("p"), [])
    assert output == cw.FilterOutput((), "", ())


# --- each hook end to end with the bundled plugins ----------------------------------


def test_cache_aware_filter_keeps_the_top_k(host):
    adapter = host.register_filter("global", "cache-aware", plugin("cache_aware_filter"))
    cands = candidates(10, 500, 300, 0)
    output = adapter.filter(CTX, cw.Principal("tenant", "api_key", {"keep_k": 2}), cands)
    assert output.kept_upstream_ids == (cands[1].upstream_id, cands[2].upstream_id)
    assert output.per_candidate_reasons == (cw.PerCandidateReason.RejectedByPlugin,) * 2
    assert str(cands[0].upstream_id) in output.reason
    default = adapter.filter(CTX, cw.Principal("tenant", "api_key"), cands)  # keep_k defaults to 1
    assert default.kept_upstream_ids == (cands[1].upstream_id,)
    assert adapter.plugin_name == "cache-aware" and isinstance(adapter.plugin_id, uuid.UUID)


def test_shape_passthrough_builds_the_upstream_url(host):
    adapter = host.register_shape("global", "passthrough", plugin("shape_passthrough"))
    shaped = adapter.shape(CTX, cw.AnthropicDirect("https://api.anthropic.com/"), cw.Principal("t"))
    assert shaped.url == "https://api.anthropic.com/v1/messages?beta=true"
    assert shaped.method == "POST"
    # authorization never reached the plugin; the echo carries the rest, names lowercase
    assert shaped.headers == (("content-type", b"application/json"), ("x-trace", b"t1"))
    assert shaped.body == b'{"model":"m"}'
    default = adapter.shape(cw.RequestContext("r", "GET", "/v1/models", None, (), b""), cw.AnthropicDirect(None), cw.Principal("t"))
    assert default.url == "https://api.anthropic.com/v1/models"


def test_observe_counter_takes_every_event(host):
    adapter = host.register_observe("global", "counter", plugin("observe_counter"))
    for event in (
        cw.RequestStarted("r", "ua"),
        cw.AuthnComplete("p", cw.PrincipalKind.API_KEY),
        cw.UpstreamChosen(cw.AnthropicDirect("https://api.anthropic.com")),
        cw.Chunk(1, 2, 3),
        cw.RequestFinished(200, 1, 2, None, None, 30),
        cw.ErrorEvent("c", "m", "s"),
    ):
        adapter.observe(event)
    # Every event reached the guest, which validated it (it traps on an archive it can't read).
    stats = adapter.stats()
    assert (stats.calls, stats.errors, stats.pass_throughs) == (6, {}, 0)


# --- limits and hostile guests: each its own error class, then a normal call works ---


def _unprobed(**config) -> PluginHost:
    return PluginHost(HostConfig(probe=False, **config))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize(
    "name, cause, trap_code",
    [
        ("infinite_loop", cw.PluginTimeout, None),
        ("memory_bomb", cw.PluginMemoryLimit, None),
        ("unreachable", cw.PluginTrap, "unreachable"),
        ("stack_overflow", cw.PluginTrap, "stack_overflow"),
        ("out_ptr_zero", cw.PluginOutputError, None),
        ("out_len_zero", cw.PluginOutputError, None),
        ("out_of_bounds", cw.PluginOutputError, None),
        ("ptr_len_overflow", cw.PluginOutputError, None),
        ("oversized", cw.PluginOutputError, None),
    ],
)
def test_hostile_guest_gets_its_own_error_and_the_host_carries_on(strategy, name, cause, trap_code):
    limit = 16 * 1024 * 1024 if name == "memory_bomb" else 128 * 1024 * 1024
    with _unprobed(deadline_s=0.3, memory_limit_bytes=limit, instance_strategy=strategy) as host:
        hostile = host.register_filter("hostile", name, fixture(name))
        good = host.register_filter("good", "cache-aware", plugin("cache_aware_filter"))
        with pytest.raises(cw.FilterError) as caught:
            hostile.filter(CTX, cw.Principal("t"), candidates(1))
        error = caught.value.__cause__
        assert type(error) is cause, repr(error)
        assert error.plugin == name and error.hook == "filter"
        assert caught.value.kind == ("trap" if cause is cw.PluginTrap else "runtime")
        if trap_code:
            assert error.trap_code == trap_code and error.phase == "cc_lb_filter"
            assert str(caught.value).startswith("filter trap error: cc_lb_filter: wasm trap: ")
        cands = candidates(5, 7)
        assert good.filter(CTX, cw.Principal("t"), cands).kept_upstream_ids == (cands[1].upstream_id,)


@pytest.mark.parametrize("deadline_s", [0.05, 0.3])
def test_a_deadline_never_ends_a_call_early(deadline_s):
    """A deadline may run long under load, never short: the call took at least its
    deadline (a lower bound only: a busy box can only make it later)."""
    host = _unprobed(deadline_s=deadline_s)
    try:
        adapter = host.register_filter("slot", "loop", fixture("infinite_loop"))
        for _ in range(3):
            started = time.perf_counter()
            with pytest.raises(cw.FilterError) as caught:
                adapter.filter(CTX, cw.Principal("t"), [])
            elapsed = time.perf_counter() - started
            assert isinstance(caught.value.__cause__, cw.PluginTimeout)
            assert elapsed >= deadline_s, f"the call ended after {elapsed:.4f} s, before its {deadline_s} s deadline"
    finally:
        host.close()


def test_fuel_runs_out_with_its_own_error():
    with _unprobed(deadline_s=None, fuel=100_000) as host:
        with pytest.raises(cw.FilterError) as caught:
            host.register_filter("slot", "loop", fixture("infinite_loop")).filter(CTX, cw.Principal("t"), [])
        assert isinstance(caught.value.__cause__, cw.PluginOutOfFuel)
        good = host.register_filter("good", "cache-aware", plugin("cache_aware_filter"))
        assert good.filter(CTX, cw.Principal("t"), candidates(1)).kept_upstream_ids == (uuid.UUID(int=1),)


def test_output_size_is_checked_before_reading():
    with _unprobed(deadline_s=1.0) as host:
        with pytest.raises(cw.FilterError, match="exceeds wire_bounds.output_body_bytes") as caught:
            host.register_filter("slot", "big", fixture("oversized")).filter(CTX, cw.Principal("t"), [])
        assert isinstance(caught.value.__cause__, cw.PluginOutputError)


# --- failure policy ---------------------------------------------------------------------


def test_failure_policy_pass_through_and_fail_closed():
    cands = candidates(1, 2)
    with _unprobed(failure_policy=FailurePolicy.PASS_THROUGH) as host:
        output = host.register_filter("slot", "trap", fixture("unreachable")).filter_with_policy(CTX, cw.Principal("t"), cands)
        assert output.kept_upstream_ids == tuple(c.upstream_id for c in cands) and "passed through" in output.reason
    with _unprobed(failure_policy=FailurePolicy.FAIL_CLOSED) as host:
        with pytest.raises(cw.FilterError):
            host.register_filter("slot", "trap", fixture("unreachable")).filter_with_policy(CTX, cw.Principal("t"), cands)


# --- slots: same content, hot reload, close ---------------------------------------------


def test_registering_the_same_content_is_a_no_op(host):
    first = host.register_filter("slot", "cache-aware", plugin("cache_aware_filter"))
    loaded = host.slot("filter", "slot")
    second = host.register_filter("slot", "cache-aware", plugin("cache_aware_filter"))
    assert host.slot("filter", "slot") is loaded
    assert first.plugin_id == second.plugin_id


def test_hot_reload_under_concurrent_calls():
    with PluginHost(HostConfig(instance_strategy=InstanceStrategy.REUSE_PER_THREAD)) as host:
        adapter = host.register_filter("slot", "cache-aware", plugin("cache_aware_filter"))
        cands = candidates(3, 9, 1)
        errors, answers, stop = [], [], threading.Event()

        def caller():
            try:
                while not stop.is_set():
                    answers.append(adapter.filter(CTX, cw.Principal("t"), cands).kept_upstream_ids)
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        names = []
        for index in range(6):  # swap between the real plugin and the empty-answer one
            name, wasm = ("minimal", fixture("valid_minimal")) if index % 2 else ("cache-aware", plugin("cache_aware_filter"))
            host.register_filter("slot", name, wasm)
            names.append(adapter.plugin_name)
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        assert names == ["cache-aware", "minimal"] * 3
        # every answer is one plugin's whole answer, never a mix
        assert set(answers) <= {(cands[1].upstream_id,), ()} and len(answers) > 10


def test_closed_slot_refuses_calls(host):
    adapter = host.register_filter("slot", "cache-aware", plugin("cache_aware_filter"))
    adapter.close()
    with pytest.raises(cw.FilterError, match="empty") as caught:
        adapter.filter(CTX, cw.Principal("t"), [])
    assert type(caught.value.__cause__) is cw.PluginError


# --- threads: every answer matches its own request ----------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_eight_threads_thousand_calls_each(strategy):
    calls = 1000
    with PluginHost(HostConfig(instance_strategy=strategy)) as host:
        adapter = host.register_filter("slot", "cache-aware", plugin("cache_aware_filter"))
        failures, done = [], []

        def run(worker: int):
            for call in range(calls):
                # distinct data per call: the best candidate's position and id encode (worker, call)
                best = (worker * 7 + call) % 5
                cands = [
                    cw.UpstreamCandidate(uuid.UUID(int=(worker << 40) | (call << 8) | i), f"w{worker}", "k", call,
                                         cw.CacheScore(1000 if i == best else i))
                    for i in range(5)
                ]
                output = adapter.filter(CTX, cw.Principal(f"p{worker}", "api_key", {"keep_k": 1}), cands)
                if output.kept_upstream_ids != (cands[best].upstream_id,):
                    failures.append((worker, call, output))
                done.append(1)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(done) == 8 * calls


# --- resources -------------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 // 1024


def test_register_call_close_cycles_keep_rss_flat():
    wasm = plugin("cache_aware_filter")
    cands = candidates(1, 2)
    with PluginHost() as host:
        def cycles(count: int):
            for index in range(count):
                adapter = host.register_filter(f"slot-{index % 3}", "cache-aware", wasm)
                adapter.filter(CTX, cw.Principal("t"), cands)
                adapter.close()

        cycles(1000)  # warm up: caches, allocator pools
        gc.collect()
        before = _rss_kib()
        cycles(10_000)
        gc.collect()
        after = _rss_kib()
    print(f"RSS over 10,000 register/call/close cycles: {before} KiB -> {after} KiB")
    assert after - before < 8 * 1024, (before, after)


# --- module cache and lazy import --------------------------------------------------------


def test_compiled_modules_are_cached_on_disk(tmp_path):
    wasm = plugin("cache_aware_filter")
    with PluginHost(HostConfig(module_cache_dir=tmp_path)) as host:
        host.register_filter("slot", "cache-aware", wasm)
    cached = list(tmp_path.glob("*.cwasm"))
    assert len(cached) == 1
    # Another host (another process, say) loads the compiled module instead of compiling.
    with PluginHost(HostConfig(module_cache_dir=tmp_path)) as host:
        cands = candidates(4, 8)
        assert host.register_filter("slot", "cache-aware", wasm).filter(CTX, cw.Principal("t"), cands).kept_upstream_ids == (
            cands[1].upstream_id,
        )
    # Other engine settings are another cache entry, never a mismatched module.
    with PluginHost(HostConfig(module_cache_dir=tmp_path, fuel=10**9)) as host:
        host.register_filter("slot", "cache-aware", wasm)
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def test_the_two_memory_pools_keep_separate_cache_entries(tmp_path, monkeypatch, caplog):
    """Modules for the page-resetting pool are compiled without copy-on-write memory images,
    so wasmtime refuses them on an engine of wasmtime's pool (and the other way round):
    hosts of both kinds sharing a cache directory must each find their own entry, never
    reject the other's and overwrite it on every start."""
    from cclb_wire.runtime.pool import MEMORY_POOL_ENV, page_reset_pool

    wasm = plugin("cache_aware_filter")
    monkeypatch.delenv(MEMORY_POOL_ENV, raising=False)
    entries = 2 if page_reset_pool() is not None else 1  # the pure backend: wasmtime's pool twice
    kinds = ["default", "wasmtime"]
    for kind in kinds * 2:  # each kind twice: the second round must load, not recompile
        if kind == "wasmtime":
            monkeypatch.setenv(MEMORY_POOL_ENV, "wasmtime")
        else:
            monkeypatch.delenv(MEMORY_POOL_ENV, raising=False)
        with PluginHost(HostConfig(module_cache_dir=tmp_path)) as host:
            host.register_filter("slot", "cache-aware", wasm)
    assert len(list(tmp_path.glob("*.cwasm"))) == entries
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]


def test_a_corrupt_cache_file_is_compiled_again(tmp_path):
    wasm = plugin("cache_aware_filter")
    with PluginHost(HostConfig(module_cache_dir=tmp_path)) as host:
        host.register_filter("slot", "cache-aware", wasm)
    (entry,) = tmp_path.glob("*.cwasm")
    entry.write_bytes(b"not a compiled module")
    with PluginHost(HostConfig(module_cache_dir=tmp_path)) as host:
        assert host.register_filter("slot", "cache-aware", wasm).filter(CTX, cw.Principal("t"), []) == cw.FilterOutput((), "", ())


def test_wasmtime_is_imported_only_when_a_host_is_made():
    import subprocess
    import sys

    code = (
        "import sys, cclb_wire; cclb_wire.PluginHost; from cclb_wire import runtime; "
        "print('wasmtime' in sys.modules); runtime.PluginHost().close(); print('wasmtime' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_close_interrupts_a_call_in_flight():
    host = _unprobed(deadline_s=30.0)
    adapter = host.register_filter("slot", "loop", fixture("infinite_loop"))
    outcome = []

    def call():
        try:
            adapter.filter(CTX, cw.Principal("t"), [])
        except cw.FilterError as exc:
            outcome.append(exc.__cause__)

    thread = threading.Thread(target=call)
    thread.start()
    while host._gate.active == 0:  # the premise: the call is in flight
        time.sleep(0.001)
    host.close()
    thread.join(timeout=20)  # its deadline is 30 s: only close() can have ended it by then
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], cw.PluginTimeout)
