"""dvc.yaml stays honest: each stage's deps are exactly the code that shapes its outputs, and its
params exactly the sections it reads (config.STAGE_PARAMS). Plus the layout rules that keep it so:
stage = script = module, packages by concern, no import cycles.

The rule for deps: a stage lists its script and every module file in its import closure (imports
inside functions included), each by its own path, never a whole folder: editing one module then
re-runs exactly the stages that can reach it. Package `__init__.py` files hold only their docstring,
so they are never deps. Modules that cannot change an output (CANNOT_CHANGE_OUTPUTS) are left out,
and their own imports are not followed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from transferkit.config import STAGE_PARAMS

from conftest import REPO

SRC = REPO / "src" / "transferkit"
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# Modules (dotted, below transferkit) that cannot change a stage's outputs, so editing them must
# re-run nothing; a package name stands for every module in it.
CANNOT_CHANGE_OUTPUTS = {
    "tracking": "MLflow records (the whole package)",
    "progress": "progress lines",
    "errors": "the exception type",
    "config": "the params schema: every value a stage uses is in params.yaml, tracked by `params:`",
}


def module_file(dotted: str) -> Path | None:
    """src/transferkit/<a>/<b>.py for "a.b", or None when it is not a module file (a package, a name)."""
    path = SRC.joinpath(*dotted.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def all_modules() -> dict[str, Path]:
    """Every module of the package, dotted, __init__ files excepted."""
    return {".".join(p.relative_to(SRC).with_suffix("").parts): p for p in SRC.rglob("*.py")
            if p.name != "__init__.py"}


def imported_modules(path: Path) -> set[str]:
    """transferkit modules (dotted, below transferkit) imported anywhere in the file, imports inside
    functions included: `import transferkit.a.b`, `from transferkit.a.b import x`, `from transferkit.a import b`."""
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
            if parts[0] == "transferkit" and len(parts) >= 2 and module_file(".".join(parts[1:])):
                found.add(".".join(parts[1:]))
    return found


def excluded(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in CANNOT_CHANGE_OUTPUTS)


def closure(script: Path) -> set[str]:
    todo, seen = list(imported_modules(script)), set()
    while todo:
        module = todo.pop()
        if module in seen or excluded(module):
            continue
        seen.add(module)
        todo.extend(imported_modules(module_file(module)))
    return seen


def data_files_named(modules: set[str]) -> set[str]:
    """Non-Python files of the package (e.g. deliver/web_page.html) whose file name one of `modules` writes as
    a string: files those modules read, so deps of the stage like its code (src/transferkit/... paths)."""
    sources = [module_file(m).read_text(encoding="utf-8") for m in modules]
    return {f"src/transferkit/{p.relative_to(SRC).as_posix()}" for p in SRC.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and any(f'"{p.name}"' in text for text in sources)}


def script_of(stage: dict) -> str:
    return re.match(r"sh stages/python (stages/\w+\.py)", stage["cmd"]).group(1)


@pytest.mark.parametrize("name", list(PIPELINE))
def test_deps_are_the_script_and_its_import_closure(name):
    stage = PIPELINE[name]
    script = script_of(stage)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
    assert script in deps
    listed = {".".join(Path(d).relative_to("src/transferkit").with_suffix("").parts)
              for d in deps if d.startswith("src/transferkit/") and d.endswith(".py")}
    needed = closure(REPO / script)
    missing = sorted(f"src/transferkit/{m.replace('.', '/')}.py" for m in needed - listed)
    assert not missing, f"{name}: deps lack {missing}"
    assert not listed - needed, f"{name}: deps list modules it never imports: {sorted(listed - needed)}"
    data = {d for d in deps if d.startswith("src/transferkit/") and not d.endswith(".py")}
    assert data == data_files_named(needed), f"{name}: package data files in deps {sorted(data)}, read: " \
                                             f"{sorted(data_files_named(needed))}"


def test_export_depends_on_the_browser_runtime_through_its_lock_file():
    """The browser page's onnxruntime-web files come from node_modules, which is git-ignored: no stage lists a
    file there (a fresh clone before `make install`, or a queued experiment's copy of the repo, would fail on
    the missing dep); export lists package-lock.json, which pins their version and integrity hash."""
    stage = PIPELINE["export"]
    assert re.search(r"--web-runtime node_modules/onnxruntime-web/dist\b", stage["cmd"])
    assert "package-lock.json" in stage["deps"]
    assert not [name for name, other in PIPELINE.items()
                if any(isinstance(d, str) and d.startswith("node_modules/") for d in other["deps"])]


@pytest.mark.parametrize("name", list(PIPELINE))
def test_stage_script_and_module_share_the_stage_name(name):
    assert script_of(PIPELINE[name]) == f"stages/{name}.py"
    assert [m for m in all_modules() if m.split(".")[-1] == name], f"no module {name}.py in src/transferkit"


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


def test_package_init_files_hold_only_their_docstring():
    """So importing a module never runs other code, and no __init__.py needs to be a stage's dep."""
    for init in SRC.rglob("__init__.py"):
        body = ast.parse(init.read_text(encoding="utf-8")).body
        code = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                and not (init.parent == SRC and isinstance(node, ast.Assign))]  # the top one holds __version__
        assert not code, f"{init.relative_to(REPO)} holds code"


def test_no_import_cycles():
    graph = {module: imported_modules(path) - {module} for module, path in all_modules().items()}
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
    reached = closure(REPO / "stages" / "train_head.py")
    assert not {m for m in reached if m in ("data.images", "data.datasets") or m.startswith("backbones.")}


# The architecture as floors, bottom first: a module imports only from its own package or from a
# lower floor, so the folder tree reads as the diagram (and a concern is never cut in two by a line
# count: a package is as big as its concern). Two packages on one floor never import each other.
FLOORS = [
    {"errors", "files", "seeding", "device", "progress", "results"},  # the foundation every concern stands on
    {"backbones"},  # pretrained models, plain Keras: no params, no data
    {"config"},  # params.yaml, validated against the backbone registry
    {"data"},  # sources, prepare, the manifest, the decoders
    {"deliver", "tracking"},  # the published model, runtimes, inference, export, serving; MLflow
    {"embeddings"},  # extract, the store, the table (runs the backbone through a runtime)
    {"train", "evaluate"},  # the head, the fine-tune; test metrics and plots
    {"stage"},  # what every stage script runs its work in: one-line errors, metrics file, MLflow run
    {"cli"},  # the `transferkit` command
]


def floor_of(module: str) -> int:
    top = module.split(".")[0]
    found = [i for i, floor in enumerate(FLOORS) if top in floor]
    assert found, f"{module}: its package {top!r} is on no floor of FLOORS: place it"
    return found[0]


def test_imports_go_down_the_floors():
    upward = [f"{module} imports {other}" for module, path in all_modules().items()
              for other in imported_modules(path)
              if other.split(".")[0] != module.split(".")[0] and floor_of(other) >= floor_of(module)]
    assert not upward, "imports that do not go down a floor:\n" + "\n".join(sorted(upward))
