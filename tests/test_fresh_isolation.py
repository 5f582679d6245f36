"""Nothing carries over between FRESH calls (the README's security claim), with a
REUSE_PER_THREAD control that does see the state.

The guest answers a valid empty FilterResponse the first time it runs in an instance and
an invalid answer (pointer 0) once it finds state a call left behind: a global set, a
byte written far above the pool's kept-resident pages, or memory it grew. Under FRESH,
every call must succeed; under REUSE_PER_THREAD the second call must fail, which shows
the guest really keeps and finds its state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire.runtime import HostConfig, InstanceStrategy, PluginHost

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "hostile"))
import gen_fixtures  # noqa: E402  (the hostile fixtures' WAT toolkit)

FAR = 3 * 1024 * 1024  # far above the kept-resident pages of a pool slot
PAGES = 64  # 4 MiB: FAR lies inside the initial memory

# state kind -> (what a call finds left behind, what it leaves)
STATE = {
    "global": ("(global.get $seen)", "(global.set $seen (i32.const 1))"),
    "far memory": (f"(i32.load8_u (i32.const {FAR}))", f"(i32.store8 (i32.const {FAR}) (i32.const 1))"),
    "grown memory": (f"(i32.gt_u (memory.size) (i32.const {PAGES}))", "(drop (memory.grow (i32.const 1)))"),
}


def guest(kind: str) -> bytes:
    found, leave = STATE[kind]
    body = f"""(if (result i64) {found}
      (then (i64.const 8))  ;; state from an earlier call: an invalid answer (pointer 0)
      (else {leave} {gen_fixtures.EMPTY_FILTER_RESPONSE}))"""
    customs = [("cc_lb.plugin.v1", gen_fixtures.metadata()), ("cc_lb.schema.filter.v1", gen_fixtures.fingerprints()["filter"])]
    text = gen_fixtures.module("stateful", "Answers once per instance.", body, customs=customs, pages=PAGES,
                               extra="  (global $seen (mut i32) (i32.const 0))")
    return wasmtime.wat2wasm(text)


def outcomes(kind: str, strategy: InstanceStrategy, pool_size: int) -> list:
    with PluginHost(HostConfig(instance_strategy=strategy, pool_size=pool_size, probe=False, breaker_failures=0)) as host:
        slot = host.register_filter("s", kind, guest(kind))
        results = []
        for _ in range(4):
            try:
                slot.filter(cw.RequestContext("r", "POST", "/v1/messages"), cw.Principal("p"), [])
                results.append("fresh state")
            except cw.FilterError as exc:
                results.append(type(exc.__cause__).__name__)
        return results


@pytest.mark.parametrize("pool_size", [32, 0], ids=["pooled", "unpooled"])
@pytest.mark.parametrize("kind", sorted(STATE))
def test_nothing_carries_over_between_fresh_calls(kind, pool_size):
    assert outcomes(kind, InstanceStrategy.FRESH, pool_size) == ["fresh state"] * 4


@pytest.mark.parametrize("kind", sorted(STATE))
def test_the_reused_control_does_find_the_state(kind):
    assert outcomes(kind, InstanceStrategy.REUSE_PER_THREAD, 32) == ["fresh state", "PluginOutputError", "fresh state",
                                                                      "PluginOutputError"]
