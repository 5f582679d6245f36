"""Running cc-lb V1 plugins under wasmtime: admission, slots, calls, limits.

``PluginHost`` registers plugins into slots (``register_filter`` / ``register_shape``
/ ``register_observe``) and returns adapters that behave like the reference host's:
``FilterPlugin.filter`` -> FilterOutput, ``UpstreamDialect.shape`` -> ShapedRequest,
``ObservabilityHook.observe``. Where the reference has holes, this host adds a per-call
deadline (epoch interruption), optional fuel, limits on guest memory, tables and the
wasm stack, each with its own error class, and it checks the output size before reading
anything.

This package is the policy layer, one module per concern:

- ``config``: HostConfig, InstanceStrategy, FailurePolicy and their checks;
- ``engine``: the wasmtime engine and what each call needs of it; ``pool``: the
  instance pool's settings and address space; ``ticker``: the deadline ticker;
  ``stack``: the calling thread's native stack;
- ``admission``: reading, inspecting, probing a module (``wasm_module``: its metadata
  and exports; ``wasm_rewrite``: the memory.grow rewrite; ``modules``: compiling and
  caching it);
- ``host``: PluginHost (slots, swaps, close, fork); ``adapters``: FilterPlugin,
  UpstreamDialect, ObservabilityHook and their failure policies; ``scope``:
  InstanceScope, one instance that a stream's calls share;
- ``faults``: the typed errors of every way a call fails; ``counters``: per-slot stats;
- ``binding``: loading wasmtime and choosing the call path. The per-call machinery
  lives in the extension (``_codec.NativePlugin``: one C call allocates in the guest,
  encodes the request straight into guest memory, calls the hook with the GIL
  released, checks and decodes the answer in place), or in its ctypes twin
  (``ctypes_calls``).

``wasmtime`` is imported only when a host is created.
"""

from __future__ import annotations

from ..host_stats import MemoryPoolStats, SlotStats
from .adapters import FilterPlugin, ObservabilityHook, SseStream, UpstreamDialect
from .admission import PROBE_SAMPLES
from .binding import NATIVE_CALLS_ENV
from .config import FailurePolicy, HostConfig, InstanceStrategy
from .host import PluginHost
from .scope import InstanceScope

__all__ = [
    "FailurePolicy",
    "InstanceStrategy",
    "HostConfig",
    "PluginHost",
    "FilterPlugin",
    "UpstreamDialect",
    "SseStream",
    "InstanceScope",
    "ObservabilityHook",
    "SlotStats",
    "MemoryPoolStats",
    "PROBE_SAMPLES",
    "NATIVE_CALLS_ENV",
]
