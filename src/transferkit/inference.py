"""Predictions of the published model over image files: used by `predict`, `evaluate` and serving.

Files are decoded by the pipeline's one decoder (images.load_rgb, via
datasets.image_dataset), so every consumer sees the pixels training saw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from transferkit import runtimes
from transferkit.datasets import decoded_batches, image_dataset
from transferkit.published import ModelInfo


def predict_files(model, info: ModelInfo, paths: Sequence[str], batch_size: int,
                  runtime: str = "tensorflow") -> np.ndarray:
    """(N, n_classes) float64 probabilities, row i for paths[i].

    runtime "litert": the model converted to LiteRT (in memory, a few seconds) and run by its
    interpreter; the export stage's parity gate bounds how far that can differ from TensorFlow."""
    if runtime == "litert":
        run = runtimes.litert_runner(runtimes.to_litert(model))
        batches = [run(batch) for batch in decoded_batches([str(p) for p in paths], info.image_size, batch_size)]
        return np.concatenate(batches).astype(np.float64) if batches else np.zeros((0, len(info.classes)))
    dataset = image_dataset([str(p) for p in paths], info.image_size, batch_size).map(lambda x: tf.cast(x, tf.float32))
    return model.predict(dataset, verbose=0).astype(np.float64)


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes: [{"label", "probability"}, ...], most probable first."""
    k = max(1, min(k, len(classes)))
    ranked = []
    for row in probabilities:
        # stable sort: equal probabilities keep class order, so results never depend on the platform
        order = np.argsort(-row, kind="stable")[:k]
        ranked.append([{"label": classes[i], "probability": float(row[i])} for i in order])
    return ranked
