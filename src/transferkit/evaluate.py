"""The `evaluate` stage: the published model on the test split.

It runs the exact file `predict` would load (models/model.keras) on the raw
test images, so the score covers the whole path from pixels to probabilities,
preprocessing included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.config import EvaluateParams
from transferkit.data import load_manifest
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, read_json, write_json
from transferkit.finetune import metadata_path
from transferkit.metrics import classification_report
from transferkit.plots import calibration_png, confusion_png, curves_png


def load_classifier(model_path: str | Path):
    """The published model and its metadata (classes, image size)."""
    import keras

    model_path = Path(model_path)
    meta_path = metadata_path(model_path)
    if not model_path.exists() or not meta_path.exists():
        raise TransferkitError(f"{model_path}: model not found; train one first with `dvc repro`")
    return keras.saving.load_model(model_path, safe_mode=True), read_json(meta_path)


def predict_files(model, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    import tensorflow as tf

    from transferkit.datasets import image_dataset

    dataset = image_dataset(paths, image_size, batch_size).map(lambda x: tf.cast(x, tf.float32))
    return model.predict(dataset, verbose=0).astype(np.float64)


def evaluate(manifest_path: str | Path, model, meta: dict, metrics_path: str | Path,
             plots_dir: str | Path, histories: dict[str, str], params: EvaluateParams) -> dict:
    """Score `model` (from load_classifier) on the test split; write metrics and plots."""
    manifest = load_manifest(manifest_path)
    test = manifest[manifest["split"] == "test"]
    if test.empty:
        raise TransferkitError("data.test_fraction: the test split is empty; nothing to evaluate")
    classes = meta["classes"]
    probs = predict_files(model, test["path"].tolist(), meta["image_size"], params.batch_size)
    y_true = test["label_index"].to_numpy()
    report = classification_report(probs, y_true, classes, params.calibration_bins)
    counts, calibration = report.pop("_confusion"), report.pop("_calibration")

    plots_dir = Path(plots_dir)
    y_pred = probs.argmax(axis=1)
    with atomic_path(plots_dir / "confusion.csv") as tmp:  # DVC confusion-matrix plot data
        pd.DataFrame({"actual": [classes[i] for i in y_true], "predicted": [classes[i] for i in y_pred]}).to_csv(tmp, index=False)
    with atomic_path(plots_dir / "predictions.csv") as tmp:  # for error analysis
        pd.DataFrame({"path": test["path"].to_numpy(), "actual": [classes[i] for i in y_true],
                      "predicted": [classes[i] for i in y_pred], "confidence": probs.max(axis=1)}).to_csv(tmp, index=False)
    confusion_png(counts, classes, plots_dir / "confusion.png",
                  f"Test confusion matrix (accuracy {report['accuracy']:.3f})")
    calibration_png(calibration, plots_dir / "calibration.png", report["ece"])
    curves_png(histories, plots_dir / "curves.png")
    write_json(metrics_path, report)
    return report
