"""cclb_wire: cc-lb's WebAssembly plugin wire format (rkyv 0.8, wire V1) for Python.

The codec comes from the Cython extension when it is built, else from the
pure-Python fallback; both behave identically. ``BACKEND`` says which loaded.
Set ``CCLB_WIRE_PUREPYTHON=1`` to force the fallback, or
``CCLB_WIRE_REQUIRE_EXTENSION=1`` to make a missing extension an ImportError.
Imported from a source checkout in which the extension is not built (Python started
in the repository root finds the checkout before the installed package), it says so:
a RuntimeWarning when it falls back, the ImportError's message when it may not.
"""

import os as _os
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING
from typing import Literal as _Literal
from typing import Optional as _Optional
from typing import Tuple as _Tuple

from . import schema, wire
from .errors import (
    CclbWireError,
    DecodeError,
    DialectError,
    TransformError,
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
    PluginCircuitOpen,
    PluginTrap,
    PointerOutOfRange,
    UnalignedPointer,
    WireError,
)
from .host_types import (
    AnthropicDirect,
    AuthnComplete,
    CachePricing,
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
    ResponseTransform,
    ShapedRequest,
    ShapeOriginPolicy,
    SseAction,
    SseEvent,
    SseTransform,
    UpstreamCandidate,
    UpstreamChosen,
    UpstreamKind,
    UpstreamResponse,
    WireBounds,
)
from .host_stats import MemoryPoolStats, SlotStats
from .jsonvalue import decode_json, encode_json
from .schema import FINGERPRINTS, WIRE_VERSION

__version__ = "0.1.0"


def _flag(name: str) -> bool:
    return _os.environ.get(name, "") not in ("", "0")


def _installed_elsewhere(root: str, package: str) -> _Optional[str]:
    """The directory of another cclb_wire that imports would find if ``root`` were not on
    sys.path (an installed one, editable installs included), or None."""
    import sys
    from importlib.machinery import PathFinder

    here = _os.path.realpath(root)
    others = [entry for entry in sys.path if _os.path.realpath(entry or _os.curdir) != here]
    for finder in sys.meta_path:
        try:
            spec = finder.find_spec(__name__, others if finder is PathFinder else None)
        except Exception:  # a third-party finder's failure: this only words a message
            continue
        if spec is not None and spec.origin:
            found = _os.path.dirname(spec.origin)
            if _os.path.realpath(found) != _os.path.realpath(package):
                return found
    return None


def _missing_extension() -> _Optional[_Tuple[bool, str]]:
    """When no extension is built for this interpreter beside this file: whether this
    package is a source checkout (sdist or clone), and what happened and what to do.
    None when the extension is there (then its own ImportError says why it failed)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    package = _os.path.dirname(_os.path.abspath(__file__))
    if any(_os.path.exists(_os.path.join(package, "_codec" + suffix)) for suffix in EXTENSION_SUFFIXES):
        return None
    expected = _os.path.join(package, "_codec" + EXTENSION_SUFFIXES[0])
    root = _os.path.dirname(package)
    in_checkout = _os.path.exists(_os.path.join(package, "_codec.pyx")) and any(
        _os.path.exists(_os.path.join(root, name)) for name in ("pyproject.toml", "setup.py")
    )
    if not in_checkout:
        return False, (
            f"cclb_wire in {package} has no extension built for this Python (no {expected}): it was "
            "built pure (CCLB_WIRE_PUREPYTHON=1 at build time) or for another Python. Reinstall it "
            "with this Python's pip, without CCLB_WIRE_PUREPYTHON set."
        )
    installed = _installed_elsewhere(root, package)
    if installed is not None:
        what = (
            f"It shadows the installed cclb_wire in {installed}, because {root} is "
            "on sys.path (the current directory, the script's directory, or PYTHONPATH). Run Python from "
            "another directory to use the installed package, or build the extension here"
        )
    else:
        what = "No installed cclb_wire is on sys.path. Build the extension here"
    return True, (
        f"cclb_wire was imported from its source tree {root}, where no extension is built for this "
        f"Python (no {expected}). {what} (`pip install -e .` in {root})."
    )


def _load_backend() -> _Tuple[_Literal["cython", "python"], _ModuleType]:
    if _flag("CCLB_WIRE_PUREPYTHON"):
        from . import _fallback

        return "python", _fallback
    try:
        from . import _codec
    except ImportError:
        missing = _missing_extension()
        if _flag("CCLB_WIRE_REQUIRE_EXTENSION"):
            if missing is None:
                raise
            # from None: the chained "partially initialized module ... circular import" misleads
            raise ImportError(f"{missing[1]} CCLB_WIRE_REQUIRE_EXTENSION is set: no fallback.") from None
        if missing is not None and missing[0]:  # a pure build installed on purpose says nothing
            import warnings

            warnings.warn(
                f"{missing[1]} Falling back to the pure-Python codec, about 30x slower "
                "(CCLB_WIRE_PUREPYTHON=1 chooses it on purpose, without this warning).",
                RuntimeWarning,
                stacklevel=2,
            )
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
    # host level, cc-lb 1.0
    "CachePricing",
    "UpstreamResponse",
    "SseEvent",
    "ResponseTransform",
    "SseAction",
    "SseTransform",
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
    "TransformError",
    "ObservabilityError",
    "PluginError",
    "PluginRejected",
    "PluginTimeout",
    "PluginOutOfFuel",
    "PluginMemoryLimit",
    "PluginResourceLimit",
    "PluginPoolSaturated",
    "PluginCircuitOpen",
    "PluginTrap",
    "PluginOutputError",
    "SlotStats",
    "MemoryPoolStats",
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

            value = getattr(runtime, name)
            globals()[name] = value  # the next lookup is a plain module attribute
            return value
        raise AttributeError(f"module 'cclb_wire' has no attribute {name!r}")
