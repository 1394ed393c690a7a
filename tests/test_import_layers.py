"""The packages are layered addd <- ablations <- sweeps: no module imports a higher layer, not
even inside a function (read from the source with ``ast``; nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("addd", "ablations", "sweeps")  # each may import the ones before it


def imported_packages(tree: ast.AST) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in ``tree``, at any depth (function-local too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def upward_imports(package: str) -> list[str]:
    higher = set(LAYERS[LAYERS.index(package) + 1:])
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name, line in sorted(imported_packages(ast.parse(path.read_text(), str(path)))):
            if name in higher:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_higher_layer(package):
    assert list((REPO / package).rglob("*.py")), f"no modules found under {package}/"
    assert upward_imports(package) == []


def test_the_checker_sees_function_local_and_dotted_imports():
    tree = ast.parse("import os\n\ndef f():\n    from sweeps.study import run_study\n    import ablations.report\n")
    assert {name for name, _ in imported_packages(tree)} == {"os", "sweeps", "ablations"}
