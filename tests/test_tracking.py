"""MLflow tracking against a real sqlite store in a temporary folder."""

from mlflow.tracking import MlflowClient

import pytest

from transferkit.config import parse_params
from transferkit.errors import TransferkitError
from transferkit.tracking import PARENT_TAG, STAGE_TAG, StageRun, flatten, pipeline_key, server_problem, tracking_uri

from conftest import closed_port_url

ALL = {"head": {"learning_rate": 0.001, "epochs": 3}, "data": {"seed": 1}, "tracking": {"experiment": "exp"}}
PARAMS = parse_params(ALL)


def test_flatten():
    assert flatten({"head": {"learning_rate": 0.001, "epochs": 3}, "data": {"seed": 1}}) == {
        "head.learning_rate": 0.001, "head.epochs": 3, "data.seed": 1}


def test_default_store_is_sqlite_at_the_repo_root(in_tmp_cwd, monkeypatch):
    assert tracking_uri() == f"sqlite:///{in_tmp_cwd.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", "/somewhere/else")
    assert tracking_uri() == "sqlite:////somewhere/else/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_experiment_name_is_part_of_the_pipeline_key(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "my-exp")
    assert pipeline_key().startswith("my-exp:")


def test_stages_of_one_execution_share_a_parent(in_tmp_cwd):
    with StageRun("train_head", PARAMS, {"head": ALL["head"]}) as a:
        a.log_metrics({"loss": 1.0}, step=0)
        a.log_metrics({"loss": 0.5}, step=1)
    with StageRun("evaluate", PARAMS, {}) as b:
        b.log_metrics({"test_accuracy": 0.9}, parent=True)
        b.finish_pipeline()
    assert a.parent_id == b.parent_id

    client = MlflowClient(tracking_uri())
    parent = client.get_run(a.parent_id)
    assert parent.data.params["head.learning_rate"] == "0.001"
    assert parent.data.metrics["test_accuracy"] == 0.9
    assert parent.data.tags[STAGE_TAG] == "pipeline" and parent.info.status == "FINISHED"
    child = client.get_run(a.run_id)
    assert child.info.run_name == "train_head" and child.data.tags[PARENT_TAG] == a.parent_id
    assert child.data.params == {"head.learning_rate": "0.001", "head.epochs": "3"}
    assert [m.value for m in client.get_metric_history(a.run_id, "loss")] == [1.0, 0.5]
    # Artifacts live next to mlflow.db, not in whatever folder a stage ran from.
    experiment = client.get_experiment_by_name("exp")
    assert experiment.artifact_location == (in_tmp_cwd.resolve() / "mlruns" / "exp").as_uri()


def test_failed_stage_marks_its_runs_failed(in_tmp_cwd):
    try:
        with StageRun("finetune", PARAMS, {}) as run:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    client = MlflowClient(tracking_uri())
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.get_run(run.parent_id).info.status == "FAILED"


def test_unusable_store_is_a_clear_error(in_tmp_cwd, monkeypatch):
    (in_tmp_cwd / "a-file").write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{in_tmp_cwd / 'a-file' / 'mlflow.db'}")
    with pytest.raises(TransferkitError, match="MLflow tracking store"):
        with StageRun("prepare", PARAMS, {}):
            pass


def test_unreachable_server_stops_before_any_run_is_created(in_tmp_cwd, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert "refused" in server_problem(url).lower()
    with pytest.raises(TransferkitError, match=rf"MLflow tracking server {url} is unreachable.*tracking.required: false"):
        with StageRun("prepare", PARAMS, {}):
            raise AssertionError("the stage body must not run")
    assert not (in_tmp_cwd / "mlflow.db").exists()


def test_unreachable_server_not_required_tracks_locally_with_a_warning(in_tmp_cwd, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed_port_url())
    relaxed = parse_params({**ALL, "tracking": {"experiment": "exp", "required": False}})
    with StageRun("prepare", relaxed, {"data": {"seed": 1}}) as run:
        run.log_metrics({"images": 24})
    assert "warning: MLflow tracking server unreachable" in capsys.readouterr().err
    local = MlflowClient(f"sqlite:///{in_tmp_cwd.resolve() / 'mlflow.db'}")
    assert local.get_run(run.run_id).data.metrics == {"images": 24.0}


def test_local_stores_are_not_probed():
    assert server_problem("sqlite:///anything.db") is None  # local stores are not probed
