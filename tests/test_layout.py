"""The package keeps its shape: layered imports without cycles, small layer modules,
tests that mirror the layers, and a tree that ruff accepts."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "netdef"

# Lower levels never import higher ones. A module not listed here fails the test, so a
# new module is placed deliberately.
LEVELS = [
    ("netdef.errors", 0),
    ("netdef.backend", 0),
    ("netdef.logs", 0),
    ("netdef.threads", 0),
    ("netdef.allocator", 0),
    ("netdef.limits", 0),
    ("netdef.progress", 0),
    ("netdef.blob", 1),
    ("netdef.proto", 1),
    ("netdef.io", 1),
    ("netdef.fillers", 1),
    ("netdef.params", 1),
    ("netdef.netspec", 1),
    ("netdef.logparse", 1),
    ("netdef.runs", 1),
    ("netdef.data", 2),
    ("netdef.datasets", 2),
    ("netdef.layers", 3),
    ("netdef.net", 4),
    ("netdef.batch_split", 4),
    ("netdef.summary", 4),
    ("netdef.draw", 4),
    ("netdef.evaluation", 4),
    ("netdef.solvers", 5),
    ("netdef.export", 5),
    ("netdef.classifier", 5),
    ("netdef.tools", 6),
    ("netdef.cli", 7),
    ("netdef.__main__", 8),
    ("netdef.testing", 9),  # test support drives the public API, as users do
]
LARGEST_LAYER_MODULE = 700


def level(module: str) -> int:
    if module == "netdef":
        return 9  # the package front door re-exports everything
    best = None
    for prefix, lvl in LEVELS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, lvl)
    if best is None:
        raise AssertionError(f"{module} has no place in LEVELS (tests/test_layout.py); add it deliberately")
    return best[1]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _target(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """Every netdef module each module imports, at any depth of its code (function-local too)."""
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        found: set[str] = set()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                base = _target(module, node, path.name == "__init__.py")
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in known and name != module:
                    found.add(name)
        graph[module] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycle_and_no_upward_import():
    known = modules()
    graph = imports(known)
    assert cycles(graph) == []
    upward = sorted(
        f"{m} (level {level(m)}) imports {t} (level {level(t)})"
        for m, targets in graph.items()
        for t in targets
        if level(t) > level(m)
    )
    assert upward == []


def test_the_checker_finds_cycles_and_levels():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert level("netdef.layers.base") == 3 and level("netdef.io.paths") == 1
    with pytest.raises(AssertionError, match="no place"):
        level("netdef.somewhere_new")


def test_layer_modules_stay_small_and_tests_mirror_them():
    layer_modules = sorted(p for p in (PACKAGE / "layers").glob("*.py") if p.name != "__init__.py")
    sizes = {p.name: len(p.read_text().splitlines()) for p in layer_modules}
    assert max(sizes.values()) <= LARGEST_LAYER_MODULE, sizes
    tests = {p.name for p in (ROOT / "tests" / "layers").glob("test_*.py")}
    missing = [f"test_{p.name}" for p in layer_modules if p.name != "base.py" and f"test_{p.name}" not in tests]
    assert missing == []
    strays = sorted(t for t in tests if t[len("test_") :] not in sizes)
    assert strays == []


def test_install_hints_never_name_the_unrelated_pypi_project():
    # PyPI's "netdef" is someone else's project: a hint like `pip install netdef[db]` installs it.
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "netdef[" in line.replace(" ", ""):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []


def _ruff() -> list[str]:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the test extra)")
    from ruff.__main__ import find_ruff_bin

    return [os.fspath(find_ruff_bin())]


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_accepts_the_tree(args):
    run = subprocess.run(
        [*_ruff(), *args, "netdef", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


if __name__ == "__main__":  # pragma: no cover - a quick report for people restructuring the package
    g = imports(modules())
    print("cycles:", cycles(g))
    sys.exit(0)
