"""The import rules of docs/architecture.md, checked on the source: no cycles, nothing imported upward.

Every `import` counts: at module level, inside functions (a lazy import is still a dependency) and
under `if TYPE_CHECKING:` (a type is part of the interface). Modules are grouped by their top-level package
(`lmforge.clean.filters.c4` belongs to `clean`); the layer list is read from the document, so the
document and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lmforge"
DOC = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Package -> layer number, from the numbered list under '## Layers' in docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    found: dict[str, int] = {}
    for number, names in re.findall(r"^(\d+)\.\s+`([^`]+)`", section, flags=re.M):
        for name in names.replace(",", " ").split():
            found[name] = int(number)
    assert found, "no layer list found under '## Layers' in docs/architecture.md"
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """lmforge modules that `path` imports (resolving relative imports and `from pkg import module`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != me and target.startswith("lmforge"):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    return {m: imports_of(p, set(paths)) for m, p in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = defaultdict(int)
    for start in sorted(graph):
        if state[start]:
            continue
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state[child] == 1:
                return path[path.index(child):] + [child]
            elif state[child] == 0:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_every_package_has_a_layer():
    known = layers()
    packages = {package_of(m) for m in import_graph()}
    assert sorted(packages - set(known)) == [], "add these packages to the layer list in docs/architecture.md"


def test_no_module_imports_a_higher_layer():
    known = layers()
    upward = sorted(f"{a} (layer {known[package_of(a)]}) imports {b} (layer {known[package_of(b)]})"
                    for a, targets in import_graph().items() for b in targets
                    if known.get(package_of(b), 0) > known.get(package_of(a), 0))
    assert upward == []


def test_no_import_cycles_between_modules():
    assert find_cycle(import_graph()) is None


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for a, targets in import_graph().items():
        graph[package_of(a)].update(package_of(b) for b in targets if package_of(b) != package_of(a))
    assert find_cycle(graph) is None


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a lazy import inside a function and a relative import both count."""
    pkg = tmp_path / "lmforge"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from lmforge.high import b\n")
    (pkg / "low" / "c.py").write_text("from . import a\nfrom typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from lmforge.high import b\n")
    (pkg / "high.py").write_text("import lmforge.low.a\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    graph = import_graph()
    assert graph["lmforge.low.a"] == {"lmforge.high"}
    assert graph["lmforge.low.c"] == {"lmforge.low.a", "lmforge.high"}
    assert find_cycle(graph) in (["lmforge.high", "lmforge.low.a", "lmforge.high"],
                                 ["lmforge.low.a", "lmforge.high", "lmforge.low.a"])
