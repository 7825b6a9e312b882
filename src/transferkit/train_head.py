"""The `train_head` stage: a new classifier trained on cached embeddings.

The backbone never runs here: the embeddings were computed once by `extract`,
so an epoch over thousands of images takes well under a second on a CPU. No
augmentation (the embeddings are fixed); that is the price of the speed, and
the fine-tune stage is where augmentation happens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferkit.config import HeadParams
from transferkit.embeddings import read_table
from transferkit.files import atomic_path
from transferkit.manifest import classes_of, load_manifest, split_of
from transferkit.seeding import seed_everything
from transferkit.training import class_weights, compile_classifier, nan_guard, write_history


def build_head(embedding_dim: int, n_classes: int, params: HeadParams):
    """embedding -> [Dropout -> Dense(hidden, relu)] -> Dropout -> Dense(n_classes, softmax)."""
    import keras

    inputs = keras.Input((embedding_dim,), name="embedding")
    x = inputs
    if params.hidden_units:
        x = keras.layers.Dropout(params.dropout, name="head_dropout_in")(x)
        x = keras.layers.Dense(params.hidden_units, activation="relu", name="head_hidden")(x)
    x = keras.layers.Dropout(params.dropout, name="head_dropout")(x)
    # float32 output even under mixed precision: softmax in float16 loses probability mass.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head_output")(x)
    return keras.Model(inputs, outputs, name="head")


def train_head(manifest_path: str | Path, embeddings_path: str | Path, model_path: str | Path,
               history_path: str | Path, params: HeadParams, seed: int, tracker=None) -> dict:
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

    model = build_head(table.dim, len(classes), params)
    compile_classifier(model, params.learning_rate)
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        nan_guard("train_head", "head.learning_rate"),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=params.patience, restore_best_weights=True),
    ]
    if tracker is not None:
        callbacks.append(tracker.keras_callback())
    history = model.fit(
        x_train, y_train, validation_data=validation, epochs=params.epochs, batch_size=params.batch_size,
        class_weight=class_weights(y_train, len(classes), params.class_weights),
        callbacks=callbacks, shuffle=True, verbose=2)

    rows = [{"epoch": i, **{k: float(v[i]) for k, v in history.history.items()}}
            for i in range(len(history.history["loss"]))]
    write_history(rows, history_path)
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    best = min(rows, key=lambda r: r[monitor])
    return {
        "batch_size": params.batch_size,
        "epochs_run": len(rows),
        "best_epoch": best["epoch"],
        "train_accuracy": best["accuracy"],
        "val_accuracy": best.get("val_accuracy"),
        "val_loss": best.get("val_loss"),
    }
