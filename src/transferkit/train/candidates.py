"""More candidates, chosen on val: the companion alone, and the companion averaged with the transfer model.

`finetune` first picks the better transfer candidate on val (the head on the
frozen backbone or a fine-tuned epoch: accuracy, then loss, as always). When
the `companion` stage trained a companion, two more candidates join it:

- the companion alone, behind a stock Resizing layer that brings the
  published input (raw RGB 0..255 at backbone.image_size) down to its side;
- the ensemble: one Keras graph with both branches on the same input, its
  output the weighted average w * companion + (1 - w) * transfer, w chosen
  on val from WEIGHTS (accuracy, then log loss).

Every candidate is scored on the val images through the very graph that
would be published (the companion sees its input through the Resizing
layer, as it will when served). The published model is the most accurate on
val; ties go to the cheaper candidate, in the order of COST (the head runs
the backbone once, the companion is a small CNN but needs its own training,
a fine-tuned backbone is a second copy of the backbone's weights, the
ensemble runs both networks), and a lead of a single val image is a tie
(TIE_ITEMS). Log loss is no tie-breaker across kinds:
averaging two models lowers it almost always, whether or not it helps the
accuracy. Each figure is printed with its 95% bootstrap interval: val is
small, and the intervals say how much a difference means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferkit.data.datasets import image_dataset
from transferkit.train.companion import read_companion

WEIGHTS = tuple(round(0.1 * k, 1) for k in range(1, 10))  # the companion's weight in the ensemble
COST = {"head": 0, "companion": 1, "finetuned": 2, "ensemble": 3}  # ties go to the lowest
# A costlier candidate that is right on one val item more is tied, not better: the ensemble's weight is picked
# from 9 on those very items, so a one-item lead is what the pick alone gives (on the sample: the ensemble led
# the fine-tuned model by 1 of 120 val images and scored 0.844 on test against its 0.856).
TIE_ITEMS = 1
RESAMPLES = 2000  # bootstrap resamples of the val images


def interval(correct: int, total: int, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of an accuracy of `correct` out of `total` (it depends on the count alone)."""
    values = np.zeros(total)
    values[:correct] = 1.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, total, size=(RESAMPLES, total))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def choose(correct: dict[str, int]) -> str:
    """The candidate with the most correct val images, where a costlier one must be right on more than
    TIE_ITEMS more images than a cheaper one to displace it (walked from the cheapest, in COST order)."""
    chosen = None
    for name in sorted(correct, key=COST.get):
        if chosen is None or correct[name] > correct[chosen] + TIE_ITEMS:
            chosen = name
    return chosen


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)).mean())


def best_weight(transfer: np.ndarray, companion: np.ndarray, labels: np.ndarray) -> float:
    """The companion's weight in WEIGHTS whose average is the most accurate on val, then the lowest log loss."""
    def rank(w: float):
        mixed = w * companion + (1.0 - w) * transfer
        return (-int((mixed.argmax(1) == labels).sum()), log_loss(mixed, labels))
    return min(WEIGHTS, key=rank)


def inference_only(model):
    """`model` with every Dropout replaced by an Identity and every layer non-trainable (BatchNormalization then
    runs in inference mode), the same weights. Exported behind a Resizing layer, the companion was traced in
    training mode: the SavedModel used batch statistics (probabilities 0.05-0.15 off the Keras model's) and
    kept Dropout's random ops (the LiteRT conversion failed). What is published is never trained again."""
    import keras

    def replace(layer):
        if isinstance(layer, keras.layers.Dropout):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=replace, recursive=True)
    clone.set_weights(model.get_weights())
    clone.trainable = False
    return clone


def at_input(companion, image_size: int):
    """The companion on the published input: raw RGB at image_size, resized (bilinear) to its own side."""
    import keras

    side = companion.input_shape[1]
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    resized = keras.layers.Resizing(side, side, interpolation="bilinear", name="to_companion_side")(inputs)
    return inference_only(keras.Model(inputs, companion(resized), name="companion_classifier"))


def ensemble(transfer, companion, image_size: int, weight: float):
    """One graph, two branches on the same raw RGB input: weight * companion + (1 - weight) * transfer."""
    import keras

    side = companion.input_shape[1]
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    resized = keras.layers.Resizing(side, side, interpolation="bilinear", name="to_companion_side")(inputs)
    mixed = keras.layers.Add(name="weighted_average")([
        keras.layers.Rescaling(1.0 - weight, name="transfer_weight")(transfer(inputs)),
        keras.layers.Rescaling(weight, name="companion_weight")(companion(resized)),
    ])
    return inference_only(keras.Model(inputs, mixed, name="ensemble"))


def widen(model, published: str, companion_path: str | Path, val, summary: dict, image_size: int,
          batch_size: int):
    """(the published model, its candidate name, why or None, figures for metrics/finetune.json): the best on
    val among the transfer model chosen so far (`published`: head or finetuned), the companion and their
    ensemble. `summary`: finetune's figures so far (the transfer candidates' val accuracies)."""
    companion, info = read_companion(companion_path)
    if companion is None:
        return model, published, None, {"companion": "not trained: " + info["why"]}
    if not len(val):
        return model, published, None, {"companion": "trained, but not used: no val split to compare it on"}
    import tensorflow as tf

    labels = val["label_index"].to_numpy()
    images = image_dataset(val["path"], image_size, batch_size).map(lambda x: tf.cast(x, tf.float32))
    alone = at_input(companion, image_size)
    probs = {published: model.predict(images, verbose=0), "companion": alone.predict(images, verbose=0)}
    weight = best_weight(probs[published], probs["companion"], labels)
    probs["ensemble"] = weight * probs["companion"] + (1.0 - weight) * probs[published]
    correct = {name: int((p.argmax(1) == labels).sum()) for name, p in probs.items()}
    figures = {name: {"val_accuracy": correct[name] / len(labels), "val_loss": log_loss(probs[name], labels)}
               for name in probs}
    # The transfer candidate that lost to `published` earlier, shown for the record (not a competitor now).
    other = "finetuned" if published == "head" else "head"
    other_accuracy = summary.get("finetune_val_accuracy" if other == "finetuned" else "head_val_accuracy")
    total = len(labels)
    print(f"finetune: candidates on {total} val images (accuracy, 95% bootstrap interval; ties, a lead of "
          f"{TIE_ITEMS} image included, go to the cheaper, {' < '.join(COST)}):", flush=True)
    shown = {**({other: round(other_accuracy * total)} if other_accuracy is not None else {}), **correct}
    for name in sorted(shown, key=COST.get):
        lo, hi = interval(shown[name], total)
        note = {"ensemble": f" (companion weight {weight})", other: f" (lost to the {published} before)"}.get(name, "")
        print(f"finetune:   {name:<10} {shown[name] / total:.4f} [{lo:.4f}, {hi:.4f}]{note}", flush=True)
        if name in figures:
            figures[name].update(val_interval=[lo, hi])
    chosen = choose(correct)
    if chosen == published:
        why = (f"{published} stays: neither the companion ({figures['companion']['val_accuracy']:.4f}) nor the "
               f"ensemble ({figures['ensemble']['val_accuracy']:.4f}) beats it on val "
               f"({figures[published]['val_accuracy']:.4f})")
        final = model
    else:
        beaten = ", ".join(f"{name} {figures[name]['val_accuracy']:.4f}" for name in correct if name != chosen)
        why = f"{chosen} is the best on val: accuracy {figures[chosen]['val_accuracy']:.4f} vs {beaten}"
        final = alone if chosen == "companion" else ensemble(model, companion, image_size, weight)
    extra = {"companion": "trained", "candidates": figures, "companion_weight": weight}
    if chosen != published:  # else the figures finetune has (its val loss is with label smoothing) stay
        extra.update(val_accuracy=figures[chosen]["val_accuracy"], val_loss=figures[chosen]["val_loss"])
    return final, chosen, why, extra
