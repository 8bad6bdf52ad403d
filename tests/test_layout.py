"""The package's layout: stages in the pipeline's order, no import from a later stage, no cycle, light stages
without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "esmsae"
# The stages, earliest first: a module may import from its own stage or an earlier one.
STAGES = ("pipeline", "inputs", "config", "model", "analyses", "tables", "figures", "report")
# What the many small table and figure jobs import: none of it may pull in torch.
LIGHT = ("pipeline", "inputs", "config", "tables", "figures", "report")
LIGHT_MODULES = ("esmsae.analyses.arrays",)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """The esmsae modules `path` imports at run time (anywhere in the file, but not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = [node for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]
    skipped = {id(n) for node in guarded for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("esmsae"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esmsae"):
            # `from esmsae.x import y` may name a module y of package x
            found.update(f"{node.module}.{a.name}" for a in node.names)
            found.add(node.module)
    return found


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import from a later stage into an earlier one, as 'importer -> imported'."""
    found = modules(root)
    out = []
    for name, path in found.items():
        here = stage_of(name)
        for target in sorted(runtime_imports(path)):
            there = stage_of(target)
            if target not in found or here is None or there is None:
                continue
            if STAGES.index(there) > STAGES.index(here):
                out.append(f"{name} -> {target}")
    return out


def cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Import cycles among the package's modules (each as the list of modules on it)."""
    found = modules(root)
    graph = {name: sorted(t for t in runtime_imports(path) if t in found and t != name) for name, path in found.items()}
    out, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                out.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
    return out


def test_every_module_sits_in_a_stage():
    loose = [name for name in modules() if name != "esmsae" and stage_of(name) is None]
    assert loose == []


def test_no_import_from_a_later_stage():
    assert violations() == []


def test_no_import_cycles():
    assert cycles() == []


def test_the_checks_see_a_later_stage_import_and_a_cycle(tmp_path):
    """The controls: a model module importing a table, and two modules importing each other, are both found."""
    pkg = tmp_path / "esmsae"
    for stage in ("model", "tables"):
        (pkg / stage).mkdir(parents=True)
        (pkg / stage / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("def f():\n    from esmsae.tables.b import g\n")
    (pkg / "tables" / "b.py").write_text("from esmsae.tables import c\n")
    (pkg / "tables" / "c.py").write_text("import esmsae.tables.b\n")
    (pkg / "model" / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from esmsae.tables.b import g\n")
    assert violations(pkg) == ["esmsae.model.a -> esmsae.tables.b"]
    assert cycles(pkg) == [["esmsae.tables.b", "esmsae.tables.c", "esmsae.tables.b"]]


@pytest.mark.parametrize("stage", LIGHT)
def test_light_stages_import_no_torch(stage):
    """Table and figure jobs start in about a second because nothing they import pulls in torch."""
    names = [name for name in modules() if stage_of(name) == stage] + list(LIGHT_MODULES)
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names) + \
        "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_rule_files_are_named_after_the_package():
    """Each rules/*.smk (but the shared helpers) is named after a module or stage of the package, and each
    rule script calls into the package."""
    names = {Path(n.replace(".", "/")).name for n in modules()} | set(STAGES)
    smk = sorted(p.stem for p in (REPO / "rules").glob("*.smk") if p.stem != "common")
    assert [s for s in smk if s not in names] == []
    scripts = sorted((REPO / "workflow_scripts").glob("*.py"))
    assert scripts and all("from esmsae." in p.read_text() for p in scripts)


def test_an_installed_package_holds_every_subpackage_and_the_schema():
    """pyproject's package list finds every subpackage (a non-editable install, as on a cluster, ships them all)."""
    import tomllib

    from setuptools import find_packages

    build = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(REPO), include=build["packages"]["find"]["include"]))
    assert found == {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert build["package-data"]["esmsae.config"] == ["schema.yaml"] and (PACKAGE / "config" / "schema.yaml").is_file()
    assert build["package-data"]["esmsae.report"] == ["static/*"]
    assert sorted(p.name for p in (PACKAGE / "report" / "static").iterdir()) == ["app.js", "index.html", "style.css"]
