"""benchmarks/ and scripts/ still import after a move: `make bench` and the README's scripts are not
run by the suite, so without this a renamed module would break them silently."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from conftest import REPO

TOOLS = sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "scripts").glob("*.py"))


def transferkit_imports(path) -> set[tuple[str, str | None]]:
    """(module, name) for every transferkit import in the file, those inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "transferkit":
            found.update((node.module, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names if alias.name.split(".")[0] == "transferkit")
    return found


def test_the_tools_are_found():
    assert {p.name for p in TOOLS} >= {"common.py", "bench_quality.py", "run_queue.py", "check_queue.py"}


@pytest.mark.parametrize("path", TOOLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_transferkit_name_a_tool_imports_exists(path):
    """Imports inside functions too: most benchmarks import transferkit only once they run."""
    missing = []
    for module, name in sorted(transferkit_imports(path), key=str):
        try:
            imported = importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module}: {error}")
            continue
        if name is not None and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")  # `from package import module`
            except ImportError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.relative_to(REPO)} imports names that do not exist: {missing}"


def test_every_tool_module_imports():
    """Each file's own top-level imports (benchmarks import `common`, scripts import each other), in one
    fresh interpreter with the folders on sys.path the way `python benchmarks/x.py` would have them."""
    code = ("import importlib.util, sys\n"
            "failed = []\n"
            "for path in sys.argv[1:]:\n"
            "    sys.path[:0] = [path.rsplit('/', 1)[0]]\n"
            "    spec = importlib.util.spec_from_file_location('tool_' + path.rsplit('/', 1)[1][:-3], path)\n"
            "    try:\n"
            "        spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "    except Exception as error:\n"
            "        failed.append(f'{path}: {error!r}')\n"
            "print('\\n'.join(failed))\n")
    out = subprocess.run([sys.executable, "-c", code, *map(str, TOOLS)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not out.stdout.strip(), out.stdout
