"""Nothing carries over between FRESH calls (the README's security claim), with a
REUSE_PER_THREAD control that does see the state.

The guest answers a valid empty FilterResponse the first time it runs in an instance and
an invalid answer (pointer 0) once it finds state a call left behind: a global set, a
byte written far above the pool's kept-resident pages, memory it grew, a byte of its data
segment overwritten, or more dirty pages than a pool slot keeps resident (the first and the
last of them checked). Under FRESH, every call must succeed, from each memory pool (the
extension's page-resetting one, wasmtime's pooling allocator) and from none; under
REUSE_PER_THREAD the second call must fail, which shows the guest really keeps and finds
its state. Instances opened ahead (``prepare_instance``) are checked the same way: one is
prepared before each call, and each call must still find nothing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire.runtime import NATIVE_CALLS_ENV, HostConfig, InstanceStrategy, PluginHost
from cclb_wire.runtime.pool import MEMORY_POOL_ENV, PAGE_RESET_KEEP_RESIDENT

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "hostile"))
import gen_fixtures  # noqa: E402  (the hostile fixtures' WAT toolkit)

FAR = 3 * 1024 * 1024  # far above the kept-resident pages of a pool slot
PAGES = 64  # 4 MiB: FAR lies inside the initial memory
DATA_AT = 2 * 1024 * 1024  # a data segment byte (42)
#: More dirty pages than a page-resetting pool slot keeps resident: the rest of the memory
#: is given back to the kernel after the scan's last kept page.
MANY_PAGES = PAGE_RESET_KEEP_RESIDENT // 4096 + 64
MANY_FROM = 65536

# state kind -> (what a call finds left behind, what it leaves)
STATE = {
    "global": ("(global.get $seen)", "(global.set $seen (i32.const 1))"),
    "far memory": (f"(i32.load8_u (i32.const {FAR}))", f"(i32.store8 (i32.const {FAR}) (i32.const 1))"),
    "grown memory": (f"(i32.gt_u (memory.size) (i32.const {PAGES}))", "(drop (memory.grow (i32.const 1)))"),
    "data segment": (f"(i32.ne (i32.load8_u (i32.const {DATA_AT})) (i32.const 42))",
                     f"(i32.store8 (i32.const {DATA_AT}) (i32.const 7))"),
    "many dirty pages": (
        f"(i32.or (i32.load8_u (i32.const {MANY_FROM})) (i32.load8_u (i32.const {MANY_FROM + (MANY_PAGES - 1) * 4096})))",
        gen_fixtures.dirty_pages(MANY_FROM, MANY_PAGES),
    ),
}


def guest(kind: str) -> bytes:
    found, leave = STATE[kind]
    body = f"""(if (result i64) {found}
      (then (i64.const 8))  ;; state from an earlier call: an invalid answer (pointer 0)
      (else {leave} {gen_fixtures.EMPTY_FILTER_RESPONSE}))"""
    customs = [("cc_lb.plugin.v1", gen_fixtures.metadata()), ("cc_lb.schema.filter.v1", gen_fixtures.fingerprints()["filter"])]
    extra = (f"  (global $seen (mut i32) (i32.const 0))\n  (global $page (mut i32) (i32.const 0))\n"
             f'  (data (i32.const {DATA_AT}) "\\2a")')
    text = gen_fixtures.module("stateful", "Answers once per instance.", body, customs=customs, pages=PAGES, extra=extra)
    return wasmtime.wat2wasm(text)


#: Where FRESH memories come from: the extension's page-resetting pool where it works (else
#: wasmtime's: the two ids then test the same), wasmtime's pooling allocator, or none.
POOLS = {"pooled": (32, None), "wasmtime pool": (32, "wasmtime"), "unpooled": (0, None)}


#: Whether calls take the extension's path, the one that opens instances ahead.
NATIVE_PATH = cw.BACKEND == "cython" and os.environ.get(NATIVE_CALLS_ENV) != "0"


def outcomes(kind: str, strategy: InstanceStrategy, pool: str = "pooled", prepared: bool = False) -> list:
    pool_size, memory_pool = POOLS[pool]
    with pytest.MonkeyPatch.context() as patch:
        if memory_pool:
            patch.setenv(MEMORY_POOL_ENV, memory_pool)
        else:
            patch.delenv(MEMORY_POOL_ENV, raising=False)
        host = PluginHost(HostConfig(instance_strategy=strategy, pool_size=pool_size, probe=False, breaker_failures=0))
    with host:
        slot = host.register_filter("s", kind, guest(kind))
        results = []
        for _ in range(4):
            if prepared:  # the call takes an instance opened ahead, on the path that has them
                assert slot.prepare_instance() is (NATIVE_PATH and strategy is InstanceStrategy.FRESH)
            try:
                slot.filter(cw.RequestContext("r", "POST", "/v1/messages"), cw.Principal("p"), [])
                results.append("fresh state")
            except cw.FilterError as exc:
                results.append(type(exc.__cause__).__name__)
        return results


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("kind", sorted(STATE))
def test_nothing_carries_over_between_fresh_calls(kind, pool):
    assert outcomes(kind, InstanceStrategy.FRESH, pool) == ["fresh state"] * 4


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("kind", sorted(STATE))
def test_nothing_carries_over_to_an_instance_opened_ahead(kind, pool):
    assert outcomes(kind, InstanceStrategy.FRESH, pool, prepared=True) == ["fresh state"] * 4


@pytest.mark.parametrize("kind", sorted(STATE))
def test_the_reused_control_does_find_the_state(kind):
    assert outcomes(kind, InstanceStrategy.REUSE_PER_THREAD) == ["fresh state", "PluginOutputError", "fresh state",
                                                                      "PluginOutputError"]
