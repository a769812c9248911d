"""The shape of the code, checked: layers, no import circles, small files and functions.

Issue #13's acceptance, as tests that fail the day someone adds a circle or a 600-line file:
the import graph of ``src/llm4all`` (module-level and function-level imports alike) has no
circle between files, packages import only from their own layer or below (at most two
exceptions, listed), no file is over 400 lines, no function over 100, and no private name
crosses a package boundary.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "llm4all"

#: the layers of docs/DESIGN.md, lowest first: a package may import its own layer or lower ones
LAYERS = [
    {"errors", "runs", "registry", "signature", "malloc", "threads", "catalog", "progress", "stagelog",
     "logs", "__init__", "__main__"},
    {"plan", "data", "models"},
    {"train", "evaluate", "curate"},
    {"distill", "export"},
    {"compress", "serve"},
    {"recipe", "report", "cli"},
]
#: lower -> higher arrows allowed (each with its reason); at most two (issue #13)
UPWARD_ALLOWED: set[tuple[str, str]] = {
    ("__main__", "cli"),  # `python -m llm4all` is the CLI by definition
}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported llm4all module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("llm4all")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("llm4all"):
                continue
            for alias in node.names:  # `from llm4all.x import y` where y is a module
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.append((sub, [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return [(m, names, line) for m, names, line in found if m in known]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _, _ in imports(path, name, known) if m != name}
            for name, path in known.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(package: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if package in members)


def strongly_connected(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one node (the circles)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in modules()}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_no_import_circle_between_files():
    assert strongly_connected(graph()) == []


def test_no_import_circle_between_packages():
    g: dict[str, set[str]] = {}
    for module, targets in graph().items():
        g.setdefault(package_of(module), set()).update(package_of(t) for t in targets)
    for p in g:
        g[p].discard(p)
    assert strongly_connected(g) == []


def test_packages_import_only_their_layer_or_below():
    upward = sorted({(package_of(m), package_of(t)) for m, targets in graph().items() for t in targets
                     if layer(package_of(t)) > layer(package_of(m))})
    assert len(UPWARD_ALLOWED) <= 2
    assert [arrow for arrow in upward if arrow not in UPWARD_ALLOWED] == []


def test_no_private_name_crosses_a_package():
    known = modules()
    crossing = []
    for name, path in known.items():
        for module, names, line in imports(path, name, known):
            if package_of(module) == package_of(name):
                continue
            crossing += [f"{path.relative_to(SRC)}:{line}: {module}.{n}" for n in names
                         if n.startswith("_") and not n.endswith("__")]
            if module.rpartition(".")[2].startswith("_") and not module.endswith("__init__"):
                crossing.append(f"{path.relative_to(SRC)}:{line}: {module}")
    assert crossing == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_small_files_and_functions(path: Path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.name}: {lines} lines"
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
