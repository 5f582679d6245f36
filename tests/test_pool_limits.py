"""The instance pool's limits: what it reserves, and which failures mean that it is full.

wasmtime's C API aborts the process when the pool's reservation fails, so the host
reserves the same address space first and raises PluginResourceLimit instead; the
rlimit tests run in a subprocess with a timeout, since a regression is a SIGABRT. A
failure is PluginPoolSaturated only when the pool is really full: a module wasmtime's
pooling allocator can never hold (externref needs a GC heap, and the pool has none; an
instance larger than its 1 MiB bound) is refused at admission with a reason an operator
can act on, instead of "retry later" for ever. The extension's page-resetting pool
(pool.py) allocates instances on demand: it runs the large instance, and admission refuses
the externref module the same way (its GC heap would take a second memory slot).
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire.runtime import HostConfig, InstanceStrategy, PluginHost
from cclb_wire.runtime.pool import MEMORY_POOL_ENV, page_reset_pool

from test_runtime_hardening import CTX, PRINCIPAL, fixture, run_isolated

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "fixtures" / "hostile"))
import gen_fixtures  # noqa: E402  (the hostile fixtures' WAT toolkit, over tools/watlib.py)

MIB = 1024 * 1024
KIB = 1024
PAGE = mmap.PAGESIZE

#: Issue 14, part 2, item 1: 262,144 one-element tables, each of which wasmtime rounds up
#: to a whole page (1 GiB), where the old pre-check counted 8 bytes each (2 MiB).
ISSUE_CONFIG = dict(pool_size=4096, max_tables=64, table_elements_limit=1, memory_limit_bytes=64 * KIB)
#: What the pre-check reserved before the fix: memories with their 64 KiB guards, 8 bytes
#: per table element, and a flat 64 MiB for everything else.
OLD_PRECHECK = 4096 * (64 * KIB + 64 * KIB) + 4096 * 64 * 1 * 8 + 64 * MIB
#: What wasmtime maps for ISSUE_CONFIG (memory_pool.rs, table_pool.rs): a slot per memory
#: (limit + 64 KiB guard) after one more guard, and a page per one-element table.
ISSUE_MAPPINGS = 64 * KIB + 4096 * (64 * KIB + 64 * KIB) + 4096 * 64 * PAGE


@pytest.fixture
def wasmtime_pool(monkeypatch):
    """FRESH instances from wasmtime's pooling allocator (hosts made in the test)."""
    monkeypatch.setenv(MEMORY_POOL_ENV, "wasmtime")


page_reset_serves = pytest.mark.skipif(
    page_reset_pool() is None, reason="the page-resetting pool does not serve here (pure backend, or no PAGEMAP_SCAN)"
)


def _under_address_space_limit(config: dict, headroom: int, then: str = "") -> str:
    """In a child: RLIMIT_AS = the child's VmSize + ``headroom``, then PluginHost(config)."""
    return run_isolated(
        f"""
        import resource
        def vm_size():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + {headroom}, resource.RLIM_INFINITY))
        try:
            host = PluginHost(HostConfig(**{config!r}))
        except cw.PluginResourceLimit as exc:
            print("PluginResourceLimit", "pool_size" in str(exc), "tables" in str(exc))
        else:
            print("created")
            {textwrap.indent(textwrap.dedent(then), " " * 12).strip()}
        """,
        timeout=120,
    )


def test_the_issue_pool_under_ulimit_is_a_resource_limit_not_an_abort(wasmtime_pool):
    # The old pre-check passed (578 MiB fit), then wasmtime needed 1.5 GiB and aborted.
    assert ISSUE_MAPPINGS > OLD_PRECHECK + 512 * MIB  # the premise: the old check was wrong by that much
    out = _under_address_space_limit(ISSUE_CONFIG, OLD_PRECHECK + 512 * MIB)
    assert out.split() == ["PluginResourceLimit", "True", "True"]


def test_the_issue_pool_is_created_when_its_real_reservation_fits(wasmtime_pool):
    out = _under_address_space_limit(
        ISSUE_CONFIG,
        ISSUE_MAPPINGS + 512 * MIB,
        then="""
        adapter = host.register_filter("s", "ok", fixture("valid_minimal"))
        print("kept", len(adapter.filter(CTX, PRINCIPAL, []).kept_upstream_ids))
        host.close()
        """,
    )
    assert out.split() == ["created", "kept", "0"]


#: 64 memories of 64 MiB: the page-resetting pool's slab is 4 GiB (and it maps no tables).
SLAB_CONFIG = dict(pool_size=64, memory_limit_bytes=64 * MIB, max_tables=1, table_elements_limit=1)


@page_reset_serves
@pytest.mark.parametrize("headroom, expected", [(1024 * MIB, ["PluginResourceLimit", "True", "True"]),
                                                (4096 * MIB + 512 * MIB, ["created", "kept", "0"])],
                         ids=["short", "fits"])
def test_the_page_resetting_pool_under_ulimit(headroom, expected):
    out = _under_address_space_limit(
        SLAB_CONFIG, headroom,
        then="""
        adapter = host.register_filter("s", "ok", fixture("valid_minimal"))
        print("kept", len(adapter.filter(CTX, PRINCIPAL, []).kept_upstream_ids))
        host.close()
        """,
    )
    assert out.split() == expected


_MEASURE = r"""
import json, sys
from cclb_wire.runtime import binding
from cclb_wire.runtime.engine import engine_config
from cclb_wire.runtime.pool import pool_reservation
def vm_size():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
config = HostConfig(**json.loads(sys.argv[1]))
wt = binding.load_wasmtime()
before = vm_size()
settings = engine_config(wt, config)  # the page-resetting pool maps its slab here
engine = wt.wasmtime.Engine(settings)  # wasmtime's pool maps here
grown = vm_size() - before
reserved = pool_reservation(config)
print(json.dumps({"grown": grown, "mapped": reserved.memories + reserved.tables, "total": reserved.total}))
"""


@pytest.mark.parametrize(
    "config",
    [
        ISSUE_CONFIG,
        {},  # the defaults: 32 slots of a 128 MiB memory and 4 tables of 65,536 elements
        dict(pool_size=100, max_tables=3, table_elements_limit=513, memory_limit_bytes=3 * MIB),
        dict(pool_size=4096, max_tables=1024, table_elements_limit=0, memory_limit_bytes=64 * KIB),
    ],
    ids=["issue", "defaults", "odd-sizes", "many-empty-tables"],
)
@pytest.mark.parametrize("allocator", ["default", "wasmtime"])
def test_the_pre_check_reserves_what_wasmtime_maps(config, allocator):
    # VmSize before and after the pooled engine is made, in a fresh interpreter: the
    # pre-check must reserve at least that, and its memories and tables are exactly what
    # the pool maps (the rest is bookkeeping on the heap). "default": the page-resetting
    # pool where it serves, else wasmtime's; "wasmtime": wasmtime's pooling allocator.
    env = dict(os.environ)
    env.pop(MEMORY_POOL_ENV, None)
    if allocator == "wasmtime":
        env[MEMORY_POOL_ENV] = "wasmtime"
    result = subprocess.run(
        [sys.executable, "-c", "from cclb_wire.runtime import HostConfig\n" + _MEASURE, json.dumps(config)],
        capture_output=True, text=True, timeout=120, cwd=TESTS, env=env,
    )
    assert result.returncode == 0, result.stderr
    sizes = json.loads(result.stdout)
    assert sizes["mapped"] <= sizes["grown"] <= sizes["total"], sizes


# --- externref: a GC heap the pool does not have -----------------------------------------

_FINGERPRINTS = gen_fixtures.fingerprints()
_SECTIONS = [("cc_lb.plugin.v1", gen_fixtures.metadata()), ("cc_lb.schema.filter.v1", _FINGERPRINTS["filter"])]
_ANSWER = "(call $free (local.get $in_ptr) (local.get $in_len) (i32.const 16))\n" + gen_fixtures.EMPTY_FILTER_RESPONSE


def _plugin(doc: str, extra: str) -> bytes:
    """A correct filter plugin (the valid_minimal fixture's body) with ``extra`` declared."""
    return wasmtime.wat2wasm(gen_fixtures.module("externref", doc, _ANSWER, customs=_SECTIONS, extra=extra))


EXTERNREF = {
    "table": _plugin("A filter with an externref table.", "  (table $refs 1 externref)"),
    "global": _plugin("A filter with an externref global.", "  (global $ref (mut externref) (ref.null extern))"),
}


@pytest.mark.parametrize("allocator", ["default", "wasmtime"])
@pytest.mark.parametrize("use", sorted(EXTERNREF))
def test_an_externref_module_is_refused_on_a_fresh_pooled_host_naming_why(use, allocator, monkeypatch):
    # Both pools: wasmtime's has no GC heaps; the page-resetting one would give each
    # instance's GC heap a memory slot of its own, so a pool of one could never hold it.
    if allocator == "wasmtime":
        monkeypatch.setenv(MEMORY_POOL_ENV, "wasmtime")
    else:
        monkeypatch.delenv(MEMORY_POOL_ENV, raising=False)
    with PluginHost(HostConfig()) as host:
        assert host._gate.active == 0  # the premise: nothing else holds a pool slot
        with pytest.raises(cw.PluginRejected) as caught:
            host.register_filter("s", use, EXTERNREF[use])
    rejected = caught.value
    assert type(rejected) is cw.PluginRejected and rejected.plugin == use
    assert "externref" in str(rejected) and "GC heap" in str(rejected)
    assert "pool_size=0" in str(rejected)  # what the operator can do about it
    cause = rejected.__cause__
    assert isinstance(cause, cw.PluginResourceLimit) and not isinstance(cause, cw.PluginPoolSaturated)


@pytest.mark.parametrize("use", sorted(EXTERNREF))
@pytest.mark.parametrize(
    "config",
    [HostConfig(pool_size=0), HostConfig(instance_strategy=InstanceStrategy.REUSE_PER_THREAD)],
    ids=["no-pool", "reuse"],
)
def test_an_externref_module_runs_where_the_rejection_says(use, config, wasmtime_pool):
    with PluginHost(config) as host:
        adapter = host.register_filter("s", use, EXTERNREF[use])
        assert adapter.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()


def test_externref_storage_is_found_by_admission():
    from cclb_wire.runtime.wasm_module import parse_module

    assert all(parse_module(EXTERNREF[use]).externref_storage for use in EXTERNREF)
    funcref_table = _plugin("A filter with a funcref table.", "  (table 2 funcref)")
    many_globals = _plugin("Globals of every constant kind.", "\n".join([
        "  (global i32 (i32.const 11))", "  (global i64 (i64.const -129))", "  (global f32 (f32.const 1.5))",
        "  (global f64 (f64.const 2.5))", "  (global v128 (v128.const i32x4 1 2 3 4))", "  (global funcref (ref.null func))",
        "  (global (mut externref) (ref.null extern))",
    ]))
    assert not parse_module(funcref_table).externref_storage
    assert parse_module(many_globals).externref_storage  # found past every other constant kind
    assert not parse_module(fixture("valid_minimal")).externref_storage


def _many_globals() -> bytes:
    # 70,000 i64 globals: 1.1 MB of instance state, over wasmtime's pool's 1 MiB per
    # instance, which no HostConfig field sets.
    globals_ = "\n".join(f"  (global (mut i64) (i64.const {index}))" for index in range(70_000))
    return _plugin("A filter with 70,000 globals.", globals_)


@page_reset_serves
def test_a_large_instance_runs_from_the_page_resetting_pool():
    with PluginHost(HostConfig(probe=False)) as host:
        assert host.memory_pool_stats() is not None
        assert host.register_filter("s", "globals", _many_globals()).filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()


def test_a_module_whose_instance_outgrows_the_pool_is_not_blamed_on_tables(wasmtime_pool):
    # The old mapping blamed table_elements_limit.
    wasm = _many_globals()
    with PluginHost(HostConfig(probe=False)) as host:
        with pytest.raises(cw.PluginRejected) as caught:
            host.register_filter("s", "globals", wasm)
    cause = caught.value.__cause__
    assert isinstance(cause, cw.PluginResourceLimit) and not isinstance(cause, cw.PluginPoolSaturated)
    assert "table_elements_limit" not in str(cause) and "max_tables" not in str(cause)
    assert "pool_size=0" in str(cause) and "1120336" in str(cause)
    with PluginHost(HostConfig(pool_size=0, probe=False)) as host:
        assert host.register_filter("s", "globals", wasm).filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()


# --- a full pool --------------------------------------------------------------------------


def test_a_full_pool_is_still_saturated_for_calls_and_registrations():
    with PluginHost(HostConfig(pool_size=1, deadline_s=1.5, probe=False)) as host:
        spinning = host.register_filter("spin", "spin", fixture("infinite_loop"))
        serving = host.register_filter("ok", "ok", fixture("valid_minimal"))
        assert serving.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()  # fine while the pool is free
        ended: list = []

        def spin() -> None:
            try:
                spinning.filter(CTX, PRINCIPAL, [])
                ended.append("returned")
            except cw.FilterError as exc:
                ended.append(type(exc.__cause__).__name__)

        worker = threading.Thread(target=spin)
        worker.start()
        while host._gate.active == 0 and worker.is_alive():
            time.sleep(0.01)
        time.sleep(0.3)  # past instantiation: the spinning guest holds the only slot
        with pytest.raises(cw.FilterError) as caught:
            serving.filter(CTX, PRINCIPAL, [])
        with pytest.raises(cw.PluginPoolSaturated) as registering:
            host.register_filter("other", "other", fixture("valid_minimal"))
        in_flight = worker.is_alive()
        worker.join()
        # The premise: the spinning call held its slot from before both refusals to after them.
        assert in_flight and ended == ["PluginTimeout"]
        cause = caught.value.__cause__
        assert type(cause) is cw.PluginPoolSaturated and "pool_size = 1" in str(cause)
        assert "pool_size = 1" in str(registering.value)
        assert serving.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()  # the slot came back
