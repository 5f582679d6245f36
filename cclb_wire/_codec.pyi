"""Static types of the Cython extension cclb_wire._codec (same API as cclb_wire._fallback)."""

from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

Into = Callable[[int], Tuple[Any, int]]

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
from .wire import WireValue

def encode(value: WireValue) -> bytes: ...
def encoded_size(value: WireValue) -> int: ...
def encode_into(value: WireValue, buffer: Any, offset: int = 0) -> int: ...
def decode(type_: Any, data: Any) -> Any: ...
def encode_filter_request(
    ctx: RequestContext,
    principal: Principal,
    candidates: Iterable[UpstreamCandidate],
    *,
    cookie_redaction: bool = False,
    into: Optional[Into] = None,
) -> Any: ...
def encode_shape_request(
    ctx: RequestContext,
    principal: Principal,
    upstream: AnthropicDirect,
    *,
    cookie_redaction: bool = False,
    into: Optional[Into] = None,
) -> Any: ...
def encode_observe_event(event: ObserveEventInput, *, into: Optional[Into] = None) -> Any: ...
def decode_filter_output(data: Any, bounds: Optional[WireBounds] = ...) -> FilterOutput: ...
def decode_shaped_request(
    data: Any,
    upstream: AnthropicDirect,
    *,
    origin_policy: Union[ShapeOriginPolicy, str] = ...,
    bounds: Optional[WireBounds] = ...,
) -> ShapedRequest: ...
def compiled_layouts() -> Dict[str, Tuple[int, int, Any]]: ...
def _stack_address() -> int: ...

# -- the native call path (cclb_wire.runtime binds and drives it) --------------------------

WASMTIME_MAJOR: int
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
    def observe(self, event: ObserveEventInput) -> None: ...
