"""Pieces shared by the two training stages (head and fine-tune)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.errors import TransferkitError
from transferkit.files import atomic_path


def class_weights(labels: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """'balanced': weight = n / (n_classes * count), so every class counts equally in the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1.0))
    return {i: float(w) for i, w in enumerate(weights)}


def nan_guard(stage: str, learning_rate_key: str):
    """A Keras callback that stops training with a clear error when the loss becomes NaN or infinite."""
    import keras

    class _Guard(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.check("loss", (logs or {}).get("loss"), f"batch {batch}")

        def on_epoch_end(self, epoch, logs=None):
            # Before the checkpoint and early-stopping callbacks see it: a NaN
            # val_loss compares as "not better" and would slip through them.
            for name, value in (logs or {}).items():
                self.check(name, value, "the end of the epoch")

        def check(self, name, value, where):
            if value is not None and not math.isfinite(float(value)):
                raise TransferkitError(
                    f"{stage}: {name} became {float(value)} at epoch {self.epoch}, {where}: the learning rate "
                    f"is too high for these inputs, or the inputs hold huge values. Training stopped; no model was "
                    f"written. Lower {learning_rate_key} in params.yaml and rerun.")

    return _Guard()


def step_progress(stage: str, epochs: int, steps: int, val_steps: int | None, interval: float = 60.0):
    """A Keras callback printing where an epoch is, at most every `interval` seconds: a text epoch can take an
    hour on CPU, and Keras' one line an epoch (verbose=2) says nothing until it ends. Silent at an epoch's or
    val pass's last batch, where the epoch line follows."""
    import keras

    from transferkit.progress import Progress

    class _Steps(keras.callbacks.Callback):
        progress = None

        def on_epoch_begin(self, epoch, logs=None):
            self.progress = Progress(steps, f"{stage}: epoch {epoch + 1}/{epochs}", unit="steps",
                                     interval=interval, stream=sys.stdout, final=False)

        def on_train_batch_end(self, batch, logs=None):
            self.progress.update(1)

        def on_test_begin(self, logs=None):
            label = self.progress.label if self.progress else stage
            self.val = Progress(val_steps or 0, f"{label}: val", unit="batches", interval=interval,
                                stream=sys.stdout, final=False)

        def on_test_batch_end(self, batch, logs=None):
            self.val.update(1)

    return _Steps()


HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


def write_history(history: list[dict], path: str | Path) -> None:
    """Per-epoch logs as CSV (epoch, loss, accuracy, val_loss, val_accuracy): DVC plot data.

    An empty history (fine-tuning disabled) still writes the header, so the
    plot file always exists."""
    frame = pd.DataFrame(history)
    columns = HISTORY_COLUMNS + [c for c in frame.columns if c not in HISTORY_COLUMNS]
    with atomic_path(path) as tmp:
        frame.reindex(columns=columns).to_csv(tmp, index=False)


def compile_classifier(model, learning_rate: float, steps_per_execution: int = 1) -> None:
    import keras

    model.compile(
        steps_per_execution=steps_per_execution,
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
