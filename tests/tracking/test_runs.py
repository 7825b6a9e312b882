"""MLflow tracking against a real sqlite store in a temporary folder."""

import pytest
from mlflow.tracking import MlflowClient

from transferkit.config import parse_params
from transferkit.errors import TransferkitError
from transferkit.tracking.executions import (
    PARENT_TAG,
    RESTORED_TAG,
    STAGE_TAG,
    finish_execution,
    pipeline_key,
    process_id,
)
from transferkit.tracking.runs import StageRun, flatten
from transferkit.tracking.server import LocalStore, server_problem, tracking_uri

from conftest import closed_port_url

ALL = {"head": {"learning_rate": 0.001, "epochs": 3}, "data": {"seed": 1}, "tracking": {"experiment": "exp"}}
PARAMS = parse_params(ALL)
LOCAL = LocalStore("mlflow.db", "mlruns")


def test_flatten():
    assert flatten({"head": {"learning_rate": 0.001, "epochs": 3}, "data": {"seed": 1}}) == {
        "head.learning_rate": 0.001, "head.epochs": 3, "data.seed": 1}


def test_default_store_is_sqlite_at_the_repo_root(in_tmp_cwd, monkeypatch):
    assert tracking_uri(LOCAL) == f"sqlite:///{in_tmp_cwd.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", "/somewhere/else")
    assert tracking_uri(LOCAL) == "sqlite:////somewhere/else/mlflow.db"
    assert tracking_uri(LocalStore("runs/tracking.db", "runs/artifacts")) == "sqlite:////somewhere/else/runs/tracking.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(LOCAL) == "http://127.0.0.1:5000"


def test_experiment_name_is_part_of_the_pipeline_key(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "my-exp")
    assert pipeline_key().startswith("my-exp:")


def test_stages_of_one_execution_share_a_parent(in_tmp_cwd):
    client = MlflowClient(tracking_uri(LOCAL))
    with StageRun("train_head", PARAMS, LOCAL) as a:
        a.log_metrics({"loss": 1.0}, step=0)
        a.log_metrics({"loss": 0.5}, step=1)
    assert client.get_run(a.parent_id).info.status == "FINISHED"  # whichever stage ends last closes it
    with StageRun("evaluate", PARAMS, LOCAL) as b:
        assert client.get_run(b.parent_id).info.status == "RUNNING"  # open again while a stage works
        b.log_metrics({"test_accuracy": 0.9}, parent=True)
    assert a.parent_id == b.parent_id

    parent = client.get_run(a.parent_id)
    assert parent.data.params["head.learning_rate"] == "0.001"
    assert parent.data.metrics["test_accuracy"] == 0.9
    assert parent.data.tags[STAGE_TAG] == "pipeline" and parent.info.status == "FINISHED"
    child = client.get_run(a.run_id)
    assert child.info.run_name == "train_head" and child.data.tags[PARENT_TAG] == a.parent_id
    # The child logs exactly the params its stage reads (config.STAGE_PARAMS: head and data.seed).
    assert set(child.data.params) == {f"head.{k}" for k in PARAMS.head.model_dump()} | {"data.seed"}
    assert child.data.params["head.learning_rate"] == "0.001" and child.data.params["data.seed"] == "1"
    assert [m.value for m in client.get_metric_history(a.run_id, "loss")] == [1.0, 0.5]
    # Artifacts live next to mlflow.db, not in whatever folder a stage ran from.
    experiment = client.get_experiment_by_name("exp")
    assert experiment.artifact_location == (in_tmp_cwd.resolve() / "mlruns" / "exp").as_uri()


def test_runs_say_which_machine_and_libraries_made_them(in_tmp_cwd, monkeypatch):
    """Bits agree only on the same instruction set and library versions: every run says which it had."""
    from importlib import metadata

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "4")
    with StageRun("train_head", PARAMS, LOCAL) as run:
        pass
    client = MlflowClient(tracking_uri(LOCAL))
    for tags in (client.get_run(run.run_id).data.tags, client.get_run(run.parent_id).data.tags):
        assert tags["transferkit.tensorflow"] == metadata.version("tensorflow-cpu")
        assert tags["transferkit.litert"] == metadata.version("ai-edge-litert")
        assert tags["transferkit.keras"] == metadata.version("keras")
        assert tags["transferkit.onednn"].endswith("max ISA avx2")
        assert tags["transferkit.tf_intra_op_threads"] == "4"
        assert tags["transferkit.cpu"] and tags["transferkit.cpu_isa"]


def test_failed_stage_marks_its_runs_failed(in_tmp_cwd):
    try:
        with StageRun("finetune", PARAMS, LOCAL) as run:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    client = MlflowClient(tracking_uri(LOCAL))
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.get_run(run.parent_id).info.status == "FAILED"


def test_unusable_store_is_a_clear_error(in_tmp_cwd, monkeypatch):
    (in_tmp_cwd / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp_cwd / 'a-file' / 'mlflow.db'}")
    with pytest.raises(TransferkitError, match="MLflow tracking store"):
        with StageRun("prepare", PARAMS, LOCAL):
            pass


def test_unreachable_server_stops_before_any_run_is_created(in_tmp_cwd, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert "refused" in server_problem(url).lower()
    with pytest.raises(TransferkitError,
                       match=rf"MLflow tracking server {url} is unreachable.*tracking.required: false"):
        with StageRun("prepare", PARAMS, LOCAL):
            raise AssertionError("the stage body must not run")
    assert not (in_tmp_cwd / "mlflow.db").exists()


def test_unreachable_server_not_required_tracks_locally_with_a_warning(in_tmp_cwd, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_url())
    relaxed = parse_params({**ALL, "tracking": {"experiment": "exp", "required": False}})
    with StageRun("prepare", relaxed, LOCAL) as run:
        run.log_metrics({"images": 24})
    assert "warning: MLflow tracking server unreachable" in capsys.readouterr().err
    local = MlflowClient(f"sqlite:///{in_tmp_cwd.resolve() / 'mlflow.db'}")
    assert local.get_run(run.run_id).data.metrics == {"images": 24.0}


def test_local_stores_are_not_probed():
    assert server_problem("sqlite:///anything.db") is None  # local stores are not probed


def test_after_dvc_ends_restored_stages_are_recorded_and_nothing_is_left_running(in_tmp_cwd):
    """finish_execution waits for the launching process, then records what DVC restored from its run-cache."""
    import subprocess

    import psutil

    lock = in_tmp_cwd / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n"
                    "  prepare: {outs: [a]}\n  train_head: {outs: [b]}\n  evaluate: {outs: [c]}\n")
    from transferkit.tracking.executions import lock_entries

    (in_tmp_cwd / "dvc.yaml").write_text("stages:\n  evaluate:\n    metrics: [{m.json: {cache: false}}]\n")
    (in_tmp_cwd / "m.json").write_text('{"accuracy": 0.75, "per_class": {}, "note": "x"}')
    before = lock_entries(lock)
    with StageRun("prepare", PARAMS, LOCAL) as prepare:
        pass
    killed = StageRun("finetune", PARAMS, LOCAL).__enter__()  # a stage SIGKILLed mid-run never exits
    # Later in the same execution DVC restored train_head and evaluate (new lock entries, no process).
    lock.write_text("schema: '2.0'\nstages:\n"
                    "  prepare: {outs: [a]}\n  train_head: {outs: [b2]}\n  evaluate: {outs: [c2]}\n")
    dvc = subprocess.Popen(["sleep", "1"])  # stands in for the `dvc` process the watcher waits for
    client = MlflowClient(tracking_uri(LOCAL))
    finish_execution(tracking_uri(LOCAL), prepare.experiment_id, prepare.parent_id,
                     process_id(psutil.Process(dvc.pid)), str(lock), before, poll=0.05)
    assert dvc.poll() is not None  # it waited for the launcher to end
    children = client.search_runs([prepare.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{prepare.parent_id}'")
    restored = sorted(r.info.run_name for r in children if r.data.tags.get(RESTORED_TAG) == "true")
    assert restored == ["evaluate", "train_head"]
    evaluate = next(r for r in children if r.info.run_name == "evaluate")
    assert evaluate.data.metrics == {"accuracy": 0.75}  # the restored stage's metrics, as restored
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in children)
    parent = client.get_run(prepare.parent_id)
    assert parent.data.tags["transferkit.restored_stages"] == "evaluate,train_head"
    assert parent.info.status == "KILLED"


def test_runs_show_their_dataset_and_source_and_the_experiment_opens_on_training_runs(in_tmp_cwd):
    import pandas as pd

    from transferkit.tracking.runs import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    manifest = in_tmp_cwd / "manifest.parquet"
    pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "y"], "split": ["train", "test"]}).to_parquet(manifest)
    (in_tmp_cwd / "dvc.lock").write_text("schema: '2.0'\n")
    with StageRun("evaluate", PARAMS, LOCAL, manifest=manifest) as run:
        pass
    client = MlflowClient(tracking_uri(LOCAL))
    assert client.get_experiment(run.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    parent = client.get_run(run.parent_id)
    (dataset,) = [d.dataset for d in parent.inputs.dataset_inputs]
    assert dataset.name == "prepared manifest" and dataset.digest and str(manifest) in dataset.source
    assert len(parent.data.tags["dvc.lock.sha256"]) == 64 and parent.data.tags["mlflow.source.name"] == "dvc repro"


ECHO_MODEL = """
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class Echo(PythonModel):
    _skip_type_hint_validation = True  # no type hints: no warning
    def predict(self, context, model_input, params=None):
        return model_input


set_model(Echo())
"""


def test_an_image_and_a_text_model_never_share_a_registered_name(in_tmp_cwd):
    """Each registered version is tagged with its modality; a text model under a name whose latest is an image
    model (or the reverse) is refused before anything is logged, naming the key to set."""
    from transferkit.tracking.runs import MODALITY_TAG

    (in_tmp_cwd / "echo.py").write_text(ECHO_MODEL)
    client = MlflowClient(tracking_uri(LOCAL))

    def log(name: str, modality: str):
        with StageRun("export", PARAMS, LOCAL) as run:
            return run.log_model(in_tmp_cwd / "echo.py", {}, [], None, None, ["numpy"], name, modality)

    log("transferkit", "image")
    with pytest.raises(TransferkitError, match="tracking.registered_model: 'transferkit' holds image models .*"
                                               "-S tracking.registered_model=transferkit-text"):
        log("transferkit", "text")
    assert [str(v.version) for v in client.search_model_versions("name = 'transferkit'")] == ["1"]
    log("transferkit-text", "text")
    log("transferkit-text", "text")
    latest = max(client.search_model_versions("name = 'transferkit-text'"), key=lambda v: int(v.version))
    assert str(latest.version) == "2" and latest.tags[MODALITY_TAG] == "text"
    assert client.get_model_version("transferkit", "1").tags[MODALITY_TAG] == "image"
