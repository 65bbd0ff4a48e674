"""The package imports in one direction only: every module imports from its own layer or the layers below, and no
import cycle exists (module-level or inside functions). The layers, bottom to top, are the README's layout.

The import graph is read from the source (``ast``), so a lazy import inside a function counts as much as one at the
top of a file: an upward import hidden in a function is still an arrow up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixq_compile"

#: bottom to top; a module belongs to the first layer with a prefix of its dotted name (relative to the package)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("errors", "atomic", "cpu", "graph_copy", "version", "factory", "plotting")),
    ("intent and IR", ("quant", "config", "ir")),
    ("mixq:: operators", ("ops",)),
    ("capture and passes", ("capture", "passes", "cost")),
    ("lowering", ("lowering",)),
    (
        "quantized model and API",
        ("quantized_model", "api", "calibration", "sensitivity", "site_report", "saved_model", "guard"),
    ),
    ("backends", ("runtimes",)),
    ("artifacts and profiling", ("artifact", "selfcheck", "profiling", "latency_measure", "chunked_inference")),
    ("public API facade", ("",)),
    (
        "applications",
        ("models", "data", "synthetic", "sampling", "training", "minibatch", "tasks", "demo", "workflow"),
    ),
    ("command line", ("cli",)),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports (a ``from pkg import submodule`` names the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and (node.module == "mixq_compile" or node.module.startswith("mixq_compile.")):
                target = node.module.removeprefix("mixq_compile").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mixq_compile" or alias.name.startswith("mixq_compile."):
                    found.add(alias.name.removeprefix("mixq_compile").lstrip("."))
    found.discard(name)
    return found


def _layer(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + ".") or (prefix == "" and name == ""):
                return index
    raise AssertionError(f"module mixq_compile.{name} belongs to no layer: add it to LAYERS (and the README layout)")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _parents(name: str) -> list[str]:
    """Packages whose ``__init__`` runs before ``name`` (importing a module imports its packages)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for name, targets in _graph().items():
        for target in targets:
            if _layer(target) > _layer(name):
                upward.append(
                    f"mixq_compile.{name} ({LAYERS[_layer(name)][0]}) -> mixq_compile.{target} "
                    f"({LAYERS[_layer(target)][0]})"
                )
    assert not upward, "imports up the stack:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == "" or nxt in _parents(node):
                continue  # a module reading its own package's facade is checked by the layer test
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(f"mixq_compile.{m}" for m in cycle))


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a planted arrow up is found (guards against a check that reads nothing)."""
    fake = tmp_path / "mixq_compile"
    (fake / "ir").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "ir" / "__init__.py").write_text("")
    (fake / "ir" / "program.py").write_text("from ..artifact import Artifact\n")
    (fake / "artifact.py").write_text("from .ir.program import IntegerProgram\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake, raising=False)
    globals()["PACKAGE"] = fake
    try:
        graph = _graph()
        assert graph["ir.program"] == {"artifact"}
        assert _layer("artifact") > _layer("ir.program")
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "mixq_compile"
