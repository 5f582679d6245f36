"""JSON text with bounded nesting, for everything cclb_wire parses from outside.

``json.loads`` recurses once per nested array or object, so a document nested a
few thousand levels deep (``[[[[...``) ends in a ``RecursionError``. :func:`loads`
first scans the text once for its bracket depth outside strings and refuses
anything deeper than the limit (64 by default, far more than any request file,
wire value or plugin metadata needs), so ``json.loads`` never recurses deep.
The scan is one pass in linear time whatever the text (it visits each character
once), and ``json.loads`` itself is linear, so parsing costs time in proportion
to the text's length. Every failure is an :class:`~cclb_wire.errors.InvalidInput`
naming what was being parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any, Union

from .errors import InvalidInput, InvalidInputType
from ._validate import type_name

__all__ = ["DEFAULT_MAX_DEPTH", "nesting_depth", "check_depth", "loads"]

#: The deepest nesting of arrays and objects accepted by default.
DEFAULT_MAX_DEPTH = 64

# One token: a JSON string (with its escapes), or one bracket. The depth scan calls
# ``search`` where the previous token ended, so text inside strings is skipped whole
# and every character is examined by one call only: one pass, in linear time. The
# string alternative cannot fail once it has its opening quote: plain characters,
# then escapes (a backslash with the character after it, if any), then the closing
# quote if there is one, all greedy and nothing after them to backtrack for; an
# unterminated string runs to the end of the text. (A pattern that must find the
# closing quote fails after reading to the end of an unterminated string, and the
# search then starts again at every later quote: quadratic time on ``"\"\"\"...``.)
_TOKEN = re.compile(r'"[^"\\]*(?:\\.?[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def nesting_depth(text: str, stop_above: int = -1) -> int:
    """The deepest nesting of ``[``/``{`` in ``text``, outside JSON strings.

    Unbalanced closers never take the count below zero, so the result is never
    less than the depth ``json.loads`` could reach. An unterminated string runs to
    the end of the text (``json.loads`` fails at it, so what follows never counts).
    With ``stop_above >= 0`` the scan stops as soon as the depth passes it (the
    result is then ``stop_above + 1``). One pass, in time linear in ``len(text)``.
    """
    depth = deepest = pos = 0
    search = _TOKEN.search
    while True:
        match = search(text, pos)
        if match is None:
            return deepest
        pos = match.end()
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if 0 <= stop_above < deepest:
                    return deepest
        elif (token == "]" or token == "}") and depth:
            depth -= 1


def check_depth(text: str, field: str, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise InvalidInput (naming ``field``) when ``text`` nests deeper than ``max_depth``."""
    if "[" not in text and "{" not in text:
        return
    if nesting_depth(text, max_depth) > max_depth:
        raise InvalidInput(field, f"JSON nests arrays/objects deeper than {max_depth} levels")


def loads(data: Union[str, bytes, bytearray], field: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON text (``str``, or bytes in UTF-8/16/32 as ``json.loads`` detects them)
    whose arrays and objects nest at most ``max_depth`` deep.

    Raises InvalidInput naming ``field`` for text that is not JSON, not decodable,
    or nested too deep; InvalidInputType for an argument that is not text.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
        except UnicodeDecodeError as exc:
            raise InvalidInput(field, f"not valid JSON (cannot decode the text: {exc.reason} at byte {exc.start})") from None
    elif isinstance(data, str):
        text = data
    else:
        raise InvalidInputType(field, f"expected JSON text (str or bytes), got {type_name(data)}")
    check_depth(text, field, max_depth)
    try:
        return json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError
        raise InvalidInput(field, f"not valid JSON ({exc})") from None
    except RecursionError:  # pragma: no cover - the depth check makes this unreachable
        raise InvalidInput(field, f"JSON nests arrays/objects deeper than {max_depth} levels") from None
