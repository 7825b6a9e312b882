"""Cheap classical baselines, scored on the same test images as the published model.

A transfer model can lose to a classical method that takes seconds: on a small set of low-resolution
images an RBF SVM on raw pixels downsampled to 8x8 beat the fine-tuned model by nearly 3 points. So
every run fits a few and says where the published model stands:

- an RBF SVM (C from SVM_C) and a logistic regression on raw pixels at 8x8 and 16x16, grey, and in
  colour too when the images have colour (decided from their decoded pixels), standardised;
- k nearest neighbours (k from KNN_K, cosine distance) on the cached embeddings, when given.

For texts, instead of the pixel candidates: TF-IDF (sublinear tf) + a linear SVM, on word 1-2-grams
and on character 2-5-grams within word boundaries (TFIDF_C each), on the texts as every stage reads
them (data.texts.load_text, headers and all); kNN on the embeddings as for images.

Each candidate is fitted on the train split; the best on val (accuracy; a tie goes to the earlier,
cheaper one) is refitted on train + val and scored on the test split. The pixels come from the
pipeline's one decoder (data.images.load_rgb: the whole image, Pillow's bilinear resize), at the
small size directly. Everything is deterministic: no candidate draws random numbers, and the capped
items are drawn with the data seed. The cost is bounded by `max_train`: at most that many train
images (and as many val images), each class keeping its share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from transferkit.data.datasets import decoded_batches
from transferkit.data.manifest import split_of
from transferkit.data.texts import load_text
from transferkit.embeddings.table import EmbeddingTable

PIXEL_SIZES = (8, 16)  # pixels, square: the sides the raw-pixel candidates see
SVM_C = (1.0, 10.0)  # the RBF SVM's C, chosen on val
LOGISTIC_C = (0.1, 1.0)  # the logistic regression's C (inverse L2 strength), chosen on val
KNN_K = (1, 5)  # neighbours, chosen on val (only those with at least k train images)
TFIDF_C = (0.1, 1.0, 10.0)  # the text candidates' linear SVM C, chosen on val
# (name, TfidfVectorizer arguments): words and word pairs; characters 2-5 inside word boundaries (robust to
# misspellings and obfuscation, e.g. spam's "V1agra")
TFIDF_FEATURES = (("word12", {"analyzer": "word", "ngram_range": (1, 2)}),
                  ("char25", {"analyzer": "char_wb", "ngram_range": (2, 5)}))
# Images are in colour when their pixels' channel spread (max - min over R, G, B) averages more than
# this, in levels of 0..255: grey images stored as RGB are exactly 0, JPEG chroma noise stays below 1.
COLOUR_SPREAD = 2.0
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's "L" mode
DECODE_BATCH = 256  # images per decoded batch (8 or 16 px: under 1 MB of pixels)


@dataclass(frozen=True)
class Candidate:
    name: str  # what a run reports, e.g. svm_rbf_grey_8px_c10
    features: str  # the features it reads: grey_8px, colour_16px, ..., embeddings
    make: Callable[[], object]  # a fresh, unfitted scikit-learn estimator


@dataclass(frozen=True)
class Items:
    """One split as the candidates see it: each feature set's (N, D) rows, and the labels."""
    features: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __add__(self, other: Items) -> Items:
        return Items({k: np.concatenate([v, other.features[k]]) for k, v in self.features.items()},
                     np.concatenate([self.labels, other.labels]))


@dataclass(frozen=True)
class BaselineResult:
    name: str  # the candidate chosen on val
    val_accuracy: float  # fitted on train, scored on val
    test_accuracy: float  # refitted on train + val, scored on test
    val_scores: dict[str, float]  # every candidate's val accuracy, in candidate order
    train_images: int  # after the cap
    val_images: int  # after the cap
    test_images: int
    colour: bool  # whether colour pixels were candidates
    seconds: float  # wall time, decoding included


def svm_rbf(c: float):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(C=c, kernel="rbf", gamma="scale"))


def logistic(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def tfidf_svm(vectorizer: dict, c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    # sublinear tf: a word said 20 times is not 20 times the evidence; random_state: liblinear's shuffling
    return make_pipeline(TfidfVectorizer(sublinear_tf=True, dtype=np.float32, **vectorizer),
                         LinearSVC(C=c, random_state=0))


def knn(k: int):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")


def candidate_list(colour: bool, embeddings: bool, train_images: int, modality: str = "image") -> list[Candidate]:
    """The candidates, cheapest first (a tie on val goes to the earlier one)."""
    found = []
    if modality == "text":
        for features, vectorizer in TFIDF_FEATURES:
            found += [Candidate(f"tfidf_{features}_linear_svm_c{c:g}", "text", partial(tfidf_svm, vectorizer, c))
                      for c in TFIDF_C]
    for size in PIXEL_SIZES if modality == "image" else ():
        for tone in ("grey", "colour") if colour else ("grey",):
            features = f"{tone}_{size}px"
            found += [Candidate(f"svm_rbf_{features}_c{c:g}", features, partial(svm_rbf, c)) for c in SVM_C]
            found += [Candidate(f"logistic_{features}_c{c:g}", features, partial(logistic, c)) for c in LOGISTIC_C]
    if embeddings:
        found += [Candidate(f"knn{k}_embeddings", "embeddings", partial(knn, k)) for k in KNN_K if k <= train_images]
    return found


def has_colour(images: np.ndarray) -> bool:
    """(N, size, size, 3) uint8: do the pixels differ between channels (COLOUR_SPREAD)?"""
    spread = images.max(axis=-1).astype(np.int16) - images.min(axis=-1)
    return bool(spread.mean() > COLOUR_SPREAD)


def pixel_features(images: np.ndarray, colour: bool) -> np.ndarray:
    """(N, size, size, 3) uint8 -> (N, size * size [* 3]) float32 in 0..1: RGB, or grey (LUMA)."""
    pixels = images.astype(np.float32) / 255
    if not colour:
        pixels = pixels @ LUMA
    return pixels.reshape(len(images), -1)


def capped(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most `limit` rows, each class keeping its share (at least one row), drawn with `seed`; in frame order."""
    if len(frame) <= limit:
        return frame
    rng = np.random.default_rng(seed)
    labels = frame["label_index"].to_numpy()
    keep = []
    for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
        quota = max(1, count * limit // len(frame))
        keep.append(rng.permutation(np.flatnonzero(labels == label))[:quota])
    return frame.iloc[np.sort(np.concatenate(keep))]


def decode(paths: list[str], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 through the pipeline's decoder, in path order."""
    return np.concatenate(list(decoded_batches(paths, size, DECODE_BATCH)))


def split_items(frames: dict[str, pd.DataFrame], embeddings: EmbeddingTable | None,
                modality: str = "image") -> tuple[dict[str, Items], bool]:
    """Each split's Items (every feature set), and whether the train images have colour (False for text)."""
    rows = pd.concat(frames.values())
    if modality == "text":
        colour = False
        features = {"text": np.array([load_text(path) for path in rows["path"]], dtype=object)}
    else:
        pixels = {size: decode(rows["path"].tolist(), size) for size in PIXEL_SIZES}
        colour = has_colour(pixels[max(PIXEL_SIZES)][:len(frames["train"])])
        features = {f"grey_{size}px": pixel_features(images, colour=False) for size, images in pixels.items()}
        if colour:
            features.update({f"colour_{size}px": pixel_features(images, colour=True)
                             for size, images in pixels.items()})
    if embeddings is not None:
        features["embeddings"] = embeddings.rows(rows["sha256"].tolist())
    labels = rows["label_index"].to_numpy()
    bounds = np.cumsum([0, *(len(frame) for frame in frames.values())])
    return {name: Items({k: v[lo:hi] for k, v in features.items()}, labels[lo:hi])
            for name, lo, hi in zip(frames, bounds[:-1], bounds[1:], strict=True)}, colour


def fitted(candidate: Candidate, items: Items):
    return candidate.make().fit(items.features[candidate.features], items.labels)


def accuracy(model, candidate: Candidate, items: Items) -> float:
    return float((model.predict(items.features[candidate.features]) == items.labels).mean())


def val_scores(candidates: list[Candidate], train: Items, val: Items) -> dict[str, float]:
    """Each candidate fitted on train, its accuracy on val, in candidate order."""
    return {c.name: accuracy(fitted(c, train), c, val) for c in candidates}


def best_on_val(scores: dict[str, float]) -> str:
    """The highest val accuracy; a tie goes to the earlier candidate."""
    return max(scores, key=scores.__getitem__)


def fit_baseline(manifest: pd.DataFrame, embeddings: EmbeddingTable | None, max_train: int,
                 seed: int, modality: str = "image") -> BaselineResult | None:
    """Fit the candidates on train, choose on val, refit on train + val, score on test.

    `embeddings`: the table evaluate has already read (kNN candidates join when given).
    modality: the manifest's, "image" or "text" (which candidates apply).

    None when the manifest has no val images to choose on (data.val_fraction 0)."""
    start = time.perf_counter()
    if split_of(manifest, "val").empty:
        return None
    frames = {"train": capped(split_of(manifest, "train"), max_train, seed),
              "val": capped(split_of(manifest, "val"), max_train, seed),
              "test": split_of(manifest, "test")}
    items, colour = split_items(frames, embeddings, modality)
    train, val, test = items["train"], items["val"], items["test"]
    candidates = candidate_list(colour, embeddings is not None, len(train), modality)
    # One BLAS thread: these matrices are small, and OpenBLAS's threads spinning against TensorFlow's (or
    # any other load on the cores) made a logistic regression on 520 images 100x slower (6 s, not 0.06 s)
    # on 2 busy cores. A fixed count also keeps the float sums, and so the fits, the same on any machine.
    with threadpool_limits(1):
        scores = val_scores(candidates, train, val)
        chosen = next(c for c in candidates if c.name == best_on_val(scores))
        test_accuracy = accuracy(fitted(chosen, train + val), chosen, test)
    return BaselineResult(chosen.name, scores[chosen.name], test_accuracy, scores, len(train), len(val), len(test),
                          colour, time.perf_counter() - start)
