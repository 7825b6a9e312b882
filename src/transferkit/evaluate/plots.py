"""PNG plots (they render offline, unlike DVC's HTML which loads vega from the web)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers / CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def confusion_png(counts: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > threshold else "black")
    _save(fig, path)
    plt.close(fig)


def calibration_png(table: list[dict], path: str | Path, ece: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect")
    if table:
        ax.plot([t["confidence"] for t in table], [t["accuracy"] for t in table], "o-", label="model")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Calibration (ECE {ece:.3f})")
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def curves_png(histories: dict[str, str | Path], path: str | Path) -> None:
    """Loss and accuracy per epoch for each training phase, phases placed end to end."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    offset = 0
    for phase, csv in histories.items():
        if not Path(csv).exists():
            continue
        frame = pd.read_csv(csv)
        if frame.empty:
            continue
        epochs = offset + np.arange(1, len(frame) + 1)
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, frame[metric], label=f"{phase} train")
            if f"val_{metric}" in frame and frame[f"val_{metric}"].notna().any():
                ax.plot(epochs, frame[f"val_{metric}"], "--", label=f"{phase} val")
        offset += len(frame)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if ax.get_lines():  # no history to draw (no training phase ran): an empty frame, not a warning
            ax.legend()
    fig.suptitle("Training curves")
    _save(fig, path)
    plt.close(fig)
