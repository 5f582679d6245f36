"""Benchmark the codec backends side by side, in one process, interleaved.

Usage: python bench/bench_codec.py [--rounds N] [--out DIR] [--quick]

Every contender of a workload is timed in the same round, one after the other,
for many rounds; a contender's figure is the median of its per-round times
(per operation), and every ratio is the median of the per-round ratios, so a
noisy neighbour slows both sides of a ratio alike. Writes DIR/bench.json and
DIR/bench.png (microseconds per operation, per contender).

Workloads (realistic Claude Code proxy traffic):
  encode_filter_request  12 typical headers, a 4 KiB JSON body, 3 claims, 8 candidates
  decode_filter_output   a FilterResponse with 8 results
  decode_shaped_request  a ShapeResponse with 10 headers (also: wire-level decode)
  encode_1mib_body       a FilterRequest with a 1 MiB body, against one copy of the body
  encode_filter_request_1_0      cc-lb 1.0's FilterRequest (the package's sample: headers, a JSON
                                 body, candidates with the 1.0 fields), against the fallback and
                                 against encoding the same request in the 0.2 layout
  encode_transform_sse_request   a TransformSseEventRequest (one content_block_delta event)
  decode_transform_sse_result    a TransformSseEventResult replacing one event by three
  decode_transform_response_result  a TransformResponseResult replacing the JSON body
Comparisons: the pure-Python fallback; msgpack (packb of an equivalent dict built
beforehand, unpackb of the equivalent bytes); the floor of one copy of the bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List

import msgpack
import numpy as np

import cclb_wire
from cclb_wire import _fallback, jsonvalue, schema, wire
from benchlib import HEADERS, calls_per_batch, seconds_per_call

try:
    from cclb_wire import _codec
except ImportError:
    sys.exit("bench: the Cython extension is not built; install the package normally (not a pure build)")



def json_body(size: int) -> bytes:
    message = {"role": "user", "content": [{"type": "text", "text": "Refactor the retry loop in client.py. " * 4}]}
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [],
        "metadata": {"user_id": "user_3f0c_account_9b1e_session_77aa"},
    }
    while len(json.dumps(body)) < size:
        body["messages"].append(message)
    text = json.dumps(body).encode()
    return text[:size] if len(text) > size else text


def host_request(body: bytes):
    ctx = cclb_wire.RequestContext("3149ca30-efe9-448c-9b8b-b33b9225c533", "POST", "/v1/messages", "beta=true", HEADERS, body)
    principal = cclb_wire.Principal(
        "tenant-a", cclb_wire.PrincipalKind.API_KEY, {"scope": "inference", "tier": 2, "teams": ["infra", "ml"]}
    )
    candidates = [
        cclb_wire.UpstreamCandidate(
            uuid.UUID(int=0x5EED0100 + i), f"anthropic-{i}", "anthropic_api_key", 1767225600 + i, cclb_wire.CacheScore(4096 * i)
        )
        for i in range(8)
    ]
    return ctx, principal, candidates


def request_as_dict(ctx, principal, candidates) -> dict:
    """The same request as a plain dict (what a msgpack user would pack)."""
    return {
        "request_id": ctx.request_id,
        "method": ctx.method,
        "path": ctx.path,
        "query": ctx.query,
        "headers": [[name, value] for name, value in ctx.headers if name not in (b"host", b"x-api-key")],
        "body": ctx.body,
        "principal": {"id": principal.id, "kind": "api_key", "claims": [list(c) for c in principal.wire_fields[2]]},
        "candidates": [list(c.wire_fields) for c in candidates],
    }


def filter_response():
    decisions = ["accept", "accept", "accept", "rate-limit", "over-quota", "unhealthy", "reject", "reject"]
    return wire.FilterResponse(
        tuple(
            wire.PerCandidateReason(
                str(uuid.UUID(int=0x5EED0100 + i)), decisions[i], f"predicted {4096 * i} cached tokens; warm prefix {i}"
            )
            for i in range(8)
        )
    )


def shape_response():
    headers = tuple(
        wire.Header(name, value)
        for name, value in [
            ("content-type", b"application/json"),
            ("accept", b"application/json"),
            ("anthropic-version", b"2023-06-01"),
            ("anthropic-beta", b"claude-code-20250219,interleaved-thinking-2025-05-14"),
            ("user-agent", b"claude-cli/2.0.14 (external, cli)"),
            ("x-request-id", b"3149ca30-efe9-448c-9b8b-b33b9225c533"),
            ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("x-stainless-lang", b"js"),
            ("x-app", b"cli"),
            ("accept-encoding", b"gzip, deflate, br"),
        ]
    )
    return wire.ShapeResponse("https://api.anthropic.com/v1/messages?beta=true", "POST", headers, json_body(4096))


def as_plain(value):
    """A wire value as plain dicts/lists (for the msgpack comparison)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {name: as_plain(item) for name, item in zip(value._fields, value)}
    if isinstance(value, tuple):
        return [as_plain(item) for item in value]
    return value


def run_workload(contenders: Dict[str, Callable[[], object]], rounds: int, batch_seconds_target: float) -> Dict[str, List[float]]:
    numbers = {name: calls_per_batch(function, batch_seconds_target) for name, function in contenders.items()}
    samples: Dict[str, List[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        order = list(contenders)
        if round_index % 2:
            order.reverse()  # no contender always goes first
        for name in order:
            samples[name].append(seconds_per_call(contenders[name], numbers[name]))
    return samples


def summarize(samples: Dict[str, List[float]], baseline: str) -> dict:
    base = np.array(samples[baseline])
    out = {}
    for name, values in samples.items():
        times = np.array(values)
        out[name] = {
            "median_us": float(np.median(times) * 1e6),
            "p10_us": float(np.percentile(times, 10) * 1e6),
            "p90_us": float(np.percentile(times, 90) * 1e6),
            # > 1: this contender takes that many times as long as the baseline.
            "ratio_to_baseline": float(np.median(times / base)),
        }
    return out


def sample(name: str):
    """A wire value from the package's samples (what `cclb-wire sample NAME` prints)."""
    from importlib import resources

    text = resources.files("cclb_wire").joinpath("samples", f"{name}.json").read_text(encoding="utf-8")
    return jsonvalue.from_json_value(schema.ROOT_TYPES[name], json.loads(text))


def as_0_2(request_1_0):
    """The same filter request in the 0.2 layout (the fields 0.2 has)."""
    candidates = tuple(wire.UpstreamCandidate(*c[:5]) for c in request_1_0.candidates)
    r = request_1_0
    return wire.FilterRequest(r.request_id, r.method, r.path, r.query, r.headers, r.body, r.principal, candidates)


def contract_1_0_workloads():
    request = sample("FilterRequest10")
    request_0_2 = as_0_2(request)
    sse_request = sample("TransformSseEventRequest")
    sse_result_bytes = _codec.encode(sample("TransformSseEventResult"))
    response_result_bytes = _codec.encode(sample("TransformResponseResult"))
    assert _codec.encode(request) == _fallback.encode(request)
    assert _codec.decode("TransformSseEventResult", sse_result_bytes) == _fallback.decode("TransformSseEventResult", sse_result_bytes)
    return {
        "encode_filter_request_1_0": (
            "cython",
            {
                "cython": lambda: _codec.encode(request),
                "python": lambda: _fallback.encode(request),
                "cython, 0.2 layout": lambda: _codec.encode(request_0_2),
            },
        ),
        "encode_transform_sse_request": (
            "cython",
            {"cython": lambda: _codec.encode(sse_request), "python": lambda: _fallback.encode(sse_request)},
        ),
        "decode_transform_sse_result": (
            "cython",
            {
                "cython": lambda: _codec.decode("TransformSseEventResult", sse_result_bytes),
                "python": lambda: _fallback.decode("TransformSseEventResult", sse_result_bytes),
            },
        ),
        "decode_transform_response_result": (
            "cython",
            {
                "cython": lambda: _codec.decode("TransformResponseResult", response_result_bytes),
                "python": lambda: _fallback.decode("TransformResponseResult", response_result_bytes),
            },
        ),
    }


def build_workloads():
    ctx, principal, candidates = host_request(json_body(4096))
    as_dict = request_as_dict(ctx, principal, candidates)
    response = filter_response()
    response_bytes = _codec.encode(response)
    response_msgpack = msgpack.packb(as_plain(response))
    shaped = shape_response()
    shaped_bytes = _codec.encode(shaped)
    upstream = cclb_wire.AnthropicDirect("https://api.anthropic.com")
    policy = cclb_wire.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN
    shaped_msgpack = msgpack.packb(as_plain(shaped))
    big_ctx, _, _ = host_request(os.urandom(1 << 20))
    big_body = big_ctx.body
    assert _codec.encode_filter_request(ctx, principal, candidates) == _fallback.encode_filter_request(ctx, principal, candidates)
    assert _codec.decode_filter_output(response_bytes) == _fallback.decode_filter_output(response_bytes)
    return {
        "encode_filter_request": (
            "cython",
            {
                "cython": lambda: _codec.encode_filter_request(ctx, principal, candidates),
                "python": lambda: _fallback.encode_filter_request(ctx, principal, candidates),
                "msgpack.packb": lambda: msgpack.packb(as_dict),
            },
        ),
        "decode_filter_output": (
            "cython",
            {
                "cython": lambda: _codec.decode_filter_output(response_bytes),
                "python": lambda: _fallback.decode_filter_output(response_bytes),
                "msgpack.unpackb": lambda: msgpack.unpackb(response_msgpack),
            },
        ),
        "decode_shaped_request": (
            "cython",
            {
                "cython": lambda: _codec.decode_shaped_request(shaped_bytes, upstream, origin_policy=policy),
                "python": lambda: _fallback.decode_shaped_request(shaped_bytes, upstream, origin_policy=policy),
                "msgpack.unpackb": lambda: msgpack.unpackb(shaped_msgpack),
            },
        ),
        "decode_shape_response_wire": (
            "cython",
            {
                "cython": lambda: _codec.decode("ShapeResponse", shaped_bytes),
                "python": lambda: _fallback.decode("ShapeResponse", shaped_bytes),
                "msgpack.unpackb": lambda: msgpack.unpackb(shaped_msgpack),
            },
        ),
        "encode_1mib_body": (
            "cython",
            {
                "cython": lambda: _codec.encode_filter_request(big_ctx, principal, candidates),
                "python": lambda: _fallback.encode_filter_request(big_ctx, principal, candidates),
                "copy floor: bytearray(body)": lambda: bytearray(big_body),
            },
        ),
        **contract_1_0_workloads(),
    }


TARGETS = [
    # (workload, contender, relation to check, limit, description)
    ("encode_filter_request", "python", ">=", 25.0, "fallback / cython >= 25x"),
    ("encode_filter_request", "msgpack.packb", ">=", 1.0, "no slower than msgpack.packb"),
    ("decode_filter_output", "python", ">=", 20.0, "fallback / cython >= 20x"),
    ("decode_filter_output", "msgpack.unpackb", ">=", 1.0, "no slower than msgpack.unpackb"),
    ("encode_1mib_body", "copy floor: bytearray(body)", "<=", 1.5, "cython <= 1.5x one copy of the body"),
    ("encode_filter_request_1_0", "python", ">=", 20.0, "1.0 FilterRequest: fallback / cython >= 20x"),
    ("encode_transform_sse_request", "python", ">=", 20.0, "TransformSseEventRequest: fallback / cython >= 20x"),
    # Wire-level decodes of small answers: a call's fixed cost (~70 ns) dominates both sides.
    ("decode_transform_sse_result", "python", ">=", 10.0, "TransformSseEventResult: fallback / cython >= 10x"),
    ("decode_transform_response_result", "python", ">=", 10.0, "TransformResponseResult: fallback / cython >= 10x"),
]


def check_targets(results: dict) -> List[dict]:
    verdicts = []
    for workload, contender, relation, limit, text in TARGETS:
        ratio = results[workload]["contenders"][contender]["ratio_to_baseline"]
        # ratio = contender time / cython time. For the copy floor we want cython / floor.
        figure = 1.0 / ratio if relation == "<=" else ratio
        ok = figure <= limit if relation == "<=" else figure >= limit
        verdicts.append({"workload": workload, "target": text, "figure": round(figure, 2), "met": bool(ok)})
    return verdicts


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(results)
    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 4.2))
    for axis, workload in zip(axes, workloads):
        contenders = results[workload]["contenders"]
        names = list(contenders)
        medians = [contenders[n]["median_us"] for n in names]
        colors = ["#2a7ab0" if n == "cython" else "#d08c2d" if n == "python" else "#7a7a7a" for n in names]
        bars = axis.bar(range(len(names)), medians, color=colors)
        axis.set_yscale("log")
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels([n.replace(": ", ":\n") for n in names], fontsize=8)
        axis.set_title(workload, fontsize=9)
        axis.set_ylabel("µs per operation (median, log scale)", fontsize=8)
        for bar, value in zip(bars, medians):
            axis.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"cclb_wire {cclb_wire.__version__}: Cython vs pure Python vs alternatives ({platform.machine()}, Python {platform.python_version()})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds per workload (median over these)")
    parser.add_argument("--batch", type=float, default=0.02, help="seconds per contender per round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke: checks the bench runs, not the figures)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batch = 3, 0.002
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, (baseline, contenders) in build_workloads().items():
        samples = run_workload(contenders, args.rounds, args.batch)
        results[name] = {"baseline": baseline, "contenders": summarize(samples, baseline)}
        print(f"\n{name}")
        for contender, stats in results[name]["contenders"].items():
            print(
                f"  {contender:30s} {stats['median_us']:12.3f} µs/op   (p10 {stats['p10_us']:.3f}, p90 {stats['p90_us']:.3f})"
                f"   x{stats['ratio_to_baseline']:.2f} of {baseline}"
            )
    verdicts = check_targets(results)
    print("\ntargets (figures from the same run):")
    for v in verdicts:
        print(f"  {'met ' if v['met'] else 'MISS'} {v['workload']}: {v['target']}: {v['figure']}")
    report = {
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "method": "same process, contenders interleaved per round; medians of per-round times and of per-round ratios",
        "rounds": args.rounds,
        "results": results,
        "targets": verdicts,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out / "bench.png")
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
