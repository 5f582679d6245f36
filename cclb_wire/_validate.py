"""Argument checks shared by the public constructors and functions.

Each check raises :class:`~cclb_wire.errors.InvalidInput` (or ``InvalidInputType``
for a wrong Python type) whose message starts with the field's name, so every bad
input to the public API is a ``CclbWireError`` that says what to fix.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Optional, Type, TypeVar

from .errors import InvalidInput, InvalidInputType

__all__ = [
    "type_name",
    "coerce_enum",
    "check_int",
    "check_number",
    "check_bool",
    "check_str",
    "utf8_problem",
    "plain_int",
    "plain_str",
    "plain_bytes",
]

E = TypeVar("E", bound=enum.Enum)

U64_MAX = (1 << 64) - 1


def type_name(value: Any) -> str:
    return type(value).__name__


def coerce_enum(enum_class: Type[E], value: Any, field: str) -> E:
    """A member of ``enum_class``: a member itself, or its value as a string in any case
    (``"fail_closed"``, ``"FAIL_CLOSED"``), or its name. Config files and environment
    variables give strings; anything unrecognised is refused, never ignored."""
    if isinstance(value, enum_class):
        return value
    accepted = ", ".join(repr(member.value) for member in enum_class)
    if isinstance(value, str):
        folded = value.strip().casefold()
        for member in enum_class:
            if folded in (str(member.value).casefold(), member.name.casefold()):
                return member
        raise InvalidInput(field, f"{value!r} is not one of {accepted}")
    raise InvalidInputType(field, f"expected a {enum_class.__name__} or one of {accepted}, got {type_name(value)}")


# A subclass of int, str or bytes can override what the checks ask of it (comparisons,
# ``__len__``, ``encode``, ``__int__``, ``__bytes__``...) while the encoders and C code read
# the value it really holds. The checks judge, and the constructors keep, that value as a
# plain object, read through the base type's own methods (which no subclass overrides).


def plain_int(value: int) -> int:
    """The exact ``int`` an int (or int subclass) holds (``__index__``/``__int__`` overrides
    and lying comparisons are not consulted)."""
    return value if type(value) is int else int.__index__(value)


def plain_str(value: str) -> str:
    """The exact ``str`` a str (or str subclass) holds."""
    return value if type(value) is str else str.__str__(value)


def plain_bytes(value: Any) -> Any:
    """bytes, a bytearray or a memoryview as it is; a subclass of bytes or bytearray as a
    ``bytes`` copy of the bytes it holds (no ``__len__``, ``__bytes__`` or ``__buffer__``
    override is consulted)."""
    kind = type(value)
    if kind is bytes or kind is bytearray or kind is memoryview:
        return value
    if isinstance(value, bytes):
        return bytes.__getitem__(value, slice(None))
    return bytes(bytearray.__getitem__(value, slice(None)))


def check_int(value: Any, field: str, minimum: int = 0, maximum: int = U64_MAX) -> int:
    """An int (not a bool) in ``[minimum, maximum]``, returned as a plain ``int``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputType(field, f"expected an int, got {type_name(value)}")
    number = plain_int(value)
    if not minimum <= number <= maximum:
        raise InvalidInput(field, f"{number} is out of range ({minimum}..{maximum})")
    return number


def check_number(value: Any, field: str, minimum: float, maximum: float, *, open_minimum: bool = False) -> float:
    """A finite real number (int or float, not a bool) in ``[minimum, maximum]``
    (``(minimum, maximum]`` with ``open_minimum``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidInputType(field, f"expected a number, got {type_name(value)}")
    value = plain_int(value) if isinstance(value, int) else float.__float__(value)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise InvalidInput(field, f"{value} is out of range [{minimum}, {maximum}]") from None
    low_ok = number > minimum if open_minimum else number >= minimum
    if not (math.isfinite(number) and low_ok and number <= maximum):
        bracket = "(" if open_minimum else "["
        raise InvalidInput(field, f"{value!r} is out of range {bracket}{minimum}, {maximum}]")
    return number


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputType(field, f"expected a bool, got {type_name(value)}")
    return value


def check_str(value: Any, field: str, *, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        expected = "a str or None" if optional else "a str"
        raise InvalidInputType(field, f"expected {expected}, got {type_name(value)}")
    text = plain_str(value)
    problem = utf8_problem(text)
    if problem:
        raise InvalidInput(field, problem)
    return text


def utf8_problem(text: str) -> Optional[str]:
    """Why ``text`` can't be sent (it is sent as UTF-8: a lone surrogate has no form), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a str with a lone surrogate ({text[exc.start]!r} at index {exc.start}) has no UTF-8 form"
    return None
