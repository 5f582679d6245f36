"""Every public name of cclb_wire has a docstring.

Public: every name in ``cclb_wire.__all__`` and in the ``__all__`` of each public
(not ``_``-prefixed) submodule, and every public method and property of the public
classes (including those they inherit from the package's own base classes).
Classes, functions (the extension's too) and modules need a ``__doc__``; a
dataclass's generated signature text does not count. Data (constants, type
aliases) cannot carry a ``__doc__`` of its own: it needs a ``#:`` comment on the
line(s) right above its assignment, or a string literal right below it, in the
module that defines it. Enum members, dataclass fields and namedtuple fields are
data of their class and are not checked.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import pkgutil
import types
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cclb_wire

PACKAGE = "cclb_wire"
PACKAGE_DIR = Path(cclb_wire.__file__).resolve().parent


def public_modules() -> List[types.ModuleType]:
    """The package and its public submodules that declare ``__all__``."""
    modules = [cclb_wire]
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        if info.name.startswith("_") or info.name == "__main__":
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        if hasattr(module, "__all__"):
            modules.append(module)
    return modules


def own_doc(obj: Any) -> Optional[str]:
    """``obj``'s own docstring: not inherited, not a dataclass's generated signature."""
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__")
        if doc and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return None  # dataclasses fill in "Name(field: type, ...)" when there is none
        if doc and issubclass(obj, enum.Enum) and doc == "An enumeration.":
            return None
    else:
        doc = getattr(obj, "__doc__", None)
    return doc if doc and doc.strip() else None


def is_code(obj: Any) -> bool:
    return isinstance(obj, (type, types.ModuleType)) or inspect.isroutine(obj)


@lru_cache(maxsize=None)
def _source_tree(module_name: str) -> Tuple[List[str], ast.Module]:
    module = importlib.import_module(module_name)
    source = Path(module.__file__).read_text(encoding="utf-8")
    return source.splitlines(), ast.parse(source)


def _assigned_names(node: ast.stmt) -> List[str]:
    if isinstance(node, ast.Assign):
        targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def data_documented(module_name: str, name: str, seen: Tuple[str, ...] = ()) -> bool:
    """Whether the module-level data ``name`` has a ``#:`` comment above its (first)
    assignment or a string literal below it, following ``from .x import name``."""
    if module_name in seen:
        return False
    lines, tree = _source_tree(module_name)
    body = tree.body
    for index, node in enumerate(body):
        if name in _assigned_names(node):
            above = node.lineno - 2  # 0-based index of the line above
            if above >= 0 and lines[above].lstrip().startswith("#:"):
                return True
            following = body[index + 1] if index + 1 < len(body) else None
            return (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            )
        if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module:
            if any((alias.asname or alias.name) == name for alias in node.names):
                source_name = next(a.name for a in node.names if (a.asname or a.name) == name)
                # relative to the module's package (a package's __init__ is its own package)
                is_package = Path(importlib.import_module(module_name).__file__).stem == "__init__"
                package = module_name if is_package else module_name.rsplit(".", 1)[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                return data_documented(f"{base}.{node.module}", source_name, seen + (module_name,))
    return False


def class_members(cls: type) -> Iterator[Tuple[str, str, Any]]:
    """(qualified name, member name, member) of the public methods and properties of
    ``cls`` and of the package's own classes it inherits from."""
    for base in cls.__mro__:
        if not base.__module__.startswith(PACKAGE):
            continue
        for name, member in vars(base).items():
            if name.startswith("_"):
                continue
            if isinstance(member, (classmethod, staticmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            elif not inspect.isroutine(member):
                continue  # data: enum members, dataclass defaults, namedtuple fields
            yield f"{base.__module__}.{base.__qualname__}.{name}", name, member


def undocumented() -> List[str]:
    missing: Dict[str, None] = {}
    classes: Dict[int, type] = {}
    for module in public_modules():
        if not own_doc(module):
            missing[module.__name__] = None
        for name in module.__all__:
            obj = getattr(module, name)
            where = f"{module.__name__}.{name}"
            if is_code(obj):
                if not own_doc(obj):
                    missing[where] = None
                if isinstance(obj, type) and obj.__module__.startswith(PACKAGE):
                    classes[id(obj)] = obj
            elif not data_documented(module.__name__, name):
                missing[f"{where} (data: needs a '#:' comment or a docstring below it)"] = None
    for cls in classes.values():
        for where, _, member in class_members(cls):
            if not own_doc(member):
                missing[where] = None
    return list(missing)


def test_the_walk_finds_the_public_api():
    modules = {m.__name__ for m in public_modules()}
    assert {"cclb_wire", "cclb_wire.runtime", "cclb_wire.errors", "cclb_wire.host_types", "cclb_wire.wire"} <= modules
    members = {name for cls in (cclb_wire.PluginHost, cclb_wire.FilterPlugin) for _, name, _ in class_members(cls)}
    assert {"register_filter", "close", "closed", "filter", "filter_with_policy", "slot_key", "plugin_id"} <= members


def test_every_public_name_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public name(s) without a docstring:\n  " + "\n  ".join(missing)
