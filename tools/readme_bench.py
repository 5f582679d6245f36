"""The README's plugin-host figures, generated from one bench_host.json.

    python bench/bench_host.py --out bench/results            # a run (a quiet machine)
    python tools/readme_bench.py --take bench/results/bench_host.json   # keep it, minus raw samples
    python tools/readme_bench.py --update                       # rewrite the README block

The block sits between the README's ``<!-- bench_host:begin -->`` and
``<!-- bench_host:end -->`` lines; tests/test_readme_figures.py checks it equals
``render()`` of the kept run (bench/reference/bench_host.json), so every figure and ratio
there comes from that one run. Ratios are the bench's own: medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "bench" / "reference" / "bench_host.json"
README = REPO / "README.md"
BEGIN, END = "<!-- bench_host:begin -->", "<!-- bench_host:end -->"


def _us(results: Dict[str, Any], name: str) -> str:
    value = results[name]["median"]
    return f"{value:.1f} µs" if value < 100 else f"{value:.0f} µs"


def _pool(data: Dict[str, Any]) -> str:
    pool = data["settings"].get("fresh_memory_pool")
    return {"page-resetting": ", page-resetting pool", "wasmtime": ", wasmtime's pool"}.get(pool, " from the pool")


def render(data: Dict[str, Any]) -> str:
    r, ratio, m = data["results"], data["ratios"], data["machine"]
    rounds = data["settings"]["rounds"]
    lines = [
        BEGIN,
        f"Medians of {rounds} rounds on a shared {m['cores']}-core {m['cpu']} machine (Python {m['python']}, "
        f"wasmtime {m['wasmtime']}, {m['cclb_wire']}), from `bench/reference/bench_host.json`. Every ratio is the "
        "median of the per-round ratios of the two contenders (so it is not always the ratio of the medians):",
        "",
        "| call | constant guest | cache-aware guest |",
        "|---|---|---|",
        f"| `encode_filter_request` + `decode_filter_output` alone | {_us(r, 'codec alone')} | |",
        f"| ours, `REUSE_PER_THREAD` | {_us(r, 'ours/reuse [constant]')} "
        f"({ratio['ours/reuse / codec alone [constant]']:.2f}x the codec alone) | {_us(r, 'ours/reuse [cache-aware]')} |",
        f"| ours, `FRESH` (default){_pool(data)} | {_us(r, 'ours/fresh [constant]')} "
        f"({ratio['ours/fresh / ours/reuse [constant]']:.2f}x reuse) | {_us(r, 'ours/fresh [cache-aware]')} "
        f"({ratio['ours/fresh / ours/reuse [cache-aware]']:.2f}x reuse) |",
        f"| wasmtime-py's public API, instance reused | {_us(r, 'wasmtime-py/reuse [constant]')} "
        f"({ratio['wasmtime-py/reuse / ours/reuse [constant]']:.1f}x ours) | {_us(r, 'wasmtime-py/reuse [cache-aware]')} "
        f"({ratio['wasmtime-py/reuse / ours/reuse [cache-aware]']:.1f}x) |",
        f"| wasmtime-py's public API, new Store + Instance | {_us(r, 'wasmtime-py/fresh [constant]')} "
        f"({ratio['wasmtime-py/fresh / ours/fresh [constant]']:.1f}x ours) | {_us(r, 'wasmtime-py/fresh [cache-aware]')} "
        f"({ratio['wasmtime-py/fresh / ours/fresh [cache-aware]']:.1f}x) |",
    ]
    if "extism [constant]" in r:
        lines.append(f"| extism's Python SDK, same byte counts | {_us(r, 'extism [constant]')} "
                     f"({ratio['extism / ours/reuse [constant]']:.1f}x ours, reuse) | |")
    lines += [""]
    if "ours/fresh [rust-layout]" in r:
        before = _us(r, "ours/fresh, wasmtime's pool [rust-layout]")
        speedup = ratio["wasmtime's pool / page-resetting pool, fresh [rust-layout]"]
        constant = ratio["wasmtime's pool / page-resetting pool, fresh [constant]"]
        lines.append(
            f"- A guest laid out as rustc lays out cc-lb's plugins (the cache-aware filter built with a 1 MiB "
            f"stack first, 17 pages: `guests/build.py`'s `build_rust_layout`): {_us(r, 'ours/reuse [rust-layout]')} "
            f"reused, {_us(r, 'ours/fresh [rust-layout]')} fresh ({ratio['ours/fresh / ours/reuse [rust-layout]']:.2f}x "
            f"reuse). From wasmtime's pooling allocator its fresh call costs {before} ({speedup:.2f}x the "
            f"page-resetting pool; constant guest: {constant:.2f}x)."
        )
    lines += [
        f"- An observe call with a `Chunk` event: {_us(r, 'observe Chunk [reuse]')} (reuse), "
        f"{_us(r, 'observe Chunk [fresh]')} (fresh).",
        f"- cc-lb 1.0: one streamed event through `transform_sse_event` (`SseStream.events`): "
        f"{_us(r, 'sse event [reuse]')} (reuse), {_us(r, 'sse event [fresh]')} (fresh, "
        f"{ratio['sse event fresh / observe Chunk fresh']:.2f}x a fresh observe `Chunk` call).",
        f"- A filter call with a 1 MiB body: {_us(r, '1 MiB filter [constant, reuse]')}, "
        f"{ratio['1 MiB filter / 1 MiB copy']:.2f}x one copy of the body ({_us(r, '1 MiB copy')}). The body is "
        "copied once, straight into guest memory; the rest is the call's fixed cost.",
        f"- Threads, each with its own instance: a guest that works ~{data['settings']['spin_call_ms']:.1f} ms per call "
        f"serves {ratio['throughput x2 / x1 [spin]']:.2f}x the calls on 2 threads, since guest code runs without the "
        f"GIL. On the cache-aware guest, whose calls are mostly codec work, 2 threads serve "
        f"{ratio['throughput x2 / x1 [cache-aware]']:.2f}x of 1 thread and 4 threads "
        f"{ratio['throughput x4 / x1 [cache-aware]']:.2f}x: encoding, decoding and building the answer's Python "
        "objects hold the GIL.",
    ]
    missed = [t for t in data["targets"] if t["verdict"] == "FAIL"]
    skipped = [t["target"] for t in data["targets"] if t["verdict"] not in ("PASS", "FAIL")]
    lines.append("- The bench's targets: " + (
        "all met in this run." if not missed else
        "missed in this run: " + "; ".join(f"{t['target']} (measured {t['measured']:.2f}{t['unit']})"
                                           for t in missed) + "."
    ) + (" Not measured: " + "; ".join(skipped) + "." if skipped else ""))
    lines.append(END)
    return "\n".join(lines)


def readme_block(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--take", type=Path, help="keep this bench_host.json (without its raw samples) as the reference")
    parser.add_argument("--update", action="store_true", help="rewrite the README's block from the reference")
    args = parser.parse_args(argv)
    if args.take:
        data = json.loads(args.take.read_text())
        data.pop("samples", None)
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    data = json.loads(REFERENCE.read_text())
    if args.update:
        text = README.read_text(encoding="utf-8")
        README.write_text(text.replace(readme_block(text), render(data)), encoding="utf-8")
    else:
        sys.stdout.write(render(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
