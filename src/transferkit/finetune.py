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

The published model takes raw RGB pixels (0..255, float32) of
image_size x image_size and returns class probabilities: the backbone's
preprocessing is inside it, so serving cannot preprocess differently.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from transferkit import device
from transferkit.config import BackboneParams, FinetuneParams
from transferkit.data import classes_of, load_manifest
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, read_json, write_json
from transferkit.training import compile_classifier, nan_guard, seed_everything, write_history


def metadata_path(model_path: str | Path) -> Path:
    """The JSON written beside a published model: classes, image size, backbone."""
    return Path(model_path).with_suffix(".json")


def assemble(backbone, head, image_size: int):
    """The published model: raw pixels -> backbone -> head."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    outputs = head(backbone(inputs))
    return keras.Model(inputs, outputs, name="classifier")


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


def run_fingerprint(parts: dict) -> str:
    """Identifies the inputs of a fine-tune run; a checkpoint is resumed only by the same run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Checkpointer:
    """Per-epoch checkpoint + early stopping whose state survives a kill.

    After each epoch: the weights (model and optimizer state) go to
    `epoch-<n>.weights.h5`, then `state.json` is rewritten. state.json is the
    commit point: it names the last completed epoch's file and the best
    epoch's file, and a file is deleted only once state.json no longer names
    it. A kill at any moment leaves state.json describing files that exist
    and match it.
    """

    def __init__(self, folder: Path, fingerprint: str, monitor: str, patience: int):
        self.folder, self.fingerprint, self.monitor, self.patience = Path(folder), fingerprint, monitor, patience
        self.state = {"fingerprint": fingerprint, "epoch": -1, "best": None, "best_epoch": None,
                      "wait": 0, "stopped": False, "history": []}

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def weights_path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch}.weights.h5"

    def resume(self, model) -> int:
        """Load a matching checkpoint into `model`; returns the first epoch still to run."""
        if not self.state_path.exists():
            return 0
        state = read_json(self.state_path)
        if state.get("fingerprint") != self.fingerprint:
            print("finetune: checkpoint is from different inputs; starting over", flush=True)
            self.clear()
            return 0
        model.optimizer.build(model.trainable_variables)  # so the saved optimizer state has a place to go
        model.load_weights(self.weights_path(state["epoch"]))
        self.state = state
        print(f"finetune: resuming after epoch {state['epoch']} from {self.folder}", flush=True)
        return state["epoch"] + 1

    def callback(self):
        import keras

        ckpt = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                ckpt.on_epoch_end(self.model, epoch, logs or {})

        return _Callback()

    def on_epoch_end(self, model, epoch: int, logs: dict) -> None:
        state = self.state
        state["history"].append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        value = float(logs[self.monitor])
        if state["best"] is None or value < state["best"]:
            state.update(best=value, best_epoch=epoch, wait=0)
        else:
            state["wait"] += 1
        if state["wait"] >= self.patience:
            state["stopped"] = True
            model.stop_training = True
        state["epoch"] = epoch
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.weights_path(epoch)) as tmp:
            model.save_weights(tmp)
        write_json(self.state_path, state)  # the commit point
        keep = {self.weights_path(epoch).name, self.weights_path(state["best_epoch"]).name}
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old.name not in keep:
                old.unlink()

    def restore_best(self, model) -> None:
        if self.state["best_epoch"] is not None:
            model.load_weights(self.weights_path(self.state["best_epoch"]))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def finetune(manifest_path: str | Path, head_path: str | Path, model_path: str | Path,
             history_path: str | Path, checkpoint_dir: str | Path, backbone_params: BackboneParams,
             params: FinetuneParams, seed: int, features_dir: str | Path | None = None, tracker=None) -> dict:
    import keras
    import tensorflow as tf

    from transferkit.backbones import build_backbone, weights_fingerprint
    from transferkit.datasets import image_dataset

    manifest = load_manifest(manifest_path)
    classes = classes_of(manifest)
    plan = device.detect(params.batch_size)
    device.apply(plan)
    seed_everything(seed)  # before building: weights "none" must match what extract used
    backbone = build_backbone(backbone_params.name, backbone_params.weights, backbone_params.image_size)
    fingerprint = weights_fingerprint(backbone)
    if features_dir is not None and (Path(features_dir) / "current.json").exists():
        used = read_json(Path(features_dir) / "current.json")["spec"]["weights_sha256"]
        if used != fingerprint:
            raise TransferkitError(
                f"backbone.weights: the backbone built now differs from the one extract used "
                f"({fingerprint[:12]} vs {used[:12]}); re-run extract: `dvc repro --force extract` "
                f"(plain `dvc repro` does not see a weights file outside weights/ change)")
    head = keras.saving.load_model(head_path, safe_mode=True)
    model = assemble(backbone, head, backbone_params.image_size)

    history: list[dict] = []
    summary = {"enabled": params.enabled, "epochs_run": 0}
    if params.enabled:
        backbone_trainable = unfreeze_top(backbone, params.unfreeze)
        train = manifest[manifest["split"] == "train"]
        val = manifest[manifest["split"] == "val"]
        inputs = keras.Input((backbone_params.image_size,) * 2 + (3,), dtype="float32", name="image")
        x = augmenter(seed)(inputs) if params.augment else inputs
        trainer = keras.Model(inputs, model(x), name="trainer")
        compile_classifier(trainer, params.learning_rate)  # after unfreezing, or trainable changes are ignored

        as_float = lambda images, labels: (tf.cast(images, tf.float32), labels)  # noqa: E731
        train_ds = image_dataset(train["path"], backbone_params.image_size, plan.batch_size,
                                 train["label_index"], shuffle_seed=seed).map(as_float)
        val_ds = None
        if len(val):
            val_ds = image_dataset(val["path"], backbone_params.image_size, plan.batch_size,
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
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    write_json(metadata_path(model_path), {
        "classes": classes,
        "image_size": backbone_params.image_size,
        "backbone": backbone_params.name,
        "backbone_weights_sha256": fingerprint,
        "input": "RGB pixels 0..255, float32, shape (N, image_size, image_size, 3)",
    })
    write_history(history, history_path)
    if params.enabled:
        ckpt.clear()  # done: a later run with the same inputs must train, not resume a finished run
    return summary
