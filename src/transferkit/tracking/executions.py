"""Which pipeline execution a stage belongs to, and completing its MLflow record after DVC ends.

An execution is one `dvc repro` / `dvc exp run`: its stages are separate
processes that share the nearest `dvc` ancestor process. runs.StageRun
uses `pipeline_key` to find the execution's parent run, and the first stage
starts `finish_execution` in a detached process (`python -m
transferkit.tracking.executions finish ...`): once the `dvc` process ends, it records
the stages DVC restored from its run-cache (their dvc.lock entries changed,
yet no stage process ran) as child runs tagged `transferkit.restored`, and
closes what a killed stage left RUNNING. (Runs in a temporary copy, `dvc exp
run --temp` or the queue, lose their dvc.lock before it looks: there it only
closes runs.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import psutil

PIPELINE_TAG = "transferkit.pipeline"
STAGE_TAG = "transferkit.stage"
RESTORED_TAG = "transferkit.restored"
PARENT_TAG = "mlflow.parentRunId"
LOCK_TAG = "dvc.lock.sha256"  # the parent run's source: the dvc.lock its stages left


def stages_run(log: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` / `dvc queue logs` output says ran, in order (not those restored)."""
    return re.findall(r"Running stage '(\w+)'", log)


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def launcher() -> psutil.Process | None:
    """The nearest `dvc` ancestor process: the execution this stage belongs to."""
    for proc in psutil.Process().parents():
        try:
            cmdline = proc.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if any(Path(part).name == "dvc" for part in cmdline[:3]) or cmdline[1:3] == ["-m", "dvc"]:
            return proc
    return None


def process_id(proc: psutil.Process) -> str:
    return f"{proc.pid}-{int(proc.create_time() * 1000)}"


def pipeline_key() -> str:
    """Same for every stage of one execution; a stage run by hand is an execution of its own."""
    return f"{os.environ.get('DVC_EXP_NAME', 'repro')}:{process_id(launcher() or psutil.Process())}"


def lock_entries(lock: Path) -> dict[str, str]:
    """stage -> digest of its dvc.lock entry (deps, params, outs with their hashes)."""
    import yaml

    try:
        stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages", {})
    except (OSError, AttributeError, yaml.YAMLError):
        return {}
    return {name: hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()
            for name, entry in stages.items()}


def restored_metrics(lock: Path, stage: str) -> dict[str, float]:
    """The numbers in a stage's DVC metrics files (as dvc.yaml beside the lock names them), as restored."""
    import yaml

    try:
        pipeline = yaml.safe_load((lock.parent / "dvc.yaml").read_text(encoding="utf-8"))
        entries = pipeline["stages"][stage].get("metrics", [])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}
    values: dict[str, float] = {}
    for entry in entries:
        path = lock.parent / (entry if isinstance(entry, str) else next(iter(entry)))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        values.update({k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return values


def finish_execution(uri: str, experiment_id: str, parent_id: str, launcher: str, lock: str,
                     before: dict[str, str], poll: float = 0.5) -> None:
    """Wait for the `dvc` process `launcher` (pid-starttime) to end, then complete the execution's record."""
    from mlflow.tracking import MlflowClient

    pid = int(launcher.split("-")[0])
    while True:
        try:
            proc = psutil.Process(pid)
            if process_id(proc) != launcher or proc.status() == psutil.STATUS_ZOMBIE:
                break  # ended (a zombie has ended too), or the pid now belongs to another process
        except psutil.NoSuchProcess:
            break
        time.sleep(poll)
    client = MlflowClient(uri)
    children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")
    for child in children:
        if child.info.status == "RUNNING":  # its stage was killed
            client.set_terminated(child.info.run_id, status="KILLED")
    ran = {child.info.run_name for child in children}
    after = lock_entries(Path(lock))
    final_lock = file_sha256(Path(lock))
    if final_lock:  # absent in the temporary copies of `dvc exp run --temp` and the queue
        client.set_tag(parent_id, LOCK_TAG, final_lock)
    restored = sorted(stage for stage, entry in after.items() if before.get(stage) != entry and stage not in ran)
    key = client.get_run(parent_id).data.tags.get(PIPELINE_TAG, "")
    for stage in restored:
        run = client.create_run(experiment_id, run_name=stage, tags={
            PARENT_TAG: parent_id, STAGE_TAG: stage, PIPELINE_TAG: key, RESTORED_TAG: "true",
            "mlflow.note.content": "Restored by DVC from its run-cache: these inputs were run before."})
        for name, value in restored_metrics(Path(lock), stage).items():
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id, status="FINISHED")
    if restored:
        client.set_tag(parent_id, "transferkit.restored_stages", ",".join(restored))
    if client.get_run(parent_id).info.status == "RUNNING":  # a stage was killed
        client.set_terminated(parent_id, status="KILLED")


if __name__ == "__main__" and sys.argv[1:2] == ["finish"]:
    finish_execution(**json.loads(sys.argv[2]))
