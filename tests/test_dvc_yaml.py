"""dvc.yaml stays honest: each stage's deps are exactly the code that shapes its outputs, and its
params exactly the sections it reads (config.STAGE_PARAMS). Plus the layout rules that keep it so:
stage = script = module, small modules, no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from transferkit.config import STAGE_PARAMS

SRC = REPO / "src" / "transferkit"
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# Modules that cannot change a stage's outputs, so editing them must re-run nothing.
# Their own imports are not followed: they serve only them.
CANNOT_CHANGE_OUTPUTS = {
    "tracking": "MLflow records",
    "executions": "MLflow records of a whole execution",
    "progress": "progress lines",
    "stage": "error printing and process set-up around a stage",
    "errors": "the exception type",
    "config": "the params schema: every value a stage uses is in params.yaml, tracked by `params:`",
}


def imported_modules(path: Path) -> set[str]:
    """transferkit modules imported anywhere in the file, imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "transferkit" and len(parts) >= 2 and (SRC / f"{parts[1]}.py").exists():
                found.add(parts[1])
    return found


def closure(script: Path) -> set[str]:
    todo, seen = list(imported_modules(script)), set()
    while todo:
        module = todo.pop()
        if module in seen or module in CANNOT_CHANGE_OUTPUTS:
            continue
        seen.add(module)
        todo.extend(imported_modules(SRC / f"{module}.py"))
    return seen


def script_of(stage: dict) -> str:
    return re.match(r"sh stages/python (stages/\w+\.py)", stage["cmd"]).group(1)


@pytest.mark.parametrize("name", list(PIPELINE))
def test_deps_are_the_script_and_its_import_closure(name):
    stage = PIPELINE[name]
    script = script_of(stage)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
    assert script in deps
    listed = {Path(d).stem for d in deps if d.startswith("src/transferkit/")}
    needed = closure(REPO / script)
    assert not needed - listed, f"{name}: deps lack {sorted(f'src/transferkit/{m}.py' for m in needed - listed)}"
    assert not listed - needed, f"{name}: deps list modules it never imports: {sorted(listed - needed)}"


@pytest.mark.parametrize("name", list(PIPELINE))
def test_stage_script_and_module_share_the_stage_name(name):
    assert script_of(PIPELINE[name]) == f"stages/{name}.py"
    assert (SRC / f"{name}.py").exists()


def test_params_are_the_stage_params_table():
    assert {name: tuple(stage.get("params", [])) for name, stage in PIPELINE.items()} == STAGE_PARAMS


@pytest.mark.parametrize("name", list(PIPELINE))
def test_stage_scripts_read_only_their_params(name):
    """Every `params.<section>[.<key>]` a stage script reads is in its STAGE_PARAMS (or is `tracking`)."""
    tree = ast.parse((REPO / script_of(PIPELINE[name])).read_text(encoding="utf-8"))
    allowed = set(STAGE_PARAMS[name])
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "params":
            read.add(node.attr)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "params"):
            section, key = node.value.attr, node.attr
            if section not in allowed and section != "tracking":
                assert f"{section}.{key}" in allowed, f"{name} reads params.{section}.{key}"
                read.discard(section)
    assert read <= allowed | {"tracking"}, f"{name} reads {sorted(read - allowed)}"


def test_no_module_is_over_300_lines():
    long = {p.name: n for p in SRC.glob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long


def test_no_import_cycles():
    graph = {p.stem: imported_modules(p) - {p.stem} for p in SRC.glob("*.py") if p.stem != "__init__"}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            assert state.get(other) != "open", f"import cycle: {' -> '.join(path + [module, other])}"
            if other not in state:
                visit(other, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_train_head_never_reaches_the_decoder_or_the_backbones():
    assert not closure(REPO / "stages" / "train_head.py") & {"images", "datasets", "backbones", "efficientnet_lite"}
