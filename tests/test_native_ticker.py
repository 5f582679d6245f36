"""The native epoch ticker (cclb_wire/_ticker.pxi): a C thread that advances wasmtime
engines' epochs without the GIL, so deadlines hold whatever Python code does.

The tests drive the extension directly, on real wasmtime-py engines with epoch
interruption, bound the way the runtime binds it. They check orders and counts (which
finished first, how many threads, the recorded tick times), not wall-clock bounds. What
could crash or hang the interpreter (freeing engines, fork) runs in a subprocess.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import wasmtime

import cclb_wire as cw

pytestmark = pytest.mark.skipif(cw.BACKEND != "cython", reason="the native ticker is part of the extension")

TESTS = Path(__file__).resolve().parent

#: A guest that counts loop iterations at address 0 of its memory, forever.
SPIN_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "spin")
    (loop $again
      (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
      (br $again))))
"""


def bind() -> Any:
    """The extension, bound to wasmtime-py's libwasmtime as cclb_wire.runtime binds it
    (here whatever CCLB_WIRE_NATIVE_CALLS says: the ticker is what is under test)."""
    from importlib.metadata import version

    from wasmtime import _ffi

    from cclb_wire import _codec

    def layout(struct: Any) -> Tuple[int, Dict[str, int]]:
        return ctypes.sizeof(struct), {name: getattr(struct, name).offset for name, *_ in struct._fields_}

    layouts = {name: layout(getattr(_ffi, name)) for name in _codec._WASMTIME_LAYOUTS if hasattr(_ffi, name)}
    addresses = {symbol: ctypes.cast(getattr(_ffi.dll, symbol), ctypes.c_void_p).value for symbol in _codec._WASMTIME_SYMBOLS}
    _codec.bind_wasmtime(getattr(wasmtime, "__version__", "") or version("wasmtime"), addresses, layouts)
    return _codec


def epoch_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True
    return wasmtime.Engine(config)


def address(engine: wasmtime.Engine) -> int:
    return ctypes.cast(engine.ptr(), ctypes.c_void_p).value


def wait_for(condition, timeout: float = 30.0) -> None:
    """Poll until ``condition()``; the timeout only keeps a regression from hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def run_isolated(code: str, timeout: float = 120, first: str = "") -> str:
    """Run ``code`` in a fresh interpreter (with ``bind``, ``epoch_engine`` ... imported;
    ``first`` before cclb_wire is): a crash or hang fails the test, not the suite."""
    prelude = textwrap.dedent(first) + textwrap.dedent(
        f"""
        import ctypes, os, sys, threading, time
        sys.path.insert(0, {str(TESTS)!r})
        import wasmtime
        import cclb_wire as cw
        assert cw.BACKEND == "cython", cw.BACKEND
        from test_native_ticker import SPIN_WAT, address, bind, epoch_engine, wait_for
        """
    )
    # From the tests directory, so the checkout does not shadow the package under test.
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=TESTS,
    )
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def ticker_threads() -> int:
    """The threads of this process named like the native ticker (Linux), else -1."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return -1
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that just ended
            pass
    return names.count("cclb-epoch")


def backtracking_input(seconds: float) -> str:
    """A subject on which re.match(r"(a+)+$", ...) backtracks for about ``seconds`` (each
    more "a" doubles the time) in one C call that never releases the GIL."""
    n = 20
    started = time.perf_counter()
    re.match(r"(a+)+$", "a" * n + "b")
    took = max(time.perf_counter() - started, 1e-4)
    while took < seconds and n < 34:
        n += 1
        took *= 2
    return "a" * n + "b"


# --- the API ----------------------------------------------------------------------------


def test_the_ticker_is_available_once_bound_and_checks_its_arguments():
    codec = bind()
    assert codec.native_ticker_available() is True
    engine = epoch_engine()
    for tick in (0, -1, codec.NATIVE_TICKER_MAX_TICK_NS + 1):
        with pytest.raises(ValueError, match="tick_ns"):
            codec.native_ticker_add(address(engine), tick)
    with pytest.raises(ValueError, match="engine_address"):
        codec.native_ticker_add(0, 10_000_000)
    with pytest.raises(TypeError):
        codec.native_ticker_add(address(engine), 0.01)
    handle = codec.native_ticker_add(address(engine), 10_000_000)
    assert codec._native_ticker_record(handle)[0] == 0  # the first tick comes a tick later
    codec.native_ticker_remove(handle)
    codec.native_ticker_remove(handle)  # again: nothing to do
    with pytest.raises(KeyError):
        codec._native_ticker_record(handle)


# --- (a) deadlines hold while Python code holds the GIL ----------------------------------


def test_a_guest_is_interrupted_while_the_main_thread_holds_the_gil():
    codec = bind()
    engine = epoch_engine()
    handle = codec.native_ticker_add(address(engine), 10_000_000)  # 10 ms
    try:
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, wasmtime.Module(engine, SPIN_WAT), [])
        spin = instance.exports(store)["spin"]
        counter = ctypes.c_int64.from_address(ctypes.addressof(instance.exports(store)["memory"].data_ptr(store).contents))
        subject = backtracking_input(2.0)
        outcome: list = []

        def guest() -> None:
            store.set_epoch_deadline(31)  # 0.3 s: ceil(0.3 / tick) + 1
            try:
                spin(store)  # wasmtime-py's ctypes call runs it without the GIL
                outcome.append("returned")
            except wasmtime.Trap as trap:
                outcome.append(trap.trap_code)

        worker = threading.Thread(target=guest)
        worker.start()
        wait_for(lambda: counter.value > 0)
        before = counter.value
        while counter.value == before:  # spinning right now, not just started
            pass
        re.match(r"(a+)+$", subject)  # holds the GIL for ~2 s
        at_regex_end = counter.value
        worker.join(60)
        assert not worker.is_alive()
        # The loop count was final when the regex ended: the guest had been interrupted
        # while the GIL was held. (Ticked by a Python thread, it would still have been
        # spinning then: no tick can come while the regex holds the GIL.)
        assert outcome == [wasmtime.TrapCode.INTERRUPT]
        assert counter.value == at_regex_end > before
    finally:
        codec.native_ticker_remove(handle)


# --- (b) one thread per process --------------------------------------------------------


def test_a_hundred_engines_share_one_ticker_thread():
    codec = bind()
    engines = [epoch_engine() for _ in range(100)]
    ticks = [1_000_000 * (1 + i % 7) for i in range(100)]  # 1..7 ms
    _, before, _, _ = codec.native_ticker_stats()
    handles = [codec.native_ticker_add(address(e), t) for e, t in zip(engines, ticks)]
    try:
        threads, registered, _, running = codec.native_ticker_stats()
        assert threads == 1 and running
        assert registered == before + 100
        wait_for(lambda: all(codec._native_ticker_record(h)[0] >= 3 for h in handles))
        assert codec.native_ticker_stats()[0] == 1
        assert ticker_threads() in (1, -1)
    finally:
        for handle in handles:
            codec.native_ticker_remove(handle)
    assert codec.native_ticker_stats()[1] == before
    assert len(set(handles)) == 100


def test_an_idle_ticker_sleeps_without_waking_up():
    if not Path("/proc/self/task").is_dir():
        pytest.skip("reads the thread's context switches from /proc")
    out = run_isolated(
        """
        codec = bind()
        engine = epoch_engine()
        handle = codec.native_ticker_add(address(engine), 1_000_000)
        wait_for(lambda: codec._native_ticker_record(handle)[0] >= 5)
        codec.native_ticker_remove(handle)
        (tid,) = [t for t in os.listdir("/proc/self/task")
                  if open(f"/proc/self/task/{t}/comm").read().strip() == "cclb-epoch"]

        def switches():
            with open(f"/proc/self/task/{tid}/status") as f:
                return [line for line in f if "ctxt_switches" in line]

        time.sleep(0.05)  # it finishes the wait it was in
        first = switches()
        time.sleep(0.5)  # 500 ticks' worth of time
        _, engines, _, running = codec.native_ticker_stats()
        print(first == switches(), engines, running)
        """
    )
    assert out.split() == ["True", "0", "True"]


# --- (c) remove, then free the engine at once --------------------------------------------


def test_an_engine_removed_may_be_freed_at_once():
    out = run_isolated(
        """
        codec = bind()
        keep = epoch_engine()  # keeps the thread busy all along
        busy = codec.native_ticker_add(address(keep), 20_000)
        for i in range(1000):
            engine = epoch_engine()
            handle = codec.native_ticker_add(address(engine), 1_000 + i % 50 * 1_000)
            if i % 10 == 0:
                time.sleep(0.0005)  # let it tick this one a few times
            codec.native_ticker_remove(handle)
            del engine  # wasm_engine_delete: the ticker must never touch it again
        ticks = codec._native_ticker_record(busy)[0]
        codec.native_ticker_remove(busy)
        print(codec.native_ticker_stats()[:2], ticks > 0)
        """
    )
    assert out.split() == ["(1,", "0)", "True"]


# --- (d) fork --------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_forked_child_keeps_ticking_the_engines_it_inherited():
    out = run_isolated(
        """
        codec = bind()
        engine = epoch_engine()
        module = wasmtime.Module(engine, SPIN_WAT)
        handle = codec.native_ticker_add(address(engine), 5_000_000)
        wait_for(lambda: codec._native_ticker_record(handle)[0] >= 2)
        # Fork while another thread holds the ticker's lock: the child must not inherit it held.
        holder = threading.Thread(target=codec._native_ticker_hold, args=(0.3,))
        holder.start()
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:
            try:
                threads, engines, _, running = codec.native_ticker_stats()
                inherited = codec._native_ticker_record(handle)[0]
                wait_for(lambda: codec._native_ticker_record(handle)[0] >= inherited + 3, 20)
                store = wasmtime.Store(engine)
                spin = wasmtime.Instance(store, module, []).exports(store)["spin"]
                store.set_epoch_deadline(5)
                try:
                    spin(store)
                    result = "returned"
                except wasmtime.Trap as trap:
                    result = trap.trap_code.name
                print("child", threads, engines, running, result, codec.native_ticker_stats()[0], flush=True)
                os._exit(0)
            except BaseException as exc:
                print("child failed", repr(exc), flush=True)
                os._exit(1)
        holder.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child hung")
            status = 0
        print("exit", os.waitstatus_to_exitcode(status))
        before = codec._native_ticker_record(handle)[0]
        wait_for(lambda: codec._native_ticker_record(handle)[0] > before)
        print("parent", codec.native_ticker_stats()[0])
        codec.native_ticker_remove(handle)
        """
    )
    # The child restarted its own thread (one started in it) for the engine it inherited,
    # and a guest there was interrupted; the parent kept its thread.
    assert out.splitlines() == ["child 1 1 True INTERRUPT 1", "exit 0", "parent 1"], out


# --- (e) never early -------------------------------------------------------------------


def test_a_stalled_ticker_never_ticks_early_nor_makes_up_missed_ticks():
    codec = bind()
    intervals = (3_000_000, 7_000_000, 20_000_000)
    engines = [epoch_engine() for _ in intervals]
    handles = [codec.native_ticker_add(address(e), t) for e, t in zip(engines, intervals)]
    try:
        wait_for(lambda: all(codec._native_ticker_record(h)[0] >= 3 for h in handles))
        codec._native_ticker_hold(0.25)  # the thread cannot tick for 250 ms
        released = [codec._native_ticker_record(h)[0] for h in handles]
        for handle, tick, count in zip(handles, intervals, released):  # the shortest first
            # 10 more ticks: the stall is still among the last 64 kept.
            wait_for(lambda: codec._native_ticker_record(handle)[0] >= count + 10)
            ticks, times = codec._native_ticker_record(handle)
            assert len(times) == min(ticks, 64)
            gaps = [b - a for a, b in zip(times, times[1:])]
            # Never two ticks of an engine closer than its interval: not before the stall,
            # not after it, and no burst making up the ticks the stall missed.
            assert min(gaps) >= tick, (tick, gaps)
            # The stall is in the record, as one gap at least as long as it.
            assert max(gaps) >= 250_000_000, (tick, gaps)
    finally:
        for handle in handles:
            codec.native_ticker_remove(handle)


# --- interpreter exit ------------------------------------------------------------------


def test_the_ticker_stops_at_exit_and_the_engines_left_registered_are_never_ticked_again():
    out = run_isolated(
        """
        codec = bind()
        engines = [epoch_engine() for _ in range(50)]
        for engine in engines:  # never removed: wasmtime-py frees them at shutdown
            codec.native_ticker_add(address(engine), 1_000)
        wait_for(lambda: codec.native_ticker_stats()[2] > 1000)
        print("running", codec.native_ticker_stats()[1], flush=True)
        """,
        first="""
        import atexit

        def after_the_ticker_stopped():  # registered before cclb_wire's hook: runs after it
            from cclb_wire import _codec
            try:
                _codec.native_ticker_add(address(engines[0]), 1_000_000)
                added = "added"
            except RuntimeError as exc:
                added = str(exc)
            print("at exit", _codec.native_ticker_available(), added, flush=True)

        atexit.register(after_the_ticker_stopped)
        """,
    )
    assert out.splitlines() == [
        "running 50",
        "at exit False the native epoch ticker has stopped: the interpreter is exiting",
    ], out

