"""Adapters: what a slot offers its callers, like the reference host's traits.
``FilterPlugin.filter``, ``UpstreamDialect.shape`` and ``ObservabilityHook.observe``
run the plugin a slot holds when the call starts; their ``*_with_policy`` twins apply
the slot's failure policy."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from .._validate import type_name
from ..errors import DialectError, FilterError, InvalidInputType, ObservabilityError, PluginError, PluginTrap
from ..host_stats import SlotStats
from ..host_types import (
    AnthropicDirect,
    FilterOutput,
    ObserveEventInput,
    Principal,
    RequestContext,
    ShapedRequest,
    UpstreamCandidate,
)
from .admission import Loaded
from .config import FailurePolicy
from .counters import clock_ns
from .ctypes_calls import call_filter, call_observe, call_shape

if TYPE_CHECKING:
    from .host import PluginHost

_log = logging.getLogger("cclb_wire.runtime")


class _Adapter:
    """A slot's adapter: every call runs the plugin the slot holds when the call starts."""

    hook = ""

    def __init__(self, host: PluginHost, kind: str, slot_key: str):
        self._host = host
        self._kind = kind
        self._slot = (kind, slot_key)
        self._counters = host._slot_counters(self._slot)

    @property
    def slot_key(self) -> str:
        """The slot this adapter calls."""
        return self._slot[1]

    @property
    def failure_policy(self) -> FailurePolicy:
        """The slot's failure policy: its registration's, else the host config's."""
        return self._host._slot_policy(self._slot)

    def _loaded(self) -> Loaded:
        loaded = self._host._slots.get(self._slot)
        if loaded is None:
            state = "the host is closed" if self._host.closed else "unregistered, or never registered"
            raise PluginError(f"slot {self.slot_key!r} is empty ({state})", hook=self._kind)
        return loaded

    @property
    def plugin_id(self) -> uuid.UUID:
        """Derived from the plugin's content hash: the same module has the same id."""
        return self._loaded().plugin_id

    @property
    def plugin_name(self) -> str:
        """The name the plugin was registered under."""
        return self._loaded().name

    def stats(self) -> SlotStats:
        """This slot's call statistics (``PluginHost.stats`` for every slot)."""
        return self._counters.snapshot()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Empty the slot (``PluginHost.unregister``); calls in flight finish with the plugin
        they started with."""
        self._host.unregister(self._kind, self.slot_key)


class FilterPlugin(_Adapter):
    """A filter slot: ``filter(ctx, principal, candidates) -> FilterOutput``."""

    def filter(self, ctx: RequestContext, principal: Principal, candidates: Sequence[UpstreamCandidate]) -> FilterOutput:
        """Raises FilterError: ``trap`` ("phase: detail") for a guest trap, ``runtime`` for
        anything else the plugin did wrong, an empty slot or a closed host; the typed error
        (PluginTimeout, PluginTrap, ...) is its __cause__. Bad arguments raise the codec's
        own errors (``EncodeError``, ``InvalidInput``): they are the caller's, not the plugin's."""
        host = self._host
        started = clock_ns()
        try:
            loaded = self._loaded()
            if loaded.native is not None:
                output = loaded.native.filter(ctx, principal, candidates)
            else:
                output = call_filter(host._engine, host._gate, loaded, ctx, principal, candidates)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            if isinstance(exc, PluginTrap):
                raise FilterError.trap(exc.detail) from exc
            if isinstance(exc, PluginError):
                raise FilterError.runtime(str(exc)) from exc
            raise
        self._counters.record_since(started)
        return output  # type: ignore[no-any-return]

    def filter_with_policy(
        self, ctx: RequestContext, principal: Principal, candidates: Iterable[UpstreamCandidate]
    ) -> FilterOutput:
        """``filter`` under the slot's failure policy: PASS_THROUGH answers a no-op (every
        candidate kept, in order, the failure in ``reason``); FAIL_CLOSED raises the
        FilterError. ``candidates`` may be any iterable: it is read once."""
        try:
            candidates = tuple(candidates)
        except TypeError:
            raise InvalidInputType(
                "FilterPlugin.filter_with_policy.candidates", f"expected an iterable of UpstreamCandidate, got {type_name(candidates)}"
            ) from None
        for index, candidate in enumerate(candidates):
            # Checked here too: an empty slot fails before the request is encoded, and
            # passing through needs every candidate's upstream_id.
            if not isinstance(candidate, UpstreamCandidate):
                raise InvalidInputType(
                    f"FilterPlugin.filter_with_policy.candidates[{index}]",
                    f"expected a cclb_wire.UpstreamCandidate, got {type_name(candidate)}",
                )
        try:
            return self.filter(ctx, principal, candidates)
        except FilterError as exc:
            if self.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            self._counters.record_pass_through()
            _log.warning("filter plugin failed, passing through: %s", exc)
            kept = tuple(c.upstream_id for c in candidates)
            return FilterOutput(kept, f"plugin failed; passed through: {exc}", ())


class UpstreamDialect(_Adapter):
    """A shape slot: ``shape(ctx, upstream, principal) -> ShapedRequest``."""

    def shape(self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal) -> ShapedRequest:
        """Raises DialectError (unsupported request) for anything the plugin did wrong, an
        empty slot or a closed host; the typed error is its __cause__."""
        host = self._host
        started = clock_ns()
        try:
            loaded = self._loaded()
            if loaded.native is not None:
                output = loaded.native.shape(ctx, principal, upstream)
            else:
                output = call_shape(host._engine, host._gate, loaded, ctx, principal, upstream)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            if isinstance(exc, PluginTrap):
                raise DialectError.unsupported_request(exc.detail) from exc
            if isinstance(exc, PluginError):
                raise DialectError.unsupported_request(str(exc)) from exc
            raise
        self._counters.record_since(started)
        return output  # type: ignore[no-any-return]

    def shape_with_policy(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal
    ) -> Optional[ShapedRequest]:
        """``shape`` under the slot's failure policy: PASS_THROUGH answers None ("send the
        request to the upstream unchanged"); FAIL_CLOSED raises the DialectError."""
        try:
            return self.shape(ctx, upstream, principal)
        except DialectError as exc:
            if self.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            self._counters.record_pass_through()
            _log.warning("shape plugin failed, passing through: %s", exc)
            return None


class ObservabilityHook(_Adapter):
    """An observe slot: ``observe(event)``; the plugin's output is ignored."""

    def observe(self, event: ObserveEventInput) -> None:
        """Raises ObservabilityError (dropped) for anything the plugin did wrong, an empty
        slot or a closed host; the typed error is its __cause__."""
        host = self._host
        started = clock_ns()
        try:
            loaded = self._loaded()
            if loaded.native is not None:
                loaded.native.observe(event)
            else:
                call_observe(host._engine, host._gate, loaded, event)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            if isinstance(exc, PluginError):
                raise ObservabilityError.dropped(str(exc)) from exc
            raise
        self._counters.record_since(started)

    def observe_with_policy(self, event: ObserveEventInput) -> bool:
        """``observe`` under the slot's failure policy: PASS_THROUGH logs and counts a
        failure and answers False (the event is dropped); FAIL_CLOSED raises the
        ObservabilityError. True when the plugin took the event."""
        try:
            self.observe(event)
        except ObservabilityError as exc:
            if self.failure_policy is FailurePolicy.FAIL_CLOSED:
                raise
            self._counters.record_pass_through()
            _log.warning("observe plugin failed, event dropped: %s", exc)
            return False
        return True
