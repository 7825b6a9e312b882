"""The `evaluate` stage: the published model on the test split.

It runs the exact files `predict` would load on the raw test images, so the
score covers the whole path from pixels to probabilities, preprocessing
included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from transferkit.config import EvaluateParams
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, write_json
from transferkit.inference import predict_files
from transferkit.manifest import load_manifest, split_of
from transferkit.metrics import classification_report
from transferkit.plots import calibration_png, confusion_png, curves_png
from transferkit.published import ModelInfo


@dataclass(frozen=True)
class EvaluateOutputs:
    """Where evaluate writes (from the command line, i.e. dvc.yaml)."""
    metrics: Path  # JSON: accuracy, macro-F1, per-class figures, calibration error
    confusion_csv: Path  # actual,predicted per test image: DVC's confusion-matrix plot data
    predictions: Path  # path,actual,predicted,confidence per test image, for error analysis
    confusion_png: Path
    calibration_png: Path
    curves_png: Path


def evaluate(manifest_path: str | Path, model, info: ModelInfo, outputs: EvaluateOutputs,
             histories: dict[str, str], params: EvaluateParams) -> dict:
    """Score `model` (from published.load_published) on the test split; write metrics and plots."""
    test = split_of(load_manifest(manifest_path), "test")
    if test.empty:
        raise TransferkitError("data.test_fraction: the test split is empty; nothing to evaluate")
    classes = info.classes
    probs = predict_files(model, info, test["path"].tolist(), params.batch_size, params.runtime)
    y_true = test["label_index"].to_numpy()
    report = classification_report(probs, y_true, classes, params.calibration_bins)

    y_pred = probs.argmax(axis=1)
    actual, predicted = [classes[i] for i in y_true], [classes[i] for i in y_pred]
    with atomic_path(outputs.confusion_csv) as tmp:
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(tmp, index=False)
    with atomic_path(outputs.predictions) as tmp:
        pd.DataFrame({"path": test["path"].to_numpy(), "actual": actual, "predicted": predicted,
                      "confidence": probs.max(axis=1)}).to_csv(tmp, index=False)
    confusion_png(report.confusion, classes, outputs.confusion_png,
                  f"Test confusion matrix (accuracy {report.summary['accuracy']:.3f})")
    calibration_png(report.calibration, outputs.calibration_png, report.summary["ece"])
    curves_png(histories, outputs.curves_png)
    write_json(outputs.metrics, report.summary)
    return report.summary


def quality_gate(summary: dict, params: EvaluateParams) -> None:
    """evaluate.min_accuracy: below it the stage fails, so nothing downstream is exported or registered."""
    if params.min_accuracy is not None and summary["accuracy"] < params.min_accuracy:
        raise TransferkitError(f"evaluate.min_accuracy: test accuracy {summary['accuracy']:.4f} on "
                               f"{summary['test_images']} images is below {params.min_accuracy}; "
                               f"nothing is exported or registered")
