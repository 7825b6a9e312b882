"""The one batched-inference path: a runner over batches of decoded images or encoded texts.

`predict_batches` is what every consumer calls: `evaluate` and `transferkit
predict` (through `predict_files`, over image or text files), the export
stage's parity gate (each file's runner over the same decoded test images or
texts) and the served MLflow model (over the images or texts of a request).
Image files are decoded by the pipeline's one decoder (images.load_rgb, via
datasets.decoded_batches), text files by data.texts.load_text, so every
consumer sees the pixels or the text training saw.

Texts (`text_batches`, `predict_texts`): each text is tokenized and cut into
windows by the backbone's own functions (bert.split_windows) with the
published model's window settings (ModelInfo.text), and texts of similar
length are batched together (sorted by window count, then longest window,
within chunks of SORT_CHUNK texts), so a batch is padded to about its own
length, not the longest document's; rows come back in input order. Flip TTA
is for images only.

No TensorFlow is imported here, at module level or inside: the served model
imports this module in an environment without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit.backbones import bert
from transferkit.backbones.registry import BACKBONES
from transferkit.data.datasets import decoded_batches
from transferkit.data.texts import load_text
from transferkit.deliver import runtimes
from transferkit.deliver.published import ModelInfo

# Texts sorted by length together: enough for batches of similar length, few enough that the token
# lists of one chunk stay small (2,048 documents of 8 windows of 256 tokens: about 4 M ids).
SORT_CHUNK = 2048


@dataclass(frozen=True)
class Predictions:
    plain: np.ndarray  # (N, D) float32: row i for input image i
    flipped: np.ndarray | None  # (N, D) float32 for each image's left-right mirror image; only with tta

    @property
    def probabilities(self) -> np.ndarray:
        """(N, D) float64: `plain`, or with tta the mean of `plain` and `flipped`."""
        plain = self.plain.astype(np.float64)
        return plain if self.flipped is None else (plain + self.flipped) / 2


def predict_batches(run: runtimes.Runner, batches: Iterable[runtimes.Batch], *, tta: bool = False) -> Predictions:
    """`run` over each batch (of raw pixels (n, size, size, 3), or a text model's inputs), rows in input order.

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
    """The published model (from published.load_published) over image or text files (info.modality): row i
    for paths[i]. Text files are read with data.texts.load_text; `tta` must be False for text.

    runtime: "tensorflow", or "litert" (the model converted in memory first, a
    few seconds; tests/deliver/test_inference.py checks it against TensorFlow)."""
    run = runtimes.runner(model, runtime)
    if info.modality == "text":
        if tta:
            raise ValueError("flip TTA is for images; a text model has none")
        return predict_texts(run, info, [load_text(p) for p in paths], batch_size)
    batches = decoded_batches([str(p) for p in paths], info.image_size, batch_size)
    return predict_batches(run, batches, tta=tta)


def tokenizer_file(info: ModelInfo) -> Path:
    """The tokenizer.json of the text model's backbone, as installed (export copies it beside the files)."""
    spec = BACKBONES.get(info.backbone)
    return bert.tokenizer_path(spec.source) if spec is not None else bert.tokenizer_path()


def tokenizer_for(info: ModelInfo, path: str | Path | None = None):
    """The text model's tokenizer: `path` (an exported tokenizer.json), else its backbone's installed one."""
    return bert.load_tokenizer(Path(path) if path is not None else tokenizer_file(info))


def length_order(documents: Sequence[Sequence[Sequence[int]]]) -> list[int]:
    """Indices of `documents` (each a list of windows) shortest first: by window count, then longest window;
    stable, so equal lengths keep input order."""
    return sorted(range(len(documents)), key=lambda i: (len(documents[i]), max(map(len, documents[i]))))


def text_batches(texts: Sequence[str], tokenizer, settings: bert.WindowSettings,
                 batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row indices into `texts`, the model's inputs for those rows) per batch, batches of similar length."""
    for start in range(0, len(texts), SORT_CHUNK):
        chunk = texts[start:start + SORT_CHUNK]
        documents = bert.split_windows(chunk, tokenizer, settings)
        order = length_order(documents)
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            token_ids, padding_mask = bert.pad_windows([documents[i] for i in rows])
            yield np.asarray(rows) + start, {"token_ids": token_ids, "padding_mask": padding_mask}


def in_input_order(predictions: Predictions, order: Sequence[np.ndarray]) -> Predictions:
    """Rows computed batch by batch, the batches' rows given by `order` (text_batches' indices), put back in
    input order."""
    if not order:
        return predictions
    plain = np.empty_like(predictions.plain)
    plain[np.concatenate(order)] = predictions.plain
    return Predictions(plain, None)


def predict_texts(run: runtimes.Runner, info: ModelInfo, texts: Sequence[str], batch_size: int,
                  tokenizer=None) -> Predictions:
    """A text model's runner over decoded texts (strings), batched by similar length: row i for texts[i].

    `tokenizer`: the one exported beside the model (serving), else the backbone's installed one."""
    tokenizer = tokenizer or tokenizer_for(info)
    order: list[np.ndarray] = []

    def batches():
        for rows, batch in text_batches(list(texts), tokenizer, info.window_settings(), batch_size):
            order.append(rows)
            yield batch

    return in_input_order(predict_batches(run, batches()), order)


def top_k(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes: [{"label", "probability"}, ...], most probable first."""
    k = max(1, min(k, len(classes)))
    ranked = []
    for row in probabilities:
        # stable sort: equal probabilities keep class order, so results never depend on the platform
        order = np.argsort(-row, kind="stable")[:k]
        ranked.append([{"label": classes[i], "probability": float(row[i])} for i in order])
    return ranked
