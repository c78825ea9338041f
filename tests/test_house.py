"""The house rules a newcomer relies on: every module short enough to read, every function at
most 60 lines, no test module that imports another, a README whose layout names every module
once, and a YAML group that sets only what differs from its dataclass."""

from __future__ import annotations

import ast
import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.paths import REPO_ROOT
from w2v2_pretrain.training.config import ProbeSettings

PACKAGE = sorted((REPO_ROOT / "w2v2_pretrain").rglob("*.py")) + [REPO_ROOT / "configs/__init__.py"]


def test_modules_and_functions_stay_short():
    long_modules = {
        str(p.relative_to(REPO_ROOT)): n
        for p in PACKAGE
        if (n := len(p.read_text().splitlines())) >= 400
    }
    assert long_modules == {}
    long_functions = []
    for p in PACKAGE:
        for node in ast.walk(ast.parse(p.read_text())):
            n = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and n > 60:
                long_functions.append(f"{p.relative_to(REPO_ROOT)}:{node.lineno} {n}")
    assert long_functions == []
    assert len((REPO_ROOT / "w2v2_pretrain/train.py").read_text().splitlines()) < 200


def test_no_test_module_imports_another():
    tests = {p.stem for p in (REPO_ROOT / "tests").glob("test_*.py")}
    found = []
    for p in (REPO_ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{p.name}: {n}" for n in names if n in tests]
    assert found == []


def layout_entries(readme: str) -> list[str]:
    """Every ``folder/file.py`` the README's layout names: a line's ``*.py`` words belong to
    the folder its indentation puts it in; a line indented to the description column goes on
    the entry above it."""
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    stack: list[str] = []
    folder, named = "", []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent < 18:  # an entry (the description column starts at 20)
            first = line.split()[0]
            stack = stack[: indent // 2]
            if first.endswith("/"):
                stack.append(first)
            folder = "".join(stack)
        named += [folder + m for m in re.findall(r"[\w]+\.py\b", line)]
    return named


def test_the_readme_layout_names_every_module_once():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    named = layout_entries(readme)
    modules = [str(p.relative_to(REPO_ROOT)) for p in PACKAGE]
    assert sorted(m for m in named if named.count(m) > 1) == []
    assert sorted(set(modules) - set(named)) == []
    package = [m for m in named if m.startswith(("w2v2_pretrain/", "configs/"))]
    assert sorted(set(package) - set(modules)) == []
    # the map a newcomer needs first: the layout and "Where is X" within the first 120 lines
    head = "\n".join(readme.splitlines()[:120])
    assert "## Layout" in head and "### Where is X" in head


@pytest.mark.parametrize(
    "group, schema",
    [("data", DataConfig), ("probe", ProbeSettings)],
)
def test_a_yaml_group_sets_only_what_differs_from_its_dataclass(group, schema):
    """Its dataclass is the one source of every default: a YAML option that restated one would
    drift from it (a probe setting once read 0.333 against the dataclass's 1/3)."""
    defaults = {f.name: f.default for f in dataclasses.fields(schema)}
    restated = []
    for path in sorted((REPO_ROOT / "configs" / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        node = node.get(group, node) if "# @package _global_" in path.read_text() else node
        for key, value in node.items():
            if key != "defaults" and key in defaults and defaults[key] == value:
                restated.append(f"{path.name}: {key}: {value!r}")
    assert restated == []
