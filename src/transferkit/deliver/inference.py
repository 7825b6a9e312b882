"""The one batched-inference path: a runner over batches of decoded images, with optional flip TTA.

`predict_batches` is what every consumer calls: `evaluate` and `transferkit
predict` (through `predict_files`, over image files), the export stage's
parity gate (each file's runner over the same decoded test images) and the
served MLflow model (over the images of a request). Files are decoded by the
pipeline's one decoder (images.load_rgb, via datasets.decoded_batches), so
every consumer sees the pixels training saw.

No TensorFlow is imported here, at module level or inside: the served model
imports this module in an environment without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from transferkit.data.datasets import decoded_batches
from transferkit.deliver import runtimes
from transferkit.deliver.published import ModelInfo


@dataclass(frozen=True)
class Predictions:
    plain: np.ndarray  # (N, D) float32: row i for input image i
    flipped: np.ndarray | None  # (N, D) float32 for each image's left-right mirror image; only with tta

    @property
    def probabilities(self) -> np.ndarray:
        """(N, D) float64: `plain`, or with tta the mean of `plain` and `flipped`."""
        plain = self.plain.astype(np.float64)
        return plain if self.flipped is None else (plain + self.flipped) / 2


def predict_batches(run: runtimes.Runner, batches: Iterable[np.ndarray], *, tta: bool = False) -> Predictions:
    """`run` over each (n, size, size, 3) batch of raw pixels, rows in input order.

    tta: each batch is also run mirrored left-right, right after it, so the
    images are decoded once (test-time augmentation; only for data whose
    labels a flip keeps). No batches: (0, 0) arrays, and `run` is never called.
    """
    plain, flipped = [], []
    for batch in batches:
        plain.append(run(batch))
        if tta:
            flipped.append(run(np.ascontiguousarray(batch[:, :, ::-1])))  # axis 2: width

    def rows(outputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(outputs).astype(np.float32, copy=False) if outputs else np.zeros((0, 0), np.float32)

    return Predictions(rows(plain), rows(flipped) if tta else None)


def predict_files(model, info: ModelInfo, paths: Sequence[str], batch_size: int, *, tta: bool = False,
                  runtime: str = "tensorflow") -> Predictions:
    """The published model (from published.load_published) over image files: row i for paths[i].

    runtime: "tensorflow", or "litert" (the model converted in memory first, a
    few seconds; tests/deliver/test_inference.py checks it against TensorFlow)."""
    batches = decoded_batches([str(p) for p in paths], info.image_size, batch_size)
    return predict_batches(runtimes.runner(model, runtime), batches, tta=tta)


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes: [{"label", "probability"}, ...], most probable first."""
    k = max(1, min(k, len(classes)))
    ranked = []
    for row in probabilities:
        # stable sort: equal probabilities keep class order, so results never depend on the platform
        order = np.argsort(-row, kind="stable")[:k]
        ranked.append([{"label": classes[i], "probability": float(row[i])} for i in order])
    return ranked
