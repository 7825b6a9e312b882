"""The `companion` stage: a small CNN trained from scratch at the images' native resolution.

A pretrained backbone sees small images (glyphs, 28-32 px scans) upscaled
5-8x, far from what it was trained on; a plain CNN at the native size learns
them in minutes, and its errors differ from the transfer model's. So, where
that can pay, this stage trains one, and `finetune` lets it compete on val
(train/candidates.py): alone, and averaged with the transfer model.

- Sized from the data: its input side is the median native side of the
  manifest's images (the larger of width and height), capped at
  `companion.max_side` and at least MIN_SIDE.
- `auto` trains one only when that median side is at most `companion.max_side`
  (64 px by default), i.e. at least 3.5x below every registered backbone's
  native size, and prints why, either way.
- Stock Keras layers only (rescaling, conv, BatchNorm, pooling, dense), so a
  model containing it loads with safe_mode=True. Augmentation (translation,
  zoom) wraps it during training only and is not saved.
- Early stopping on val (best epoch kept), per-epoch checkpoints a rerun
  resumes from (checkpoints.py), only the chief of a multi-worker cluster
  trains and writes (the network is small: one device is enough).
- `refit_companion` (finetune.refit, called by `finetune` on the chief when
  the companion is published, alone or in the ensemble): the same network
  trained again from scratch on train + val for its best epoch count.

The output is a folder: `companion.json` (trained or not, why, its input
side, classes) always, and `companion.keras` only when one was trained, so
DVC always finds the output and `finetune` knows whether to use it.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.backbones.registry import BACKBONES
from transferkit.config import CompanionParams
from transferkit.data.datasets import image_dataset
from transferkit.data.manifest import classes_of, load_manifest, modality_of, split_of
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, read_json, write_json
from transferkit.results import StageResult
from transferkit.seeding import pin_threads, seed_everything
from transferkit.train.checkpoints import Checkpointer, run_fingerprint
from transferkit.train.common import nan_guard, write_history

MODEL_FILE = "companion.keras"
INFO_FILE = "companion.json"
BN_MOMENTUM = 0.9
MIN_SIDE = 16  # pixels: three 2x poolings still leave a 4x4 map
SMALLEST_BACKBONE_SIDE = min(spec.native_size for spec in BACKBONES.values() if spec.modality == "image")  # 224 px


@dataclass(frozen=True, kw_only=True)
class CompanionResult(StageResult):
    trained: bool
    why: str
    native_side: int  # median of the images' larger side, pixels
    side: int | None = None  # the network's input side, pixels (when trained)
    epochs_run: int = 0
    best_epoch: int | None = None  # Keras' index, from 0
    val_accuracy: float | None = None  # at its own side, on the natively decoded val images
    val_loss: float | None = None
    parameters: int | None = None
    history: list = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.trained:
            return [f"no companion: {self.why}"]
        figure = f", val accuracy {self.val_accuracy:.4f}" if self.val_accuracy is not None else ""
        return [f"trained a {self.parameters:,}-parameter CNN at {self.side} px for {self.epochs_run} epochs "
                f"(best: epoch {self.best_epoch + 1}){figure}"]

    def metrics_file(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history" and v is not None}

    def run_params(self) -> dict[str, str]:
        return {"companion_trained": str(self.trained), "companion_why": self.why[:6000]}


def native_side(manifest) -> int:
    """The median of the images' larger side, pixels."""
    return int(round(statistics.median(np.maximum(manifest["width"], manifest["height"]).tolist())))


def decide(native: int, params: CompanionParams) -> tuple[bool, str]:
    """(train one?, the reason in one line)."""
    if params.strategy == "off":
        return False, "companion.strategy off"
    if params.strategy == "on":
        return True, f"companion.strategy on: the images' median native side is {native} px"
    if native <= params.max_side:
        return True, (f"auto: the images' median native side is {native} px (<= companion.max_side "
                      f"{params.max_side}), far below the backbones' native {SMALLEST_BACKBONE_SIDE}+ px: a small "
                      f"CNN trained from scratch at that size can beat or complement the upscaled transfer model")
    return False, (f"auto: the images' median native side is {native} px (> companion.max_side {params.max_side}): "
                   f"the pretrained backbone sees them near its native size, where a small CNN from scratch does "
                   f"not pay")


def input_side(native: int, params: CompanionParams) -> int:
    return max(MIN_SIDE, min(native, params.max_side))


def build_companion(side: int, n_classes: int, width: int, dropout: float):
    """raw RGB 0..255 at side x side -> class probabilities: three stages of two 3x3 conv + BatchNorm + ReLU,
    `width`, 2x and 4x filters, 2x max pooling between them, global average pooling, dropout, softmax."""
    import keras

    inputs = keras.Input((side, side, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for k in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{stage}{k}")(x)
            # Keras' momentum 0.99 suits long runs; with a few hundred steps the moving statistics would still
            # be near their init at val time (val accuracy at chance for 10+ epochs while training is at 0.99).
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{stage}{k}")(x)
            x = keras.layers.ReLU(name=f"relu{stage}{k}")(x)
        if stage < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{stage}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="companion")


def read_companion(folder: str | Path):
    """(the companion model, its companion.json) or (None, companion.json) when none was trained."""
    import keras

    folder = Path(folder)
    if not (folder / INFO_FILE).exists():
        raise TransferkitError(f"{folder / INFO_FILE}: not found; run the companion stage first "
                               f"(`.venv/bin/dvc repro companion`)")
    info = read_json(folder / INFO_FILE)
    if not info.get("trained"):
        return None, info
    return keras.saving.load_model(folder / MODEL_FILE, safe_mode=True), info


def companion(manifest_path: str | Path, out: str | Path, history_path: str | Path, checkpoint_dir: str | Path,
              params: CompanionParams, seed: int, chief: bool = True, tracker=None) -> CompanionResult:
    """Train the companion (or say why not) and write the `out` folder; `chief`: False on another worker of
    a multi-worker cluster, which does nothing (the companion trains on the chief alone)."""
    manifest = load_manifest(manifest_path)
    classes = classes_of(manifest)
    if modality_of(manifest) != "image":
        native, train, why = 0, False, f"the data are {modality_of(manifest)}s: the companion is a CNN for small images"
    else:
        native = native_side(manifest)
        train, why = decide(native, params)
    print(f"companion: {why}", flush=True)
    out = Path(out)
    if not chief:
        return CompanionResult(trained=False, why="not the chief worker: the chief trains the companion",
                               native_side=native)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).unlink(missing_ok=True)
    if not train:
        write_history([], history_path)
        write_json(out / INFO_FILE, {"trained": False, "why": why, "native_side": native, "classes": classes})
        return CompanionResult(trained=False, why=why, native_side=native)

    side = input_side(native, params)
    model, ckpt = _fit(split_of(manifest, "train"), split_of(manifest, "val"), len(classes), side, manifest_path,
                       checkpoint_dir, params, seed, tracker)
    state = ckpt.state
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    with atomic_path(out / MODEL_FILE) as tmp:
        model.save(tmp)
    write_json(out / INFO_FILE, {"trained": True, "why": why, "native_side": native, "side": side,
                                 "classes": classes, "best_epoch": state["best_epoch"]})
    write_history(state["history"], history_path)
    ckpt.clear()  # done: a later run with the same inputs must train, not resume a finished run
    return CompanionResult(trained=True, why=why, native_side=native, side=side, epochs_run=len(state["history"]),
                           best_epoch=state["best_epoch"], val_accuracy=best.get("val_accuracy"),
                           val_loss=best.get("val_loss"), parameters=model.count_params())


def refit_companion(manifest_path: str | Path, folder: str | Path, checkpoint_dir: str | Path,
                    params: CompanionParams, seed: int, tracker=None):
    """finetune.refit: the companion in `folder` trained again from scratch on train + val, with the same
    params, seed and cosine schedule, for its best epoch count (no early stopping: val is training data now),
    resuming from a checkpoint. Returns (model, epochs, optimizer steps, items trained on)."""
    manifest = load_manifest(manifest_path)
    info = read_json(Path(folder) / INFO_FILE)
    both = manifest[manifest["split"].isin(["train", "val"])]
    epochs = int(info["best_epoch"]) + 1
    model, ckpt = _fit(both, both.iloc[:0], len(classes_of(manifest)), int(info["side"]), manifest_path,
                       checkpoint_dir, params, seed, tracker, stop=epochs)
    ckpt.clear()
    return model, epochs, epochs * math.ceil(len(both) / params.batch_size), len(both)


def _fit(train, val, n_classes: int, side: int, manifest_path, checkpoint_dir, params: CompanionParams, seed: int,
         tracker, stop: int | None = None):
    """The companion trained by `params` on `train`, resuming from a checkpoint; the best epoch's weights.
    `stop`: a refit (finetune.refit): train exactly `stop` epochs of the same schedule and keep the last."""
    import keras
    import tensorflow as tf

    pin_threads()
    seed_everything(seed)
    model = build_companion(side, n_classes, params.width, params.dropout)
    inputs = keras.Input((side, side, 3), dtype="float32", name="image")
    x = inputs
    if params.translate:
        x = keras.layers.RandomTranslation(params.translate, params.translate, fill_mode="nearest", seed=seed)(x)
    if params.zoom:
        x = keras.layers.RandomZoom(params.zoom, fill_mode="nearest", seed=seed + 1)(x)
    trainer = keras.Model(inputs, model(x), name="companion_trainer")
    steps = math.ceil(len(train) / params.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=steps * params.epochs)
    trainer.compile(keras.optimizers.AdamW(schedule, weight_decay=params.weight_decay, global_clipnorm=1.0),
                    keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])

    def as_float(images, labels):
        return tf.cast(images, tf.float32), labels

    train_ds = image_dataset(train["path"], side, params.batch_size, train["label_index"],
                             shuffle_seed=seed).map(as_float)
    val_ds = (image_dataset(val["path"], side, params.batch_size, val["label_index"]).map(as_float)
              if len(val) else None)
    inputs_id = run_fingerprint({
        "manifest": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(), "side": side,
        "params": params.model_dump(), "seed": seed, "what": "companion", **({"refit": stop} if stop else {})})
    # A refit never stops early (no val to watch): patience beyond the schedule.
    ckpt = Checkpointer(Path(checkpoint_dir), inputs_id, "val" if len(val) else "loss",
                        params.epochs + 1 if stop else params.patience)
    first = ckpt.resume(trainer)
    callbacks = [nan_guard("companion", "companion.learning_rate"), ckpt.callback()]
    if tracker is not None:
        callbacks.append(tracker.keras_callback())
    end = stop or params.epochs
    if first < end and not ckpt.state["stopped"]:
        trainer.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=first,
                    callbacks=callbacks, shuffle=False, verbose=2)  # tf.data shuffles itself
    if not stop:  # a refit keeps its last epoch: in memory, or loaded by resume() after a kill at the very end
        ckpt.restore_best(trainer)
    return model, ckpt
