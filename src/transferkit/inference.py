"""Predictions of the published model over image files: used by `predict`, `evaluate` and serving.

Files are decoded by the pipeline's one decoder (images.load_rgb, via
datasets.image_dataset), so every consumer sees the pixels training saw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from transferkit.datasets import image_dataset
from transferkit.published import ModelInfo


def predict_files(model, info: ModelInfo, paths: Sequence[str], batch_size: int, tta: bool = False) -> np.ndarray:
    """(N, n_classes) float64 probabilities, row i for paths[i].

    tta: the mean of the predictions for each image and its left-right mirror
    image (test-time augmentation; only for data whose labels a flip keeps)."""
    return predict_views(model, info, paths, batch_size, tta)[-1]


def predict_views(model, info: ModelInfo, paths: Sequence[str], batch_size: int,
                  tta: bool) -> tuple[np.ndarray, ...]:
    """(plain,) or, with tta, (plain, flipped, their mean): each (N, n_classes) float64."""
    dataset = image_dataset([str(p) for p in paths], info.image_size, batch_size).map(lambda x: tf.cast(x, tf.float32))
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
