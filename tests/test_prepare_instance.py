"""``prepare_instance()``: a FRESH slot's next instance opened ahead of its call.

Isolation (a call in a prepared instance finds nothing an earlier call left) is
tests/test_fresh_isolation.py's; this file checks the rest of the claim in the adapter's
docstring: only the extension's call path under FRESH prepares, a prepared instance holds
a pool slot until a call takes it or its plugin leaves the slot (then at once, so the
plugin that replaces it can be admitted), and a full pool makes ``prepare_instance``
answer False, never raise."""

from __future__ import annotations

import os
import time
from importlib import resources

import pytest

import cclb_wire as cw
from cclb_wire.runtime import NATIVE_CALLS_ENV, HostConfig, InstanceStrategy, PluginHost

PLUGINS = resources.files("cclb_wire.plugins")
CTX = cw.RequestContext("r", "POST", "/v1/messages")
PRINCIPAL = cw.Principal("p")
#: Whether calls take the extension's path, the only one that prepares.
NATIVE_PATH = cw.BACKEND == "cython" and os.environ.get(NATIVE_CALLS_ENV) != "0"


def filter_plugin(host: PluginHost, slot: str = "f", name: str = "cache_aware_filter.wasm") -> cw.FilterPlugin:
    return host.register_filter(slot, slot, (PLUGINS / name).read_bytes())


def call(adapter: cw.FilterPlugin) -> str:
    try:
        adapter.filter(CTX, PRINCIPAL, [])
        return "answered"
    except cw.FilterError as exc:
        return type(exc.__cause__).__name__


def test_only_fresh_slots_on_the_extensions_path_prepare():
    with PluginHost(HostConfig(probe=False)) as host:
        adapter = filter_plugin(host)
        assert adapter.prepare_instance() is NATIVE_PATH
        assert adapter.prepare_instance() is NATIVE_PATH  # one waits already: nothing more is opened
        assert call(adapter) == "answered"
    assert adapter.prepare_instance() is False  # the host is closed
    with PluginHost(HostConfig(probe=False)) as host:
        adapter = filter_plugin(host)
        adapter.prepare_instance()
        held = adapter._loaded()
    assert held.native is None or not held.native.has_prepared  # closing the host closed it
    with PluginHost(HostConfig(probe=False, instance_strategy=InstanceStrategy.REUSE_PER_THREAD)) as host:
        assert filter_plugin(host).prepare_instance() is False


def test_a_prepared_instance_holds_a_pool_slot_until_a_call_takes_it():
    with PluginHost(HostConfig(probe=False, pool_size=1)) as host:
        first, second = filter_plugin(host, "first"), filter_plugin(host, "second")
        if not NATIVE_PATH:
            assert first.prepare_instance() is False
            assert [call(first), call(second)] == ["answered", "answered"]
            return
        assert first.prepare_instance() is True
        assert second.prepare_instance() is False  # the one slot is taken: nothing opened, nothing raised
        assert call(second) == "PluginPoolSaturated"
        assert call(first) == "answered"  # takes the prepared instance, and frees the slot after
        assert call(second) == "answered"
        assert call(first) == "answered"  # nothing prepared: instantiates, as without prepare


@pytest.mark.parametrize("leave", ["swap", "unregister"])
def test_a_prepared_instance_leaves_with_its_plugin(leave):
    with PluginHost(HostConfig(probe=False, pool_size=1)) as host:
        adapter, other = filter_plugin(host), filter_plugin(host, "other")
        assert adapter.prepare_instance() is NATIVE_PATH
        held = adapter._loaded()  # the plugin stays referenced: its slot must be freed anyway
        if leave == "swap":  # admitting the new plugin needs the one pool slot
            filter_plugin(host, name="cache_aware_filter_1_0.wasm")
        else:
            adapter.close()
        assert call(other) == "answered"
        assert held.native is None or not held.native.has_prepared


def test_a_prepare_that_overlaps_a_swap_keeps_nothing():
    """prepare() opens the instance without the GIL: a swap that retires the plugin
    meanwhile must not leave the retired plugin holding it (found by review: 30 of 60)."""
    import threading

    wasm = [(PLUGINS / name).read_bytes() for name in ("cache_aware_filter.wasm", "cache_aware_filter_1_0.wasm")]
    retired = []
    with PluginHost(HostConfig(probe=False, pool_size=4)) as host:
        adapter = host.register_filter("f", "f", wasm[0])
        for round_ in range(40):
            stop = threading.Event()

            def requests() -> None:  # a proxy's loop: each request ends by preparing the next one's
                while not stop.is_set():
                    adapter.prepare_instance()
                    call(adapter)

            thread = threading.Thread(target=requests)
            retired.append(adapter._loaded())
            thread.start()
            try:
                time.sleep(0.005)  # the thread is preparing and calling
                host.register_filter("f", "f", wasm[(round_ + 1) % 2])
            finally:
                stop.set()
                thread.join()
        assert [loaded for loaded in retired if loaded.native is not None and loaded.native.has_prepared] == []
        assert call(adapter) == "answered"


def test_a_failed_swap_leaves_the_plugin_preparing():
    with PluginHost(HostConfig(probe=False)) as host:
        adapter = filter_plugin(host)
        assert adapter.prepare_instance() is NATIVE_PATH
        with pytest.raises(cw.PluginRejected):
            host.register_filter("f", "f", b"\0asm\1\0\0\0")  # an empty module: no exports, refused
        assert adapter.prepare_instance() is NATIVE_PATH  # the slot's plugin prepares again


def test_a_scope_takes_the_prepared_instance():
    """A slot's next instance_scope() takes the prepared instance, as a call would: with a
    one-slot pool held by it, the scope opens (instantiating would find the pool full)."""
    with PluginHost(HostConfig(probe=False, pool_size=1)) as host:
        observe = host.register_observe("o", "o", (PLUGINS / "observe_counter.wasm").read_bytes())
        event = cw.RequestStarted("r", None)
        assert observe.prepare_instance() is NATIVE_PATH
        if not NATIVE_PATH:
            with observe.instance_scope() as scope:
                observe.observe(event, scope)
            return
        held = observe._loaded().native
        with observe.instance_scope() as scope:
            assert held.has_prepared is False and scope.holds_instance
            observe.observe(event, scope)
            observe.observe(event, scope)
            with pytest.raises(cw.ObservabilityError) as caught:  # the one slot is the scope's
                observe.observe(event)
            assert type(caught.value.__cause__).__name__ == "PluginPoolSaturated"
        observe.observe(event)  # the scope gave its slot back
        stats = observe.stats()
        assert (stats.calls, stats.errors) == (4, {"PluginPoolSaturated": 1})
