"""Look at a custom stage's module before importing it, so an obvious mistake runs no code.

`resolve_stage("this:s")` used to import `this` (printing the Zen of Python) only to find that `s`
is a string. Here the module is located without importing it or its parent packages, and its
source is read with `ast`: a name that the module plainly does not define, or defines as a literal
or a function, is refused before the import. Anything the source cannot settle (an import, a
call, a module `__getattr__`, compiled modules) is left to the import and the checks after it.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_MAX_SOURCE = 4 * 1024 * 1024
_DYNAMIC = ("__getattr__", "globals(", "setattr(", "exec(", "import *", "__dict__")
_LITERALS = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr, ast.ListComp, ast.DictComp,
             ast.SetComp, ast.GeneratorExp, ast.Lambda, ast.BinOp, ast.Compare, ast.BoolOp)


def source_verdict(module_name: str, attr: str) -> str | None:
    """Why `module_name:attr` cannot be a Stage class, as the source shows it; None when it may be."""
    found = _locate(module_name)
    if found is False:
        return f"no module named {module_name!r} (is its folder on PYTHONPATH?)"
    if found is None or found.suffix != ".py":
        return None
    try:
        if found.stat().st_size > _MAX_SOURCE:
            return None
        source = found.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # the import will say what is wrong
    kinds = {_kind(node) for node in _top_level(tree.body) if attr in _bound_names(node)}
    if not kinds:
        if any(word in source for word in _DYNAMIC):
            return None
        return f"module {module_name!r} ({found}) defines no {attr!r}"
    if kinds <= {"literal"}:
        return f"{attr!r} in module {module_name!r} is a plain value, not a subclass of lmforge.pipeline.Stage"
    if kinds <= {"function"}:
        return f"{attr!r} in module {module_name!r} is a function, not a subclass of lmforge.pipeline.Stage"
    return None


def _locate(module_name: str) -> Path | None | bool:
    """The module's file, found without importing it or its packages; False: it does not exist; None: unknown."""
    if module_name in sys.modules:
        return None  # already imported: nothing more runs by importing it again
    parts = module_name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name imports nothing to find
    except (ImportError, ValueError):
        return None
    if spec is None:
        return False
    for i in range(1, len(parts)):
        locations = spec.submodule_search_locations
        if not locations:
            return False  # a plain module has no submodules
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(locations))
        if spec is None:
            return None  # perhaps made by the package's __init__: let the import decide
    origin = spec.origin
    return Path(origin) if origin and spec.has_location else None


def _top_level(body: list[ast.stmt]):
    """Module-level statements, including those inside top-level if/try/with/for blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, block, []):
                    yield from _top_level(child.body if isinstance(child, ast.ExceptHandler) else [child])


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return {node.name}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    names: set[str] = set()
    while targets:
        target = targets.pop()
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            targets.extend(target.elts)
        elif isinstance(target, ast.Starred):
            targets.append(target.value)
    return names


def _kind(node: ast.stmt) -> str:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return "function"
    value = getattr(node, "value", None)
    if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(value, _LITERALS):
        return "literal"
    return "other"  # a class, an import, a call, a loop variable...: only the import can tell
