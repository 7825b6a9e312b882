"""Predictions of the published model over image files: used by `predict`, `evaluate` and serving.

Files are decoded by the pipeline's one decoder (images.load_rgb, via
datasets.image_dataset), so every consumer sees the pixels training saw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from transferkit.deliver import runtimes
from transferkit.data.datasets import decoded_batches, image_dataset
from transferkit.deliver.published import ModelInfo


def predict_files(model, info: ModelInfo, paths: Sequence[str], batch_size: int, *, tta: bool = False,
                  runtime: str = "tensorflow") -> np.ndarray:
    """(N, n_classes) float64 probabilities, row i for paths[i].

    tta: the mean of the predictions for each image and its left-right mirror
    image (test-time augmentation; only for data whose labels a flip keeps).
    runtime "litert": the model converted to LiteRT (in memory, a few seconds) and run by its
    interpreter (tests/test_inference.py checks it against TensorFlow)."""
    return predict_views(model, info, paths, batch_size, tta=tta, runtime=runtime)[-1]


def predict_views(model, info: ModelInfo, paths: Sequence[str], batch_size: int, *, tta: bool,
                  runtime: str = "tensorflow") -> tuple[np.ndarray, ...]:
    """(plain,) or, with tta, (plain, flipped, their mean): each (N, n_classes) float64."""
    if runtime not in ("tensorflow", "litert"):
        raise ValueError(f"runtime {runtime!r}: expected 'tensorflow' or 'litert'")
    paths = [str(p) for p in paths]
    if runtime == "litert":
        run = runtimes.litert_runner(runtimes.to_litert(model))
        views: list[list[np.ndarray]] = [[], []]
        for batch in decoded_batches(paths, info.image_size, batch_size):
            views[0].append(run(batch))
            if tta:
                views[1].append(run(np.ascontiguousarray(batch[:, :, ::-1])))
        empty = np.zeros((0, len(info.classes)))
        plain = np.concatenate(views[0]).astype(np.float64) if views[0] else empty
        if not tta:
            return (plain,)
        flipped = np.concatenate(views[1]).astype(np.float64) if views[1] else empty
        return plain, flipped, (plain + flipped) / 2
    dataset = image_dataset(paths, info.image_size, batch_size).map(lambda x: tf.cast(x, tf.float32))
    plain = model.predict(dataset, verbose=0).astype(np.float64)
    if not tta:
        return (plain,)
    flipped = model.predict(dataset.map(lambda x: tf.reverse(x, axis=[2])), verbose=0).astype(np.float64)
    return plain, flipped, (plain + flipped) / 2


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes: [{"label", "probability"}, ...], most probable first."""
    k = max(1, min(k, len(classes)))
    ranked = []
    for row in probabilities:
        # stable sort: equal probabilities keep class order, so results never depend on the platform
        order = np.argsort(-row, kind="stable")[:k]
        ranked.append([{"label": classes[i], "probability": float(row[i])} for i in order])
    return ranked
