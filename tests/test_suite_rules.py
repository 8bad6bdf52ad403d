"""The test suite's own rules: helpers live in helper modules, never in another test module."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_test_module_imports_another():
    offenders = {path.name: sorted(m for m in imported_modules(path) if m.split(".")[-1].startswith("test_"))
                 for path in sorted(TESTS.glob("test_*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_rule_sees_an_offender(tmp_path):
    """The control for the test above: an import of a test module is found, in either form."""
    (tmp_path / "test_x.py").write_text("from tests.test_y import helper\nimport tests.test_z as z\n")
    assert imported_modules(tmp_path / "test_x.py") == {"tests.test_y", "tests.test_z"}
