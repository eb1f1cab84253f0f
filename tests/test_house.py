"""House rules of src/mmsafe, enforced: the import graph has no cycles and every
package-to-package import is one the house table allows.

The graph is read from the source with ``ast`` (nothing is imported). What is counted:

- every ``import``/``from … import`` of an mmsafe module, wherever it is written: at the
  top of a module, inside a function (a *lazy* import: how optional dependencies and the
  registry's lazy loading work), or under ``if TYPE_CHECKING:``;
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
- a module's package is the first name under ``mmsafe`` (``mmsafe.runner.run`` → ``runner``,
  ``mmsafe.types`` → ``types``); the root module ``mmsafe/__init__.py`` is ``mmsafe``.

Checks:

(a) no cycle among packages, counting every import (lazy ones too), except two declared
    inversions, each a loader rather than a dependency: the root module's PEP 562
    ``__getattr__`` loading the public API (``mmsafe`` → ``api``), and the registry loading
    its table of built-ins on first use (``registry`` → ``_builtins``), as it loads entry
    points. ``_builtins`` itself sits at the top (it names every package), the registry at
    the bottom.
(b) no cycle among modules, counting only imports that run when the module is imported
    (top level, class bodies, top-level ``try``/``if``), not lazy ones inside functions and
    not ``if TYPE_CHECKING:`` ones (never executed).
(c) every package-to-package edge is in :data:`ALLOWED`, which is also the table in
    ``docs/design.md`` (checked to be the same).
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

_ALL = frozenset({"types", "metrics", "data", "refusal", "textvec", "taxonomy", "embeddings", "runtime", "registry",
                  "media", "errors", "datasets", "models", "store", "attacks", "judges", "defense", "runner", "build",
                  "report", "mmsafe"})

# package -> the packages it may import (the house table; docs/design.md holds the same)
ALLOWED: dict[str, frozenset[str]] = {
    "types": frozenset(),
    "metrics": frozenset(),
    "data": frozenset(),
    "refusal": frozenset({"types"}),
    "textvec": frozenset({"types"}),
    "taxonomy": frozenset({"types"}),
    "embeddings": frozenset({"types"}),
    "runtime": frozenset({"types"}),
    "registry": frozenset({"types"}),
    "media": frozenset({"types"}),
    "mmsafe": frozenset(),  # __version__ and the lazy facade over api (see INVERSIONS)
    "store": frozenset({"types"}),
    "datasets": frozenset({"types", "registry", "mmsafe"}),
    "models": frozenset({"types", "registry", "media"}),
    "errors": frozenset({"types", "models", "store", "registry"}),
    "attacks": frozenset({"types", "models", "refusal", "registry", "taxonomy"}),
    "judges": frozenset({"types", "models", "metrics", "refusal", "registry", "runtime", "taxonomy", "textvec",
                         "embeddings"}),
    "defense": frozenset({"types", "models", "judges", "registry", "embeddings", "taxonomy", "textvec", "refusal"}),
    "runner": frozenset({"types", "datasets", "models", "store", "attacks", "judges", "defense", "metrics",
                         "refusal", "registry", "runtime", "media", "mmsafe"}),
    "build": frozenset({"types", "datasets", "models", "attacks", "judges", "metrics", "refusal", "runtime",
                        "taxonomy", "embeddings", "textvec", "registry", "runner", "mmsafe"}),
    "report": frozenset({"types", "store", "metrics", "datasets", "registry", "runner", "media", "mmsafe"}),
    "_builtins": _ALL - {"mmsafe"},
    "api": _ALL | {"_builtins"},
    "cli": _ALL | {"api", "_builtins"},
}

# loaders, not dependencies (see the module doc); excluded from the package cycle check only
INVERSIONS = {("mmsafe", "api"): "the root module's lazy facade (PEP 562 __getattr__) over the public API",
              ("registry", "_builtins"): "the registry loads its built-in table on first use, like entry points"}

# finer rules than the package table: (importing package, imported package) -> the modules it may import
ONLY_MODULES = {("report", "runner"): {"mmsafe.runner.summary"}}  # the typed summary, no model clients


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    runtime: bool  # runs when ``src`` is imported (not inside a function, not under TYPE_CHECKING)
    line: int


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted((SRC / "mmsafe").rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mmsafe"


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return any((isinstance(n, ast.Name) and n.id == "TYPE_CHECKING")
               or (isinstance(n, ast.Attribute) and n.attr == "TYPE_CHECKING") for n in ast.walk(test))


def _targets(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, up level - 1
        here = module.split(".") if is_pkg else module.split(".")[:-1]
        here = here[:len(here) - (node.level - 1)]
        base = ".".join(here + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(module: str, path: Path) -> Iterator[Edge]:
    is_pkg = path.name == "__init__.py"

    def walk(node: ast.AST, runtime: bool) -> Iterator[Edge]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(module, is_pkg, child):
                    dst = _resolve(t) if t.split(".")[0] == "mmsafe" else None
                    if dst is not None and dst != module:
                        yield Edge(module, dst, runtime, child.lineno)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)  # lazy: runs when called
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), runtime)
            else:
                yield from walk(child, runtime)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return [e for m, p in MODULES.items() for e in _imports(m, p)]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_graph_reader_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The reader itself: an import inside a function is lazy, one under TYPE_CHECKING never runs."""
    src = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\nimport mmsafe.types\n"
           "if TYPE_CHECKING:\n    from mmsafe.models import ModelClient\n"
           "def f():\n    from mmsafe import metrics\n")
    f = tmp_path / "m.py"
    f.write_text(src)
    got = {(e.dst, e.runtime) for e in _imports("mmsafe.runner.fake", f)}
    assert got == {("mmsafe.types", True), ("mmsafe.models", False), ("mmsafe.metrics", False)}


def test_no_package_cycles(edges: list[Edge]) -> None:
    graph: dict[str, set[str]] = {}
    for e in edges:
        a, b = package(e.src), package(e.dst)
        if a != b and (a, b) not in INVERSIONS:
            graph.setdefault(a, set()).add(b)
    cyc = _cycle(graph)
    where = []
    if cyc:
        for a, b in itertools.pairwise(cyc):
            e = next(e for e in edges if package(e.src) == a and package(e.dst) == b)
            where.append(f"{a} -> {b} ({e.src}:{e.line} imports {e.dst})")
    assert cyc is None, "package import cycle: " + "; ".join(where)


def test_no_module_cycles_at_import_time(edges: list[Edge]) -> None:
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.runtime:
            graph.setdefault(e.src, set()).add(e.dst)
    cyc = _cycle(graph)
    assert cyc is None, "module import cycle at import time: " + " -> ".join(cyc or [])


def test_every_package_edge_is_allowed(edges: list[Edge]) -> None:
    assert set(package(m) for m in MODULES) <= set(ALLOWED), "a new package: give it a row in ALLOWED and the docs"
    bad = sorted({f"{package(e.src)} -> {package(e.dst)} ({e.src}:{e.line} imports {e.dst})" for e in edges
                  if package(e.src) != package(e.dst) and package(e.dst) not in ALLOWED[package(e.src)]
                  and (package(e.src), package(e.dst)) not in INVERSIONS})
    assert not bad, "imports the house table does not allow:\n" + "\n".join(bad)
    finer = sorted(f"{e.src}:{e.line} imports {e.dst} (allowed: {', '.join(sorted(ok))})" for e in edges
                   for (a, b), ok in ONLY_MODULES.items()
                   if package(e.src) == a and package(e.dst) == b and e.dst not in ok)
    assert not finer, "\n".join(finer)


def test_nothing_imports_the_cli_or_the_api(edges: list[Edge]) -> None:
    up = sorted(f"{e.src}:{e.line} imports {e.dst}" for e in edges
                if (package(e.dst) == "cli" and package(e.src) != "cli")
                or (package(e.dst) == "api" and package(e.src) not in ("api", "cli", "mmsafe")))
    assert not up, up


def test_import_mmsafe_imports_nothing(edges: list[Edge]) -> None:
    """``import mmsafe`` (for __version__) stays cheap: the root runs no mmsafe import, and the
    facade's lazy import is of the public API only."""
    root = [e for e in edges if e.src == "mmsafe"]
    assert not [e for e in root if e.runtime], root
    assert {package(e.dst) for e in root} <= {"api"}


def _design_table() -> dict[str, frozenset[str]]:
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    table: dict[str, frozenset[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`mmsafe(?:\.([\w]+))?`\s*\|.*\|\s*(.*?)\s*\|\s*$", line)
        if not m:
            continue
        pkg = m[1] or "mmsafe"
        cell = m[2]
        names = {n.removeprefix("mmsafe.") for n in re.findall(r"`([\w.]+)`", cell)}
        if cell.startswith("everything"):  # "everything except `a`, `b`"
            names = set(ALLOWED) - names - {pkg}
        table[pkg] = frozenset(names)
    return table


def test_design_doc_has_the_same_table() -> None:
    table = _design_table()
    assert set(table) == set(ALLOWED), set(table) ^ set(ALLOWED)
    diff = {p: (sorted(table[p] - ALLOWED[p]), sorted(ALLOWED[p] - table[p])) for p in ALLOWED
            if table[p] != ALLOWED[p]}
    assert not diff, f"docs/design.md differs from ALLOWED (doc only, test only): {diff}"
