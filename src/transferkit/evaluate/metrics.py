"""Classification metrics from predicted probabilities (NumPy only, no sklearn)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


def accuracy_interval(correct, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the accuracy, from one 0/1 (or bool) per test image."""
    correct = np.asarray(correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(resamples, len(correct)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[i, j] = images of true class i predicted as class j."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def per_class(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no predictions / no images)."""
    tp = np.diag(counts).astype(np.float64)
    predicted = counts.sum(axis=0).astype(np.float64)
    support = counts.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int) -> tuple[float, list[dict]]:
    """ECE: |accuracy - confidence| averaged over confidence bins, weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (confidence > lo) & (confidence <= hi)
        if not inside.any():
            continue
        acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
        ece += inside.mean() * abs(acc - conf)
        table.append({"bin_low": float(lo), "bin_high": float(hi), "count": int(inside.sum()),
                      "accuracy": acc, "confidence": conf})
    return float(ece), table


@dataclass(frozen=True)
class Report:
    summary: dict  # JSON-ready: accuracy, macro figures, log loss, ECE, per class
    confusion: np.ndarray  # counts[i, j] = images of true class i predicted as class j
    calibration: list[dict]  # per confidence bin: bin_low, bin_high, count, accuracy, confidence


def classification_report(probs: np.ndarray, y_true: np.ndarray, classes: list[str], bins: int = 10) -> Report:
    y_pred = probs.argmax(axis=1)
    counts = confusion_matrix(y_true, y_pred, len(classes))
    stats = per_class(counts)
    ece, calibration = expected_calibration_error(probs, y_true, bins)
    eps = 1e-7  # keeps log(0) finite for a confidently wrong prediction
    log_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    summary = {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(stats["f1"].mean()),
        "macro_precision": float(stats["precision"].mean()),
        "macro_recall": float(stats["recall"].mean()),
        "log_loss": log_loss,
        "ece": ece,
        "test_images": int(len(y_true)),
        "per_class": {c: {"precision": float(stats["precision"][i]), "recall": float(stats["recall"][i]),
                          "f1": float(stats["f1"][i]), "support": int(stats["support"][i])}
                      for i, c in enumerate(classes)},
    }
    return Report(summary, counts, calibration)
