"""Static types of the Cython extension cclb_wire._codec (same API as cclb_wire._fallback)."""

from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import schema
# The codec functions: the very signatures of the fallback's (both backends have them).
from ._fallback import decode as decode
from ._fallback import decode_filter_output as decode_filter_output
from ._fallback import decode_shaped_request as decode_shaped_request
from ._fallback import encode as encode
from ._fallback import encode_filter_request as encode_filter_request
from ._fallback import encode_into as encode_into
from ._fallback import encode_observe_event as encode_observe_event
from ._fallback import encode_shape_request as encode_shape_request
from ._fallback import encoded_size as encoded_size
from .host_stats import SlotStats
from .host_types import (
    AnthropicDirect,
    FilterOutput,
    ObserveEventInput,
    Principal,
    RequestContext,
    ShapedRequest,
    ShapeOriginPolicy,
    UpstreamCandidate,
    WireBounds,
)

def compiled_layouts() -> Dict[str, Tuple[int, int, Any]]: ...
def _stack_address() -> int: ...

# -- the native call path (cclb_wire.runtime binds and drives it) --------------------------

SUPPORTED_WASMTIME_MAJORS: Tuple[int, ...]
_WASMTIME_LAYOUTS: Dict[str, Tuple[int, Dict[str, int]]]
_WASMTIME_SYMBOLS: Tuple[str, ...]

def bind_wasmtime(version: str, addresses: Dict[str, Optional[int]], layouts: Dict[str, Tuple[int, Dict[str, int]]]) -> None: ...

class CallGate:
    active: int
    closed: bool
    idle: Any
    def __init__(self, idle: Any) -> None: ...
    def enter(self) -> bool: ...
    def leave(self) -> None: ...
    def close(self) -> bool: ...
    def wait_idle(self, timeout: Optional[float]) -> bool: ...
    def after_fork(self, idle: Any) -> None: ...

class ReusedGuest: ...

class PinnedGuest:
    """One instance a stream's calls share (see cclb_wire.runtime.scope)."""
    def __init__(self, plugin: NativePlugin) -> None: ...
    def close(self) -> None: ...
    @property
    def holds_instance(self) -> bool: ...

class NativePlugin:
    def __init__(
        self,
        engine_address: int,
        pre_address: int,
        owners: Any,
        faults: Any,
        local: Any,
        gate: CallGate,
        hooks: Tuple[str, ...],
        *,
        reuse: bool,
        has_start: bool,
        deadline_ticks: int,
        fuel: Optional[int],
        memory_limit: int,
        table_elements: int,
        max_tables: int,
        stack_needed: int,
        bounds: WireBounds,
        origin_policy: ShapeOriginPolicy,
        cookie_redaction: bool,
        hook_exports: Dict[str, str],
        grow_flag_export: str,
        start_export: str,
    ) -> None: ...
    def filter(self, ctx: RequestContext, principal: Principal, candidates: Iterable[UpstreamCandidate]) -> FilterOutput: ...
    def shape(self, ctx: RequestContext, principal: Principal, upstream: AnthropicDirect) -> ShapedRequest: ...
    def observe(self, event: ObserveEventInput, pinned: Optional[PinnedGuest] = None) -> None: ...
    def call_wire(self, hook: str, value: Any, pinned: Optional[PinnedGuest] = None) -> Any: ...
    def pin(self, hook: str) -> PinnedGuest: ...

# -- per-slot call statistics (cclb_wire.runtime records into these) -----------------------

def monotonic_ns() -> int: ...

class SlotCounters:
    """The C twin of cclb_wire.host_stats.SlotCounters."""
    def __init__(self, kind: str, slot_key: str) -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def slot_key(self) -> str: ...
    def record(self, elapsed_ns: int) -> None: ...
    def record_error(self, elapsed_ns: int, error: str) -> None: ...
    def record_since(self, started_ns: int) -> None: ...
    def record_error_since(self, started_ns: int, error: str) -> None: ...
    def record_pass_through(self) -> None: ...
    def snapshot(self) -> SlotStats: ...

# -- the native epoch ticker (_ticker.pxi; cclb_wire.runtime registers engines with it) ----

NATIVE_TICKER_MAX_TICK_NS: int

def native_ticker_available() -> bool: ...
def native_ticker_add(engine_address: int, tick_ns: int) -> int: ...
def native_ticker_remove(handle: int) -> None: ...
def native_ticker_stats() -> Tuple[int, int, int, bool]: ...
def _native_ticker_record(handle: int) -> Tuple[int, List[int]]: ...
def _native_ticker_hold(seconds: float) -> None: ...
