"""hacontrol.core does no I/O: it may import only the standard library's pure modules and itself."""

from __future__ import annotations

import ast
import pathlib

import hacontrol.core

ALLOWED = {"__future__", "dataclasses", "enum", "typing", "collections.abc", "hacontrol.core"}
CORE = pathlib.Path(hacontrol.core.__file__).parent
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _modules():
    return sorted(CORE.rglob("*.py"))


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""


def test_core_imports_nothing_with_side_effects():
    offenders = []
    for path in _modules():
        for name in _imports(ast.parse(path.read_text())):
            if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED):
                offenders.append(f"{path.name}: import {name}")
    assert not offenders, offenders


def test_core_calls_no_builtin_with_side_effects():
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
                offenders.append(f"{path.name}:{node.lineno}: {node.func.id}()")
    assert not offenders, offenders


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The purity test can fail: it flags a module that imports time."""
    bad = ast.parse("import time\nfrom kazoo.client import KazooClient\n")
    names = list(_imports(bad))
    assert names == ["time", "kazoo.client"]
    assert not any(n == ok or n.startswith(ok + ".") for n in names for ok in ALLOWED)
