"""stages/python, the interpreter dvc.yaml runs every stage with: no activated venv needed."""

import os
import subprocess
from pathlib import Path

from conftest import REPO

LAUNCHER = REPO / "stages" / "python"
SHOW = ["-c", "import os, sys; print(sys.executable); print(os.environ['PYTHONPATH'].split(os.pathsep)[0])"]


def launch(env: dict, cwd: Path, launcher: Path = LAUNCHER) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "TRANSFERKIT_PYTHON", "PYTHONPATH")}
    out = subprocess.run(["sh", str(launcher), *SHOW], env={**base, **env}, cwd=cwd, capture_output=True, text=True,
                         check=True)
    return out.stdout.splitlines()


def fake_venv(root: Path) -> Path:
    """root/.venv/bin/python: a script that runs the real interpreter but names itself."""
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho {python}\nexec python3 "$@" | tail -n +2\n')
    python.chmod(0o755)
    return python


def test_the_repo_venv_of_dvc_root_runs_stages_also_from_a_temporary_copy(tmp_path):
    """`dvc exp run --temp` / the queue: the copy has no .venv; DVC_ROOT (the real repo) has."""
    python = fake_venv(tmp_path / "repo")
    first, source = launch({"DVC_ROOT": str(tmp_path / "repo")}, tmp_path)
    assert first == str(python)
    assert source == str(REPO / "src")  # the code of the copy being run, not of the installed package


def test_an_explicit_interpreter_wins_and_without_any_venv_python3_on_path_runs(tmp_path):
    python = fake_venv(tmp_path / "repo")
    assert launch({"DVC_ROOT": str(tmp_path / "repo"), "TRANSFERKIT_PYTHON": "python3"}, tmp_path)[0] != str(python)
    # A checkout without .venv, run by DVC outside any: the user's own python3 on PATH.
    copy = tmp_path / "checkout" / "stages" / "python"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(LAUNCHER.read_bytes())
    bin_dir = tmp_path / "own-env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3").symlink_to(Path(os.path.realpath(subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True).stdout.strip())))
    executable, source = launch({"PATH": f"{bin_dir}:/usr/bin:/bin"}, tmp_path, copy)
    assert executable.startswith(str(bin_dir)) or Path(executable).resolve() == (bin_dir / "python3").resolve()
    assert source == str(tmp_path / "checkout" / "src")
