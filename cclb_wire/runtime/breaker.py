"""A per-slot circuit breaker: after ``HostConfig.breaker_failures`` consecutive plugin
failures the slot fails fast (``PluginCircuitOpen``, under its failure policy) for
``breaker_cooldown_s``; then one call probes the plugin: a success closes the circuit, a
failure opens it again. A slot that loops until its deadline would otherwise stall every
caller for one deadline each; with the breaker, a run of failures costs at most
``breaker_failures`` deadlines before calls fail in microseconds.

Only the plugin's failures count (``PluginError``): a caller's bad argument is not the
plugin's fault and leaves the breaker as it was."""

from __future__ import annotations

import threading
import time

from ..errors import PluginCircuitOpen


class Breaker:
    """One slot's breaker. Cheap when closed: one attribute read before a call, one
    after a success that follows failures."""

    __slots__ = ("threshold", "cooldown_s", "failures", "open_until", "probing", "trips", "_lock", "_slot")

    def __init__(self, slot: str, threshold: int, cooldown_s: float):
        self._slot = slot
        self.threshold = threshold  # 0: never opens
        self.cooldown_s = cooldown_s
        self.failures = 0  # consecutive
        self.open_until = 0.0  # monotonic seconds; 0.0: closed
        self.probing = False
        self.trips = 0
        self._lock = threading.Lock()

    def before_call(self, plugin: str, hook: str) -> None:
        """Raise PluginCircuitOpen while open; past the cool-down, let one call probe."""
        if not self.open_until:
            return
        with self._lock:
            now = time.monotonic()
            if now < self.open_until or self.probing:
                left = max(0.0, self.open_until - now)
                raise PluginCircuitOpen(
                    f"the slot's circuit is open after {self.threshold} consecutive failures"
                    + (f"; a probe call is running" if self.probing else f"; it lets a call through in {left:.2f} s"),
                    plugin=plugin, hook=hook,
                )
            self.probing = True  # this call is the probe

    def succeeded(self) -> None:
        if self.failures or self.open_until:
            with self._lock:
                self.failures = 0
                self.open_until = 0.0
                self.probing = False

    def released(self) -> None:
        """The call ended without a verdict on the plugin (a caller's bad argument, a full
        pool): a probe it was lets the next call probe instead of holding the circuit open."""
        if self.probing:
            with self._lock:
                self.probing = False

    def failed(self) -> None:
        if not self.threshold:
            return
        with self._lock:
            self.failures += 1
            if self.probing or (not self.open_until and self.failures >= self.threshold):
                self.open_until = time.monotonic() + self.cooldown_s
                self.probing = False
                self.trips += 1
