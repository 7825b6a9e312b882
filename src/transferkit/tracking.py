"""Everything MLflow, in one module.

One pipeline execution (`dvc repro` or `dvc exp run`) = one MLflow parent run
carrying every parameter, the final test metrics, the plots and the model.
Each stage that ran = one child run named after the stage, with its own
parameters and per-epoch curves.

Stages are separate processes, so they find their parent run by a key that
is the same for all stages of one execution: the id of the `dvc` process that
launched them (pid + start time) plus DVC_EXP_NAME when DVC runs an
experiment. A stage run by hand (outside DVC) gets a parent of its own.

The tracking URI is MLFLOW_TRACKING_URI when set (e.g. a team server),
otherwise a sqlite file at the repo root (DVC_ROOT: also right for
`dvc exp run --temp`, whose stages run in a temporary copy). Nothing here runs
on import.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

PIPELINE_TAG = "transferkit.pipeline"
STAGE_TAG = "transferkit.stage"
PARENT_TAG = "mlflow.parentRunId"


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


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


def _launcher_id() -> str:
    """pid-starttime of the nearest `dvc` ancestor process, else of this process."""
    me = psutil.Process()
    for proc in me.parents():
        try:
            cmdline = proc.cmdline()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if any(Path(part).name == "dvc" for part in cmdline[:3]) or cmdline[1:3] == ["-m", "dvc"]:
            return f"{proc.pid}-{int(proc.create_time() * 1000)}"
    return f"{me.pid}-{int(me.create_time() * 1000)}"


def pipeline_key() -> str:
    return f"{os.environ.get('DVC_EXP_NAME', 'repro')}:{_launcher_id()}"


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

        with StageRun("train_head", params, {"head": params.head.model_dump()}) as run:
            run.log_metrics({"val_accuracy": 0.9})
    """

    def __init__(self, stage: str, params, stage_params: dict[str, Any]):
        """params: the whole validated Params (logged on the parent run; its tracking section is used here)."""
        self.stage, self.all_params, self.stage_params = stage, params.model_dump(), stage_params
        self.experiment, self.required = params.tracking.experiment, params.tracking.required
        self.client = None
        self.parent_id = self.run_id = None

    # ---- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> "StageRun":
        import mlflow
        from mlflow.tracking import MlflowClient

        from transferkit.errors import TransferkitError

        uri = tracking_uri()
        # Read before set_tracking_uri, which also exports MLFLOW_TRACKING_URI.
        self.local_default_store = not os.environ.get("MLFLOW_TRACKING_URI")
        problem = server_problem(uri)
        if problem and self.required:
            raise TransferkitError(
                f"MLflow tracking server {uri} is unreachable ({problem}). Start it, correct MLFLOW_TRACKING_URI, "
                f"or set tracking.required: false in params.yaml to go on with local-only tracking.")
        if problem:
            uri, self.local_default_store = f"sqlite:///{repo_root() / 'mlflow.db'}", True
            print(f"{self.stage}: warning: MLflow tracking server unreachable ({problem}); "
                  f"tracking.required is false, so this run is tracked locally in {uri}", file=sys.stderr, flush=True)
        mlflow.set_tracking_uri(uri)
        try:
            self.client = MlflowClient(uri)
            experiment_id = self._experiment_id()
        except Exception as exc:  # bad URI, locked or unwritable database
            raise TransferkitError(f"MLflow tracking store {uri} is not usable: {exc}") from None
        self.experiment_id = experiment_id
        self.parent_id = self._parent_run(experiment_id)
        child = self.client.create_run(
            experiment_id, run_name=self.stage,
            tags={PARENT_TAG: self.parent_id, STAGE_TAG: self.stage, PIPELINE_TAG: pipeline_key()})
        self.run_id = child.info.run_id
        self.log_params(flatten(self.stage_params))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        self.client.set_terminated(self.run_id, status=status)
        if exc_type is not None:
            self.client.set_terminated(self.parent_id, status="FAILED")

    def finish_pipeline(self) -> None:
        """The last stage closes the parent run."""
        self.client.set_terminated(self.parent_id, status="FINISHED")

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifact_location = None
        if self.local_default_store:
            # Local store: keep artifacts next to mlflow.db at the repo root, not in
            # whatever directory the first stage happened to run in.
            artifact_location = (repo_root() / "mlruns" / self.experiment).as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=artifact_location)

    def _parent_run(self, experiment_id: str) -> str:
        key = pipeline_key()
        found = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`{STAGE_TAG}` = 'pipeline'",
            max_results=1)
        if found:
            return found[0].info.run_id
        name = os.environ.get("DVC_EXP_NAME") or time.strftime("repro-%Y%m%d-%H%M%S")
        tags = {PIPELINE_TAG: key, STAGE_TAG: "pipeline"}
        commit = _git_commit(repo_root())
        if commit:
            tags["mlflow.source.git.commit"] = commit
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
        parent = self.client.create_run(experiment_id, run_name=name, tags=tags)
        self._log_params(parent.info.run_id, flatten(self.all_params))
        return parent.info.run_id

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

    def log_model(self, model, signature, pip_requirements: list[str], registered_name: str,
                  extra_files: list[str | Path]) -> str:
        """Log the final Keras model on the parent run and register it; returns the model URI."""
        import mlflow

        with mlflow.start_run(run_id=self.parent_id, experiment_id=self.experiment_id):
            info = mlflow.keras.log_model(
                model, name="model", signature=signature, pip_requirements=pip_requirements,
                registered_model_name=registered_name)
            for path in extra_files:
                mlflow.log_artifact(str(path), artifact_path="model_extras")
        return info.model_uri
