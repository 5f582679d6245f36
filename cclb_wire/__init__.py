"""cclb_wire: cc-lb's WebAssembly plugin wire format (rkyv 0.8, wire V1) for Python.

The codec comes from the Cython extension when it is built, else from the
pure-Python fallback; both behave identically. ``BACKEND`` says which loaded.
Set ``CCLB_WIRE_PUREPYTHON=1`` to force the fallback, or
``CCLB_WIRE_REQUIRE_EXTENSION=1`` to make a missing extension an ImportError.
"""

import os as _os
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING
from typing import Literal as _Literal
from typing import Tuple as _Tuple

from . import schema, wire
from .errors import (
    CclbWireError,
    DecodeError,
    DialectError,
    EncodeError,
    EncodeTypeError,
    FilterError,
    InvalidDiscriminant,
    InvalidInput,
    InvalidInputType,
    InvalidUtf8,
    ObservabilityError,
    PluginError,
    PluginMemoryLimit,
    PluginOutOfFuel,
    PluginOutputError,
    PluginPoolSaturated,
    PluginRejected,
    PluginResourceLimit,
    PluginTimeout,
    PluginTrap,
    PointerOutOfRange,
    UnalignedPointer,
    WireError,
)
from .host_types import (
    AnthropicDirect,
    AuthnComplete,
    CacheScore,
    Chunk,
    ErrorEvent,
    FilterOutput,
    PerCandidateReason,
    Principal,
    PrincipalKind,
    RequestContext,
    RequestFinished,
    RequestStarted,
    ShapedRequest,
    ShapeOriginPolicy,
    UpstreamCandidate,
    UpstreamChosen,
    UpstreamKind,
    WireBounds,
)
from .host_stats import SlotStats
from .jsonvalue import decode_json, encode_json
from .schema import FINGERPRINTS, WIRE_VERSION

__version__ = "0.1.0"


def _load_backend() -> _Tuple[_Literal["cython", "python"], _ModuleType]:
    if _os.environ.get("CCLB_WIRE_PUREPYTHON", "") not in ("", "0"):
        from . import _fallback

        return "python", _fallback
    try:
        from . import _codec
    except ImportError:
        if _os.environ.get("CCLB_WIRE_REQUIRE_EXTENSION", "") not in ("", "0"):
            raise
        from . import _fallback

        return "python", _fallback
    return "cython", _codec


BACKEND, _backend = _load_backend()
"""Which codec loaded: ``"cython"`` (the extension) or ``"python"`` (the fallback)."""

if TYPE_CHECKING:  # both backends have these very signatures
    from ._fallback import (
        decode,
        decode_filter_output,
        decode_shaped_request,
        encode,
        encode_filter_request,
        encode_into,
        encode_observe_event,
        encode_shape_request,
        encoded_size,
    )
else:
    encode = _backend.encode
    encoded_size = _backend.encoded_size
    encode_into = _backend.encode_into
    decode = _backend.decode
    encode_filter_request = _backend.encode_filter_request
    encode_shape_request = _backend.encode_shape_request
    encode_observe_event = _backend.encode_observe_event
    decode_filter_output = _backend.decode_filter_output
    decode_shaped_request = _backend.decode_shaped_request

__all__ = [
    "BACKEND",
    "WIRE_VERSION",
    "FINGERPRINTS",
    "schema",
    "wire",
    # codec
    "encode",
    "encoded_size",
    "encode_into",
    "decode",
    "encode_json",
    "decode_json",
    # host level
    "encode_filter_request",
    "encode_shape_request",
    "encode_observe_event",
    "decode_filter_output",
    "decode_shaped_request",
    "RequestContext",
    "Principal",
    "PrincipalKind",
    "UpstreamCandidate",
    "UpstreamKind",
    "CacheScore",
    "AnthropicDirect",
    "RequestStarted",
    "AuthnComplete",
    "UpstreamChosen",
    "Chunk",
    "RequestFinished",
    "ErrorEvent",
    "FilterOutput",
    "PerCandidateReason",
    "ShapedRequest",
    "WireBounds",
    "ShapeOriginPolicy",
    # errors
    "CclbWireError",
    "InvalidInput",
    "InvalidInputType",
    "WireError",
    "DecodeError",
    "PointerOutOfRange",
    "UnalignedPointer",
    "InvalidUtf8",
    "InvalidDiscriminant",
    "EncodeError",
    "EncodeTypeError",
    "FilterError",
    "DialectError",
    "ObservabilityError",
    "PluginError",
    "PluginRejected",
    "PluginTimeout",
    "PluginOutOfFuel",
    "PluginMemoryLimit",
    "PluginResourceLimit",
    "PluginPoolSaturated",
    "PluginTrap",
    "PluginOutputError",
    "SlotStats",
]

# The plugin host (cclb_wire.runtime), loaded on first use.
_RUNTIME_NAMES = (
    "PluginHost",
    "HostConfig",
    "FailurePolicy",
    "InstanceStrategy",
    "FilterPlugin",
    "UpstreamDialect",
    "ObservabilityHook",
)
__all__ += _RUNTIME_NAMES

if TYPE_CHECKING:  # type checkers see the real classes (and no catch-all __getattr__)
    from .runtime import FailurePolicy as FailurePolicy
    from .runtime import FilterPlugin as FilterPlugin
    from .runtime import HostConfig as HostConfig
    from .runtime import InstanceStrategy as InstanceStrategy
    from .runtime import ObservabilityHook as ObservabilityHook
    from .runtime import PluginHost as PluginHost
    from .runtime import UpstreamDialect as UpstreamDialect
else:

    def __getattr__(name: str):
        # The plugin host is loaded on first use, so codec-only users never import it (or wasmtime).
        if name in _RUNTIME_NAMES:
            from . import runtime

            return getattr(runtime, name)
        raise AttributeError(f"module 'cclb_wire' has no attribute {name!r}")
