"""The classical baselines: chosen on val, refitted on train + val, capped, colour decided from the pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from transferkit.evaluate.baselines import (
    accuracy,
    best_on_val,
    candidate_list,
    capped,
    decode,
    fit_baseline,
    fitted,
    has_colour,
    pixel_features,
    split_items,
)

from conftest import make_image_folder, prepare_into


def draw(path, shape: str, colour: tuple[int, int, int], rng: np.random.Generator, size: int = 24) -> str:
    """A filled shape on a dark background, its colour and place jittered so every file differs."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 30, 3)))
    lo, hi = size * 0.2 + rng.uniform(-2, 2), size * 0.8 + rng.uniform(-2, 2)
    fill = tuple(int(np.clip(c + rng.integers(-15, 15), 0, 255)) for c in colour)
    if shape == "circle":
        ImageDraw.Draw(image).ellipse([lo, lo, hi, hi], fill=fill)
    else:
        ImageDraw.Draw(image).rectangle([lo, lo, hi, hi], fill=fill)
    image.save(path)
    return str(path)


def manifest_of(folder, rows: list[tuple[str, str, tuple, str]], per_row: int, seed: int = 0) -> pd.DataFrame:
    """A manifest frame (the columns fit_baseline reads) of `per_row` images for each (label, shape, colour,
    split) row; label_index follows the labels' sorted order, as prepare's does."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = sorted({label for label, *_ in rows})
    records = []
    for label, shape, colour, split in rows:
        for i in range(per_row):
            path = draw(folder / f"{label}_{shape}_{split}_{i}.png", shape, colour, rng)
            records.append({"path": path, "label": label, "label_index": labels.index(label), "split": split,
                            "sha256": f"{len(records):064x}"})
    return pd.DataFrame(records)


def test_the_candidates_are_few_named_and_cheapest_first():
    grey = [c.name for c in candidate_list(colour=False, embeddings=False, train_images=100)]
    assert grey == ["svm_rbf_grey_8px_c1", "svm_rbf_grey_8px_c10", "logistic_grey_8px_c0.1", "logistic_grey_8px_c1",
                    "svm_rbf_grey_16px_c1", "svm_rbf_grey_16px_c10", "logistic_grey_16px_c0.1",
                    "logistic_grey_16px_c1"]
    colour = [c.name for c in candidate_list(colour=True, embeddings=True, train_images=100)]
    assert len(colour) == 18 and "svm_rbf_colour_16px_c10" in colour and colour[-2:] == ["knn1_embeddings",
                                                                                            "knn5_embeddings"]
    # k nearest neighbours need k train images.
    assert [c.name for c in candidate_list(False, True, 3)][-1:] == ["knn1_embeddings"]


def test_a_tie_on_val_goes_to_the_earlier_candidate():
    assert best_on_val({"cheap": 0.8, "dear": 0.8, "worse": 0.7}) == "cheap"
    assert best_on_val({"cheap": 0.7, "dear": 0.8}) == "dear"


def test_colour_is_decided_from_the_decoded_pixels(tmp_path):
    colour_paths = sorted(str(p) for p in make_image_folder(tmp_path / "colour", per_class=2).rglob("*.png"))
    grey_paths = []
    for i, path in enumerate(colour_paths):  # the same images, stored as greyscale PNGs (mode L)
        grey_paths.append(str(tmp_path / f"grey_{i}.png"))
        Image.open(path).convert("L").save(grey_paths[-1])
    colour_pixels, grey_pixels = decode(colour_paths, 16), decode(grey_paths, 16)
    assert colour_pixels.shape == grey_pixels.shape == (6, 16, 16, 3)  # the decoder gives RGB either way
    assert has_colour(colour_pixels) and not has_colour(grey_pixels)
    assert pixel_features(colour_pixels, colour=True).shape == (6, 16 * 16 * 3)
    grey = pixel_features(colour_pixels, colour=False)
    assert grey.shape == (6, 16 * 16) and grey.dtype == np.float32 and 0 <= grey.min() and grey.max() <= 1
    # Grey from the colour pixels is Pillow's own "L" conversion, to within rounding.
    np.testing.assert_allclose(grey, pixel_features(grey_pixels, colour=False), atol=1.5 / 255)


def test_the_choice_is_made_on_val_not_on_train(tmp_path):
    """Two colours of equal brightness: every grey candidate fits the train images, but only colour tells the
    classes apart on val, so a colour candidate is chosen over the first one (a fixed default would fail)."""
    red, green = (180, 60, 60), (60, 120, 60)  # luma 95.9 and 95.2 of 255
    assert abs(np.dot(red, [0.299, 0.587, 0.114]) - np.dot(green, [0.299, 0.587, 0.114])) < 1
    rows = [(label, "square", colour, split) for label, colour in (("a", red), ("b", green))
            for split in ("train", "val", "test")]
    manifest = manifest_of(tmp_path / "images", rows, per_row=8)
    result = fit_baseline(manifest, None, max_train=1000, seed=0)
    assert result.colour and "_colour_" in result.name, result.val_scores
    assert result.val_accuracy == result.test_accuracy == 1.0
    assert max(score for name, score in result.val_scores.items() if "_grey_" in name) < 0.9
    assert list(result.val_scores)[0] == "svm_rbf_grey_8px_c1"  # a fixed default, the first, would have lost


def test_the_chosen_candidate_is_refitted_on_train_and_val(tmp_path):
    """Class a is red in train but dark blue in val and test; class b bright blue throughout. Fitted on train
    alone, every candidate calls a's dark blue squares b; refitted with val's, it tells the two blues apart."""
    red, dark_blue, bright_blue = (220, 30, 30), (30, 30, 100), (40, 40, 250)
    rows = [("a", "square", red, "train"), ("a", "square", dark_blue, "val"), ("a", "square", dark_blue, "test"),
            ("b", "square", bright_blue, "train"), ("b", "square", bright_blue, "val"),
            ("b", "square", bright_blue, "test")]
    manifest = manifest_of(tmp_path / "images", rows, per_row=8)
    result = fit_baseline(manifest, None, max_train=1000, seed=0)
    assert result.test_accuracy == 1.0
    # The same candidate fitted on train alone misses a's dark blue test images.
    items = split_items({s: manifest[manifest["split"] == s] for s in ("train", "val", "test")}, None)[0]
    chosen = next(c for c in candidate_list(True, False, 16) if c.name == result.name)
    assert accuracy(fitted(chosen, items["train"]), chosen, items["test"]) <= 0.75
    assert (result.train_images, result.val_images, result.test_images) == (16, 16, 16)


def test_the_cap_keeps_each_class_share_and_is_deterministic():
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(100)], "label_index": [0] * 60 + [1] * 30 + [2] * 10})
    kept = capped(frame, 20, seed=1)
    assert kept["label_index"].value_counts().to_dict() == {0: 12, 1: 6, 2: 2}
    assert list(kept.index) == sorted(kept.index)  # manifest order
    assert kept.equals(capped(frame, 20, seed=1)) and not kept.equals(capped(frame, 20, seed=2))
    assert capped(frame, 5, seed=1)["label_index"].value_counts().to_dict() == {0: 3, 1: 1, 2: 1}  # one at least
    assert capped(frame, 100, seed=1) is frame


def test_the_cap_bounds_the_images_fitted(tmp_path):
    manifest = pd.read_parquet(prepare_into(make_image_folder(tmp_path / "images", per_class=16),
                                            tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25))
    full = fit_baseline(manifest, None, max_train=1000, seed=0)
    assert (full.train_images, full.val_images, full.test_images) == (24, 12, 12)
    small = fit_baseline(manifest, None, max_train=6, seed=0)
    assert (small.train_images, small.val_images, small.test_images) == (6, 6, 12)  # 2 of each class; test whole
    again = fit_baseline(manifest, None, max_train=6, seed=0)
    assert (again.name, again.val_scores, again.test_accuracy) == (small.name, small.val_scores, small.test_accuracy)


def test_knn_on_the_embeddings_is_a_candidate_when_they_are_given(tmp_path):
    from transferkit.embeddings.table import read_table, write_table

    manifest = pd.read_parquet(prepare_into(make_image_folder(tmp_path / "images", per_class=8),
                                            tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25))
    write_table(tmp_path / "embeddings.npz", manifest["sha256"].tolist(),
                np.eye(3, dtype=np.float32)[manifest["label_index"].to_numpy()], {"key": "k"})
    result = fit_baseline(manifest, read_table(tmp_path / "embeddings.npz"), max_train=1000, seed=0)
    assert {"knn1_embeddings", "knn5_embeddings"} <= set(result.val_scores)
    assert result.val_scores["knn1_embeddings"] == 1.0
    assert list(result.val_scores) == [c.name for c in candidate_list(colour=True, embeddings=True, train_images=12)]


def test_no_val_images_means_no_baseline(tmp_path):
    manifest = pd.read_parquet(prepare_into(make_image_folder(tmp_path / "images"), tmp_path / "prepared",
                                            val_fraction=0.0, test_fraction=0.25))
    assert fit_baseline(manifest, None, max_train=1000, seed=0) is None
