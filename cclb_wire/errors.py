"""The exceptions of cclb_wire, shared by both codec backends.

Both backends raise these very classes with the very same messages: the Cython
extension re-runs the pure-Python validator on the (rare) failure path to build
the error, so the text is defined in exactly one place.
"""

from __future__ import annotations

from typing import Dict, Optional, Type, TypeVar

__all__ = [
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
]


class CclbWireError(Exception):
    """Root of every exception this package raises on purpose."""


class InvalidInput(CclbWireError, ValueError):
    """A bad argument to a public function, constructor or CLI command.

    ``field`` names the argument (``"HostConfig.deadline_s"``,
    ``"RequestContext.headers[2]"``); the message starts with it.
    """

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail


class InvalidInputType(InvalidInput, TypeError):
    """A bad argument of the wrong Python type (also a ``TypeError``)."""


class WireError(CclbWireError, ValueError):
    """The bytes (or a value) do not follow the V1 wire format.

    ``type_name`` is the archive's root type, ``path`` the field path inside it
    (``""`` for the root itself) and ``offset`` the byte offset from the start of
    the archive where the problem is (``None`` when encoding).
    """

    kind: str = "wire_error"

    def __init__(self, message: str, *, type_name: str = "", path: str = "", offset: Optional[int] = None):
        super().__init__(message)
        self.type_name = type_name
        self.path = path
        self.offset = offset


class DecodeError(WireError):
    """An archive that rkyv's ``access`` would reject.

    ``kind`` uses the golden vectors' ``error_kind`` names.
    """

    kind = "decode_error"


class PointerOutOfRange(DecodeError):
    """The root or a pointee lies outside the window the validator allows
    (out of the buffer, overlapping a sibling, out of post-order, or inside its parent)."""

    kind = "subtree_pointer_out_of_range"


class UnalignedPointer(DecodeError):
    """The root or a pointee is not aligned for its type."""

    kind = "unaligned_pointer"


class InvalidUtf8(DecodeError):
    """A string field holds bytes that are not strict UTF-8."""

    kind = "invalid_utf8"


class InvalidDiscriminant(DecodeError):
    """An Option tag other than 0/1, or an enum tag past the last variant."""

    kind = "invalid_discriminant"


class EncodeError(WireError):
    """A value that cannot be encoded (out of range, too large, not UTF-8 encodable)."""

    kind = "encode_error"


class EncodeTypeError(EncodeError, TypeError):
    """A value of the wrong Python type for its wire field."""

    kind = "encode_type_error"


def _where(type_name: str, path: str) -> str:
    return f"{type_name}.{path}" if path else type_name


#: A WireError subclass: the error builders below return an instance of the class they get.
_W = TypeVar("_W", bound=WireError)


def decode_error(
    cls: Type[_W], type_name: str, path: str, offset: int, detail: str
) -> _W:
    """Build a decode error (an instance of ``cls``, a DecodeError subclass) with the
    one message format both backends use."""
    message = f"invalid {type_name} archive: {detail} at {_where(type_name, path)} (offset {offset})"
    return cls(message, type_name=type_name, path=path, offset=offset)


def encode_error(cls: Type[_W], type_name: str, path: str, detail: str) -> _W:
    """Build an encode error (an instance of ``cls``, an EncodeError subclass) with the
    one message format both backends use."""
    return cls(f"cannot encode {_where(type_name, path)}: {detail}", type_name=type_name, path=path)


# --- host-level errors (the Python face of the seed's error enums) ------------


class _KindedError(CclbWireError):
    """An error whose ``kind`` comes from a closed set, like a Rust enum variant.

    ``reason`` is the detail; ``str(error)`` is the reference host's display text.
    """

    displays: Dict[str, str] = {}

    def __init__(self, kind: str, reason: str = ""):
        display = self.displays.get(kind)
        if display is None:
            raise ValueError(f"{type(self).__name__} kind must be one of {tuple(self.displays)}, not {kind!r}")
        super().__init__(display.format(reason))
        self.kind = kind
        self.reason = reason


class FilterError(_KindedError):
    """A filter plugin failed: ``kind`` is ``"trap"`` (reason ``"phase: detail"``) or ``"runtime"``."""

    displays = {"trap": "filter trap error: {}", "runtime": "filter runtime error: {}"}

    @classmethod
    def trap(cls, reason: str) -> "FilterError":
        """A guest trap: ``reason`` is ``"phase: detail"``."""
        return cls("trap", reason)

    @classmethod
    def runtime(cls, reason: str) -> "FilterError":
        """Anything else the filter plugin did wrong."""
        return cls("runtime", reason)


class DialectError(_KindedError):
    """A shape plugin's answer cannot be used: ``kind`` is ``"unsupported_request"``."""

    displays = {"unsupported_request": "unsupported request: {}"}

    @classmethod
    def unsupported_request(cls, reason: str) -> "DialectError":
        """The shape plugin's answer cannot be used, for ``reason``."""
        return cls("unsupported_request", reason)


class ObservabilityError(_KindedError):
    """An observe hook failed and the event is dropped: ``kind`` is ``"dropped"``."""

    displays = {"dropped": "observability event dropped: {}", "queue_full": "observability queue full"}

    @classmethod
    def dropped(cls, reason: str) -> "ObservabilityError":
        """The observe hook failed, for ``reason``; the event is dropped."""
        return cls("dropped", reason)


class TransformError(_KindedError):
    """A cc-lb 1.0 transform hook failed or answered something unusable: ``kind`` is
    ``"invalid_output"`` (the answer breaks a rule: a status outside 100..999, a bad header,
    over a bound) or ``"runtime"`` (anything else the plugin did wrong)."""

    displays = {"invalid_output": "transform output rejected: {}", "runtime": "transform runtime error: {}"}

    @classmethod
    def invalid_output(cls, reason: str) -> "TransformError":
        """The plugin's answer breaks a rule, for ``reason``."""
        return cls("invalid_output", reason)

    @classmethod
    def runtime(cls, reason: str) -> "TransformError":
        """Anything else the transform plugin did wrong."""
        return cls("runtime", reason)


# --- plugin host errors ------------------------------------------------------------


class PluginError(CclbWireError):
    """A plugin failed or misbehaved: says which plugin, which hook and what happened."""

    def __init__(self, message: str, *, plugin: str = "", hook: str = "", phase: str = ""):
        where = " ".join(part for part in (f"plugin {plugin!r}" if plugin else "", f"hook {hook}" if hook else "") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.plugin = plugin
        self.hook = hook
        self.phase = phase
        self.detail = message


class PluginRejected(PluginError):
    """A module failed admission (parse, imports, exports, metadata, fingerprints, compile, probe)."""


class PluginTimeout(PluginError):
    """A call ran past its deadline (epoch interruption)."""


class PluginOutOfFuel(PluginError):
    """A call used up its fuel."""


class PluginMemoryLimit(PluginError):
    """The guest needed more memory than the store's limit allows."""


class PluginResourceLimit(PluginError):
    """The guest needed more of a bounded store resource than allowed: table elements,
    tables, memories or instances (``HostConfig`` limits), or the host could not
    reserve the memory to instantiate it."""


class PluginPoolSaturated(PluginResourceLimit):
    """Every slot of the instance pool (``HostConfig.pool_size``) is in use: the call
    fails at once instead of waiting for one (the reference's ``PoolSaturated``)."""


class PluginCircuitOpen(PluginError):
    """The slot failed ``HostConfig.breaker_failures`` times in a row: calls fail at once
    for ``breaker_cooldown_s``, then one call probes the plugin again."""


class PluginTrap(PluginError):
    """The guest trapped (``trap_code``: e.g. ``"unreachable"``, ``"stack_overflow"``) during ``phase``."""

    def __init__(self, message: str, *, trap_code: str = "", **where: str):
        super().__init__(message, **where)
        self.trap_code = trap_code


class PluginOutputError(PluginError):
    """The guest's answer is unusable before decoding: a bad pointer or length, or too large."""
