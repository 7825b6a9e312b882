"""What every stage function returns: a typed result that `stage.run_stage` records the same way for all.

A stage function (prepare, extract, train_head, finetune, evaluate, export) takes its params and
paths, does the work and returns a StageResult subclass: plain fields, plus how they are recorded.
The runner then, in this order:

1. prints `lines()`, each prefixed with the stage name;
2. writes `metrics_file()` to the stage's metrics file (what `dvc exp show` compares), when dvc.yaml
   gives the stage one;
3. logs `run_metrics()` and `run_params()` to the stage's MLflow run, `parent_metrics()` to the
   pipeline's parent run, and attaches `attachments()` (MLflow artifacts) to either, the metrics
   file too where `metrics_to_parent` says so;
4. calls `check()`: a gate (evaluate.min_accuracy, the export parity gate) fails the stage only
   after its figures are written and recorded;
5. calls `finish(tracker)` for what needs the gate passed (export registers the served model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Attachment:
    """A file attached to a run (an MLflow artifact)."""
    path: Path
    folder: str | None = None  # inside the run's artifacts
    parent: bool = False  # the pipeline's parent run, not the stage's own


def numbers(values: dict) -> dict[str, float]:
    """The entries MLflow can log as metrics: ints and floats, not booleans or missing values."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class StageResult:
    metrics_to_parent = False  # also attach the stage's metrics file to the pipeline's parent run

    def lines(self) -> list[str]:
        return []

    def metrics_file(self) -> dict:
        return {}

    def run_metrics(self) -> dict[str, float]:
        return numbers(self.metrics_file())

    def run_params(self) -> dict[str, str]:
        return {}

    def parent_metrics(self) -> dict[str, float]:
        return {}

    def attachments(self) -> list[Attachment]:
        return []

    def check(self) -> None:
        """Raise TransferkitError when the result fails the stage's gate."""

    def finish(self, tracker) -> list[str]:
        """Records that need the gate passed; returns lines to print."""
        return []
