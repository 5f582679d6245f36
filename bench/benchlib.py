"""What the benchmarks share: timing helpers and a realistic request's headers (they run
from bench/, which is then on sys.path)."""

from __future__ import annotations

import time
from typing import Callable


def seconds_per_call(function: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls


def calls_per_batch(function: Callable[[], object], batch_seconds: float) -> int:
    """How many calls take about ``batch_seconds`` (the first calls double as a warm-up)."""
    calls = 1
    while True:
        elapsed = seconds_per_call(function, calls) * calls
        if elapsed >= batch_seconds / 4 or calls >= 1 << 20:
            return max(1, round(calls * batch_seconds / max(elapsed, 1e-9)))
        calls *= 4


#: The headers of a Claude Code request, as a proxy sees them.
HEADERS = [
    (b"host", b"cc-lb.example.internal:8443"),
    (b"user-agent", b"claude-cli/2.0.14 (external, cli)"),
    (b"content-type", b"application/json"),
    (b"accept", b"application/json"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"),
    (b"x-api-key", b"sk-ant-api03-redacted"),
    (b"x-stainless-lang", b"js"),
    (b"x-stainless-package-version", b"0.55.1"),
    (b"x-stainless-runtime-version", b"v22.11.0"),
    (b"x-app", b"cli"),
    (b"accept-encoding", b"gzip, deflate, br"),
]
