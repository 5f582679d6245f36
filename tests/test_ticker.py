"""The pure-Python deadline ticker (the fallback backend's; the extension's native one is
tested in test_native_ticker.py): never early, by construction."""

from __future__ import annotations

import threading
import time


def test_a_stalled_python_ticker_never_ticks_early_nor_makes_up_missed_ticks():
    # The pure-Python backend's ticker (cclb_wire.runtime.ticker._Ticker), stalled in one
    # tick for 25 ticks' time: no two ticks closer than its interval, and no burst after.
    from cclb_wire.runtime.ticker import _Ticker

    tick = 0.01
    times: list = []
    enough = threading.Event()

    class Engine:
        def increment_epoch(self) -> None:
            times.append(time.monotonic())
            if len(times) == 3:
                time.sleep(25 * tick)  # the stall: the ticker thread is stuck here
            if len(times) >= 15:
                enough.set()

    ticker = _Ticker(tick)
    ticker.engines.append(Engine())
    try:
        assert enough.wait(30)
    finally:
        ticker.stop()
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= tick, gaps
    assert max(gaps) >= 25 * tick, gaps  # the stall is in the record
