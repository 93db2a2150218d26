"""No import runs against the layering of the packages, and no modules import each other in
a circle.

Layering, lowest first: ``scheduler`` and ``contextdb``, independent of each other;
``netns.plumbing`` and ``netns.errors``, the namespace plumbing the product uses (with the
``netns`` package itself, which importing them runs); then, independent of each other,
the product (``middlebox``) and the testbed (the rest of ``netns``, which runs the product
as processes and stays usable on its own); last the benchmarks, ``bench``. A module may
import its own unit and any lower layer, never a higher one nor another unit of its own
layer. The imports are read with ``ast``, so lazy imports inside functions count, and so
do ``importlib.import_module("...")`` calls with a literal name. Imports under ``if
TYPE_CHECKING:`` count too, for the layering and for circles: they never run, but a type
is a dependency like any other, and two modules that need each other's names are one
module split in two.

The product reaches the testbed's and the benchmarks' commands only through the entry
points its CLI loads (pyproject.toml, ``mpproxy.commands``), which no import graph shows;
that is the point: they register themselves with the product, not the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("scheduler", "contextdb", "netns", "middlebox", "bench")
PLUMBING = ("netns", "netns.plumbing", "netns.errors")


def layer(module: str) -> tuple[int, str]:
    """(level, unit) of a project module: it may import its own unit and lower levels."""
    top = module.split(".")[0]
    if top in ("scheduler", "contextdb"):
        return 0, top
    if module in PLUMBING:
        return 1, "netns.plumbing"
    return {"middlebox": (2, "middlebox"), "netns": (2, "netns"), "bench": (3, "bench")}[top]


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the packages under ``root``."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _typing_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` bodies."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                out.update(id(n) for n in ast.walk(stmt))
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, typing only) for every import in one module."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = _typing_only_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def add(target: str, node: ast.AST) -> None:
        if target.split(".")[0] in PACKAGES:
            out.append((target, node.lineno, id(node) in typing_only))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node)
    return out


def upward_imports(root: Path) -> list[str]:
    found = modules(root)
    bad = []
    for name, path in found.items():
        level, unit = layer(name)
        for target, line, _ in imports(name, path, set(found)):
            t_level, t_unit = layer(target)
            if t_unit != unit and t_level >= level:
                where = path.relative_to(root)
                bad.append(f"{where}:{line}: {name} ({unit}) imports {target} ({t_unit})")
    return bad


def circles(root: Path) -> list[list[str]]:
    """Strongly connected groups of two or more modules (or one importing itself)."""
    found = modules(root)
    graph = {
        name: sorted({t for t, _, _typing in imports(name, path, set(found)) if t in found})
        for name, path in found.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_no_upward_import():
    assert upward_imports(ROOT) == []


def test_no_import_circle():
    assert circles(ROOT) == []


def test_the_checks_see_what_they_must(tmp_path):
    """The checks themselves: lazy upward imports, a literal import_module, imports between
    the product and the testbed, circles, and a typing-only import that counts for the
    layering and for circles."""
    files = {
        "scheduler/__init__.py": "",
        "scheduler/a.py": "def f():\n    from middlebox import b\n",
        "contextdb/__init__.py": "import importlib\nimportlib.import_module('scheduler.a')\n",
        "netns/__init__.py": "",
        "netns/plumbing.py": "from netns import errors\n",
        "netns/errors.py": "",
        "netns/rail.py": "from . import traces\n",
        "netns/traces.py": "from netns.rail import x\nimport middlebox\n",
        "middlebox/__init__.py": "",
        "middlebox/b.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from middlebox.c import C\n    from bench import d\n",
        "middlebox/c.py": "from middlebox.b import y\nfrom netns.plumbing import z\n"
        "def f():\n    import netns.topology\n",
        "bench/__init__.py": "",
        "bench/d.py": "import middlebox.c, netns.rail, scheduler\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    bad = upward_imports(tmp_path)
    assert [b.split(": ", 1)[1] for b in bad] == [
        "scheduler.a (scheduler) imports middlebox.b (middlebox)",
        "contextdb (contextdb) imports scheduler.a (scheduler)",
        "netns.traces (netns) imports middlebox (middlebox)",
        "middlebox.b (middlebox) imports bench.d (bench)",
        "middlebox.c (middlebox) imports netns.topology (netns)",
    ]
    assert sorted(circles(tmp_path)) == [
        ["bench.d", "middlebox.b", "middlebox.c"],
        ["netns.rail", "netns.traces"],
    ]
