"""Target 6: what a head-only parameter change costs.

The repo's tracked files (`git ls-files`) are copied into a fresh git repo in
a temporary folder, with a small dataset (the first `--per-class` images of
every class of the embedded sample); the real `dvc repro` runs the whole
pipeline, then `head.learning_rate` is changed in params.yaml and `dvc repro`
runs again. DVC skips prepare and extract; train_head runs, and so do
finetune and evaluate, because they consume the head. Everything else is the
default params.yaml.

    ratio = wall time of the second `dvc repro` / wall time of the first

    python benchmarks/bench_rerun.py [--per-class 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from transferkit.tracking.executions import stages_run

import common


def run(command: list[str], cwd: Path, environ: dict) -> tuple[str, float]:
    start = time.perf_counter()
    out = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    common.header("re-run cost: dvc repro after a head-only parameter change")

    bin_dir = Path(sys.executable).parent  # this venv's python and dvc, as `make` puts them first on PATH
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PYTHONPATH"))}
    environ.update(PATH=f"{bin_dir}{os.pathsep}{environ['PATH']}", DVC_NO_ANALYTICS="1",
                   MLFLOW_DISABLE_TELEMETRY="true", TF_CPP_MIN_LOG_LEVEL="2",
                   # the package under test: this checkout's src/, whatever the venv has installed
                   PYTHONPATH=str(common.REPO / "src"))
    root = Path(tempfile.mkdtemp(prefix="bench-rerun-"))
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=common.REPO, capture_output=True, text=True,
                               check=True).stdout.split("\0")
        for name in filter(None, files):
            if (common.REPO / name).is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(common.REPO / name, root / name)
        for folder in sorted(p for p in common.SAMPLE.iterdir() if p.is_dir()):
            target = root / "data" / "small" / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.iterdir())[:args.per_class]:
                shutil.copy2(image, target / image.name)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["data"]["source"] = "data/small"
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for command in (["git", "init", "-q"], ["git", "add", "-A"],
                        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"]):
            subprocess.run(command, cwd=root, check=True, env=environ)
        images = sum(1 for _ in (root / "data" / "small").rglob("*.png"))
        print(f"{images} images ({args.per_class} per class), default params.yaml otherwise", flush=True)

        first_log, first = run(["dvc", "repro"], root, environ)
        print(f"first dvc repro:  {first:6.1f} s, stages run: {', '.join(stages_run(first_log))}", flush=True)
        params["head"]["learning_rate"] = params["head"]["learning_rate"] * 2
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        second_log, second = run(["dvc", "repro"], root, environ)
        print(f"after head.learning_rate x2: {second:6.1f} s, stages run: {', '.join(stages_run(second_log))}")
        ratio = second / first
        common.ratio_line("rerun_after_head_change_fraction", ratio, "report", None)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
