"""The `finetune` stage: backbone + trained head, top of the backbone unfrozen.

The second phase of the Keras transfer-learning recipe, done correctly:
- the head arrives trained (train_head), so large gradients from a random
  head never reach the pretrained weights;
- only the top `finetune.unfreeze` backbone layers become trainable, and
  BatchNormalization layers stay frozen: in Keras 3 a non-trainable BN layer
  runs in inference mode (moving statistics) even inside fit(), which is what
  keeps a small dataset from wrecking the pretrained statistics;
- the model is compiled after `trainable` changes (otherwise they are ignored);
- low learning rate, augmentation (random flip/translate/zoom, active only in
  training), early stopping on val_loss with the best weights kept.

Every epoch writes a checkpoint (weights, optimizer state, early-stopping
state) under the checkpoint folder; a rerun with the same inputs resumes after
the last completed epoch (even after a SIGKILL). A resumed run continues the
same training, but is not bit-identical to an uninterrupted one: tf.data's
shuffle order restarts its per-epoch sequence in the new process. `finetune.enabled: false` skips training and writes
the head model on top of the frozen backbone.

What is published, and how, is published.py's job; checkpoints.py keeps
the per-epoch state.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transferkit import device
from transferkit.backbones import build_backbone, weights_fingerprint
from transferkit.checkpoints import Checkpointer, run_fingerprint
from transferkit.config import BackboneParams, FinetuneParams
from transferkit.datasets import image_dataset
from transferkit.embeddings import read_table
from transferkit.errors import TransferkitError
from transferkit.manifest import classes_of, load_manifest, split_of
from transferkit.published import ModelInfo, assemble, save_published
from transferkit.seeding import seed_everything
from transferkit.training import compile_classifier, nan_guard, write_history


def augmenter(seed: int):
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
    ], name="augment")


def unfreeze_top(backbone, n_layers: int) -> int:
    """Make the top n layers trainable, BatchNormalization excepted; returns how many are trainable."""
    import keras

    backbone.trainable = True
    cutoff = len(backbone.layers) - n_layers
    trainable = 0
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= cutoff and not isinstance(layer, keras.layers.BatchNormalization)
        trainable += bool(layer.trainable and layer.weights)
    return trainable


def finetune(manifest_path: str | Path, embeddings_path: str | Path, head_path: str | Path,
             model_path: str | Path, info_path: str | Path, history_path: str | Path,
             checkpoint_dir: str | Path, backbone_params: BackboneParams, params: FinetuneParams, seed: int,
             tracker=None) -> dict:
    import keras
    import tensorflow as tf

    manifest = load_manifest(manifest_path)
    classes = classes_of(manifest)
    plan = device.detect()
    device.apply(plan)
    seed_everything(seed)  # before building: weights "none" must match what extract used
    backbone = build_backbone(backbone_params.name, backbone_params.weights, backbone_params.image_size)
    fingerprint = weights_fingerprint(backbone)
    used = read_table(embeddings_path).spec["weights_sha256"]
    if used != fingerprint:
        raise TransferkitError(
            f"backbone.weights: the backbone built now differs from the one extract used "
            f"({fingerprint[:12]} vs {used[:12]}); re-run extract: `dvc repro --force extract` "
            f"(plain `dvc repro` does not see a weights file outside weights/ change)")
    head = keras.saving.load_model(head_path, safe_mode=True)
    model = assemble(backbone, head, backbone_params.image_size)

    history: list[dict] = []
    summary = {"enabled": params.enabled, "epochs_run": 0, "batch_size": params.batch_size}
    if params.enabled:
        backbone_trainable = unfreeze_top(backbone, params.unfreeze)
        train, val = split_of(manifest, "train"), split_of(manifest, "val")
        inputs = keras.Input((backbone_params.image_size,) * 2 + (3,), dtype="float32", name="image")
        x = augmenter(seed)(inputs) if params.augment else inputs
        trainer = keras.Model(inputs, model(x), name="trainer")
        compile_classifier(trainer, params.learning_rate)  # after unfreezing, or trainable changes are ignored

        as_float = lambda images, labels: (tf.cast(images, tf.float32), labels)  # noqa: E731
        train_ds = image_dataset(train["path"], backbone_params.image_size, params.batch_size,
                                 train["label_index"], shuffle_seed=seed).map(as_float)
        val_ds = None
        if len(val):
            val_ds = image_dataset(val["path"], backbone_params.image_size, params.batch_size,
                                   val["label_index"]).map(as_float)
        monitor = "val_loss" if val_ds is not None else "loss"
        inputs_id = run_fingerprint({
            "head": hashlib.sha256(Path(head_path).read_bytes()).hexdigest(),
            "manifest": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(),
            "backbone": fingerprint, "params": params.model_dump(), "image_size": backbone_params.image_size,
            "seed": seed, "policy": plan.policy,
        })
        ckpt = Checkpointer(Path(checkpoint_dir), inputs_id, monitor, params.patience)
        first_epoch = ckpt.resume(trainer)
        callbacks = [nan_guard("finetune", "finetune.learning_rate"), ckpt.callback()]
        if tracker is not None:
            callbacks.append(tracker.keras_callback())
        if first_epoch < params.epochs and not ckpt.state["stopped"]:
            print(f"finetune: {backbone_trainable} backbone layers with weights trainable "
                  f"(top {params.unfreeze}, BatchNorm frozen), lr {params.learning_rate}", flush=True)
            trainer.fit(train_ds, validation_data=val_ds, epochs=params.epochs, initial_epoch=first_epoch,
                        callbacks=callbacks, shuffle=False, verbose=2)  # tf.data shuffles itself
        ckpt.restore_best(trainer)
        history = ckpt.state["history"]
        best = next((h for h in history if h["epoch"] == ckpt.state["best_epoch"]), {})
        summary.update(epochs_run=len(history), best_epoch=ckpt.state["best_epoch"],
                       val_accuracy=best.get("val_accuracy"), val_loss=best.get("val_loss"),
                       trainable_backbone_layers=backbone_trainable)
    else:
        print("finetune: finetune.enabled is false; publishing the head on the frozen backbone", flush=True)

    # Publish: the model with the best weights, plus what predict needs to use it.
    info = ModelInfo(classes=classes, image_size=backbone_params.image_size, backbone=backbone_params.name,
                     backbone_weights_sha256=fingerprint)
    save_published(model, info, model_path, info_path)
    write_history(history, history_path)
    if params.enabled:
        ckpt.clear()  # done: a later run with the same inputs must train, not resume a finished run
    return summary
