"""The tiny project the end-to-end tests run for real: this repo's tracked files in a fresh git repo,
a small image folder and small sizes in params.yaml, so the whole pipeline takes a couple of minutes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, make_image_folder

BIN = Path(sys.executable).parent  # the venv running the tests: its python, dvc, mlflow, transferkit
TINY = {
    "data": {"source": "data/tiny", "val_fraction": 0.2, "test_fraction": 0.2},
    "backbone": {"image_size": 32},
    # The TensorFlow runtime: LiteRT would convert the backbone for every fresh store (about 20 s each, 6 times
    # here); tests/test_extract.py runs the LiteRT path.
    "extract": {"batch_size": 16, "runtime": "tensorflow"},
    "head": {"epochs": 8, "patience": 3},
    # min_steps 0: the step floor would give a 30-image set hundreds of epochs (the explicit epochs win anyway)
    "finetune": {"strategy": "top", "blocks": 2, "epochs": 1, "batch_size": 16, "min_steps": 0},
    # The 40 px images get a companion under auto: a narrow one, briefly (it then competes in finetune).
    "companion": {"epochs": 2, "width": 4, "batch_size": 16},
}
STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])  # in the order dvc repro runs them


def sh(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
       timeout: float = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-4000:]}\n"
                             f"{out.stderr[-4000:]}")
    return out


def make_tiny_project(root: Path) -> Path:
    """The repo's tracked files (not the sample data or tests) in root, tiny params; returns the image folder."""
    for name in sh(["git", "ls-files"], REPO).stdout.split():
        if name.startswith(("data/sample/", "tests/")):
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)
    copy_web_runtime(root)
    images = make_image_folder(root / "data" / "tiny", per_class=10, size=40)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return images


def copy_web_runtime(root: Path) -> None:
    """onnxruntime-web's files the export stage copies into its browser page, where `make install` (npm ci)
    leaves them (git-ignored, so not among the tracked files): hard links when the file system allows."""
    from transferkit.deliver.web import ORT_FILES

    from conftest import WEB_RUNTIME

    target = root / WEB_RUNTIME.relative_to(REPO)
    target.mkdir(parents=True, exist_ok=True)
    for name in ORT_FILES:
        try:
            (target / name).hardlink_to(WEB_RUNTIME / name)
        except OSError:
            shutil.copy2(WEB_RUNTIME / name, target / name)


def commit_all(root: Path, message: str, env: dict | None = None) -> None:
    """Commit everything; a new repository gets an identity of its own, in its own config: `dvc exp run`
    commits with the repository's identity, and a test machine may have no global one."""
    if not (root / ".git").exists():
        sh(["git", "init", "-q", "-b", "main"], root, env)
        sh(["git", "config", "user.name", "transferkit tests"], root, env)
        sh(["git", "config", "user.email", "tests@transferkit.invalid"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", message], root, env)
