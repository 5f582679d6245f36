"""The deadline ticker: advances the epoch of every engine with a deadline, so that
wasmtime's epoch interruption ends guest code that runs past it."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List

class _Ticker:
    """Advances the epoch of every engine registered with it, every ``tick`` seconds.

    Hosts with the same tick share one ticker thread; the thread stops when its last
    engine leaves. After ``fork()`` the child starts its own thread (threads do not
    survive a fork), so deadlines hold there too.
    """

    def __init__(self, tick: float):
        self.tick = tick
        self.engines: List[Any] = []
        self._start()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cclb-wire-epoch-{self.tick}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Never early by construction: each tick is due a whole tick after the previous one
        # ended, so a late wake never shortens the next interval and a stall's missed ticks
        # are never made up in a burst. A deadline of ceil(d/tick)+1 ticks (the +1 for a
        # tick that comes at once) may run long under load, never short.
        stop, engines = self._stop, self.engines
        next_tick = time.monotonic() + self.tick
        while True:
            while True:  # Event.wait may wake a little early: wait out the remainder
                left = next_tick - time.monotonic()
                if left <= 0:
                    break
                if stop.wait(left):
                    return
            if stop.is_set():
                return
            for engine in tuple(engines):
                engine.increment_epoch()
            next_tick = time.monotonic() + self.tick

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


_TICKERS: Dict[float, _Ticker] = {}
_TICKERS_LOCK = threading.Lock()


def native_ticker() -> Any:
    """The extension's ticker (a C thread that needs no GIL, so deadlines hold while Python
    code holds it), when it is bound and usable here; else None (the Python ticker)."""
    from . import binding

    native = binding.NATIVE
    if native is None or not native.native_ticker_available():
        return None
    return native


def release_native(native: Any, handle: int, engine: Any) -> None:
    """Take an engine off the native ticker; ``engine`` is passed to outlive the registration."""
    native.native_ticker_remove(handle)


def tick_engine(engine: Any, tick: float) -> None:
    with _TICKERS_LOCK:
        ticker = _TICKERS.get(tick)
        if ticker is None:
            ticker = _TICKERS[tick] = _Ticker(tick)
        ticker.engines.append(engine)


def untick_engine(engine: Any, tick: float) -> None:
    """Called once per host, by close() or when the host is collected (weakref.finalize)."""
    with _TICKERS_LOCK:
        ticker = _TICKERS.get(tick)
        if ticker is None:
            return
        ticker.engines[:] = [e for e in ticker.engines if e is not engine]
        if ticker.engines:
            return
        del _TICKERS[tick]
    ticker.stop()


def no_ticker() -> None:
    """The release of a host without a deadline: it never had a ticker."""


def _after_fork_in_child() -> None:
    # Only the forking thread survives: no ticker runs, and any lock another thread held
    # stays held forever. Start over with fresh ones (before the hosts move their engines).
    global _TICKERS_LOCK
    _TICKERS_LOCK = threading.Lock()
    for ticker in _TICKERS.values():
        ticker._start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
