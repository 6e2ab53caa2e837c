"""The package's import structure: no import cycles between modules, no upward imports between
packages, no modules loaded by name (``importlib.import_module``) where a plain import works.

The graph is read from the sources with :mod:`ast` (nothing is imported), and it counts every
import: at module level, inside functions and under ``TYPE_CHECKING``. The checker is tested on
small trees written here (so it can fail), then run on ``speechssl/``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "speechssl"

#: the layer order, lowest first: a top-level package (or top-level module) may import only
#: packages of a lower layer (and itself). Packages in one layer must not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("speechssl", "errors"),  # ``speechssl/__init__.py`` holds the version only
    ("utils", "registry"),
    ("distributed",),
    ("data",),
    ("features",),
    ("units",),
    ("core",),
    ("frontends",),
    ("models",),
    ("train",),
    ("interop",),
    ("downstream",),
    ("recipe",),
    ("cli",),
    ("__main__",),
)

#: (importing module, imported module) pairs allowed to break the layer order, each with why
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

#: modules allowed to load modules by name, each with why
ALLOWED_IMPORT_BY_NAME: dict[str, str] = {
    # lazy exports of its own submodules, so `speechssl.features.store` and the CLI parser
    # do not import torch
    "speechssl.features": "lazy exports",
    # loads speechssl.models.extractor (the `--kind model` extractor) in spawned dump
    # workers; goes with the extractor's move above models/
    "speechssl.features.extractors": "extractor plug, moving with models/extractor.py",
}


def module_names(root: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module under package dir ``root``."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]
) -> Iterator[str]:
    """The modules an import statement loads (the nearest enclosing module of each name)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            if not is_package:
                parts.pop()
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        # `from pkg import sub` loads the module pkg.sub; `from mod import name` loads mod
        names = [f"{base}.{alias.name}" for alias in node.names]
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` (self-imports left out)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges.update(_targets(node, name, path.name == "__init__.py", modules))
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(
    graph: dict[str, set[str]],
    layers: tuple[tuple[str, ...], ...],
    allowed: dict[tuple[str, str], str],
) -> list[str]:
    """One line per import of a higher or same-layer package, and per package not placed."""
    rank = {pkg: i for i, layer in enumerate(layers) for pkg in layer}
    problems = []
    for module in sorted(graph):
        src = top_package(module)
        if src not in rank:
            problems.append(f"{module}: package {src!r} has no place in LAYERS")
            continue
        for target in sorted(graph[module]):
            dst = top_package(target)
            if dst == src or (module, target) in allowed:
                continue
            if dst not in rank:
                continue  # reported for its own modules
            if rank[dst] >= rank[src]:
                where = "above" if rank[dst] > rank[src] else "beside"
                problems.append(f"{module} imports {target} ({dst} is {where} {src})")
    return problems


def import_by_name(root: Path) -> dict[str, list[int]]:
    """``{module: line numbers}`` of calls to ``importlib.import_module`` / ``__import__``."""
    out: dict[str, list[int]] = {}
    for name, path in module_names(root).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("import_module", "__import__"):
                    out.setdefault(name, []).append(node.lineno)
    return out


# the checker, on trees written here ---------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    pkg = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from pkg.low.b import f\n",
            "low/b.py": "def f():\n    from . import a\n",
            "low/c.py": "from pkg.low import a\n",
        },
    )
    assert cycles(import_graph(pkg)) == [["pkg.low.a", "pkg.low.b"]]


def test_checker_finds_upward_and_sideways_imports(tmp_path: Path) -> None:
    pkg = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.high.b import B\n",
            "mid1.py": "import pkg.mid2\n",
            "mid2.py": "from pkg.low import a\n",
            "high/__init__.py": "",
            "high/b.py": "from ..low import a\nclass B: ...\n",
            "stray.py": "",
        },
    )
    layers = (("pkg",), ("low",), ("mid1", "mid2"), ("high",))
    assert layer_violations(import_graph(pkg), layers, {}) == [
        "pkg.low.a imports pkg.high.b (high is above low)",
        "pkg.mid1 imports pkg.mid2 (mid2 is beside mid1)",
        "pkg.stray: package 'stray' has no place in LAYERS",
    ]
    allowed = {("pkg.low.a", "pkg.high.b"): "test"}
    assert "pkg.low.a imports pkg.high.b (high is above low)" not in layer_violations(
        import_graph(pkg), layers, allowed
    )


def test_checker_finds_imports_by_name(tmp_path: Path) -> None:
    pkg = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import importlib\n\ndef f():\n    return importlib.import_module('pkg.b')\n",
            "b.py": "x = __import__('os')\n",
        },
    )
    assert import_by_name(pkg) == {"pkg.a": [4], "pkg.b": [1]}


# the package ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_ROOT)


def test_the_graph_is_read(graph: dict[str, set[str]]) -> None:
    # a sanity check that the reader sees real edges (so the tests below are not vacuous)
    assert "speechssl.errors" in graph["speechssl.data.kaldi_dir"]
    assert "speechssl.units.kmeans.model" in graph["speechssl.units.patches"]
    assert "speechssl.models.hubert" in graph["speechssl.models"]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_no_upward_imports(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph, LAYERS, ALLOWED_UPWARD) == []


def test_allowed_exceptions_still_exist(graph: dict[str, set[str]]) -> None:
    # an exception whose import is gone must leave the list
    for module, target in ALLOWED_UPWARD:
        assert target in graph.get(module, set()), (module, target)
    assert set(ALLOWED_IMPORT_BY_NAME) <= set(import_by_name(PACKAGE_ROOT))


def test_no_modules_loaded_by_name() -> None:
    found = import_by_name(PACKAGE_ROOT)
    assert {m: lines for m, lines in found.items() if m not in ALLOWED_IMPORT_BY_NAME} == {}
