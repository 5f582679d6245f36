"""Plugin paths: a file, or ``cclb_wire:NAME.wasm`` for a plugin shipped in the package.

The shipped plugins (built from ``guests/plugins/``) are data files of the
``cclb_wire.plugins`` package, installed beside the code: ``cache_aware_filter.wasm``,
``shape_passthrough.wasm`` and ``observe_counter.wasm``. ``cclb_wire:cache_aware_filter.wasm``
names the first one wherever a plugin path is taken: ``cclb-wire inspect`` and ``call``,
and the example proxy's configuration.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List

from .errors import InvalidInput, InvalidInputType

__all__ = ["SHIPPED_PREFIX", "shipped_plugins", "resolve_plugin_path"]

#: The prefix of a shipped plugin's name: ``cclb_wire:NAME.wasm``.
SHIPPED_PREFIX = "cclb_wire:"


def shipped_plugins() -> List[str]:
    """The file names of the plugins shipped in the package (``NAME.wasm``), sorted."""
    return sorted(entry.name for entry in resources.files("cclb_wire.plugins").iterdir() if entry.name.endswith(".wasm"))


def resolve_plugin_path(text: str, field: str = "plugin") -> Path:
    """The file a plugin path names: ``"cclb_wire:NAME.wasm"`` is the shipped plugin
    ``NAME.wasm`` (one of shipped_plugins()), and any other text is a path, returned as
    given (a relative path stays relative). No file is opened.

    ``field`` names the argument in errors (``"register_filter.wasm"``,
    ``"plugins.filter.wasm"``). Raises InvalidInput for a ``cclb_wire:`` name that is not
    shipped, listing the shipped ones, and InvalidInputType when ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise InvalidInputType(field, f"expected a path as a str, got {type(text).__name__}")
    if not text.startswith(SHIPPED_PREFIX):
        return Path(text)
    name = text[len(SHIPPED_PREFIX) :]
    shipped = shipped_plugins()
    if name not in shipped:  # only a listed name: "cclb_wire:../x" names nothing outside the plugins
        listed = ", ".join(SHIPPED_PREFIX + plugin for plugin in shipped)
        raise InvalidInput(field, f"{text!r} names no plugin shipped with cclb_wire (shipped: {listed})")
    return Path(str(resources.files("cclb_wire.plugins").joinpath(name)))
