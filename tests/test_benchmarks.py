"""The benchmark scripts stay runnable: they parse, and every ``polyprune`` name they import (also
inside functions, where an import only fails when the benchmark reaches it) exists.

A core reorganisation once left ``bench_prune.py`` with a syntax error and imports of removed
modules; nothing ran it until somebody needed its figures.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).parent / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


def polyprune_imports(tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """``(module, name or None, line)`` for every import of ``polyprune`` in a module's syntax tree."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "polyprune":
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "polyprune"]
    return out


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports_resolve(script):
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))  # a SyntaxError fails here
    missing = []
    for module, name, line in polyprune_imports(tree):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"line {line}: {module} ({e})")
            continue
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module}.{name}")
    assert not missing, f"{script.name} imports names that do not exist: " + "; ".join(missing)
