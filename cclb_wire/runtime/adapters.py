"""Adapters: what a slot offers its callers, like the reference host's traits.
``FilterPlugin.filter``, ``UpstreamDialect.shape`` and ``ObservabilityHook.observe``
run the plugin a slot holds when the call starts; their ``*_with_policy`` twins apply
the slot's failure policy. Each call speaks the contract of the plugin it runs (0.2 or
1.0): callers pass the same host objects either way. A cc-lb 1.0 shape slot also
transforms the upstream's answer (``transform_response``, ``sse_stream``)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterable, NoReturn, Optional, Sequence, Tuple

from .._validate import type_name
from .. import encode_filter_request, encode_observe_event, encode_shape_request, host_1_0
from ..errors import (
    DecodeError,
    DialectError,
    FilterError,
    InvalidInput,
    InvalidInputType,
    ObservabilityError,
    PluginCircuitOpen,
    PluginError,
    PluginPoolSaturated,
    PluginRejected,
    PluginTrap,
    TransformError,
)
from ..host_stats import SlotStats
from ..host_types import (
    AnthropicDirect,
    FilterOutput,
    ObserveEventInput,
    Principal,
    RequestContext,
    ResponseTransform,
    ShapedRequest,
    SseEvent,
    SseTransform,
    UNCHANGED_EVENT,
    UNCHANGED_RESPONSE,
    UpstreamCandidate,
    UpstreamResponse,
)
from ..schema import CONTRACT_1_0
from .admission import Loaded
from .config import FailurePolicy
from .counters import clock_ns
from .ctypes_calls import call_filter, call_observe, call_shape, call_wire
from .scope import InstanceScope

if TYPE_CHECKING:
    from .host import PluginHost

_log = logging.getLogger("cclb_wire.runtime")
#: A slot's pass-through warnings are logged at most once per this many seconds.
WARNING_INTERVAL_S = 5.0


class _Adapter:
    """A slot's adapter: every call runs the plugin the slot holds when the call starts."""

    hook = ""

    def __init__(self, host: PluginHost, kind: str, slot_key: str):
        self._host = host
        self._kind = kind
        self._slot = (kind, slot_key)
        self._counters = host._slot_counters(self._slot)
        self._breaker = host._slot_breaker(self._slot)

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
    def contract(self) -> str:
        """The contract of the plugin the slot holds: ``"0.2"`` or ``"1.0"`` (from its fingerprints)."""
        return self._loaded().contract.name

    @property
    def plugin_name(self) -> str:
        """The name the plugin was registered under."""
        return self._loaded().name

    def _warn(self, message: str, exc: BaseException) -> None:
        """A pass-through's warning, at most one per slot every WARNING_INTERVAL_S (a failing
        plugin under load would flood the log): the next one says how many were held back."""
        now = time.monotonic()
        state = self._host._slot_warnings.setdefault(self._slot, [0.0, 0])
        if now - state[0] < WARNING_INTERVAL_S:
            state[1] += 1
            return
        held, state[0], state[1] = state[1], now, 0
        suffix = f" ({held} more since the last warning of this slot)" if held else ""
        _log.warning(message + "%s", exc, suffix)

    def _plugin_failed(self, exc: BaseException) -> None:
        """A failure the plugin caused counts toward the slot's breaker; any other (a
        caller's bad argument, a full pool, the open circuit) releases a probe it was."""
        if isinstance(exc, DecodeError) or (
            isinstance(exc, PluginError)
            and exc.plugin
            and not isinstance(exc, (PluginCircuitOpen, PluginRejected, PluginPoolSaturated))
        ):  # an empty slot's error names no plugin; a full pool is the host's, not the plugin's
            self._breaker.failed()
        else:
            self._breaker.released()

    def _call_wire(self, loaded: Loaded, hook: str, request: object, scope: Optional[InstanceScope] = None) -> Any:
        """A call of a 1.0 hook on either call path (in the scope's instance, if given)."""
        pinned = None if scope is None else scope.pinned
        if loaded.native is not None:
            return loaded.native.call_wire(hook, request, pinned)
        return call_wire(self._host._engine, self._host._gate, loaded, hook, request, pinned)

    def _scope_of(self, scope: Optional[InstanceScope], where: str) -> Loaded:
        """The plugin a call runs: the scope's (a stream keeps its plugin across a swap), else the slot's."""
        if scope is None:
            return self._loaded()
        if not isinstance(scope, InstanceScope):
            raise InvalidInputType(where, f"expected a cclb_wire.runtime.InstanceScope or None, got {type_name(scope)}")
        if scope.slot != self._slot or scope.host is not self._host:
            raise InvalidInput(where, f"the scope was opened by slot {scope.slot!r}, not by this one ({self._slot!r})")
        return scope.loaded

    def prepare_instance(self) -> bool:
        """Open the slot's next fresh instance now, while nothing waits (a proxy: once an
        answer is sent): the next FRESH call, or the next ``instance_scope()`` of this
        slot, takes it instead of instantiating, so the instantiation leaves the request's
        path. The instance is as fresh as one opened at the call: nothing has run in it but
        its start function, which runs at instantiation either way, and the call arms its
        deadline and fuel anew. It holds a pool slot until a call or a scope takes it, or
        until the plugin leaves the slot.

        True once an instance waits. False, with nothing done, under REUSE_PER_THREAD, on
        the ctypes call path, while the slot's breaker is open, or when no instance can be
        opened now (a full pool, a failing start function): the next call instantiates
        then, and reports what fails."""
        try:
            loaded = self._loaded()
        except PluginError:
            return False
        if loaded.native is None or self._breaker.open_until:
            return False
        try:
            return bool(loaded.native.prepare(self._kind))
        except PluginError:
            return False

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
            if self._breaker.open_until:  # a bad argument stays the caller's error, open or not
                validate = host_1_0.filter_request if loaded.contract is CONTRACT_1_0 else encode_filter_request
                validate(ctx, principal, candidates, cookie_redaction=host.config.cookie_redaction)
                self._breaker.before_call(loaded.name, "filter")
            if loaded.contract is CONTRACT_1_0:
                request = host_1_0.filter_request(ctx, principal, candidates, cookie_redaction=host.config.cookie_redaction)
                output = self._call_wire(loaded, "filter", request)
            elif loaded.native is not None:
                output = loaded.native.filter(ctx, principal, candidates)
            else:
                output = call_filter(host._engine, host._gate, loaded, ctx, principal, candidates)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            self._plugin_failed(exc)
            if isinstance(exc, PluginTrap):
                raise FilterError.trap(exc.detail) from exc
            if isinstance(exc, PluginError):
                raise FilterError.runtime(str(exc)) from exc
            raise
        self._counters.record_since(started)
        self._breaker.succeeded()
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
            self._warn("filter plugin failed, passing through: %s", exc)
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
            if self._breaker.open_until:  # a bad argument stays the caller's error, open or not
                encode_shape_request(ctx, principal, upstream, cookie_redaction=host.config.cookie_redaction)
                self._breaker.before_call(loaded.name, "shape")
            if loaded.native is not None:
                output = loaded.native.shape(ctx, principal, upstream)
            else:
                output = call_shape(host._engine, host._gate, loaded, ctx, principal, upstream)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            self._plugin_failed(exc)
            if isinstance(exc, PluginTrap):
                raise DialectError.unsupported_request(exc.detail) from exc
            if isinstance(exc, PluginError):
                raise DialectError.unsupported_request(str(exc)) from exc
            raise
        self._counters.record_since(started)
        self._breaker.succeeded()
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
            self._warn("shape plugin failed, passing through: %s", exc)
            return None


    @property
    def transform_hooks(self) -> Tuple[str, ...]:
        """The transform hooks the slot's plugin has active (none for a 0.2 plugin or noop
        hooks): a proxy may skip buffering or parsing answers the plugin never sees."""
        hooks = self._loaded().hooks
        return tuple(hook for hook in ("transform_response", "transform_sse_event") if hook in hooks)

    def transform_response(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal, response: UpstreamResponse
    ) -> ResponseTransform:
        """What the slot's plugin makes of the upstream's buffered answer (cc-lb 1.0). A 0.2
        plugin, or a 1.0 plugin whose hook is ``noop``, answers "unchanged" without a call.
        Raises TransformError (``runtime``: the plugin failed; ``invalid_output``: its answer
        breaks a rule); the typed error is its __cause__. ``ResponseTransform.apply``
        gives the answer to send."""
        return self._transform("transform_response", ctx, upstream, principal, response, None)  # type: ignore[return-value]

    def transform_response_with_policy(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal, response: UpstreamResponse
    ) -> ResponseTransform:
        """``transform_response`` failing open, as cc-lb does whatever the slot's policy: a
        failure is logged and counted, and the upstream's answer goes out unchanged."""
        try:
            return self.transform_response(ctx, upstream, principal, response)
        except TransformError as exc:
            self._counters.record_pass_through()
            self._warn("transform_response failed, sending the upstream's answer: %s", exc)
            return UNCHANGED_RESPONSE

    def transform_sse_event(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal, response: UpstreamResponse,
        event: SseEvent,
    ) -> SseTransform:
        """What the slot's plugin makes of one event of the upstream's stream (cc-lb 1.0);
        ``response`` holds the stream's status and headers. Errors as ``transform_response``;
        ``sse_stream`` applies the streaming failure policy."""
        return self._transform("transform_sse_event", ctx, upstream, principal, response, event)  # type: ignore[return-value]

    def sse_stream(
        self, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal, response: UpstreamResponse,
        scope: Optional[InstanceScope] = None,
    ) -> "SseStream":
        """A transformer for one streamed answer, with cc-lb's policy: it fails open (the
        event as it came) until a transformed event was emitted, and after that a failure
        ends the stream (TransformError). With ``scope`` (``instance_scope()``), every
        event of the stream runs in the scope's instance instead of a fresh one each."""
        host_1_0.check_transform_args("sse_stream", ctx, principal, upstream, response)
        if scope is not None:
            self._scope_of(scope, "sse_stream.scope")
        return SseStream(self, ctx, upstream, principal, response, scope)

    def instance_scope(self) -> InstanceScope:
        """A fresh instance of the slot's plugin for one stream's transform calls (see
        ``cclb_wire.runtime.scope``); raises the typed PluginError if it can't be opened
        (a full pool: PluginPoolSaturated)."""
        return InstanceScope(self, "transform_sse_event")

    def _transform(
        self, hook: str, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal,
        response: UpstreamResponse, event: Optional[SseEvent],
    ) -> object:
        # Bad arguments are the caller's error whatever plugin the slot holds.
        host_1_0.check_transform_args(hook, ctx, principal, upstream, response, event)
        return self._transform_call(hook, (ctx, principal, upstream, response), None, event)

    def _transform_call(
        self, hook: str, args: Tuple[Any, ...], head: Optional[Tuple[Any, ...]], event: Optional[SseEvent],
        scope: Optional[InstanceScope] = None,
    ) -> object:
        """One transform call: ``args`` (ctx, principal, upstream, response) are checked;
        ``head`` is their transform_head when the caller has it (a stream)."""
        started = clock_ns()
        try:
            loaded = self._loaded() if scope is None else scope.loaded
            if hook not in loaded.hooks:  # a 0.2 plugin, or a noop hook: never called
                return UNCHANGED_RESPONSE if event is None else UNCHANGED_EVENT
            self._breaker.before_call(loaded.name, hook)
            if head is None:
                head = host_1_0.transform_head(*args)
            if event is None:
                request = host_1_0.response_request(head, args[3].body)
            else:
                request = host_1_0.sse_event_request(head, event)
            answer = self._call_wire(loaded, hook, request, scope)
            bounds = self._host.config.bounds
            result = host_1_0.response_transform(answer, bounds) if event is None else host_1_0.sse_transform(answer, bounds)
        except BaseException as exc:
            self._counters.record_error_since(started, type(exc).__name__)
            self._plugin_failed(exc)
            if isinstance(exc, DecodeError):
                raise TransformError.invalid_output(f"{hook}: {exc}") from exc
            if isinstance(exc, PluginError):
                raise TransformError.runtime(str(exc)) from exc
            raise
        self._counters.record_since(started)
        self._breaker.succeeded()
        return result


class SseStream:
    """One streamed answer through a shape slot's ``transform_sse_event`` (see
    ``UpstreamDialect.sse_stream``). ``events(event)`` gives the events to send for one
    upstream event; ``transformed`` says whether anything the plugin made was sent."""

    def __init__(
        self, dialect: UpstreamDialect, ctx: RequestContext, upstream: AnthropicDirect, principal: Principal,
        response: UpstreamResponse, scope: Optional[InstanceScope] = None,
    ):
        self._dialect = dialect
        #: The instance every event runs in (None: a fresh one per event).
        self.scope = scope
        self._args = (ctx, principal, upstream, response)
        self._head = host_1_0.transform_head(*self._args)  # once per stream, not per event
        self.transformed = False
        self.failures = 0

    def events(self, event: SseEvent) -> Tuple[SseEvent, ...]:
        """The events to send in place of ``event``. Raises TransformError only once a
        transformed event was sent (the stream must then end with an error)."""
        if not isinstance(event, SseEvent):  # the rest was checked when the stream began
            raise InvalidInputType("SseStream.events.event", f"expected a cclb_wire.SseEvent, got {type_name(event)}")
        try:
            result: SseTransform = self._dialect._transform_call(  # type: ignore[assignment]
                "transform_sse_event", self._args, self._head, event, self.scope
            )
        except TransformError as exc:
            if self.transformed:
                raise
            self.failures += 1
            self._dialect._counters.record_pass_through()
            self._dialect._warn("transform_sse_event failed before anything transformed was sent, failing open: %s", exc)
            return (event,)
        emitted = result.apply(event)
        if result is not UNCHANGED_EVENT:
            self.transformed = True
        return emitted


class ObservabilityHook(_Adapter):
    """An observe slot: ``observe(event)``; the plugin's output is ignored."""

    def observe(self, event: ObserveEventInput, scope: Optional[InstanceScope] = None) -> None:
        """Raises ObservabilityError (dropped) for anything the plugin did wrong, an empty
        slot or a closed host; the typed error is its __cause__. With ``scope``
        (``instance_scope()``), the call runs in the scope's instance."""
        host = self._host
        started = clock_ns()
        try:
            loaded = self._scope_of(scope, "observe.scope")
            pinned = None if scope is None else scope.pinned
            if self._breaker.open_until:  # a bad argument stays the caller's error, open or not
                encode_observe_event(event)
                self._breaker.before_call(loaded.name, "observe")
            if loaded.native is not None:
                loaded.native.observe(event, pinned)
            else:
                call_observe(host._engine, host._gate, loaded, event, pinned)
        except BaseException as exc:
            self._failed(started, exc)
        self._counters.record_since(started)
        self._breaker.succeeded()

    def _failed(self, started: int, exc: BaseException) -> NoReturn:
        """A call that raised ``exc``, counted: raises ObservabilityError (dropped) for the
        plugin's failures, else ``exc`` itself (the caller's)."""
        self._counters.record_error_since(started, type(exc).__name__)
        self._plugin_failed(exc)
        if isinstance(exc, PluginError):
            raise ObservabilityError.dropped(str(exc)) from exc
        raise exc

    def _pass_through(self, exc: ObservabilityError) -> None:
        """The slot's failure policy for a dropped event: FAIL_CLOSED raises it."""
        if self.failure_policy is FailurePolicy.FAIL_CLOSED:
            raise exc
        self._counters.record_pass_through()
        self._warn("observe plugin failed, event dropped: %s", exc)

    def observe_with_policy(self, event: ObserveEventInput, scope: Optional[InstanceScope] = None) -> bool:
        """``observe`` under the slot's failure policy: PASS_THROUGH logs and counts a
        failure and answers False (the event is dropped); FAIL_CLOSED raises the
        ObservabilityError. True when the plugin took the event."""
        try:
            self.observe(event, scope)
        except ObservabilityError as exc:
            self._pass_through(exc)
            return False
        return True

    def observe_batch(self, events: Iterable[ObserveEventInput], scope: Optional[InstanceScope] = None) -> int:
        """``observe_with_policy`` for each event, in order: PASS_THROUGH drops an event
        that fails (logged, counted) and goes on with the next; FAIL_CLOSED raises its
        ObservabilityError, and the later events are not observed. A bad event raises what
        ``observe`` raises. ``events`` is read whole first. Answers how many events the
        plugin took. With a scope, on the extension's path, the run is one call of the
        extension (the scope's plugin serves every event, as with ``observe``); without
        one, each event runs the plugin the slot holds when its call starts."""
        try:
            events = list(events)
        except TypeError:
            raise InvalidInputType(
                "ObservabilityHook.observe_batch.events", f"expected an iterable of observe events, got {type_name(events)}"
            ) from None
        taken = index = 0
        while index < len(events):
            loaded: Optional[Loaded] = None
            if scope is not None:
                try:
                    loaded = self._scope_of(scope, "observe.scope")
                except Exception:  # observe_with_policy reports it, as for a single event
                    pass
            if loaded is None or loaded.native is None or self._breaker.open_until:
                taken += self.observe_with_policy(events[index], scope)
                index += 1
                continue
            stopped, started, exc = loaded.native.observe_many(events, index, scope.pinned, self._counters)  # type: ignore[union-attr]
            if stopped > index:  # the calls before a failure succeeded first
                taken += stopped - index
                self._breaker.succeeded()
            if exc is None:
                break
            if started is None:  # a signal handler raised between two calls: no call failed
                raise exc
            index = stopped + 1
            try:
                self._failed(started, exc)
            except ObservabilityError as dropped:
                self._pass_through(dropped)
        return taken

    def instance_scope(self) -> InstanceScope:
        """A fresh instance of the slot's plugin for one stream's observe calls (see
        ``cclb_wire.runtime.scope``); raises the typed PluginError if it can't be opened."""
        return InstanceScope(self, "observe")
