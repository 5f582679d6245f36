"""Hostile plugin answers against the host's call path: nothing but the typed errors may come out.

Usage: python fuzz/fuzz_host.py [--seconds N] [--seed S] [--threads T] [--case-file PATH]
       python fuzz/fuzz_host.py --atheris [--seconds N] [-- libFuzzer options...]
       python fuzz/fuzz_host.py --replay 'JSON' | --replay @FILE

One guest, fuzz/guests/hostile_answer.wat, declares filter, shape and observe and is
registered for each, in a FRESH host and a REUSE_PER_THREAD host. A control block in the
request (the RequestContext body; an ErrorEvent message, hex-encoded, for observe) tells
it what to answer: random or mutated FilterResponse/ShapeResponse archives placed in its
memory, also flush against the end of memory (golden vectors, encoded random values,
fuzz_decode's mutations, random bytes), absolute or end-relative pointers and lengths
(0, huge, overflowing, past the end, unaligned), traps, endless loops, memory growth
and refused grows, and a misbehaving cc_lb_alloc or cc_lb_free on the next host call. Everything goes through the public API
(FilterPlugin.filter, UpstreamDialect.shape, ObservabilityHook.observe), so whichever
call path the host has is the one exercised.

Checked on every call:
  * the outcome is a value of the hook's type (FilterOutput, ShapedRequest, None) or
    the hook's error (FilterError, DialectError, ObservabilityError) whose __cause__ is
    a PluginError (or, for filter and shape, the codec's own rejection: a DecodeError
    cause or none), with FilterError.kind "trap" exactly for a PluginTrap;
  * where the answer is predictable it is the predicted one: an answer that lies inside
    the copied payload must decode exactly as cclb_wire's decoder decodes those bytes
    (value, or error class and message); a null, empty, oversized or overflowing answer
    is a PluginOutputError; a trap a PluginTrap (PluginMemoryLimit after a refused grow);
    a spin a PluginTimeout; a misbehaving cc_lb_alloc or cc_lb_free its typed error;
  * no call runs longer than --hang-seconds (the per-call deadline is 0.1 s);
  * every --check-every calls, and at the end on every path, a plain call succeeds with
    the guest's plain answer: the host is not broken by what came before.
A finding prints the calls that lead to it as JSON (for --replay) and exits 1. A crash
leaves the call in flight in --case-file. Stats at the end: calls per path, outcomes.

--atheris runs the same checks under atheris (libFuzzer) with coverage of cclb_wire's
Python code: the case is built from the fuzzer's bytes instead of the seeded generator.
fuzz/asan_host.sh runs this file against an AddressSanitizer build of the extension.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import random
import re
import struct
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # fuzz_decode's generators, when run from anywhere

import cclb_wire as cw  # noqa: E402
from cclb_wire import wire  # noqa: E402
from cclb_wire.runtime import HostConfig, InstanceStrategy, PluginHost  # noqa: E402
from fuzz_decode import load_seeds, mutate, random_value  # noqa: E402

GUEST = HERE / "guests" / "hostile_answer.wat"
VECTORS = HERE.parent / "tests" / "data"

HOOKS = ("filter", "shape", "observe")
STRATEGIES = (InstanceStrategy.FRESH, InstanceStrategy.REUSE_PER_THREAD)
MAGIC_RAW, MAGIC_HEX = b"FUZZCTRL", b"FUZZHEXC"
HEX_PAIRS = re.compile(rb"(?:[0-9a-f]{2})*")  # what the guest decodes after MAGIC_HEX
# The guest's control block (see the .wat): actions, and its cc_lb_alloc / cc_lb_free modes.
REL, ABS, END, PLAIN, TRAP, SPIN, TAIL = range(7)
ALLOC_NULL, ALLOC_MISALIGNED, ALLOC_NEAR_END, ALLOC_FAR, ALLOC_TRAP, ALLOC_GROW = range(1, 7)
FREE_TRAP, FREE_SPIN = 1, 2
UNKNOWN = -1  # what an opaque control block set for the next cc_lb_alloc
REFUSED_GROW = 0x10000

MEMORY_LIMIT = 32 * 1024 * 1024  # small, so refused grows are cheap to reach
DEADLINE_S = 0.1
U32 = 0xFFFFFFFF
UPSTREAM = cw.AnthropicDirect("https://api.anthropic.com")
PRINCIPAL = cw.Principal("fuzz-principal", "api_key", {"tier": "fuzz"})
CANDIDATES = tuple(
    cw.UpstreamCandidate(uuid.UUID(int=i + 1), f"up-{i}", "anthropic_api_key", 1767225600, cw.CacheScore(i * 10))
    for i in range(3)
)
# What the guest answers without a control block (the data at 128 and 512 in the .wat).
SHAPE_ANSWER = wire.ShapeResponse("https://api.anthropic.com/v1/messages", "POST", (wire.Header("x-fuzz", b"1"),), b"ok")
OUTER_ERRORS = {"filter": cw.FilterError, "shape": cw.DialectError, "observe": cw.ObservabilityError}
RESULT_TYPES = {"filter": cw.FilterOutput, "shape": cw.ShapedRequest, "observe": type(None)}


class Finding(Exception):
    """An invariant broke; the message says which."""


# --- the guest ----------------------------------------------------------------------------


def _custom_section(name: str, payload: bytes) -> bytes:
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    body = leb(len(name)) + name.encode() + payload
    return b"\x00" + leb(len(body)) + body


def guest_wasm() -> bytes:
    """The guest module: the .wat assembled, plus its metadata and the three fingerprint
    sections from cclb_wire.FINGERPRINTS (appending custom sections keeps a module valid)."""
    import wasmtime

    wasm = bytes(wasmtime.wat2wasm(GUEST.read_text()))
    if cw.encode(SHAPE_ANSWER) not in wasm:  # the .wat's data segment went stale
        raise SystemExit(f"{GUEST}: the ShapeResponse data segment is not encode(SHAPE_ANSWER)")
    meta = {
        "name": "fuzz-hostile-answer",
        "version": "0.0.1",
        "description": "Answers whatever the fuzzer tells it to (fuzz/fuzz_host.py).",
        "usage": "Fuzzing only; never deploy.",
        "hooks": {
            hook: {"wire_version": cw.WIRE_VERSION, "description": "Hostile on demand.", "usage": "Fuzzing only."}
            for hook in HOOKS
        },
    }
    wasm += _custom_section("cc_lb.plugin.v1", json.dumps(meta).encode())
    for hook in HOOKS:
        wasm += _custom_section(f"cc_lb.schema.{hook}.v{cw.WIRE_VERSION}", bytes(cw.FINGERPRINTS[hook]))
    return wasm


# --- cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile call, as the guest will read its control block out of ``body``."""

    hook: str
    strategy: InstanceStrategy
    body: bytes
    mode: int = 0
    out_ptr: int = 0
    out_len: int = 0
    #: The payload bytes the harness knows the guest copied (the declared length may run
    #: past the body into archive bytes that follow it).
    known: bytes = b""
    #: No control block the harness can read in full: predict nothing.
    opaque: bool = False

    @property
    def action(self) -> int:
        action = self.mode & 15
        return PLAIN if action > TAIL else action

    @property
    def next_alloc(self) -> int:
        return (self.mode >> 4) & 15

    @property
    def free_mode(self) -> int:
        return (self.mode >> 17) & 3

    @classmethod
    def parse(cls, hook: str, strategy: InstanceStrategy, body: bytes) -> Optional["Case"]:
        """What the guest will do with ``body``, or None if it finds no marker (a plain call)."""
        found = [(body.find(m), m) for m in (MAGIC_RAW, MAGIC_HEX) if body.find(m) >= 0]
        if not found:
            return None
        at, magic = min(found)
        block = body[at + 8 :]
        if magic == MAGIC_HEX:
            digits = HEX_PAIRS.match(block).group()  # type: ignore[union-attr]  # matches b"" at least
            complete = len(digits) < len(block) - 1  # a non-digit ends it inside the body
            block = bytes.fromhex(digits.decode())
        else:
            complete = False
        if len(block) < 16:
            # Either the guest ignores it (plain answer) or reads archive bytes after the
            # body to fill it: nothing to predict either way.
            return cls(hook, strategy, body, opaque=True) if not complete else None
        mode, out_ptr, out_len, declared = struct.unpack_from("<4I", block)
        return cls(hook, strategy, body, mode, out_ptr, out_len, block[16 : 16 + declared])


class Gen:
    """Builds cases from an rng: a random.Random, or AtherisRng over the fuzzer's bytes."""

    def __init__(self, rng: Any, seeds: Dict[str, List[bytes]]):
        self.rng = rng
        self.seeds = seeds
        self.all_seeds = [s for group in seeds.values() for s in group]

    def chance(self, percent: float) -> bool:
        # High draws say yes: the fuzzer's exhausted input (zeros) means no misbehaviour.
        return self.rng.randrange(1000) >= 1000 - percent * 10

    def u32(self, extra: Tuple[int, ...] = ()) -> int:
        rng = self.rng
        if rng.randrange(4) == 0:
            return rng.randrange(1 << 32)
        interesting = (
            0, 1, 2, 7, 8, 15, 16, 17, 100, 255, 256, 511, 512, 1023, 1024, 4096, 65535, 65536, 65537,
            MEMORY_LIMIT - 8, MEMORY_LIMIT, MEMORY_LIMIT + 1, 100 * 1024 * 1024, 100 * 1024 * 1024 + 1,
            0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFF8, 0xFFFFFFFE, U32,
        )
        return rng.choice(interesting + extra)

    def filter_response(self) -> bytes:
        """A plausible FilterResponse: candidate ids (some malformed), decisions, reasons."""
        rng = self.rng
        results = []
        for _ in range(rng.choice([0, 1, 2, 3, 8])):
            upstream_id = rng.choice(
                [str(c.upstream_id) for c in CANDIDATES]
                + [str(uuid.UUID(int=rng.randrange(1 << 128))), "{%s}" % uuid.UUID(int=7), "not-a-uuid", ""]
            )
            decision = rng.choice(["accept", "reject", "rate-limited", "QUOTA", "unhealthy", "", "ΔΔ"])
            reason = rng.choice(["", "too busy", "é" * 300, "x" * rng.randrange(0, 600)])
            results.append(wire.PerCandidateReason(upstream_id, decision, reason))
        return cw.encode(wire.FilterResponse(tuple(results)))

    def shape_response(self) -> bytes:
        """A plausible ShapeResponse: URLs on and off the upstream's origin, odd methods and headers."""
        rng = self.rng
        url = rng.choice([
            "https://api.anthropic.com/v1/messages", "https://api.anthropic.com/v1/x?y=1#f", "https://evil.example/steal",
            "http://api.anthropic.com/", "/relative", "", "https://[::1]:99999/", "https://api.anthropic.com:443/%zz",
            "ftp://api.anthropic.com/", "https://api.anthropic.com/" + "a" * rng.randrange(0, 3000),
        ])
        method = rng.choice(["POST", "GET", "", "PO ST", "DELETE", "get", "M" * 40, "\u00e9"])
        names = ["content-type", "host", "connection", "authorization", "x-fuzz", "X-Upper", "bad name", "te", "", "x-\u00e9"]
        headers = tuple(
            wire.Header(rng.choice(names), rng.randbytes(rng.choice([0, 1, 10, 100, 9000])) if rng.randrange(3) == 0 else b"v")
            for _ in range(rng.choice([0, 1, 3, 101]))
        )
        return cw.encode(wire.ShapeResponse(url, method, headers, rng.randbytes(rng.choice([0, 2, 100]))))

    def payload(self, hook: str) -> bytes:
        """Bytes for the guest to answer with: mostly archives of the hook's answer type."""
        rng = self.rng
        own = "ShapeResponse" if hook == "shape" else "FilterResponse"
        roll = rng.randrange(100)
        if roll < 20:
            return self.shape_response() if own == "ShapeResponse" else self.filter_response()
        if roll < 35:
            return cw.encode(random_value(cw.schema.ROOT_TYPES[own], rng))
        if roll < 45 and self.seeds[own]:
            return rng.choice(self.seeds[own])
        if roll < 80:
            base = rng.choice(self.seeds[own]) if self.seeds[own] and rng.randrange(2) else (
                self.shape_response() if own == "ShapeResponse" else self.filter_response()
            )
            return mutate(base, rng, self.all_seeds)
        if roll < 85 and self.all_seeds:
            return rng.choice(self.all_seeds)  # another type's archive
        if roll < 88:
            return bytes(rng.choice([16, 4096, 65536]))
        return rng.randbytes(rng.choice([0, 1, 4, 7, 8, 16, 31, 100, 1000, 65536]))

    def case(self) -> Case:
        rng = self.rng
        hook = rng.choice(HOOKS)
        strategy = rng.choice(STRATEGIES)
        action = rng.choice([REL] * 8 + [TAIL] * 3 + [ABS] * 4 + [END] * 2 + [PLAIN, TRAP, TAIL + 1 + rng.randrange(9)])
        if action == TRAP and self.chance(2):
            action = SPIN  # costs a whole deadline: rare
        mode = action
        if self.chance(15):
            mode |= rng.randrange(1, 16) << 4  # the next cc_lb_alloc (7..15: normal)
        if self.chance(15):
            mode |= rng.choice([1, 16, 64, 255, rng.randrange(256)]) << 8  # grow before answering
        if self.chance(5):
            mode |= REFUSED_GROW
        if self.chance(4):
            mode |= (FREE_SPIN if self.chance(3) else FREE_TRAP) << 17
        if self.chance(3):
            mode |= rng.randrange(1 << 13) << 19  # bits the guest ignores
        answers_payload = action in (REL, TAIL)
        payload = self.payload(hook) if answers_payload else rng.randbytes(rng.choice([0, 8, 64]))
        if answers_payload:
            roll = rng.randrange(100)
            if roll < 70:
                out_ptr, out_len = 0, len(payload)
            elif roll < 85 and payload:
                out_ptr = rng.randrange(len(payload))
                out_len = rng.randrange(len(payload) - out_ptr + 1)
            else:
                out_ptr, out_len = self.u32((len(payload), len(payload) + 1)), self.u32((len(payload), len(payload) + 1))
        else:
            out_ptr, out_len = self.u32(), self.u32()
        declared = len(payload)
        if self.chance(5):
            declared = rng.choice([0, declared // 2, declared + rng.randrange(1, 64), U32])
        block = struct.pack("<4I", mode, out_ptr, out_len, declared) + payload
        # Observe events carry only UTF-8 strings: the block goes there hex-encoded.
        hexed = hook == "observe" or self.chance(10)
        if hexed:
            prefix = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 -") for _ in range(rng.choice([0, 1, 5, 33])))
            body = prefix + MAGIC_HEX + block.hex().encode() + rng.choice([b"", b"-", b"zz", b"0"])
        else:
            prefix = rng.randbytes(rng.choice([0, 1, 3, 8, 15, 40, 4096]))
            body = prefix + MAGIC_RAW + block + rng.randbytes(rng.choice([0, 0, 3, 100]))
        case = Case.parse(hook, strategy, body)
        if case is None or case.body.find(b"FUZZ") != len(prefix):
            return self.case()  # the random prefix held a marker: draw again
        return case


class AtherisRng:
    """The random.Random methods Gen and fuzz_decode use, drawn from the fuzzer's bytes."""

    def __init__(self, fdp: Any):
        self.fdp = fdp

    def randrange(self, start: int, stop: Optional[int] = None) -> int:
        if stop is None:
            start, stop = 0, start
        return self.fdp.ConsumeIntInRange(start, stop - 1) if stop - start > 1 else start

    def choice(self, seq: Any) -> Any:
        return seq[self.randrange(len(seq))]

    def random(self) -> float:
        return self.fdp.ConsumeProbability()

    def randbytes(self, n: int) -> bytes:
        data = self.fdp.ConsumeBytes(n)
        return data + bytes(n - len(data))


# --- expectations -------------------------------------------------------------------------


@dataclass
class Expect:
    """``value``: exactly ("ok", value) or ("error", an exception of the same class and
    text); ``causes``: an error whose __cause__ is one of these classes."""

    why: str
    value: Optional[Tuple[str, Any]] = None
    causes: Tuple[type, ...] = ()
    #: The host reads an answer from guest memory (so in reuse mode it calls cc_lb_free).
    has_output: bool = True


def outcome(function: Any, *args: Any, **kwargs: Any) -> Tuple[str, Any]:
    try:
        return ("ok", function(*args, **kwargs))
    except cw.CclbWireError as exc:
        return ("error", exc)


class Oracle:
    """The plain answers and the decoder's verdicts under one host's settings."""

    def __init__(self, config: HostConfig):
        self.config = config
        self.plain = {
            "filter": cw.FilterOutput((), "", ()),
            "shape": self.decode("shape", cw.encode(SHAPE_ANSWER))[1],
            "observe": None,
        }

    def decode(self, hook: str, data: bytes) -> Tuple[str, Any]:
        config = self.config
        if hook == "filter":
            return outcome(cw.decode_filter_output, data, config.bounds)
        if hook == "shape":
            return outcome(cw.decode_shaped_request, data, UPSTREAM, origin_policy=config.origin_policy, bounds=config.bounds)
        return ("ok", None)

    def predict(self, hook: str, case: Optional[Case], pending_alloc: int) -> Optional[Expect]:
        """What the call must produce, where that is known; None: any typed outcome."""
        if pending_alloc == UNKNOWN:
            return None
        if pending_alloc in (ALLOC_NULL, ALLOC_TRAP):
            return Expect(f"cc_lb_alloc mode {pending_alloc} armed by the previous call", causes=(cw.PluginTrap,))
        if pending_alloc in (ALLOC_MISALIGNED, ALLOC_NEAR_END, ALLOC_FAR):
            return Expect(f"cc_lb_alloc mode {pending_alloc} armed by the previous call", causes=(cw.PluginOutputError,))
        if case is None:
            return Expect("plain call", value=("ok", self.plain[hook]), has_output=hook != "observe")
        if case.opaque:
            return None
        expect = self._answer(hook, case, pending_alloc)
        reuse = case.strategy is InstanceStrategy.REUSE_PER_THREAD
        if expect is not None and expect.value is not None and expect.value[0] == "ok" and expect.has_output and reuse:
            # A reused instance frees the answer after converting it: cc_lb_free misbehaves.
            if case.free_mode == FREE_TRAP:
                return Expect("cc_lb_free traps", causes=trap_causes(case, pending_alloc))
            if case.free_mode == FREE_SPIN:
                return Expect("cc_lb_free spins", causes=(cw.PluginTimeout,))
        if expect is not None and expect.value is None and reuse and case.free_mode == FREE_SPIN:
            return None  # the unknown answer may have been freed: a timeout is possible too
        return expect

    def _answer(self, hook: str, case: Case, pending_alloc: int) -> Optional[Expect]:
        action, ptr, length = case.action, case.out_ptr, case.out_len
        bound = self.config.bounds.output_body_bytes
        bad_output = Expect("bad pointer or length", causes=(cw.PluginOutputError,))
        if action == TRAP:
            return Expect("trap", causes=trap_causes(case, pending_alloc))
        if action == SPIN:
            return Expect("spin", causes=(cw.PluginTimeout,))
        if action == PLAIN:
            return Expect("plain answer", value=("ok", self.plain[hook]), has_output=hook != "observe")
        if action == ABS:
            if ptr == 0 and length == 0:
                return Expect("observe (0, 0)", value=("ok", None), has_output=False) if hook == "observe" else bad_output
            if ptr == 0 or length == 0 or length > bound or ptr + length > MEMORY_LIMIT:
                return bad_output
            return None
        if length == 0:
            return None if hook == "observe" else bad_output  # observe: (0, 0) is possible
        if length > bound:
            return bad_output
        if action == END:
            # ptr = memory size - out_ptr: past the end unless out_ptr >= length
            return bad_output if length > ptr or ptr >= MEMORY_LIMIT else None
        # REL and TAIL: relative to a copy of the payload
        if ptr + length <= len(case.known):
            return Expect("answer inside the payload", value=self.decode(hook, case.known[ptr : ptr + length]))
        return None


def trap_causes(case: Case, pending_alloc: int) -> Tuple[type, ...]:
    """A guest trap is a PluginMemoryLimit when a grow was refused earlier in the call."""
    if case.mode & REFUSED_GROW:
        return (cw.PluginMemoryLimit,)
    grows = (case.mode >> 8) & 255 or pending_alloc == ALLOC_GROW
    if grows and case.strategy is InstanceStrategy.REUSE_PER_THREAD:
        # A reused instance's memory keeps its growth: these grows may reach the limit.
        return (cw.PluginTrap, cw.PluginMemoryLimit)
    return (cw.PluginTrap,)


def check_typed(hook: str, result: Tuple[str, Any]) -> None:
    """The invariant: the hook's value type, or the hook's error with a typed cause."""
    status, value = result
    if status == "ok":
        if not isinstance(value, RESULT_TYPES[hook]):
            raise Finding(f"{hook} returned {type(value).__name__}, not {RESULT_TYPES[hook].__name__}: {value!r}")
        return
    outer = OUTER_ERRORS[hook]
    if not isinstance(value, outer):
        raise Finding(f"{hook} raised {type(value).__name__}, not {outer.__name__}: {value!r}")
    cause = value.__cause__
    codec_rejection = hook != "observe" and (cause is None or isinstance(cause, cw.DecodeError))
    if not isinstance(cause, cw.PluginError) and not codec_rejection:
        raise Finding(f"{hook} raised {value!r} with cause {cause!r}: not a PluginError")
    if hook == "filter" and value.kind != ("trap" if isinstance(cause, cw.PluginTrap) else "runtime"):
        raise Finding(f"FilterError kind {value.kind!r} for cause {cause!r}")


def check_expected(result: Tuple[str, Any], expect: Optional[Expect]) -> None:
    if expect is None:
        return
    status, value = result
    if expect.value is not None:
        want_status, want = expect.value
        if want_status == "ok":
            same = status == "ok" and value == want
        else:
            same = status == "error" and type(value) is type(want) and str(value) == str(want)
        if not same:
            raise Finding(f"{expect.why}: expected {want_status} {want!r}, got {status} {value!r}")
    elif status != "error" or not isinstance(value.__cause__, expect.causes):
        names = "/".join(c.__name__ for c in expect.causes)
        raise Finding(f"{expect.why}: expected an error caused by {names}, got {status} {value!r}"
                      + (f" caused by {value.__cause__!r}" if status == "error" else ""))


def label(result: Tuple[str, Any]) -> str:
    status, value = result
    if status == "ok":
        return "ok"
    cause = value.__cause__
    text = f"{type(value).__name__}<-{type(cause).__name__ if cause is not None else 'None'}"
    if isinstance(cause, cw.PluginError) and cause.phase:
        text += f"[{cause.phase}]"
    if isinstance(cause, cw.PluginTrap):
        text += f"({cause.trap_code})"
    return text


# --- running ----------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: collections.Counter = collections.Counter()
        self.outcomes: collections.Counter = collections.Counter()
        self.checks: collections.Counter = collections.Counter()

    def add(self, path: str, outcome_label: str, check: str) -> None:
        with self.lock:
            self.paths[path] += 1
            self.outcomes[outcome_label] += 1
            self.checks[check] += 1

    def report(self, elapsed: float, out: Any = sys.stdout) -> None:
        total = sum(self.paths.values())
        print(f"fuzz_host: {total} calls in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f}/s)", file=out)
        print("calls per path:", file=out)
        for path, count in sorted(self.paths.items()):
            print(f"  {path:28} {count:9}", file=out)
        print("outcomes:", file=out)
        for name, count in self.outcomes.most_common():
            print(f"  {name:60} {count:9}", file=out)
        print("checks: " + ", ".join(f"{name} {count}" for name, count in sorted(self.checks.items())), file=out, flush=True)


class Hosts:
    """A FRESH and a REUSE_PER_THREAD host, the guest registered for each hook in both."""

    def __init__(self, wasm: bytes):
        # Reuse mode also checks the stricter origin policy.
        policies = {
            InstanceStrategy.FRESH: cw.ShapeOriginPolicy.UNRESTRICTED,
            InstanceStrategy.REUSE_PER_THREAD: cw.ShapeOriginPolicy.SELECTED_UPSTREAM_ORIGIN,
        }
        configs = {
            # No breaker: every answer must reach the host's checks (the oracle judges each one).
            strategy: HostConfig(
                instance_strategy=strategy, origin_policy=policy, deadline_s=DEADLINE_S, memory_limit_bytes=MEMORY_LIMIT,
                breaker_failures=0,
            )
            for strategy, policy in policies.items()
        }
        self.hosts = {strategy: PluginHost(config) for strategy, config in configs.items()}
        self.oracles = {strategy: Oracle(config) for strategy, config in configs.items()}
        self.adapters: Dict[Tuple[InstanceStrategy, str], Any] = {}
        for strategy, host in self.hosts.items():
            self.adapters[strategy, "filter"] = host.register_filter("fuzz", "hostile-answer", wasm)
            self.adapters[strategy, "shape"] = host.register_shape("fuzz", "hostile-answer", wasm)
            self.adapters[strategy, "observe"] = host.register_observe("fuzz", "hostile-answer", wasm)

    def call(self, strategy: InstanceStrategy, hook: str, body: bytes) -> Tuple[str, Any]:
        adapter = self.adapters[strategy, hook]
        try:
            if hook == "filter":
                ctx = cw.RequestContext("fuzz-req", "POST", "/v1/messages", None, [("content-type", "application/json")], body)
                return ("ok", adapter.filter(ctx, PRINCIPAL, CANDIDATES))
            if hook == "shape":
                ctx = cw.RequestContext("fuzz-req", "POST", "/v1/messages", "q=1", [("x-fuzz", "1")], body)
                return ("ok", adapter.shape(ctx, UPSTREAM, PRINCIPAL))
            return ("ok", adapter.observe(cw.ErrorEvent("fuzz", body.decode("ascii"), "fuzz_host")))
        except Exception as exc:  # judged by check_typed: anything may come out here
            return ("error", exc)

    def close(self) -> None:
        for host in self.hosts.values():
            host.close(timeout=30)


PLAIN_BODY = b'{"model":"claude-3-haiku-20240307","messages":[]}'


class Worker:
    """One thread's calls: per adapter, what the reused instance has been told to do next
    and the calls since it was created (the reproducer of a finding)."""

    HISTORY = 64

    def __init__(self, hosts: Hosts, stats: Stats, case_file: Optional[str]):
        self.hosts = hosts
        self.stats = stats
        self.pending: Dict[Tuple[InstanceStrategy, str], int] = collections.defaultdict(int)
        self.history: Dict[Tuple[InstanceStrategy, str], List[dict]] = collections.defaultdict(list)
        self.case_fd = os.open(case_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if case_file else None
        #: (monotonic start, steps) of the call in flight, for the watchdog.
        self.in_flight: Optional[Tuple[float, List[dict]]] = None
        self.calls = 0

    def step(self, strategy: InstanceStrategy, hook: str, body: bytes) -> Tuple[str, Any]:
        key = (strategy, hook)
        case = Case.parse(hook, strategy, body)
        reuse = strategy is InstanceStrategy.REUSE_PER_THREAD
        history = self.history[key]
        if not reuse:
            history.clear()
        history.append({"strategy": strategy.value, "hook": hook, "body": body.hex()})
        del history[: -self.HISTORY]
        if self.case_fd is not None:
            record = json.dumps(history[-2:]).encode() + b"\n"
            os.pwrite(self.case_fd, record, 0)
            os.ftruncate(self.case_fd, len(record))
        oracle = self.hosts.oracles[strategy]
        pending = self.pending[key] if reuse else 0
        self.in_flight = (time.monotonic(), history)
        result = self.hosts.call(strategy, hook, body)
        elapsed = time.monotonic() - self.in_flight[0]
        self.in_flight = None
        expect = oracle.predict(hook, case, pending)
        check = "plain" if case is None else "opaque" if case.opaque else (
            "unpredicted" if expect is None else "exact" if expect.value is not None else "cause"
        )
        try:
            check_typed(hook, result)
            check_expected(result, expect)
        except Finding as finding:
            report_finding(f"{finding} (the call took {elapsed * 1000:.1f} ms)", history, result)
            raise
        self.calls += 1
        self.stats.add(f"{strategy.value}/{hook}", label(result), check)
        if reuse:
            if result[0] == "ok":
                # The guest's hook ran: cc_lb_alloc's mode for the next call is what it set.
                self.pending[key] = 0 if case is None else UNKNOWN if case.opaque else case.next_alloc
            else:
                self.pending[key] = 0  # the instance is discarded after any failure
                history.clear()
        return result

    def plain_call_succeeds(self, strategy: InstanceStrategy, hook: str) -> None:
        """The health check: after a call armed a misbehaving cc_lb_alloc, one call fails (as
        predicted); then a plain call must give the plain answer."""
        if self.pending[strategy, hook] in (UNKNOWN, ALLOC_NULL, ALLOC_MISALIGNED, ALLOC_NEAR_END, ALLOC_FAR, ALLOC_TRAP):
            self.step(strategy, hook, PLAIN_BODY)
        self.step(strategy, hook, PLAIN_BODY)

    def fuzz_one(self, case: Case, check_every: int) -> None:
        self.step(case.strategy, case.hook, case.body)
        if check_every and self.calls % check_every == 0:
            self.plain_call_succeeds(case.strategy, case.hook)

    def check_all_paths(self) -> None:
        for strategy in STRATEGIES:
            for hook in HOOKS:
                self.plain_call_succeeds(strategy, hook)


_REPORT_LOCK = threading.Lock()


def report_finding(message: str, steps: List[dict], result: Optional[Tuple[str, Any]]) -> None:
    with _REPORT_LOCK:
        print(f"\nFINDING: {message}", flush=True)
        if result is not None and result[0] == "error":
            import traceback

            traceback.print_exception(result[1], file=sys.stdout)
        text = json.dumps(steps)
        if len(text) > 4000:
            path = os.path.join(tempfile.gettempdir(), f"fuzz_host_finding_{os.getpid()}.json")
            Path(path).write_text(text)
            print(f"reproducer ({len(steps)} call(s)): {path}\n  python fuzz/fuzz_host.py --replay @{path}", flush=True)
        else:
            print(f"reproducer ({len(steps)} call(s)): {text}", flush=True)
            print(f"  python fuzz/fuzz_host.py --replay '{text}'", flush=True)


def watchdog(workers: List[Worker], hang_seconds: float) -> None:
    """A call that outlives its deadline by far is a finding. Both call paths release the
    GIL while the guest runs, so this thread gets to look."""
    while True:
        time.sleep(min(1.0, hang_seconds / 4))
        now = time.monotonic()
        for worker in workers:
            flight = worker.in_flight
            if flight is not None and now - flight[0] > hang_seconds:
                report_finding(f"a call has run for {now - flight[0]:.1f} s (deadline {DEADLINE_S} s)", list(flight[1]), None)
                faulthandler.dump_traceback(all_threads=True)
                os._exit(1)


# --- modes ------------------------------------------------------------------------------------


def run_random(args: argparse.Namespace, hosts: Hosts, seeds: Dict[str, List[bytes]]) -> Stats:
    stats = Stats()
    workers = []
    for index in range(args.threads):
        case_file = args.case_file if args.threads == 1 else f"{args.case_file}.{index}"
        workers.append(Worker(hosts, stats, case_file))
    threading.Thread(target=watchdog, args=(workers, args.hang_seconds), daemon=True).start()
    failed = threading.Event()
    deadline = time.monotonic() + args.seconds

    def loop(index: int) -> None:
        worker = workers[index]
        gen = Gen(random.Random(args.seed * 1000 + index), seeds)
        try:
            while time.monotonic() < deadline and not failed.is_set():
                worker.fuzz_one(gen.case(), args.check_every)
            worker.check_all_paths()
        except Finding:
            failed.set()
        except BaseException:
            failed.set()
            raise

    threads = [threading.Thread(target=loop, args=(i,), name=f"fuzz-{i}") for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed.is_set():
        raise SystemExit(1)
    return stats


def instrument_cclb_wire(atheris: Any) -> None:
    """Coverage of cclb_wire's Python code only (instrument_all() also traces the fuzzer,
    the standard library and wasmtime's bindings: far slower). In place: every reference
    to a function sees its instrumented code."""
    import types

    for name, module in list(sys.modules.items()):
        if name != "cclb_wire" and not name.startswith("cclb_wire."):
            continue
        owners = [module] + [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == name]
        for owner in owners:
            for value in list(vars(owner).values()):
                value = getattr(value, "__func__", value)  # staticmethod / classmethod
                if isinstance(value, types.FunctionType) and value.__module__ == name:
                    atheris.instrument_func(value)


def run_atheris(args: argparse.Namespace, hosts: Hosts, seeds: Dict[str, List[bytes]]) -> None:
    import atheris

    stats = Stats()
    worker = Worker(hosts, stats, args.case_file)
    threading.Thread(target=watchdog, args=([worker], args.hang_seconds), daemon=True).start()
    start = 0.0

    def one_input(data: bytes) -> None:
        nonlocal start
        start = start or time.monotonic()  # instrumenting everything takes a while: not counted
        if time.monotonic() - start > args.seconds:
            # libFuzzer's exit skips Python's: stop here, with the stats.
            worker.check_all_paths()
            stats.report(time.monotonic() - start)
            os._exit(0)
        try:
            worker.fuzz_one(Gen(AtherisRng(atheris.FuzzedDataProvider(data)), seeds).case(), args.check_every)
        except Finding:
            os._exit(1)

    instrument_cclb_wire(atheris)
    atheris.Setup([sys.argv[0], f"-max_total_time={int(args.seconds) + 600}", *args.libfuzzer], one_input)
    atheris.Fuzz()


def replay(args: argparse.Namespace, hosts: Hosts) -> int:
    text = Path(args.replay[1:]).read_text() if args.replay.startswith("@") else args.replay
    worker = Worker(hosts, Stats(), None)
    for step in json.loads(text):
        strategy = InstanceStrategy(step["strategy"])
        try:
            result = worker.step(strategy, step["hook"], bytes.fromhex(step["body"]))
        except Finding:
            return 1
        print(f"{strategy.value}/{step['hook']}: {label(result)}: {result[1]!r}"[:400])
    worker.check_all_paths()
    print("replay: no finding")
    return 0


def call_path() -> str:
    """Which call machinery the hosts use (informational: reads the runtime's internals)."""
    from cclb_wire.runtime import binding

    if binding.NATIVE is not None:
        return "native (the extension)"
    return f"ctypes ({binding.NATIVE_REASON})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="callers sharing the two hosts")
    parser.add_argument("--check-every", type=int, default=16, help="a plain call after every N calls (0: off)")
    parser.add_argument("--hang-seconds", type=float, default=10.0)
    parser.add_argument("--case-file", default=os.path.join(tempfile.gettempdir(), "fuzz_host_case.json"),
                        help="the call in flight (and the one before it), rewritten before every call")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided, with atheris")
    parser.add_argument("--replay", help="JSON list of calls from a finding, or @FILE")
    parser.add_argument("libfuzzer", nargs="*", help="after --: libFuzzer options (--atheris)")
    args = parser.parse_args(argv)
    # Before wasmtime installs its signal handlers, so that they chain to this one: a
    # crash outside guest code then prints the Python stacks.
    faulthandler.enable()
    seeds = load_seeds(VECTORS)
    hosts = Hosts(guest_wasm())
    if args.replay:
        return replay(args, hosts)
    print(f"fuzz_host: seed {args.seed}, {args.threads} thread(s), {args.seconds:g} s, backend {cw.BACKEND}, "
          f"call path {call_path()}; call in flight: {args.case_file}", flush=True)
    start = time.monotonic()
    if args.atheris:
        run_atheris(args, hosts, seeds)  # does not return
    stats = run_random(args, hosts, seeds)
    hosts.close()
    stats.report(time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
