"""The `finetune` stage: backbone + trained head, whole blocks unfrozen, and only if it pays on val.

1. Facts: labelled images per class, the head's val accuracy on the frozen
   features (the val embeddings through the head: milliseconds), and, when
   the flip is left to the data, the head's val accuracy on flipped val images.
2. The recipe (recipe.py) for those facts: strategy (head, top, full,
   gradual), trainable blocks (blocks.py: whole blocks, BatchNorm frozen and
   in inference mode), epochs (enough for at least finetune.min_steps
   optimizer steps), AdamW with warmup + cosine decay and a lower
   rate per block further down (optimizers.py), label smoothing, gradient
   clipping, augmentation. Printed with its reasons and returned, so the
   stage writes it to its metrics and MLflow.
3. Training, compiled after `trainable` changes (otherwise they are ignored);
   every epoch writes a checkpoint (checkpoints.py) a rerun resumes from. A
   resumed run continues the same training but is not bit-identical: tf.data's
   shuffle order restarts in the new process.
4. Do no harm: the head on the frozen backbone competes with the fine-tuned
   epochs as if it were one more epoch before them. The published model is
   the best on val (accuracy, then loss) among them, and the summary says
   which and why.

With several devices or workers (distributed.py: TF_CONFIG, or local GPUs)
the training of step 3 runs under a tf.distribute strategy, on a twin of the
model built in its scope; only the chief writes anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from transferkit import device
from transferkit.backbones.build import build_backbone, weights_fingerprint
from transferkit.config import BackboneParams, FinetuneParams
from transferkit.data.datasets import image_dataset
from transferkit.data.manifest import classes_of, load_manifest, split_of
from transferkit.deliver.published import ModelInfo, assemble, save_published
from transferkit.embeddings.table import read_table
from transferkit.errors import TransferkitError
from transferkit.results import StageResult
from transferkit.seeding import pin_threads, seed_everything
from transferkit.train import candidates, distributed
from transferkit.train.blocks import block_groups, depth_of_variables, set_trainable_blocks
from transferkit.train.checkpoints import Checkpointer, run_fingerprint
from transferkit.train.common import nan_guard, write_history
from transferkit.train.optimizers import compile_finetune, make_optimizer
from transferkit.train.recipe import Facts, Recipe, resolve


@dataclass(frozen=True, kw_only=True)
class FinetuneResult(StageResult):
    """The recipe used and why, what was trained, and which candidate was published and why."""
    strategy: str
    case: str
    per_class: float  # median labelled train images per class
    head_val_accuracy: float | None  # None without a val split
    epochs_run: int
    batch_size: int
    steps_run: int = 0  # optimizer steps run: the recipe's `steps` were planned, early stopping may end sooner
    head_val_loss: float | None = None  # with the fine-tune's label smoothing, so it compares with its val_loss
    best_epoch: int | None = None  # Keras' index of the best fine-tuned epoch, from 0
    finetune_val_accuracy: float | None = None
    finetune_val_loss: float | None = None
    published: str  # head | finetuned | companion | ensemble
    published_why: str
    val_accuracy: float | None = None  # of the published model
    val_loss: float | None = None
    recipe: dict = field(default_factory=dict)
    companion: str | None = None  # whether the companion stage trained one, and if not why
    candidates: dict | None = None  # val figures of the transfer model chosen, the companion and the ensemble
    companion_weight: float | None = None  # in the ensemble, chosen on val

    def metrics_file(self) -> dict:
        """Every field; an optional one only when it has a value."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None or (f.default is MISSING and f.default_factory is MISSING)}

    def run_params(self) -> dict[str, str]:
        # What the recipe resolved to (auto fills the knobs left null), and why: beside finetune.* as set.
        return {**{f"recipe.{k}": v for k, v in self.recipe.items() if k != "reasons"},
                "recipe.reasons": " | ".join(self.recipe["reasons"])[:6000], "published": self.published,
                "published_why": self.published_why[:6000]}


def augmenter(recipe: Recipe, seed: int):
    """The recipe's random transforms (active in training only), or None."""
    import keras

    layers = []
    if recipe.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if recipe.translate:
        layers.append(keras.layers.RandomTranslation(recipe.translate, recipe.translate, fill_mode="nearest",
                                                     seed=seed + 1))
    if recipe.zoom:
        layers.append(keras.layers.RandomZoom(recipe.zoom, fill_mode="nearest", seed=seed + 2))
    if recipe.erase:  # a patch of 2-33% of the area, filled with noise (Zhong et al., 2017)
        layers.append(keras.layers.RandomErasing((recipe.erase, recipe.erase), seed=seed + 3))
    return keras.Sequential(layers, name="augment") if layers else None


def smoothed_loss(probs: np.ndarray, labels: np.ndarray, smoothing: float) -> float:
    """Cross-entropy against label-smoothed one-hot targets: the loss fine-tuning reports as val_loss."""
    n_classes = probs.shape[1]
    targets = np.full(probs.shape, smoothing / n_classes)
    targets[np.arange(len(labels)), labels] += 1.0 - smoothing
    return float(-(targets * np.log(np.clip(probs, 1e-7, 1.0))).sum(axis=1).mean())


def flip_scores(backbone, head, val, plain_probs: np.ndarray, image_size: int, batch_size: int):
    """(val accuracy, val accuracy on the same images flipped left-right) of the frozen backbone + head."""
    import tensorflow as tf

    flipped = image_dataset(val["path"], image_size, batch_size).map(
        lambda x: tf.reverse(tf.cast(x, tf.float32), axis=[2]))
    probs = head.predict(backbone.predict(flipped, verbose=0), verbose=0)
    labels = val["label_index"].to_numpy()
    return float((plain_probs.argmax(1) == labels).mean()), float((probs.argmax(1) == labels).mean())


def finetune(manifest_path: str | Path, embeddings_path: str | Path, head_path: str | Path,
             model_path: str | Path, info_path: str | Path, history_path: str | Path,
             checkpoint_dir: str | Path, backbone_params: BackboneParams, params: FinetuneParams, seed: int,
             tracker=None, companion_path: str | Path | None = None) -> FinetuneResult:
    cluster = distributed.cluster_from_env()
    manifest = load_manifest(manifest_path)
    classes = classes_of(manifest)
    pin_threads()  # before the strategy: making one starts TensorFlow, whose thread count is then fixed
    plan = device.detect()
    strategy = distributed.make_strategy(cluster, gpus=device.gpu_count())  # before any other TensorFlow op
    device.apply(plan)
    backbone, head, model = _build(backbone_params, head_path, seed)
    fingerprint = weights_fingerprint(backbone)
    table = read_table(embeddings_path)
    used = table.spec["weights_sha256"]
    if used != fingerprint:
        raise TransferkitError(
            f"backbone.weights: the backbone built now differs from the one extract used "
            f"({fingerprint[:12]} vs {used[:12]}); re-run extract: `.venv/bin/dvc repro --force extract` "
            f"(plain `.venv/bin/dvc repro` does not see a weights file outside weights/ change)")

    # 1. Facts. The head on the val embeddings is the frozen model on the val images (extract ran this backbone).
    train, val = split_of(manifest, "train"), split_of(manifest, "val")
    y_val = val["label_index"].to_numpy()
    head_probs = head.predict(table.rows(val["sha256"].tolist()), verbose=0) if len(val) else None
    head_accuracy = float((head_probs.argmax(1) == y_val).mean()) if len(val) else None
    counts = np.bincount(train["label_index"].to_numpy(), minlength=len(classes))
    facts = Facts(per_class=float(np.median(counts)), head_val_accuracy=head_accuracy,
                  n_blocks=len(block_groups(backbone)), train_images=len(train))

    # 2. The recipe.
    def score_flip():
        if not len(val):
            return None
        return flip_scores(backbone, head, val, head_probs, backbone_params.image_size, params.batch_size)

    recipe = resolve(params, facts, score_flip)
    for reason in recipe.reasons:
        print(f"finetune: {reason}", flush=True)
    summary = {"strategy": recipe.strategy, "case": recipe.case, "per_class": facts.per_class,
               "head_val_accuracy": head_accuracy, "epochs_run": 0, "batch_size": params.batch_size}
    if len(val):
        summary["head_val_loss"] = smoothed_loss(head_probs, y_val, recipe.label_smoothing)

    # 3. Training (all but the head strategy), then 4. the best on val is published.
    history: list[dict] = []
    ckpt = None
    published, why = "head", "strategy head: the head on the frozen backbone, no fine-tuning"
    if recipe.strategy != "head":
        initial = model.get_weights()  # the head alone, published if no fine-tuned epoch beats it on val
        inputs_id = run_fingerprint({
            "head": hashlib.sha256(Path(head_path).read_bytes()).hexdigest(),
            "manifest": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(),
            "backbone": fingerprint, "params": params.model_dump(), "recipe": recipe.as_dict(),
            "image_size": backbone_params.image_size, "seed": seed, "policy": plan.policy,
        })
        ckpt = Checkpointer(Path(checkpoint_dir), inputs_id, "val" if len(val) else "loss", recipe.patience,
                            writer=cluster.chief)
        if strategy is None:
            _train(model, backbone, recipe, train, val, len(classes), backbone_params.image_size, params.batch_size,
                   seed, ckpt, tracker)
        else:
            with distributed.scope(strategy):  # a twin of the model, its variables on every device and worker
                _, _, trained = _build(backbone_params, head_path, seed)
            print(f"finetune: worker {cluster.index} of {cluster.workers}, {strategy.num_replicas_in_sync} replicas, "
                  f"global batch {params.batch_size}", flush=True)
            _train(trained, trained.get_layer(backbone.name), recipe, train, val, len(classes),
                   backbone_params.image_size, params.batch_size, seed, ckpt, tracker, strategy)
            model.set_weights(trained.get_weights())
        history = ckpt.state["history"]
        best = next(h for h in history if h["epoch"] == ckpt.state["best_epoch"])
        summary.update(epochs_run=len(history), steps_run=len(history) * recipe.steps_per_epoch,
                       best_epoch=ckpt.state["best_epoch"],
                       finetune_val_accuracy=best.get("val_accuracy"), finetune_val_loss=best.get("val_loss"))
        # As Keras printed it ("Epoch 5/6"; under gradual each phase is its own fit: "Epoch 3/3"); best_epoch is from 0
        numbered = f"{best['epoch'] + 1}/{recipe.phase_end(best['epoch'])}"
        if not len(val):
            published, why = "finetuned", "no val split to compare on: the fine-tuned model (lowest training loss)"
        elif ckpt.rank(best) > ckpt.rank({"val_accuracy": head_accuracy, "val_loss": summary["head_val_loss"]}):
            published = "finetuned"
            why = (f"fine-tuned epoch {numbered} beats the head on val: accuracy {best['val_accuracy']:.4f} "
                   f"vs {head_accuracy:.4f}")
        else:
            model.set_weights(initial)
            why = (f"no fine-tuned epoch beats the head on val (best: epoch {numbered}, accuracy "
                   f"{best['val_accuracy']:.4f} vs {head_accuracy:.4f}): publishing the head on the frozen backbone")
    if companion_path is not None and cluster.chief:  # more candidates: the companion, alone and averaged
        transfer = published
        model, published, more, widened = candidates.widen(model, published, companion_path, val, summary,
                                                            backbone_params.image_size, params.batch_size)
        why = more if published != transfer else (f"{why}; {more}" if more else why)
        summary.update(widened)
    print(f"finetune: published {published}: {why}", flush=True)
    summary.update(published=published, published_why=why)
    if len(val) and published in ("head", "finetuned"):
        summary["val_accuracy"] = head_accuracy if published == "head" else summary["finetune_val_accuracy"]
        summary["val_loss"] = summary["head_val_loss"] if published == "head" else summary["finetune_val_loss"]
    result = FinetuneResult(**summary, recipe=recipe.as_dict())

    if not cluster.chief:
        print(f"finetune: worker {cluster.index} done; the chief (worker 0) writes the model", flush=True)
        return result
    info = ModelInfo(classes=classes, image_size=backbone_params.image_size, backbone=backbone_params.name,
                     backbone_weights_sha256=fingerprint, candidate=published)
    save_published(model, info, model_path, info_path)
    write_history(history, history_path)
    if ckpt is not None:
        ckpt.clear()  # done: a later run with the same inputs must train, not resume a finished run
    return result


def _build(backbone_params: BackboneParams, head_path: str | Path, seed: int):
    """(backbone, trained head, the two assembled on raw pixels)."""
    import keras

    seed_everything(seed)  # before building: weights "none" must match what extract used
    backbone = build_backbone(backbone_params.name, backbone_params.weights, backbone_params.image_size)
    head = keras.saving.load_model(head_path, safe_mode=True)
    return backbone, head, assemble(backbone, head, backbone_params.image_size)


def _train(model, backbone, recipe: Recipe, train, val, n_classes: int, image_size: int, batch_size: int,
           seed: int, ckpt: Checkpointer, tracker, strategy=None) -> None:
    """Fit `model` by the recipe, resuming from `ckpt`; leaves the best epoch's weights in `model`."""
    import keras
    import tensorflow as tf

    with distributed.scope(strategy):
        inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
        augment = augmenter(recipe, seed)
        trainer = keras.Model(inputs, model(augment(inputs) if augment else inputs), name="trainer")

    def as_float(images, labels):
        return tf.cast(images, tf.float32), tf.one_hot(labels, n_classes)

    train_ds = image_dataset(train["path"], image_size, batch_size, train["label_index"],
                             shuffle_seed=seed).map(as_float)
    val_ds = image_dataset(val["path"], image_size, batch_size, val["label_index"]).map(as_float) if len(val) else None
    steps = recipe.steps_per_epoch
    depths = depth_of_variables(backbone)
    compiled_for = None  # the trainable blocks `trainer` was last compiled for

    def setup(epoch: int) -> None:
        """Trainable blocks for `epoch`, then compile (after `trainable` changes, or they are ignored)."""
        nonlocal compiled_for
        names = set_trainable_blocks(backbone, recipe.blocks_at(epoch))
        offset = epoch * steps if recipe.strategy == "gradual" else 0  # a fresh optimizer continues the schedule
        with distributed.scope(strategy):
            compile_finetune(trainer, make_optimizer(recipe, steps * recipe.epochs, depths, offset),
                             recipe.label_smoothing)
        compiled_for = recipe.blocks_at(epoch)
        print(f"finetune: epoch {epoch}: {len(names)} blocks trainable ({', '.join(names)}), BatchNorm frozen",
              flush=True)

    last = ckpt.last_epoch()
    first = 0
    if last >= 0:
        setup(last)  # compiled as when the checkpoint was written, so its optimizer state fits
        with distributed.scope(strategy):
            first = ckpt.resume(trainer)
    if distributed.uses_own_loop(strategy):
        distributed.check_same_run(strategy, ckpt.fingerprint, first)
    callbacks = [nan_guard("finetune", "finetune.learning_rate"), ckpt.callback()]
    if tracker is not None:
        callbacks.append(tracker.keras_callback())
    epoch = first
    while epoch < recipe.epochs and not ckpt.state["stopped"]:
        end = recipe.phase_end(epoch)  # one fit() per phase of equal trainable blocks (keeps the optimizer state)
        if compiled_for != recipe.blocks_at(epoch):
            setup(epoch)
        if distributed.uses_own_loop(strategy):
            distributed.train_epochs(strategy, trainer, train_ds, val_ds, epoch, end, callbacks, batch_size,
                                     recipe.label_smoothing)
        else:
            trainer.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=epoch, callbacks=callbacks,
                        shuffle=False, verbose=2)  # tf.data shuffles itself
        epoch = end
    best = ckpt.state["best_epoch"]
    if compiled_for != recipe.blocks_at(best):
        setup(best)  # the optimizer state saved with the best epoch must fit
    with distributed.scope(strategy):  # on every worker: a re-compiled optimizer is built here, a collective
        ckpt.restore_best(trainer)
    if distributed.uses_own_loop(strategy):
        distributed.barrier(strategy)  # every worker has read the best epoch before the chief clears the folder
