"""Faults, for real: stage processes killed with SIGKILL mid-run, then rerun; an unreachable tracking server.

Each stage runs as its own process (the stage scripts DVC runs), on tiny
images, with a real MLflow sqlite store. The moment of the kill is made
deterministic where it can be:

- extract: one image file is swapped for a named pipe (FIFO) before the run.
  Opening it blocks, so the process stalls exactly there, after every shard
  before it has been written; the test kills it while it waits.
- finetune: killed as soon as the first epoch's checkpoint is committed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from transferkit.embeddings.store import EmbeddingStore
from transferkit.embeddings.table import read_table

from conftest import LOCAL_STORE, REPO, closed_port_url, make_image_folder

pytestmark = pytest.mark.e2e

SHARD, BATCH, BLOCK_AT = 8, 4, 20  # the pipe is image 20 of the todo list: shards 0-7 and 8-15 get written


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    make_image_folder(root / "images", per_class=20, size=40)
    params = {
        "data": {"source": str(root / "images"), "val_fraction": 0.2, "test_fraction": 0.2},
        "backbone": {"image_size": 32},
        "extract": {"batch_size": BATCH, "shard_size": SHARD, "runtime": "tensorflow"},  # as tiny_project.TINY
        "head": {"epochs": 5},
        "finetune": {"strategy": "top", "blocks": 2, "epochs": 4, "patience": 10, "batch_size": 8, "min_steps": 0},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage(root, "prepare", *PREPARE_ARGS)
    return root


PREPARE_ARGS = ("--manifest", "prepared/manifest.parquet", "--report", "prepared/report.json")


def environ(root: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def command(root: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "stages" / f"{name}.py"), "--params", str(root / "params.yaml"), *LOCAL_STORE,
            *args]


def stage(root: Path, name: str, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run(command(root, name, *args), cwd=root, env=environ(root, **env),
                         capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def extract_args(root: Path, store: str = "store") -> list[str]:
    return ["--manifest", "prepared/manifest.parquet", "--store", store, "--embeddings", f"{store}.npz",
            "--metrics", f"metrics/{store}.json"]


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_killed_extract_keeps_its_shards_and_the_rerun_computes_only_the_rest(workspace):
    root = workspace
    manifest = pd.read_parquet(root / "prepared" / "manifest.parquet")
    hashes = sorted(manifest["sha256"].unique())  # extract's todo order
    victim = Path(manifest.set_index("sha256").loc[hashes[BLOCK_AT], "path"])
    victim = victim if victim.is_absolute() else root / victim
    original = victim.read_bytes()
    victim.unlink()
    os.mkfifo(victim)

    log = root / "extract-killed.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(command(root, "extract", *extract_args(root)), cwd=root, env=environ(root),
                                stdout=sink, stderr=subprocess.STDOUT)

    def shards() -> list[Path]:
        return list((root / "store").glob("*/shard-*.npz"))

    wait_for(lambda: len(shards()) == BLOCK_AT // SHARD, proc, log)
    time.sleep(1.0)  # blocked on the pipe: nothing more can be written
    kill(proc)
    assert len(shards()) == BLOCK_AT // SHARD
    cache_dir = shards()[0].parent
    # What a writer killed in the middle of a shard leaves: a half file under a temporary
    # name. (Made by hand: the write takes milliseconds, too short to hit reliably.)
    half = shards()[0].read_bytes()
    (cache_dir / f".tmp-{proc.pid}-shard-99999999999999999999-{proc.pid}.npz").write_bytes(half[: len(half) // 2])
    kept = {}
    for shard in shards():
        with np.load(shard, allow_pickle=False) as data:  # every shard on disk is whole
            assert len(data["sha256"]) == SHARD
            kept.update(zip(data["sha256"].tolist(), data["embeddings"], strict=True))

    victim.unlink()
    victim.write_bytes(original)
    rerun = stage(root, "extract", *extract_args(root))
    figures = json.loads((root / "metrics" / "store.json").read_text())
    assert (figures["reused"], figures["computed"]) == (len(kept), len(hashes) - len(kept)) == (16, 44)
    assert "half-written shard of an interrupted run" in rerun.stdout
    assert not list(cache_dir.glob(".tmp-*"))
    assert EmbeddingStore(cache_dir).known_hashes() == set(hashes)

    embeddings = read_table(root / "store.npz").rows(hashes)
    for i, h in enumerate(hashes):
        if h in kept:
            np.testing.assert_array_equal(embeddings[i], kept[h])  # reused, not recomputed
    # The same embeddings as one uninterrupted run.
    stage(root, "extract", *extract_args(root, "store-clean"))
    clean = read_table(root / "store-clean.npz").rows(hashes)
    np.testing.assert_allclose(embeddings, clean, atol=1e-5)


@pytest.fixture(scope="module")
def trained_head(workspace) -> Path:
    stage(workspace, "extract", *extract_args(workspace))
    stage(workspace, "train_head", "--manifest", "prepared/manifest.parquet", "--embeddings", "store.npz",
          "--model", "models/head.keras", "--history", "plots/train_head.csv", "--metrics", "metrics/train_head.json")
    return workspace


def finetune_args(name: str) -> list[str]:
    """The finetune stage's arguments, its outputs named after `name`, its checkpoints under .checkpoints/<name>."""
    return ["--manifest", "prepared/manifest.parquet", "--embeddings", "store.npz", "--head", "models/head.keras",
            "--model", f"models/{name}.keras", "--model-info", f"models/{name}.json", "--history",
            f"plots/{name}.csv", "--metrics", f"metrics/{name}.json", "--checkpoints", f".checkpoints/{name}"]


@pytest.fixture(scope="module")
def killed_finetune(trained_head) -> tuple[dict, bool, subprocess.CompletedProcess]:
    """One worker fine-tunes (4 epochs), is SIGKILLed once its first checkpoint is written, and runs again:
    (the checkpoint state at the kill, whether a model was published before the rerun, the rerun)."""
    root = trained_head
    checkpoints = root / ".checkpoints" / "finetune"  # a sub-folder per run: exactly one here
    log = root / "finetune-killed.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(command(root, "finetune", *finetune_args("finetune")), cwd=root, env=environ(root),
                                stdout=sink, stderr=subprocess.STDOUT)
    wait_for(lambda: any(checkpoints.glob("*/state.json")), proc, log)
    kill(proc)
    (state_path,) = checkpoints.glob("*/state.json")
    state = json.loads(state_path.read_text())
    published_by_killed = (root / "models" / "finetune.keras").exists()
    return state, published_by_killed, stage(root, "finetune", *finetune_args("finetune"))


def test_killed_finetune_resumes_from_the_last_completed_epoch(trained_head, killed_finetune):
    root = trained_head
    checkpoints = root / ".checkpoints" / "finetune"
    state, published_by_killed, rerun = killed_finetune
    done = state["epoch"]
    assert 0 <= done < 3 and len(state["history"]) == done + 1
    assert not published_by_killed
    assert f"resuming after epoch {done}" in rerun.stdout
    # Keras numbers epochs from 1 in its log: the rerun trains only the epochs after the kill.
    trained = [int(n) for n in re.findall(r"^Epoch (\d+)/4", rerun.stdout, flags=re.M)]
    assert trained == list(range(done + 2, 5))
    history = pd.read_csv(root / "plots" / "finetune.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    for before, after in zip(state["history"], history.to_dict("records"), strict=False):  # kept from the killed run
        assert after["loss"] == before["loss"]
    import keras

    assert keras.saving.load_model(root / "models" / "finetune.keras", safe_mode=True).output_shape == (None, 3)
    assert not checkpoints.exists()  # cleared once the model is published


def test_unreachable_tracking_server_stops_the_stage_before_any_work(workspace):
    out = stage(workspace, "prepare", "--manifest", "prepared-offline/manifest.parquet", "--report",
                "prepared-offline/report.json", check=False, MLFLOW_TRACKING_URI=closed_port_url())
    assert out.returncode == 1
    assert "prepare: error: MLflow tracking server" in out.stderr and "tracking.required: false" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (workspace / "prepared-offline").exists()


def test_unreachable_tracking_server_not_required_warns_and_tracks_locally(workspace, tmp_path):
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["tracking"] = {"required": False}
    relaxed = tmp_path / "params.yaml"
    relaxed.write_text(yaml.safe_dump(params))
    out = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py"), "--params", str(relaxed), *LOCAL_STORE, *PREPARE_ARGS],
        cwd=tmp_path, env={**environ(workspace), "MLFLOW_TRACKING_URI": closed_port_url()},
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "warning: MLflow tracking server unreachable" in out.stderr
    assert (tmp_path / "prepared" / "manifest.parquet").exists()
    assert (tmp_path / "mlflow.db").exists()  # the local store at the working folder


# Multi-worker fine-tuning: two worker processes on loopback, MultiWorkerMirroredStrategy from TF_CONFIG.

def start_workers(root: Path, name: str, ports: list[int], attempt: str) -> list[tuple[subprocess.Popen, Path]]:
    """The finetune stage's command once per worker, each with its TF_CONFIG task index, logs to files."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    started = []
    for index in range(len(ports)):
        log = root / f"{name}-{attempt}-worker{index}.log"
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        with open(log, "w") as sink:
            proc = subprocess.Popen(command(root, "finetune", *finetune_args(name)), cwd=root,
                                    env=environ(root, TF_CONFIG=config), stdout=sink, stderr=subprocess.STDOUT)
        started.append((proc, log))
    return started


def test_two_workers_resume_after_a_kill_and_train_as_well_as_one(trained_head, killed_finetune):
    """2 workers train; one is killed after the chief's first checkpoint: the chief stops with one line
    naming the failure; both restarted, they resume from the chief's checkpoint and finish; only the chief
    wrote the model, whose test accuracy is inside the 95% bootstrap interval of the 1-worker model's (the
    same fine-tune on one worker, also killed once and resumed)."""
    from transferkit.data.manifest import load_manifest, split_of
    from transferkit.deliver.inference import predict_files
    from transferkit.deliver.published import load_published
    from transferkit.evaluate.metrics import accuracy_interval

    from conftest import free_port

    root = trained_head
    ports = [free_port(), free_port()]
    checkpoints = root / ".checkpoints" / "two"
    (chief, chief_log), (other, other_log) = start_workers(root, "two", ports, "killed")
    try:
        wait_for(lambda: any(checkpoints.glob("*/state.json")), chief, chief_log)
        kill(other)
        chief.wait(timeout=120)  # the collective ops notice the lost worker (measured: 4-14 s)
    finally:
        for proc in (chief, other):
            if proc.poll() is None:
                proc.kill()
    assert chief.returncode == 1, chief_log.read_text()[-3000:]
    stopped = chief_log.read_text()
    assert "finetune: error: the worker cluster lost a worker" in stopped, stopped[-3000:]
    assert "Traceback" not in stopped, stopped[-3000:]
    (state_path,) = checkpoints.glob("*/state.json")
    done = json.loads(state_path.read_text())["epoch"]
    assert not (root / "models" / "two.keras").exists()  # nothing published by the interrupted run

    restarted = start_workers(root, "two", ports, "restarted")
    for proc, log in restarted:
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    chief_out, other_out = (log.read_text() for _, log in restarted)
    assert f"resuming after epoch {done}" in chief_out and f"resuming after epoch {done}" in other_out  # chief's files
    assert chief_out.count("resuming after epoch") == 1 and other_out.count("resuming after epoch") == 1
    assert "worker 1 done; the chief (worker 0) writes the model" in other_out
    assert "worker 0 of 2, 2 replicas, global batch 8" in chief_out
    assert not checkpoints.exists()  # cleared by the chief once published

    test = split_of(load_manifest(root / "prepared" / "manifest.parquet"), "test")
    paths, labels = [str(root / p) for p in test["path"]], test["label_index"].to_numpy()
    correct = {}
    for name in ("finetune", "two"):
        model, info = load_published(root / "models" / f"{name}.keras", root / "models" / f"{name}.json")
        correct[name] = predict_files(model, info, paths, 8).probabilities.argmax(1) == labels
    low, high = accuracy_interval(correct["finetune"])
    assert low <= correct["two"].mean() <= high, (correct["finetune"].mean(), correct["two"].mean(), low, high)
