"""Each stage's MLflow run, under its pipeline execution's parent run.

One pipeline execution (`dvc repro` or `dvc exp run`) = one MLflow parent run
carrying every parameter, the final test metrics, the plots and the model.
Each stage that ran = one child run named after the stage, with its own
parameters and per-epoch curves. Every run carries the machine it ran on
(machine.py: CPU, instruction set, TensorFlow/oneDNN/LiteRT versions, thread
count): results are bit-identical only where those agree.

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

A team server (`make services`) needs a login (MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD): it is checked before any work, like reachability.
If the server goes away in the middle of a stage, MLflow's retries are bounded
(about a minute in all, unless the user set MLFLOW_HTTP_REQUEST_* themselves),
and the failure becomes one TransferkitError that names the server; outputs
already written stay (they are written atomically). With tracking.required
false the stage finishes and lists the records that were not sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from transferkit.tracking.executions import (
    LOCK_TAG,
    PARENT_TAG,
    PIPELINE_TAG,
    STAGE_TAG,
    file_sha256,
    launcher,
    lock_entries,
    pipeline_key,
    process_id,
)
from transferkit.tracking.machine import machine_tags
from transferkit.tracking.server import (
    LocalStore,
    bound_retries,
    counted,
    login_problem,
    repo_root,
    server_problem,
    short_reason,
    tracking_uri,
)

# MLflow 3's UI opens an experiment in its GenAI view unless it is marked as model training
# (the UI also keeps a per-browser choice, set by the ?workflowType=machine_learning URL parameter).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# On each registered model version: image | text, so one registered name never mixes the two (log_model).
MODALITY_TAG = "transferkit.modality"


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
        self.lost: str | None = None  # why the tracking server stopped answering mid-stage
        self.unsent: list[str] = []  # records not sent after that (tracking.required false)

    # ---- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> StageRun:
        from mlflow.tracking import MlflowClient

        from transferkit.errors import TransferkitError

        bound_retries()
        uri = tracking_uri(self.local)
        self.local_default_store = not os.environ.get("MLFLOW_TRACKING_URI")
        problem = server_problem(uri)
        if problem and self.required:
            raise TransferkitError(
                f"MLflow tracking server {uri} is unreachable ({problem}). Start it, correct MLFLOW_TRACKING_URI, "
                f"or set tracking.required: false in params.yaml to go on with local-only tracking.")
        login = None if problem else login_problem(uri)
        if login and self.required:
            raise TransferkitError(
                f"MLflow tracking server {uri} refused the login ({login}). Set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD (eval \"$(make -s services)\" sets them for the team server), "
                f"or set tracking.required: false in params.yaml to go on with local-only tracking.")
        if problem or login:
            uri, self.local_default_store = self.local.uri, True
            why = f"unreachable ({problem})" if problem else f"refused the login ({login})"
            print(f"{self.stage}: warning: MLflow tracking server {why}; "
                  f"tracking.required is false, so this run is tracked locally in {uri}", file=sys.stderr, flush=True)
        self.uri = uri
        try:
            self.client = MlflowClient(uri)
            self.experiment_id = self._experiment_id()
            self.parent_id = self._parent_run(self.experiment_id)
            child = self.client.create_run(
                self.experiment_id, run_name=self.stage,
                tags={PARENT_TAG: self.parent_id, STAGE_TAG: self.stage, PIPELINE_TAG: pipeline_key(),
                      **machine_tags()})
        except Exception as exc:  # bad URI, locked or unwritable database, server gone
            raise TransferkitError(f"MLflow tracking store {uri} is not usable: {short_reason(exc)}") from None
        self.run_id = child.info.run_id
        self.log_params(flatten(self.stage_params))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        if exc_type is None and self.manifest and Path(self.manifest).exists():
            self._send("the dataset", self._log_dataset, Path(self.manifest))
        self._send(f"the {self.stage} run's status", self.client.set_terminated, self.run_id, status=status)
        # Whichever stage ends last leaves the parent closed; a failure fails the execution.
        self._send("the pipeline run's status", self.client.set_terminated, self.parent_id, status=status)
        if self.lost and not self.required:
            print(f"{self.stage}: warning: MLflow tracking server {self.uri} stopped answering ({self.lost}); "
                  f"not sent: {'; '.join(counted(self.unsent))}", file=sys.stderr, flush=True)

    def _send(self, what: str, call, *args, **kwargs):
        """call(*args, **kwargs), turning a tracking server that went away into one clear outcome.

        tracking.required: a TransferkitError naming the server (the stage prints it as one line; every
        output already written is kept). Not required: a warning, then the rest is skipped and listed.
        """
        from transferkit.errors import TransferkitError

        if self.lost is not None:
            self.unsent.append(what)
            return None
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not self.uri.startswith(("http://", "https://")):
                raise  # a local store: not a server that went away
            self.lost = short_reason(exc)
            if self.required:
                raise TransferkitError(
                    f"MLflow tracking server {self.uri} stopped answering while sending {what} ({self.lost}); "
                    f"every output written so far is kept. Restart the server and rerun, or set "
                    f"tracking.required: false to finish without it.") from None
            self.unsent.append(what)
            print(f"{self.stage}: warning: MLflow tracking server {self.uri} stopped answering while sending "
                  f"{what} ({self.lost}); going on without it (tracking.required is false)",
                  file=sys.stderr, flush=True)
            return None

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
        # The machine on the parent too, where runs are compared; each stage's run says where it ran.
        tags = {PIPELINE_TAG: key, STAGE_TAG: "pipeline", **machine_tags()}
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
        subprocess.Popen([sys.executable, "-m", "transferkit.tracking.executions", "finish", json.dumps(args)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)

    # ---- logging -------------------------------------------------------------------
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[start:start + 100])

    def log_params(self, params: dict[str, Any]) -> None:
        self._send(f"the {self.stage} run's params", self._log_params, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, parent: bool = False) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        what = ("per-epoch " if step is not None else "") + f"metrics {', '.join(m.key for m in items)}"
        self._send(what, self.client.log_batch, self.parent_id if parent else self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None, parent: bool = False) -> None:
        self._send(f"artifact {path}", self.client.log_artifact, self.parent_id if parent else self.run_id,
                   str(path), artifact_path)

    def keras_callback(self):
        """A Keras callback logging every epoch's logs (loss, accuracy, val_*) as curves."""
        import keras

        run = self

        class EpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                run.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)

        return EpochLogger()

    def log_model(self, model_file: str | Path, artifacts: dict[str, str], code_paths: list[str | Path],
                  signature, input_example, pip_requirements: list[str], registered_name: str,
                  modality: str = "image") -> str | None:
        """Log a models-from-code pyfunc on the parent run and register it, its version tagged with the
        model's `modality`; returns the model URI (None when the tracking server went away and
        tracking.required is false).

        A registered name whose latest version holds the other modality is refused before anything is
        logged (TransferkitError naming tracking.registered_model): an image model and a text model never
        overwrite each other's "latest", which `make serve` serves. Versions without the tag are images
        (registered before text models)."""
        from transferkit.errors import TransferkitError

        latest = self._send("the registered model's modality", self._latest_modality, registered_name)
        if latest is not None and latest[1] != modality:
            raise TransferkitError(
                f"tracking.registered_model: '{registered_name}' holds {latest[1]} models (its latest, version "
                f"{latest[0]}, is one); give this {modality} model a name of its own, e.g. "
                f"-S tracking.registered_model={registered_name}-{modality}")
        return self._send("the model", self._log_model, model_file, artifacts, code_paths, signature, input_example,
                          pip_requirements, registered_name, modality)

    def _latest_modality(self, registered_name: str) -> tuple[str, str] | None:
        """(version, modality) of the name's latest registered version, or None when it has none."""
        from mlflow.exceptions import MlflowException

        try:
            versions = self.client.search_model_versions(f"name = '{registered_name}'")
        except MlflowException:
            return None
        if not versions:
            return None
        latest = max(versions, key=lambda v: int(v.version))
        return str(latest.version), (latest.tags or {}).get(MODALITY_TAG, "image")

    def _log_model(self, model_file, artifacts, code_paths, signature, input_example, pip_requirements,
                   registered_name, modality) -> str:
        import mlflow

        with mlflow.start_run(run_id=self.parent_id, experiment_id=self.experiment_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(model_file), artifacts=artifacts,
                code_paths=[str(p) for p in code_paths], signature=signature, input_example=input_example,
                pip_requirements=pip_requirements, registered_model_name=registered_name)
        if info.registered_model_version is not None:
            self.client.set_model_version_tag(registered_name, str(info.registered_model_version), MODALITY_TAG,
                                              modality)
        return info.model_uri
