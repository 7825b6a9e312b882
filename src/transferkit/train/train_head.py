"""The `train_head` stage: a new classifier trained to convergence on cached embeddings.

The backbone never runs here: the embeddings were computed once by `extract`,
so an epoch over thousands of images takes milliseconds on a CPU. The head
standardises its input itself (a Normalization layer holding the train
embeddings' mean and variance), so one learning rate suits every backbone and
the published model still takes raw pixels. It trains until val loss stops
improving (`head.patience` epochs; `head.epochs` is only a cap) and keeps the
best epoch's weights. Each epoch is one graph call (repeated dataset, fixed
steps per epoch, `steps_per_execution`): Keras' per-epoch overhead, not the
arithmetic, is what costs time at this size. No augmentation (the embeddings
are fixed); the fine-tune stage is where augmentation happens.

`refit_head` trains the same head again on more items (finetune.refit: train + val) for a fixed number of
epochs: the best epoch count found here (`best_head_epochs`, from this stage's history), no early stopping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.config import HeadParams
from transferkit.data.manifest import classes_of, load_manifest, split_of
from transferkit.embeddings.table import read_table
from transferkit.files import atomic_path
from transferkit.results import StageResult
from transferkit.seeding import seed_everything
from transferkit.train.common import class_weights, compile_classifier, nan_guard, write_history


@dataclass(frozen=True)
class TrainHeadResult(StageResult):
    batch_size: int
    epochs_run: int
    best_epoch: int  # from 0, like the epoch column of the history CSV
    converged: bool  # stopped by early stopping, not by the epoch cap
    train_accuracy: float
    val_accuracy: float | None  # None without a val split
    val_loss: float | None

    def metrics_file(self) -> dict:
        return asdict(self)

    def run_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def standardiser(features: np.ndarray | None, embedding_dim: int):
    """A Normalization layer holding the features' per-dimension mean and variance (identity without features).

    A dimension (nearly) constant in the train set, its variance under 1e-3 of
    the mean one, keeps unit scale, as scikit-learn's StandardScaler does: a
    ReLU unit dead on the train images (1110 of 1280 on small synthetic
    shapes) may wake on a new image or during fine-tuning, and dividing by its
    near-zero std turned that into logits of 1e5."""
    import keras

    if features is None:
        mean, variance = np.zeros(embedding_dim), np.ones(embedding_dim)
    else:
        features = np.asarray(features, np.float64)
        mean, variance = features.mean(axis=0), features.var(axis=0)
        variance = np.where(variance < 1e-3 * float(variance.mean()), 1.0, variance) if variance.any() \
            else np.ones_like(variance)
    return keras.layers.Normalization(mean=mean.astype(np.float32).tolist(),
                                      variance=variance.astype(np.float32).tolist(), name="head_standardise")


def build_head(embedding_dim: int, n_classes: int, params: HeadParams, features: np.ndarray | None = None):
    """embedding -> standardise -> [Dropout -> Dense(hidden, relu)] -> Dropout -> Dense(n_classes, softmax).

    `features`: the train embeddings the standardisation is taken from."""
    import keras

    inputs = keras.Input((embedding_dim,), name="embedding")
    x = standardiser(features, embedding_dim)(inputs)
    if params.hidden_units:
        x = keras.layers.Dropout(params.dropout, name="head_dropout_in")(x)
        x = keras.layers.Dense(params.hidden_units, activation="relu", name="head_hidden")(x)
    x = keras.layers.Dropout(params.dropout, name="head_dropout")(x)
    # float32 output even under mixed precision: softmax in float16 loses probability mass.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head_output")(x)
    return keras.Model(inputs, outputs, name="head")


def fit_head(model, x: np.ndarray, y: np.ndarray, weights: dict[int, float] | None, validation, params: HeadParams,
             seed: int, callbacks: list, epochs: int | None = None):
    """Compile and fit the head fast: each epoch is one call into the graph.

    The same batches as a plain fit(shuffle=True) would see in spirit (a
    seeded reshuffle every epoch, the last batch partial), and the same class
    weighting (as per-sample weights)."""
    import tensorflow as tf

    sample_weight = np.ones(len(y), np.float32) if weights is None else np.asarray(
        [weights[int(label)] for label in y], np.float32)
    data = (tf.data.Dataset.from_tensor_slices((x, y, sample_weight))
            .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
            .batch(params.batch_size).repeat().prefetch(tf.data.AUTOTUNE))
    steps = math.ceil(len(y) / params.batch_size)
    compile_classifier(model, params.learning_rate, steps_per_execution=steps)
    if validation is not None:
        validation = tf.data.Dataset.from_tensor_slices(validation).batch(len(validation[1]))
    return model.fit(data, validation_data=validation, epochs=epochs or params.epochs, steps_per_epoch=steps,
                     callbacks=callbacks, shuffle=False, verbose=0)  # the dataset reshuffles itself


def train_head(manifest_path: str | Path, embeddings_path: str | Path, model_path: str | Path,
               history_path: str | Path, params: HeadParams, seed: int, tracker=None) -> TrainHeadResult:
    import keras

    seed_everything(seed)
    manifest = load_manifest(manifest_path)
    classes = classes_of(manifest)
    train, val = split_of(manifest, "train"), split_of(manifest, "val")
    table = read_table(embeddings_path)
    x_train = table.rows(train["sha256"].tolist())
    y_train = train["label_index"].to_numpy(np.int32)
    has_val = len(val) > 0
    validation = None
    if has_val:
        validation = (table.rows(val["sha256"].tolist()), val["label_index"].to_numpy(np.int32))

    model = build_head(table.dim, len(classes), params, features=x_train)
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        nan_guard("train_head", "head.learning_rate"),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=params.patience, restore_best_weights=True),
    ]
    if tracker is not None:
        callbacks.append(tracker.keras_callback())
    history = fit_head(model, x_train, y_train, class_weights(y_train, len(classes), params.class_weights),
                       validation, params, seed, callbacks)

    rows = [{"epoch": i, **{k: float(v[i]) for k, v in history.history.items()}}
            for i in range(len(history.history["loss"]))]
    write_history(rows, history_path)
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    best = min(rows, key=lambda r: r[monitor])
    return TrainHeadResult(batch_size=params.batch_size, epochs_run=len(rows), best_epoch=best["epoch"],
                           converged=len(rows) < params.epochs, train_accuracy=best["accuracy"],
                           val_accuracy=best.get("val_accuracy"), val_loss=best.get("val_loss"))


def best_head_epochs(history_path: str | Path) -> int:
    """Epochs up to and including the epoch train_head kept (the lowest val_loss; the first on a tie, as Keras'
    EarlyStopping keeps it), read from its history CSV."""
    history = pd.read_csv(history_path)
    monitor = "val_loss" if history["val_loss"].notna().any() else "loss"
    return int(history["epoch"][history[monitor].idxmin()]) + 1


def refit_head(x: np.ndarray, y: np.ndarray, n_classes: int, params: HeadParams, seed: int, epochs: int):
    """A new head trained on (x, y) for exactly `epochs` epochs, standardised on x; returns (model, steps run)."""
    seed_everything(seed)
    model = build_head(x.shape[1], n_classes, params, features=x)
    fit_head(model, x, y, class_weights(y, n_classes, params.class_weights), None, params, seed,
             [nan_guard("finetune", "head.learning_rate")], epochs=epochs)
    return model, epochs * math.ceil(len(y) / params.batch_size)
