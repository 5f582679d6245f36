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
