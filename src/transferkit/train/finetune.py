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
5. The refit (finetune.refit, off by default): once the candidate, the recipe,
   the ensemble weight and the epoch counts are chosen on val, the chosen
   candidate is trained again on train + val, same params and seed, for the
   epoch count that won on val (no early stopping: val is training data now),
   and that is published; no choice is revisited. Each branch keeps its own
   schedule, run up to its best epoch: the head (train_head.refit_head) for
   train_head's best epoch count, on the train + val embeddings; the fine-tune
   from that refitted head (as on val: the head it starts from was fitted on
   the data it fine-tunes on), for its best epoch count, its warmup and cosine
   decay laid over the planned epochs as before, so each epoch has more steps;
   the companion (companion.refit_companion) from scratch for its best epoch
   count; the ensemble: both branches, the val-chosen weight. Checkpoints and
   resume as in step 3 (a run of its own fingerprint); the companion refits on
   the chief alone, like the companion stage. The val figures reported are the
   pre-refit ones.

Texts (a text backbone, backbones/bert.py): the same steps on token ids.
Each split is read (data.texts.load_text) and tokenised into windows once
(text.max_windows per document at most) and kept in memory; batches hold
documents of the same number of windows, at most `finetune.batch_size`
windows each (attention memory is per window, and a document is one to
max_windows of them), reshuffled every epoch. No augmentation and no flip
check (recipe.py has text's own rates). The published model takes
token_ids and padding_mask (deliver/published.assemble).

With several devices or workers (distributed.py: TF_CONFIG, or local GPUs)
the training of step 3 runs under a tf.distribute strategy, on a twin of the
model built in its scope; only the chief writes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from transferkit import device
from transferkit.backbones.bert import pad_windows
from transferkit.backbones.build import build_backbone, family_of, weights_fingerprint
from transferkit.backbones.registry import BACKBONES
from transferkit.config import BackboneParams, CompanionParams, FinetuneParams, HeadParams, TextParams
from transferkit.data.datasets import image_dataset
from transferkit.data.manifest import classes_of, load_manifest, split_of
from transferkit.data.texts import load_text
from transferkit.deliver.published import ModelInfo, assemble, save_published, text_model_info, text_settings
from transferkit.embeddings.table import read_table
from transferkit.errors import TransferkitError
from transferkit.results import StageResult
from transferkit.seeding import pin_threads, seed_everything
from transferkit.train import candidates, distributed
from transferkit.train.blocks import block_groups, depth_of_variables, set_trainable_blocks
from transferkit.train.checkpoints import Checkpointer, run_fingerprint
from transferkit.train.common import nan_guard, step_progress, write_history
from transferkit.train.companion import refit_companion
from transferkit.train.optimizers import compile_finetune, make_optimizer
from transferkit.train.recipe import Facts, Recipe, resolve
from transferkit.train.train_head import best_head_epochs, refit_head


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
    refit: bool = False  # finetune.refit: the published model was trained again on train + val
    refit_items: int | None = None  # train + val items the refit trained on
    refit_steps: int | None = None  # optimizer steps of the refit, every branch of the published model together
    refit_epochs: dict | None = None  # per branch (head, finetuned, companion): the val-chosen epoch counts rerun

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


@dataclass(frozen=True)
class TextInputs:
    """How this run turns texts into the model's inputs: the backbone's tokenizer and params.yaml's `text`."""
    family: object  # the backbone's family module (backbones/bert.py)
    tokenizer: object
    settings: object  # family.WindowSettings
    tokenizer_sha256: str
    tokenised: dict = field(default_factory=dict, compare=False)  # paths -> their windows: read and tokenised once

    @classmethod
    def of(cls, backbone_params: BackboneParams, text_params: TextParams | None) -> TextInputs:
        family = family_of(backbone_params.name)
        path = family.tokenizer_path(BACKBONES[backbone_params.name].source)
        settings = family.WindowSettings(**(text_params or TextParams()).model_dump())
        return cls(family, family.load_tokenizer(path), settings, family.tokenizer_fingerprint(path))

    def info(self) -> dict:
        """The window settings and the tokenizer, as model.json records them: part of the fine-tune's checkpoint
        fingerprint (the model's description itself is published.text_model_info's)."""
        return {"text": text_settings(self.settings), "tokenizer_sha256": self.tokenizer_sha256}

    def tokenise(self, paths) -> list[list[list[int]]]:
        """Each file's windows of token ids (read once, kept in memory for every epoch)."""
        key = tuple(paths)
        if key not in self.tokenised:
            self.tokenised[key] = self.family.split_windows([load_text(p) for p in key], self.tokenizer,
                                                            self.settings)
        return self.tokenised[key]


class WindowBatches:
    """Batches of ((token_ids, padding_mask), one-hot labels) of documents with the same number of windows.

    A batch holds at most `max_windows` windows (at least one document), so its attention memory is bounded
    whatever the documents' lengths, and documents that share a window count pad little (a document of two or
    more windows has full windows). With a seed, the documents within each window count and the order of the
    batches are shuffled every epoch; the number of batches stays the same (the schedule counts on it)."""

    def __init__(self, documents, labels, n_classes: int, max_windows: int, seed: int | None = None):
        self.documents, self.labels = documents, np.asarray(labels, np.int32)
        self.n_classes, self.seed, self.epoch = n_classes, seed, 0
        by_count: dict[int, list[int]] = {}
        # Without a seed, by length within a count: single-window documents of similar length pad least.
        for i in sorted(range(len(documents)), key=lambda i: (len(documents[i]), max(map(len, documents[i])))):
            by_count.setdefault(len(documents[i]), []).append(i)
        self.groups = [(max(1, max_windows // count), members) for count, members in sorted(by_count.items())]

    def __len__(self) -> int:
        return sum(math.ceil(len(members) / size) for size, members in self.groups)

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng(None if self.seed is None else [self.seed, self.epoch])
        out = []
        for size, members in self.groups:
            members = list(rng.permutation(members)) if self.seed is not None else members
            out += [members[i:i + size] for i in range(0, len(members), size)]
        if self.seed is not None:
            out = [out[i] for i in rng.permutation(len(out))]
        self.epoch += 1
        return out

    def __iter__(self):
        for batch in self.batches():
            token_ids, padding_mask = pad_windows([self.documents[i] for i in batch])
            yield (token_ids, padding_mask), np.eye(self.n_classes, dtype=np.float32)[self.labels[batch]]

    def dataset(self):
        import tensorflow as tf

        ids = tf.TensorSpec((None, None, None), tf.int32)
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(self), output_signature=((ids, ids), tf.TensorSpec((None, self.n_classes), tf.float32)))
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self)))  # Keras knows the steps per epoch


def finetune(manifest_path: str | Path, embeddings_path: str | Path, head_path: str | Path,
             model_path: str | Path, info_path: str | Path, history_path: str | Path,
             checkpoint_dir: str | Path, backbone_params: BackboneParams, params: FinetuneParams, seed: int,
             tracker=None, companion_path: str | Path | None = None,
             text_params: TextParams | None = None, head_params: HeadParams | None = None,
             companion_params: CompanionParams | None = None,
             head_history: str | Path | None = None) -> FinetuneResult:
    """`head_params`, `companion_params` and `head_history` (train_head's history CSV) are what the refit
    (params.refit) trains the head and the companion again with; needed only then."""
    if params.refit and (head_params is None or head_history is None or
                         (companion_path is not None and companion_params is None)):
        raise TransferkitError("finetune.refit: the refit needs the head's params and history (and the companion's "
                               "params with a companion): pass head_params, head_history and companion_params")
    cluster = distributed.cluster_from_env()
    manifest = load_manifest(manifest_path)
    classes = classes_of(manifest)
    pin_threads()  # before the strategy: making one starts TensorFlow, whose thread count is then fixed
    plan = device.detect()
    strategy = distributed.make_strategy(cluster, gpus=device.gpu_count())  # before any other TensorFlow op
    device.apply(plan)
    backbone, head, model = _build(backbone_params, head_path, seed)
    text = TextInputs.of(backbone_params, text_params) if BACKBONES[backbone_params.name].modality == "text" else None
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
                  n_blocks=len(block_groups(backbone)), train_images=len(train), modality="text" if text else "image",
                  # text: batches of at most batch_size windows, so an epoch's steps are counted on the documents
                  steps_per_epoch=len(WindowBatches(text.tokenise(train["path"]), train["label_index"], len(classes),
                                                    params.batch_size)) if text else None)

    # 2. The recipe.
    def score_flip():
        if not len(val) or text:
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
    ckpt = refit_ckpt = None
    published, why = "head", "strategy head: the head on the frozen backbone, no fine-tuning"
    run_inputs = {  # what a fine-tune's checkpoints belong to
        "head": hashlib.sha256(Path(head_path).read_bytes()).hexdigest(),
        "manifest": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(),
        # refit excluded: the val run is the same either way (the refit's own run adds it)
        "backbone": fingerprint, "params": params.model_dump(exclude={"refit"}), "recipe": recipe.as_dict(),
        "image_size": backbone_params.image_size, "seed": seed, "policy": plan.policy,
        **({"text": text.info()} if text else {}),
    }
    if recipe.strategy != "head":
        initial = model.get_weights()  # the head alone, published if no fine-tuned epoch beats it on val
        inputs_id = run_fingerprint(run_inputs)
        ckpt = Checkpointer(Path(checkpoint_dir), inputs_id, "val" if len(val) else "loss", recipe.patience,
                            writer=cluster.chief)
        if strategy is not None:
            print(f"finetune: worker {cluster.index} of {cluster.workers}, {strategy.num_replicas_in_sync} replicas, "
                  f"global batch {params.batch_size}", flush=True)
        _train_model(model, backbone, backbone_params, head_path, seed, strategy, recipe, train, val, len(classes),
                     params.batch_size, ckpt, tracker, text)
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
    transfer = published
    # More candidates: the companion, alone and averaged. On the chief; with a refit on every worker too, from
    # the same files, so that all know whether the fine-tune (which they train together) is refitted.
    if companion_path is not None and (cluster.chief or params.refit):
        model, published, more, widened = candidates.widen(model, published, companion_path, val, summary,
                                                            backbone_params.image_size, params.batch_size)
        why = more if published != transfer else (f"{why}; {more}" if more else why)
        summary.update(widened)
    if len(val) and published in ("head", "finetuned"):
        summary["val_accuracy"] = head_accuracy if published == "head" else summary["finetune_val_accuracy"]
        summary["val_loss"] = summary["head_val_loss"] if published == "head" else summary["finetune_val_loss"]
    if params.refit and not len(val):
        print("finetune: refit: skipped: no val split, so nothing to add to the training data", flush=True)
    elif params.refit:  # 5. every choice is made: train the chosen candidate again on train + val
        both = manifest[manifest["split"].isin(["train", "val"])]
        refitted, epochs, steps, refit_ckpt = _refit(
            published, transfer, summary, manifest_path, both, table, recipe, backbone_params, params, head_params,
            companion_params, head_history, companion_path, seed, Path(checkpoint_dir), run_inputs, len(classes),
            cluster, strategy, tracker, text)
        model = refitted if cluster.chief else model
        branches = ", ".join(f"{name} {epochs[name]} epochs ({steps[name]} steps)" for name in epochs)
        kind = "texts" if text else "images"
        note = (f"refitted on {len(both)} train + val {kind} for {sum(steps.values())} optimizer steps "
                f"({branches}); the val figures are the pre-refit ones (val is in its training data now)")
        print(f"finetune: refit: the published {published} was {note}", flush=True)
        why = f"{why}; {note}"
        summary.update(refit=True, refit_items=len(both), refit_steps=sum(steps.values()), refit_epochs=epochs)
    print(f"finetune: published {published}: {why}", flush=True)
    summary.update(published=published, published_why=why)
    result = FinetuneResult(**summary, recipe=recipe.as_dict())

    if not cluster.chief:
        print(f"finetune: worker {cluster.index} done; the chief (worker 0) writes the model", flush=True)
        return result
    if text:
        info = text_model_info(classes, backbone_params.name, fingerprint, text.settings, candidate=published,
                               tokenizer_sha256=text.tokenizer_sha256, refit=result.refit,
                               refit_steps=result.refit_steps)
    else:
        info = ModelInfo(classes=classes, image_size=backbone_params.image_size, backbone=backbone_params.name,
                         backbone_weights_sha256=fingerprint, candidate=published, refit=result.refit,
                         refit_steps=result.refit_steps)
    save_published(model, info, model_path, info_path)
    write_history(history, history_path)
    for done in (ckpt, refit_ckpt):  # a later run with the same inputs must train, not resume a finished run
        if done is not None:
            done.clear()
    return result


class Renamed:
    """A tracker whose Keras callback sees each epoch's logs under prefixed names (refit_loss, ...), so that a
    refit's curves do not mix with the val run's at the same epoch numbers."""

    def __init__(self, tracker, prefix: str):
        self.tracker, self.prefix = tracker, prefix

    def keras_callback(self):
        import keras

        if self.tracker is None:
            return keras.callbacks.Callback()
        inner, prefix = self.tracker.keras_callback(), self.prefix

        class _Renamed(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                inner.on_epoch_end(epoch, {prefix + k: v for k, v in (logs or {}).items()})

        return _Renamed()


def _refit(published: str, transfer: str, summary: dict, manifest_path, both, table, recipe: Recipe,
           backbone_params: BackboneParams, params: FinetuneParams, head_params: HeadParams,
           companion_params: CompanionParams | None, head_history, companion_path, seed: int, checkpoint_dir: Path,
           run_inputs: dict, n_classes: int, cluster, strategy, tracker, text: TextInputs | None):
    """(the published candidate trained again on `both`, train + val; the epochs and the optimizer steps of
    each branch retrained; the fine-tune refit's checkpoints, cleared once the model is published). Nothing
    is chosen here: `published`, its transfer branch (`transfer`: head or finetuned), the companion's weight
    and every epoch count were chosen on val. Another worker than the chief trains the fine-tune with the
    chief and returns None as the model."""
    epochs, steps = {}, {}
    model = head = ckpt = None
    if published in ("head", "finetuned", "ensemble"):  # the transfer branch: the head first, seconds
        epochs["head"] = best_head_epochs(head_history)
        head, steps["head"] = refit_head(table.rows(both["sha256"].tolist()), both["label_index"].to_numpy(np.int32),
                                         n_classes, head_params, seed, epochs["head"])
        if transfer == "head":
            model = _build(backbone_params, head, seed)[2]
    if head is not None and transfer == "finetuned":
        epochs["finetuned"] = summary["best_epoch"] + 1
        per_epoch = len(WindowBatches(text.tokenise(both["path"]), both["label_index"], n_classes,
                                      params.batch_size)) if text else math.ceil(len(both) / params.batch_size)
        # The same schedule over the planned epochs (more steps in each), run up to the epoch chosen on val.
        again = dataclasses.replace(recipe, steps_per_epoch=per_epoch, steps=recipe.epochs * per_epoch)
        ckpt = Checkpointer(checkpoint_dir, run_fingerprint({**run_inputs, "refit": epochs["finetuned"],
                                                             "head_params": head_params.model_dump(),
                                                             "head_epochs": epochs["head"]}),
                            "loss", recipe.epochs + 1, writer=cluster.chief)  # no early stopping: no val
        backbone, _, model = _build(backbone_params, head, seed)
        _train_model(model, backbone, backbone_params, head, seed, strategy, again, both, both.iloc[:0], n_classes,
                     params.batch_size, ckpt, Renamed(tracker, "refit_"), text, stop=epochs["finetuned"])
        steps["finetuned"] = epochs["finetuned"] * per_epoch
    if not cluster.chief:
        return None, epochs, steps, ckpt
    if published in ("companion", "ensemble"):  # on the chief alone, as the companion stage trains it
        companion, epochs["companion"], steps["companion"], _ = refit_companion(
            manifest_path, companion_path, checkpoint_dir, companion_params, seed, Renamed(tracker, "refit_companion_"))
        image_size = backbone_params.image_size
        model = (candidates.at_input(companion, image_size) if published == "companion" else
                 candidates.ensemble(model, companion, image_size, summary["companion_weight"]))
    return model, epochs, steps, ckpt


def _build(backbone_params: BackboneParams, head, seed: int):
    """(backbone, trained head, the two assembled on raw pixels, or on token ids for text). `head`: the head's
    .keras file, or a head model (copied, so the copy may live in a distribution strategy's scope)."""
    import keras

    seed_everything(seed)  # before building: weights "none" must match what extract used
    backbone = build_backbone(backbone_params.name, backbone_params.weights, backbone_params.image_size)
    if isinstance(head, (str, Path)):
        head = keras.saving.load_model(head, safe_mode=True)
    else:
        weights = head.get_weights()
        head = keras.models.clone_model(head)
        head.set_weights(weights)
    image = BACKBONES[backbone_params.name].modality == "image"
    return backbone, head, assemble(backbone, head, backbone_params.image_size if image else None)


def _train_model(model, backbone, backbone_params: BackboneParams, head, seed: int, strategy, recipe: Recipe, train,
                 val, n_classes: int, batch_size: int, ckpt: Checkpointer, tracker, text: TextInputs | None,
                 stop: int | None = None) -> None:
    """_train on `model` itself or, under a distribution strategy, on a twin built from the same backbone and
    `head` in the strategy's scope (its variables on every device and worker), then copied back into `model`."""
    if strategy is None:
        _train(model, backbone, recipe, train, val, n_classes, backbone_params.image_size, batch_size, seed, ckpt,
               tracker, text=text, stop=stop)
        return
    with distributed.scope(strategy):
        _, _, trained = _build(backbone_params, head, seed)
    _train(trained, trained.get_layer(backbone.name), recipe, train, val, n_classes, backbone_params.image_size,
           batch_size, seed, ckpt, tracker, strategy, text=text, stop=stop)
    model.set_weights(trained.get_weights())


def _train(model, backbone, recipe: Recipe, train, val, n_classes: int, image_size: int, batch_size: int,
           seed: int, ckpt: Checkpointer, tracker, strategy=None, text: TextInputs | None = None,
           stop: int | None = None) -> None:
    """Fit `model` by the recipe, resuming from `ckpt`; leaves the best epoch's weights in `model`.
    `stop`: a refit: run the recipe's schedule up to `stop` epochs and leave the last epoch's weights."""
    import keras
    import tensorflow as tf

    if text is not None:  # token ids in, no augmentation; compile a wrapper, so the saved model has no optimizer
        with distributed.scope(strategy):
            inputs = [keras.Input((None, None), dtype="int32", name=name) for name in ("token_ids", "padding_mask")]
            trainer = keras.Model(inputs, model(inputs), name="trainer")
        train_batches = WindowBatches(text.tokenise(train["path"]), train["label_index"], n_classes, batch_size, seed)
        train_ds = train_batches.dataset()
        val_batches = WindowBatches(text.tokenise(val["path"]), val["label_index"], n_classes, batch_size) \
            if len(val) else None
        val_ds, val_steps = (val_batches.dataset(), len(val_batches)) if val_batches else (None, None)
    else:
        with distributed.scope(strategy):
            inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
            augment = augmenter(recipe, seed)
            trainer = keras.Model(inputs, model(augment(inputs) if augment else inputs), name="trainer")

        def as_float(images, labels):
            return tf.cast(images, tf.float32), tf.one_hot(labels, n_classes)

        train_ds = image_dataset(train["path"], image_size, batch_size, train["label_index"],
                                 shuffle_seed=seed).map(as_float)
        val_ds = image_dataset(val["path"], image_size, batch_size, val["label_index"]).map(as_float) \
            if len(val) else None
        val_steps = math.ceil(len(val) / batch_size) if len(val) else None
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
        frozen = "" if text is not None else ", BatchNorm frozen"  # a transformer has LayerNorm, trained in its block
        print(f"finetune: epoch {epoch}: {len(names)} blocks trainable ({', '.join(names)}){frozen}", flush=True)

    last = ckpt.last_epoch()
    first = 0
    if last >= 0:
        setup(last)  # compiled as when the checkpoint was written, so its optimizer state fits
        with distributed.scope(strategy):
            first = ckpt.resume(trainer)
    if distributed.uses_own_loop(strategy):
        distributed.check_same_run(strategy, ckpt.fingerprint, first)
    callbacks = [nan_guard("finetune", "finetune.learning_rate"), ckpt.callback(),
                 step_progress("finetune", stop or recipe.epochs, steps, val_steps)]
    if tracker is not None:
        callbacks.append(tracker.keras_callback())
    epoch = first
    last_epoch = stop or recipe.epochs
    while epoch < last_epoch and not ckpt.state["stopped"]:
        # one fit() per phase of equal trainable blocks (keeps the optimizer state)
        end = min(recipe.phase_end(epoch), last_epoch)
        if compiled_for != recipe.blocks_at(epoch):
            setup(epoch)
        if distributed.uses_own_loop(strategy):
            distributed.train_epochs(strategy, trainer, train_ds, val_ds, epoch, end, callbacks, batch_size,
                                     recipe.label_smoothing)
        else:
            trainer.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=epoch, callbacks=callbacks,
                        shuffle=False, verbose=2)  # tf.data shuffles itself
        epoch = end
    if stop is None:  # a refit keeps its last epoch: in memory, or loaded by resume() after a kill at the end
        best = ckpt.state["best_epoch"]
        if compiled_for != recipe.blocks_at(best):
            setup(best)  # the optimizer state saved with the best epoch must fit
        with distributed.scope(strategy):  # on every worker: a re-compiled optimizer is built here, a collective
            ckpt.restore_best(trainer)
    if distributed.uses_own_loop(strategy):
        distributed.barrier(strategy)  # every worker has read the best epoch before the chief clears the folder
