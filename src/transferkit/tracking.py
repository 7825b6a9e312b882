"""Everything MLflow, in one module.

One pipeline execution (`dvc repro` or `dvc exp run`) = one MLflow parent run
carrying every parameter, the final test metrics, the plots and the model.
Each stage that ran = one child run named after the stage, with its own
parameters and per-epoch curves.

Stages are separate processes, so they find their parent run by a key that
is the same for all stages of one execution: the id of the `dvc` process that
launched them (pid + start time) plus DVC_EXP_NAME when DVC runs an
experiment. A stage run by hand (outside DVC) gets a parent of its own.

Every stage marks the parent FINISHED when it ends (RUNNING while it works),
so whichever stage runs last closes it. The first stage of an execution also
starts a small watcher process (executions.finish_execution)
that waits for the `dvc` process to end, then records the stages DVC
restored from its run-cache (their dvc.lock entries changed, yet no stage
process ran) as child runs tagged `transferkit.restored`, and closes any run a
killed stage left RUNNING.

The tracking URI is MLFLOW_TRACKING_URI when set (e.g. a team server),
otherwise the local sqlite store that dvc.yaml names (--mlflow-db, with
artifacts in --mlflow-artifacts), both relative to the repo root (DVC_ROOT:
also right for `dvc exp run --temp`, whose stages run in a temporary copy).
Nothing here runs on import.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferkit.executions import (LOCK_TAG, PARENT_TAG, PIPELINE_TAG, STAGE_TAG, file_sha256, launcher, lock_entries,
                                   pipeline_key, process_id)

# MLflow 3's UI opens an experiment in its GenAI view unless it is marked as model training
# (the UI also keeps a per-browser choice, set by the ?workflowType=machine_learning URL parameter).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


@dataclass(frozen=True)
class LocalStore:
    """The local MLflow store used when MLFLOW_TRACKING_URI is not set; paths relative to the repo root."""
    database: str  # sqlite file
    artifacts: str  # folder

    @property
    def uri(self) -> str:
        return f"sqlite:///{repo_root() / self.database}"

    @property
    def artifact_root(self) -> Path:
        return repo_root() / self.artifacts


def tracking_uri(local: LocalStore) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local.uri


def server_problem(uri: str, timeout: float = 5.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None when it answers (or the store is local).

    One quick request to the server's /health endpoint, before any work:
    MLflow's own client retries for minutes before it gives up. A 4xx answer
    counts as reachable (a proxy may well answer 401 or 404 here); a 5xx is a
    gateway in front of a server that is down. TLS follows MLflow's own
    settings (MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH).
    """
    if not uri.startswith(("http://", "https://")):
        return None
    context = None
    if uri.startswith("https://"):
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context = ssl._create_unverified_context()
        elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            context = ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout, context=context).close()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}" if exc.code >= 500 else None
    except (OSError, ValueError) as exc:  # URLError (refused, DNS), timeout, malformed URL
        return str(getattr(exc, "reason", None) or exc)
    return None


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class StageRun:
    """A child run for one stage, under the execution's parent run.

        with StageRun("train_head", params, LocalStore("mlflow.db", "mlruns")) as run:
            run.log_metrics({"val_accuracy": 0.9})

    The child logs the params the stage reads (config.STAGE_PARAMS); the
    parent logs them all.
    """

    def __init__(self, stage: str, params, local: LocalStore, manifest: str | Path | None = None):
        from transferkit.config import stage_params

        self.stage, self.local, self.manifest = stage, local, manifest
        self.all_params, self.stage_params = params.model_dump(), stage_params(params, stage)
        self.experiment, self.required = params.tracking.experiment, params.tracking.required
        self.client = None
        self.parent_id = self.run_id = None

    # ---- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> "StageRun":
        from mlflow.tracking import MlflowClient

        from transferkit.errors import TransferkitError

        uri = tracking_uri(self.local)
        self.local_default_store = not os.environ.get("MLFLOW_TRACKING_URI")
        problem = server_problem(uri)
        if problem and self.required:
            raise TransferkitError(
                f"MLflow tracking server {uri} is unreachable ({problem}). Start it, correct MLFLOW_TRACKING_URI, "
                f"or set tracking.required: false in params.yaml to go on with local-only tracking.")
        if problem:
            uri, self.local_default_store = self.local.uri, True
            print(f"{self.stage}: warning: MLflow tracking server unreachable ({problem}); "
                  f"tracking.required is false, so this run is tracked locally in {uri}", file=sys.stderr, flush=True)
        self.uri = uri
        try:
            self.client = MlflowClient(uri)
            self.experiment_id = self._experiment_id()
        except Exception as exc:  # bad URI, locked or unwritable database
            raise TransferkitError(f"MLflow tracking store {uri} is not usable: {exc}") from None
        self.parent_id = self._parent_run(self.experiment_id)
        child = self.client.create_run(
            self.experiment_id, run_name=self.stage,
            tags={PARENT_TAG: self.parent_id, STAGE_TAG: self.stage, PIPELINE_TAG: pipeline_key()})
        self.run_id = child.info.run_id
        self.log_params(flatten(self.stage_params))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is None and self.manifest and Path(self.manifest).exists():
            self._log_dataset(Path(self.manifest))
        self.client.set_terminated(self.run_id, status=status)
        # Whichever stage ends last leaves the parent closed; a failure fails the execution.
        self.client.set_terminated(self.parent_id, status=status)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        artifact_location = None
        if self.local_default_store:
            # Local store: artifacts in the folder dvc.yaml names, at the repo root, not in
            # whatever directory the first stage happened to run in.
            artifact_location = (self.local.artifact_root / self.experiment).as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=artifact_location,
                                             tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

    def _log_dataset(self, manifest: Path) -> None:
        """The prepared manifest as the runs' dataset input (name, digest of its content, source path)."""
        import warnings

        import pandas as pd
        from mlflow.data import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # MLflow's own: an ambiguous local source type, a pandas 4 deprecation
            warnings.simplefilter("ignore")
            dataset = from_pandas(pd.read_parquet(manifest), source=str(manifest.resolve()), name="prepared manifest")
        inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])]
        for run_id in (self.run_id, self.parent_id):
            self.client.log_inputs(run_id, datasets=inputs)

    def _parent_run(self, experiment_id: str) -> str:
        key = pipeline_key()
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`{STAGE_TAG}` = 'pipeline'",
            max_results=1)
        if found:
            parent_id = found[0].info.run_id
            if found[0].info.status == "FAILED":
                return parent_id  # an earlier stage failed: the execution stays failed
            self.client.update_run(parent_id, status="RUNNING")
            return parent_id
        name = os.environ.get("DVC_EXP_NAME") or time.strftime("repro-%Y%m%d-%H%M%S")
        tags = {PIPELINE_TAG: key, STAGE_TAG: "pipeline"}
        commit = _git_commit(repo_root())
        if commit:
            tags["mlflow.source.git.commit"] = commit
        # Source: the command, and the dvc.lock it started from (the watcher records the final one).
        tags["mlflow.source.type"] = "LOCAL"
        tags["mlflow.source.name"] = "dvc exp run" if os.environ.get("DVC_EXP_NAME") else "dvc repro"
        lock = file_sha256(Path.cwd() / "dvc.lock")
        if lock:
            tags[LOCK_TAG] = lock
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
        parent = self.client.create_run(experiment_id, run_name=name, tags=tags)
        self._log_params(parent.info.run_id, flatten(self.all_params))
        self._start_watcher(parent.info.run_id)
        return parent.info.run_id

    def _start_watcher(self, parent_id: str) -> None:
        """After the `dvc` process ends: record restored stages, close what a kill left open."""
        dvc = launcher()
        if dvc is None:
            return  # run by hand: no execution to wait for
        lock = Path.cwd() / "dvc.lock"
        args = {"uri": self.uri, "experiment_id": self.experiment_id, "parent_id": parent_id,
                "launcher": process_id(dvc), "lock": str(lock), "before": lock_entries(lock)}
        # Detached, with no pipes: DVC and callers waiting for the stage's output must not wait for it.
        subprocess.Popen([sys.executable, "-m", "transferkit.executions", "finish", json.dumps(args)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)

    # ---- logging -------------------------------------------------------------------
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_params(self, params: dict[str, Any]) -> None:
        self._log_params(self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, parent: bool = False) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        self.client.log_batch(self.parent_id if parent else self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, parent: bool = False) -> None:
        self.client.log_artifact(self.parent_id if parent else self.run_id, str(path), artifact_path)

    def keras_callback(self):
        """A Keras callback logging every epoch's logs (loss, accuracy, val_*) as curves."""
        import keras

        run = self

        class EpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                run.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)

        return EpochLogger()

    def log_model(self, model_file: str | Path, artifacts: dict[str, str], code_paths: list[str | Path],
                  signature, input_example, pip_requirements: list[str], registered_name: str) -> str:
        """Log a models-from-code pyfunc on the parent run and register it; returns the model URI."""
        import mlflow

        with mlflow.start_run(run_id=self.parent_id, experiment_id=self.experiment_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(model_file), artifacts=artifacts,
                code_paths=[str(p) for p in code_paths], signature=signature, input_example=input_example,
                pip_requirements=pip_requirements, registered_model_name=registered_name)
        return info.model_uri
