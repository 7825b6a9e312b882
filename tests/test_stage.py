"""What every stage does around its work: one-line errors, TensorFlow's harmless error-level line filtered, and
the runner that writes and records every stage's result the same way (real local MLflow store)."""

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
from mlflow.tracking import MlflowClient

from transferkit import stage
from transferkit.errors import TransferkitError
from transferkit.results import Attachment, StageResult

SCRIPT = """
import os, sys
from transferkit import stage
from transferkit.errors import TransferkitError

def main():
    os.write(2, b"E0000 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool which is not in\\n")
    os.write(2, b"E0000 some_kernel.cc:1] a real error\\n")
    raise TransferkitError("boom")

stage.run_script(main, "demo")
"""


def test_the_harmless_tensorflow_line_is_dropped_and_real_errors_are_kept():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "use_unbounded_threadpool" not in out.stderr
    assert "a real error" in out.stderr and out.stderr.rstrip().endswith("demo: error: boom")


@dataclass(frozen=True)
class Gated(StageResult):
    """A result whose gate fails, like evaluate below evaluate.min_accuracy or export's parity gate."""
    attached: object
    finished: list
    metrics_to_parent = True

    def lines(self):
        return ["scored"]

    def metrics_file(self):
        return {"accuracy": 0.5, "note": "text is kept in the file, not logged"}

    def attachments(self):
        return [Attachment(self.attached, "reports")]

    def check(self):
        raise TransferkitError("accuracy 0.5 is below the bar")

    def finish(self, tracker):
        self.finished.append(tracker)
        return ["registered"]


def stage_args(folder):
    (folder / "params.yaml").write_text("tracking: {experiment: demo}\n")
    return argparse.Namespace(params=str(folder / "params.yaml"), mlflow_db="mlflow.db", mlflow_artifacts="mlruns")


def test_the_runner_writes_and_records_everything_before_the_gate_fails_the_stage(in_tmp_cwd, capsys):
    attached, metrics, finished = in_tmp_cwd / "report.json", in_tmp_cwd / "metrics.json", []
    attached.write_text("{}")
    with pytest.raises(TransferkitError, match="below the bar"):
        stage.run_stage("evaluate", stage_args(in_tmp_cwd), lambda params, tracker: Gated(attached, finished),
                        metrics=str(metrics))
    assert json.loads(metrics.read_text()) == Gated(attached, finished).metrics_file()  # written before the gate
    assert finished == [] and "evaluate: scored" in capsys.readouterr().out  # no finish() after a failed gate
    client = MlflowClient(f"sqlite:///{in_tmp_cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo").experiment_id
    (child,) = client.search_runs([experiment], "attributes.run_name = 'evaluate'")
    assert child.info.status == "FAILED" and child.data.metrics == {"accuracy": 0.5}
    assert [a.path for a in client.list_artifacts(child.info.run_id, "reports")] == ["reports/report.json"]
    parent = child.data.tags["mlflow.parentRunId"]
    assert "metrics.json" in [a.path for a in client.list_artifacts(parent)]  # metrics_to_parent


def test_a_worker_that_does_not_record_writes_and_logs_nothing(in_tmp_cwd):
    """Fine-tuning workers other than the chief: they run the work, without a tracker."""
    metrics, trackers = in_tmp_cwd / "metrics.json", []

    def work(params, tracker):
        trackers.append(tracker)
        return Gated(in_tmp_cwd / "report.json", [])

    stage.run_stage("finetune", stage_args(in_tmp_cwd), work, metrics=str(metrics), record=False)
    assert trackers == [None] and not metrics.exists() and not (in_tmp_cwd / "mlflow.db").exists()
