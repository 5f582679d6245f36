"""The extension's page-resetting memory pool (cclb_wire/_mempool.pxi): where it serves,
what its resets do, and the switch back to wasmtime's pooling allocator.

Isolation itself (nothing an instance leaves is seen by the next one, from every pool) is
tests/test_fresh_isolation.py's; this file checks the pool's own claims: dirty pages are
zeroed in place and kept resident up to PAGE_RESET_KEEP_RESIDENT, the rest is given back,
a full pool refuses at once, and a forked child scans its own pages."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from importlib import resources
from pathlib import Path

import pytest
import wasmtime

import cclb_wire as cw
from cclb_wire.runtime import HostConfig, PluginHost
from cclb_wire.runtime.pool import MEMORY_POOL_ENV, PAGE_RESET_KEEP_RESIDENT, page_reset_pool

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "hostile"))
import gen_fixtures  # noqa: E402

pytestmark = pytest.mark.skipif(cw.BACKEND != "cython", reason="the pool is the extension's (pure: wasmtime's pool)")

PAGE = 4096
CTX = cw.RequestContext("r", "POST", "/v1/messages")
PRINCIPAL = cw.Principal("p")


def _kernel_has_pagemap_scan() -> bool:
    """Linux 6.7 added PAGEMAP_SCAN: where it is there, the pool must be used."""
    if not sys.platform.startswith("linux") or not os.path.exists("/proc/self/pagemap"):
        return False
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= (6, 7)


def dirtying_guest(pages: int) -> bytes:
    """A filter that writes one byte into each of ``pages`` pages from 64 KiB up (the
    memory has 8 MiB), then answers an empty FilterResponse."""
    body = f"{gen_fixtures.dirty_pages(65536, pages, page=PAGE)}\n        {gen_fixtures.EMPTY_FILTER_RESPONSE}"
    customs = [("cc_lb.plugin.v1", gen_fixtures.metadata()), ("cc_lb.schema.filter.v1", gen_fixtures.fingerprints()["filter"])]
    text = gen_fixtures.module("dirty", "Dirties pages.", body, customs=customs, pages=128,
                               extra="  (global $page (mut i32) (i32.const 0))")
    return wasmtime.wat2wasm(text)


def pool_stats(host: PluginHost) -> dict:
    stats = host.memory_pool_stats()
    assert stats is not None
    return dataclasses.asdict(stats)


def test_the_pool_serves_where_the_kernel_can_scan_pages():
    from cclb_wire import _codec

    assert _codec.memory_pool_supported() == _kernel_has_pagemap_scan()
    with PluginHost(HostConfig(probe=False)) as host:
        stats = host.memory_pool_stats()
        assert (stats is not None) == _kernel_has_pagemap_scan()
        if stats is not None:
            assert (stats.slots, stats.keep_resident_bytes, stats.memories) == (32, PAGE_RESET_KEEP_RESIDENT, 0)
    for no_pool in (HostConfig(probe=False, pool_size=0), HostConfig(probe=False, instance_strategy="reuse_per_thread")):
        with PluginHost(no_pool) as host:
            assert host.memory_pool_stats() is None


def test_the_memory_creator_prototype_follows_the_wasmtime_major():
    """wasmtime 51 passes a new memory's request as a struct, 50 as arguments: the pool
    must pick the prototype libwasmtime calls (a wrong one reads garbage sizes)."""
    from cclb_wire import _codec
    from cclb_wire.runtime import binding
    from cclb_wire.runtime.pool import memory_request_struct

    wt = binding.load_wasmtime()
    expected = {"50": False, "51": True}[wt.version.split(".")[0]]
    assert memory_request_struct(wt, _codec) is expected


def test_the_switch_back_to_wasmtimes_pool(monkeypatch):
    monkeypatch.setenv(MEMORY_POOL_ENV, "wasmtime")
    assert page_reset_pool() is None
    with PluginHost(HostConfig(probe=False)) as host:
        assert host.memory_pool_stats() is None
        plugin = host.register_filter("d", "d", dirtying_guest(4))
        assert plugin.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()


needs_pool = pytest.mark.skipif(not _kernel_has_pagemap_scan(), reason="no PAGEMAP_SCAN on this kernel (Linux < 6.7)")


@needs_pool
def test_dirty_pages_are_zeroed_in_place_and_kept():
    with PluginHost(HostConfig(probe=False)) as host:
        plugin = host.register_filter("d", "d", dirtying_guest(40))
        before = pool_stats(host)
        for _ in range(10):
            assert plugin.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()
        after = pool_stats(host)
    assert after["memories"] - before["memories"] == 10
    assert after["resets"] - before["resets"] == 10
    assert after["decommits"] == before["decommits"]  # 40 pages: nothing given back
    # Each reset zeroed at least the 40 pages the guest wrote (and the few the host did),
    # which it wrote again each call: none was found zero already.
    assert after["pages_zeroed"] - before["pages_zeroed"] >= 10 * 40
    assert after["pages_released"] == before["pages_released"]
    assert after["in_use"] == 0
    assert after["slots_used"] == 1  # one call at a time: the same slot every time


@needs_pool
def test_pages_an_earlier_instance_wrote_are_given_back_not_zeroed_again():
    """A large writer leaves 200 zeroed pages resident in the slot; the next instance, which
    writes 2, must not pay for zeroing the 200 again on every reset: the first reset after
    it gives them back, and the resets after that zero only what their instance wrote."""
    with PluginHost(HostConfig(probe=False)) as host:
        big = host.register_filter("big", "big", dirtying_guest(200))
        small = host.register_filter("small", "small", dirtying_guest(2))
        for _ in range(3):
            small.filter(CTX, PRINCIPAL, [])
        quiet = pool_stats(host)
        small.filter(CTX, PRINCIPAL, [])
        per_call = pool_stats(host)["pages_zeroed"] - quiet["pages_zeroed"]  # the small guest's own
        big.filter(CTX, PRINCIPAL, [])
        after_big = pool_stats(host)
        small.filter(CTX, PRINCIPAL, [])  # its reset finds the big one's zeroed pages resident
        first = pool_stats(host)
        for _ in range(5):
            small.filter(CTX, PRINCIPAL, [])
        later = pool_stats(host)
    assert 2 <= per_call < 20
    assert after_big["pages_zeroed"] - quiet["pages_zeroed"] >= 200 + per_call
    assert first["pages_released"] - after_big["pages_released"] >= 190
    assert later["pages_zeroed"] - first["pages_zeroed"] == 5 * per_call
    assert later["pages_released"] == first["pages_released"]
    assert later["decommits"] == quiet["decommits"]


@needs_pool
def test_past_the_kept_pages_the_rest_is_given_back():
    pages = PAGE_RESET_KEEP_RESIDENT // PAGE + 50
    with PluginHost(HostConfig(probe=False)) as host:
        plugin = host.register_filter("d", "d", dirtying_guest(pages))
        before = pool_stats(host)
        for _ in range(3):
            assert plugin.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()
        after = pool_stats(host)
    assert after["decommits"] - before["decommits"] == 3
    # Zeroed in place: the kept pages' worth, never more.
    assert after["pages_zeroed"] - before["pages_zeroed"] == 3 * (PAGE_RESET_KEEP_RESIDENT // PAGE)


@needs_pool
def test_a_full_pool_refuses_at_once():
    observe_wasm = (resources.files("cclb_wire") / "plugins" / "observe_counter.wasm").read_bytes()
    with PluginHost(HostConfig(probe=False, pool_size=1, breaker_failures=0)) as host:
        plugin = host.register_filter("d", "d", dirtying_guest(1))
        observe = host.register_observe("o", "counter", observe_wasm)
        with observe.instance_scope():  # holds the only slot
            with pytest.raises(cw.FilterError) as caught:
                plugin.filter(CTX, PRINCIPAL, [])
            assert isinstance(caught.value.__cause__, cw.PluginPoolSaturated)
            assert "all 1 memories" in str(caught.value.__cause__)
            assert pool_stats(host)["refused"] == 1
        assert plugin.filter(CTX, PRINCIPAL, []).kept_upstream_ids == ()  # the slot is back


@needs_pool
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_scans_its_own_pages():
    """The child reopens /proc/self/pagemap: with the parent's descriptor its scans would
    read the parent's page tables, where the slot holds the few pages the parent's guest
    wrote, and miss the many more the child's guest writes."""
    with PluginHost(HostConfig(probe=False)) as host:
        few = host.register_filter("few", "few", dirtying_guest(2))
        many = host.register_filter("many", "many", dirtying_guest(80))
        few.filter(CTX, PRINCIPAL, [])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                before = pool_stats(host)
                for _ in range(3):
                    many.filter(CTX, PRINCIPAL, [])
                after = pool_stats(host)
                zeroed = after["pages_zeroed"] - before["pages_zeroed"]
                os.write(write, f"{zeroed} {after['decommits'] - before['decommits']}".encode())
            finally:
                os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        report = os.read(read, 100).decode()
        os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    zeroed, decommits = map(int, report.split())
    assert zeroed >= 3 * 80 and decommits == 0, report
