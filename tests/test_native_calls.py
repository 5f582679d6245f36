"""The native call path (the extension calls wasmtime's C API) and the instance pool.

The runtime suites run on whichever call path is active: the extension's with the Cython
backend, ctypes with the fallback (CI also runs them with CCLB_WIRE_NATIVE_CALLS=0). The
tests here pin what only shows across threads, pools and paths: guest code runs without
the GIL, a full pool fails at once with a typed error, reloads give their slots back, and
both paths answer every hostile guest with the same error, word for word.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import cclb_wire as cw
from cclb_wire import runtime
from cclb_wire.runtime import HostConfig, InstanceStrategy, PluginHost
from cclb_wire.runtime.pool import MEMORY_POOL_ENV, page_reset_pool

from test_runtime_hardening import CTX, PRINCIPAL, candidates, fixture, run_isolated, variant

TESTS = Path(__file__).resolve().parent


def spin_then_time_out(adapter, results, started=None):
    """One call of a guest that loops until its deadline; records the typed cause."""
    if started is not None:
        started.set()
    try:
        adapter.filter(CTX, PRINCIPAL, [])
        results.append("returned")
    except cw.FilterError as exc:
        results.append(type(exc.__cause__).__name__)


def test_the_extension_takes_the_calls_when_it_is_loaded():
    with PluginHost() as host:
        host.register_filter("s", "v", variant(0))
        native = host.slot("filter", "s").native
    if cw.BACKEND == "cython" and os.environ.get(runtime.NATIVE_CALLS_ENV) != "0":
        assert native is not None and runtime.binding.NATIVE_REASON == ""
    else:
        assert native is None and runtime.binding.NATIVE_REASON


@pytest.mark.parametrize("strategy", [InstanceStrategy.FRESH, InstanceStrategy.REUSE_PER_THREAD])
def test_the_gil_is_released_while_guest_code_runs(strategy):
    # A guest spins until its 0.6 s deadline; meanwhile this thread must keep running Python.
    with PluginHost(HostConfig(deadline_s=0.6, probe=False, instance_strategy=strategy)) as host:
        adapter = host.register_filter("s", "spin", fixture("infinite_loop"))
        results: list = []
        started = threading.Event()
        worker = threading.Thread(target=spin_then_time_out, args=(adapter, results, started))
        worker.start()
        started.wait()
        time.sleep(0.05)  # well inside the guest by now
        progress = 0
        while worker.is_alive():
            progress += 1
        worker.join()
    assert results == ["PluginTimeout"]
    # Holding the GIL for the whole call would leave this loop a handful of iterations.
    assert progress > 10_000, progress


@pytest.mark.parametrize("strategy", ["fresh", "reuse_per_thread"])
def test_this_thread_keeps_running_python_while_a_guest_spins(strategy):
    """The guest spins until the host closes (its deadline is 30 s). Had the call kept the
    GIL while guest code ran, this thread could not come back from its sleeps before the
    call ended: the call would be over by the time it checks."""
    with PluginHost(HostConfig(deadline_s=30.0, probe=False, instance_strategy=strategy)) as host:
        adapter = host.register_filter("s", "spin", fixture("infinite_loop"))
        results: list = []
        worker = threading.Thread(target=spin_then_time_out, args=(adapter, results))
        worker.start()
        while host._gate.active == 0:  # the call is inside the host
            time.sleep(0.001)
        time.sleep(0.5)  # the call reaches its guest (a GIL held from here on keeps this thread asleep)
        for _ in range(100):
            time.sleep(0.001)  # each wake-up needs the GIL
        assert worker.is_alive() and results == []  # came back while the guest still spins
    worker.join(20)  # closing the host ended the call
    assert results == ["PluginTimeout"]


def test_two_threads_run_two_guests_at_once():
    # Both calls are inside the host at once: a call that held the GIL while its guest spun
    # would keep the other thread from even entering until it ended.
    with PluginHost(HostConfig(deadline_s=0.5, probe=False, instance_strategy="reuse_per_thread")) as host:
        adapter = host.register_filter("s", "spin", fixture("infinite_loop"))
        results: list = []
        threads = [threading.Thread(target=spin_then_time_out, args=(adapter, results)) for _ in range(2)]
        for thread in threads:
            thread.start()
        most = 0
        while any(thread.is_alive() for thread in threads):
            most = max(most, host._gate.active)
        for thread in threads:
            thread.join()
    assert results == ["PluginTimeout", "PluginTimeout"]
    assert most == 2


def test_a_full_pool_fails_at_once_with_a_typed_error_and_recovers():
    config = HostConfig(pool_size=2, deadline_s=1.5, probe=False, failure_policy="pass_through")
    with PluginHost(config) as host:
        spinning = host.register_filter("spin", "spin", fixture("infinite_loop"))
        serving = host.register_filter("ok", "ok", variant(0))
        results: list = []
        threads = [threading.Thread(target=spin_then_time_out, args=(spinning, results)) for _ in range(2)]
        for thread in threads:
            thread.start()
        # The premise: both spinning guests hold a pool slot each (a valid call is refused).
        assert wait_for_saturation(serving, spinning=2), "the spinning calls never took both slots"
        with pytest.raises(cw.FilterError) as caught:
            serving.filter(CTX, PRINCIPAL, candidates(2))
        cause = caught.value.__cause__
        assert type(cause) is cw.PluginPoolSaturated and isinstance(cause, cw.PluginResourceLimit)
        assert "pool_size = 2" in str(cause) and cause.plugin == "ok" and cause.hook == "filter"
        # It never waited for a slot: both spinning calls still hold theirs.
        assert host._gate.active == 2 and all(thread.is_alive() for thread in threads)
        passed = serving.filter_with_policy(CTX, PRINCIPAL, candidates(2))
        assert len(passed.kept_upstream_ids) == 2 and "pool" in passed.reason
        for thread in threads:
            thread.join()
        assert results == ["PluginTimeout", "PluginTimeout"]
        # The slots came back with the stores of the timed-out calls.
        assert len(serving.filter(CTX, PRINCIPAL, candidates(2)).kept_upstream_ids) == 1


def test_reloads_and_failed_calls_give_their_pool_slots_back():
    with PluginHost(HostConfig(pool_size=2, deadline_s=0.05)) as host:
        for index in range(40):
            adapter = host.register_filter("s", f"v{index % 3}", variant(index % 3))
            assert len(adapter.filter(CTX, PRINCIPAL, candidates(3)).kept_upstream_ids) == 1
    with PluginHost(HostConfig(pool_size=1, deadline_s=0.05, probe=False)) as host:
        spinning = host.register_filter("spin", "spin", fixture("infinite_loop"))
        for _ in range(5):  # each timed-out call returns its slot, or the next would saturate
            assert type(_cause(lambda: spinning.filter(CTX, PRINCIPAL, []))) is cw.PluginTimeout


def _cause(call):
    with pytest.raises(cw.CclbWireError) as caught:
        call()
    return caught.value.__cause__


def wait_for_saturation(adapter, spinning: int = 1, seconds: float = 10.0) -> bool:
    """Whether a valid call gets PluginPoolSaturated within ``seconds`` (polled, not timed),
    once ``spinning`` calls are inside the host: polling before they are could take the
    slot a spinning call is about to take."""
    deadline = time.monotonic() + seconds
    while adapter._host._gate.active < spinning and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.01)  # from the gate to the pool slot: microseconds
    while time.monotonic() < deadline:
        try:
            adapter.filter(CTX, PRINCIPAL, [])
        except cw.FilterError as exc:
            if isinstance(exc.__cause__, cw.PluginPoolSaturated):
                return True
        time.sleep(0.005)
    return False


def test_a_bad_argument_is_the_callers_error_whatever_state_the_host_is_in():
    # The request is measured before the stack check, the gate and the instance, on both
    # call paths: a full pool never turns a bad argument into a plugin failure (which
    # PASS_THROUGH would then "pass through"), and an empty slot never crashes the policy.
    bogus = ["not a candidate"]
    config = HostConfig(pool_size=1, deadline_s=1.0, probe=False, breaker_failures=0)
    with PluginHost(config) as host:
        spinning = host.register_filter("spin", "spin", fixture("infinite_loop"))
        adapter = host.register_filter("ok", "ok", variant(0))
        worker = threading.Thread(target=spin_then_time_out, args=(spinning, []))
        worker.start()
        # The premise: the one pool slot is taken (a valid call is refused for it).
        assert wait_for_saturation(adapter), "the spinning call never took the pool's slot"
        for call in (adapter.filter, adapter.filter_with_policy):
            with pytest.raises(cw.InvalidInputType, match=r"candidates\[0\]: expected a cclb_wire.UpstreamCandidate, got str"):
                call(CTX, PRINCIPAL, bogus)
        worker.join()
        host.unregister("filter", "ok")
        # An empty slot is found before anything is encoded: filter says so; the policy
        # call, which would pass the candidates through, refuses them first.
        with pytest.raises(cw.FilterError, match="is empty"):
            adapter.filter(CTX, PRINCIPAL, bogus)
        with pytest.raises(cw.InvalidInputType, match=r"candidates\[0\]"):
            adapter.filter_with_policy(CTX, PRINCIPAL, bogus)


def test_a_pool_that_cannot_be_reserved_is_a_typed_error_not_an_abort(monkeypatch):
    # wasmtime's C API aborts the process when the pool's reservation fails; the host
    # reserves it first, so it raises instead.
    out = run_isolated(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, resource.RLIM_INFINITY))
        for config in (HostConfig(), HostConfig(pool_size=0)):
            try:
                PluginHost(config)
                print("created")
            except cw.PluginResourceLimit as exc:
                print(type(exc).__name__, "pool_size" in str(exc))
        """
    )
    assert out.split() == ["PluginResourceLimit", "True", "created"]
    # Every field in range, but 128 TiB of tables: more than there is address space, in
    # wasmtime's pool (the page-resetting pool maps no tables: each instance gets its own).
    tables = HostConfig(pool_size=256, max_tables=1024, table_elements_limit=1 << 26, memory_limit_bytes=1 << 20)
    if page_reset_pool() is not None:
        with PluginHost(tables) as host:
            assert host.memory_pool_stats() is not None
    monkeypatch.setenv(MEMORY_POOL_ENV, "wasmtime")
    with pytest.raises(cw.PluginResourceLimit, match="for its tables"):
        PluginHost(tables)


def test_a_child_forked_during_a_call_gets_a_whole_pool():
    # The spinning call's thread does not exist in the child, so its store would hold its
    # pool slot there for good. The child gets a pool of its own, with the plugins moved.
    out = run_isolated(
        """
        host = PluginHost(HostConfig(pool_size=2, deadline_s=1.0, probe=False))
        spinning = host.register_filter("spin", "spin", fixture("infinite_loop"))
        serving = host.register_filter("ok", "ok", variant(0))
        worker = threading.Thread(target=lambda: spinning.filter_with_policy(CTX, PRINCIPAL, []))
        worker.start()
        while host._gate.active == 0:  # the premise: the spinning call holds one of the two slots
            time.sleep(0.001)
        time.sleep(0.1)  # from the gate to its pool slot: microseconds (its deadline is 1 s)
        pid = os.fork()
        if pid == 0:
            # One slot for a spinning call of the child's own, one for the serving calls.
            results = []
            def spin():
                try:
                    spinning.filter(CTX, PRINCIPAL, [])
                except cw.FilterError as exc:
                    results.append(type(exc.__cause__).__name__)
            child_worker = threading.Thread(target=spin)
            child_worker.start()
            while host._gate.active == 0:  # the child's own spinning call is in
                time.sleep(0.001)
            time.sleep(0.1)  # and holds its pool slot
            served = [len(serving.filter(CTX, PRINCIPAL, candidates(3)).kept_upstream_ids) for _ in range(3)]
            child_worker.join()
            print("child served", served, results, host.slot("filter", "ok").plugin_id == serving.plugin_id, flush=True)
            os._exit(0)
        report_child(pid)
        worker.join()
        print("parent served", len(serving.filter(CTX, PRINCIPAL, candidates(3)).kept_upstream_ids))
        """
    )
    assert "child served [1, 1, 1] ['PluginTimeout'] True" in out and "child 0" in out
    assert "parent served 1" in out


def test_without_a_pool_fresh_instances_still_work():
    with PluginHost(HostConfig(pool_size=0)) as host:
        adapter = host.register_filter("s", "v", variant(1))
        threads_done = []

        def call():
            threads_done.append(len(adapter.filter(CTX, PRINCIPAL, candidates(3)).kept_upstream_ids))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert threads_done == [1, 1, 1, 1]


# --- both call paths answer alike ---------------------------------------------------------------

HOSTILE_CALLS = [
    ("out_of_bounds", {}), ("out_ptr_zero", {}), ("out_len_zero", {}), ("oversized", {}),
    ("ptr_len_overflow", {}), ("unreachable", {}), ("stack_overflow", {}), ("memory_bomb", {"memory_limit_bytes": 4 << 20}),
    ("grow_by_1", {"memory_limit_bytes": 2 << 20}), ("trap_near_limit", {"memory_limit_bytes": 2 << 20}),
    ("refused_then_divide_by_zero", {"memory_limit_bytes": 2 << 20}), ("misaligned_alloc_large", {}),
    ("infinite_loop", {"deadline_s": 0.05}), ("infinite_loop", {"deadline_s": None, "fuel": 100_000}),
    ("start_refused_then_hook_trap", {"memory_limit_bytes": 2 << 20}), ("grow_then_answer", {}),
]

OUTCOMES = """
import json
results = []
for name, overrides in json.loads({calls!r}):
    for strategy in ("fresh", "reuse_per_thread"):
        config = HostConfig(probe=False, instance_strategy=strategy, **overrides)
        with PluginHost(config) as host:
            adapter = host.register_filter("s", name, fixture(name))
            for _ in range(2):
                try:
                    results.append(["ok", repr(adapter.filter(CTX, PRINCIPAL, candidates(2)))])
                except cw.FilterError as exc:
                    cause = exc.__cause__
                    results.append([type(exc).__name__, str(exc), type(cause).__name__, str(cause),
                                    getattr(cause, "trap_code", ""), cause.phase])
from cclb_wire import runtime
print(json.dumps({{"path": "ctypes" if runtime.binding.NATIVE is None else "native", "results": results}}))
"""


def _outcomes(native: bool) -> dict:
    code = OUTCOMES.format(calls=json.dumps(HOSTILE_CALLS))
    env_value = None if native else "0"
    previous = os.environ.get(runtime.NATIVE_CALLS_ENV)
    try:
        if env_value is None:
            os.environ.pop(runtime.NATIVE_CALLS_ENV, None)
        else:
            os.environ[runtime.NATIVE_CALLS_ENV] = env_value
        return json.loads(run_isolated(code, timeout=180))
    finally:
        if previous is None:
            os.environ.pop(runtime.NATIVE_CALLS_ENV, None)
        else:
            os.environ[runtime.NATIVE_CALLS_ENV] = previous


def test_both_call_paths_answer_every_hostile_guest_alike():
    native_run, ctypes_run = _outcomes(True), _outcomes(False)
    # Each child says which path it ran: the native one wherever the extension is loaded.
    assert native_run["path"] == ("native" if cw.BACKEND == "cython" else "ctypes")
    assert ctypes_run["path"] == "ctypes"
    native, ctypes_path = native_run["results"], ctypes_run["results"]
    assert len(native) == len(ctypes_path) == 4 * len(HOSTILE_CALLS)
    for index, (ours, theirs) in enumerate(zip(native, ctypes_path)):
        name, overrides = HOSTILE_CALLS[index // 4]
        assert ours == theirs, (name, overrides, index % 4)
    kinds = {row[2] for row in native if row[0] != "ok"}
    assert {"PluginOutputError", "PluginTrap", "PluginMemoryLimit", "PluginTimeout", "PluginOutOfFuel"} <= kinds


# --- binding to wasmtime ----------------------------------------------------------------------------


# Just below and just above the supported majors (pyproject.toml: wasmtime>=50,<52).
@pytest.mark.parametrize("unsupported", ["49.0.0", "52.0.0"])
def test_another_wasmtime_major_version_falls_back_with_a_warning_naming_it(unsupported):
    out = run_isolated(
        """
        import warnings
        os.environ.pop("CCLB_WIRE_NATIVE_CALLS", None)  # the path is chosen at the first host
        wasmtime.__version__ = "%s"
        from cclb_wire import runtime
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            host = PluginHost()
        adapter = host.register_filter("s", "v", variant(0))
        print(len(adapter.filter(CTX, PRINCIPAL, candidates(3)).kept_upstream_ids))
        print(runtime.binding.NATIVE is None)
        print(runtime.binding.NATIVE_REASON)
        print([str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])
        """
        % unsupported
    )
    served, fallen_back, reason, warned = out.splitlines()
    assert served == "1" and fallen_back == "True"
    if cw.BACKEND == "cython":
        assert f"wasmtime {unsupported} is not a major version the native call path is built for (50, 51)" in reason
        assert "ctypes path" in warned and unsupported in warned
    else:
        assert reason == "the pure-Python backend is loaded" and warned == "[]"


@pytest.mark.skipif(cw.BACKEND != "cython", reason="binds the extension")
def test_the_binding_takes_every_supported_major_and_no_other():
    import ctypes

    from cclb_wire import _codec

    wt = runtime.binding.load_wasmtime()
    assert _codec.SUPPORTED_WASMTIME_MAJORS == (50, 51)
    assert int(wt.version.split(".")[0]) in _codec.SUPPORTED_WASMTIME_MAJORS, wt.version
    layouts = {
        name: (ctypes.sizeof(struct), {field: getattr(struct, field).offset for field, *_ in struct._fields_})
        for name in _codec._WASMTIME_LAYOUTS
        for struct in [getattr(wt.ffi, name)]
    }
    addresses = {symbol: ctypes.cast(getattr(wt.dll, symbol), ctypes.c_void_p).value for symbol in _codec._WASMTIME_SYMBOLS}
    # The loaded libwasmtime's own addresses and layouts: binding again changes nothing.
    for version in ("50.0.0", "50.0.1", "51.0.0", "51.2.3"):
        _codec.bind_wasmtime(version, addresses, layouts)
    for version in ("49.0.1", "52.0.0", "5.0.0", "500.0.0", ""):
        with pytest.raises(RuntimeError, match="is not a major version the native call path is built for"):
            _codec.bind_wasmtime(version, addresses, layouts)


@pytest.mark.skipif(cw.BACKEND != "cython", reason="binds the extension")
def test_the_binding_refuses_a_missing_symbol_or_another_layout():
    from cclb_wire import _codec

    wt = runtime.binding.load_wasmtime()
    layouts = {name: (0, {}) for name in _codec._WASMTIME_LAYOUTS}
    with pytest.raises(RuntimeError, match="wasmtime_func_t is laid out as"):
        _codec.bind_wasmtime(wt.version, {}, layouts)
    good_layouts = {
        name: (size, dict(fields)) for name, (size, fields) in _codec._WASMTIME_LAYOUTS.items()
    }
    with pytest.raises(RuntimeError, match="does not export wasmtime_store_new"):
        _codec.bind_wasmtime(wt.version, {}, good_layouts)


@pytest.mark.skipif(cw.BACKEND != "cython", reason="reads the extension's supported majors")
def test_the_wasmtime_pin_is_the_range_of_supported_majors():
    import re

    from cclb_wire import _codec

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pin = re.search(r'"wasmtime>=(\d+),<(\d+)"', pyproject)
    assert pin is not None, "pyproject.toml pins wasmtime as >=N,<M"
    majors = _codec.SUPPORTED_WASMTIME_MAJORS
    assert list(majors) == list(range(int(pin[1]), int(pin[2])))  # every major the pin admits is bound, and no other
