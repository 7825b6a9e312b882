"""The companion stage: auto's decision both ways, a real tiny training, and the folder finetune reads."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from transferkit.config import CompanionParams
from transferkit.train.companion import (
    INFO_FILE,
    MODEL_FILE,
    build_companion,
    companion,
    decide,
    input_side,
    native_side,
    read_companion,
)


def test_native_side_is_the_median_of_the_larger_side():
    frame = pd.DataFrame({"width": [28, 30, 500, 28, 20], "height": [28, 40, 400, 28, 32]})
    assert native_side(frame) == 32  # larger sides 28, 40, 500, 28, 32


@pytest.mark.parametrize(("native", "trains"), [(28, True), (64, True), (65, False), (480, False)])
def test_auto_trains_only_on_small_images_and_says_why(native, trains):
    decided, why = decide(native, CompanionParams())
    assert decided is trains
    assert f"{native} px" in why and "max_side 64" in why
    assert ("a small CNN trained from scratch" in why) is trains


def test_on_and_off_override_auto():
    assert decide(480, CompanionParams(strategy="on"))[0] is True
    assert decide(28, CompanionParams(strategy="off"))[0] is False


def test_input_side_is_capped_and_floored():
    params = CompanionParams(max_side=48)
    assert [input_side(n, params) for n in (8, 28, 500)] == [16, 28, 48]


def test_the_network_is_stock_layers_and_reloads_with_safe_mode(tmp_path):
    model = build_companion(16, 3, width=4, dropout=0.1)
    model.save(tmp_path / "c.keras")
    again = keras.saving.load_model(tmp_path / "c.keras", safe_mode=True)
    assert again.input_shape == (None, 16, 16, 3) and again.output_shape == (None, 3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from conftest import make_image_folder, prepare_into

    root = tmp_path_factory.mktemp("companion")
    images = make_image_folder(root / "images", per_class=8, size=24)
    return prepare_into(images, root / "prepared", val_fraction=0.25, test_fraction=0.25)


def test_auto_trains_on_small_images_and_writes_the_folder(prepared, tmp_path):
    params = CompanionParams(epochs=2, width=4, batch_size=8)
    result = companion(prepared, tmp_path / "out", tmp_path / "h.csv", tmp_path / "ckpt", params, seed=0)
    assert result.trained and result.side == 24 and result.epochs_run == 2
    assert (tmp_path / "out" / MODEL_FILE).exists()
    info = json.loads((tmp_path / "out" / INFO_FILE).read_text())
    assert info["trained"] and info["side"] == 24 and info["classes"] == ["circle", "square", "triangle"]
    model, _ = read_companion(tmp_path / "out")
    assert model.input_shape == (None, 24, 24, 3)
    assert len(pd.read_csv(tmp_path / "h.csv")) == 2
    assert not (tmp_path / "ckpt").exists()  # finished: its checkpoints are gone


def test_auto_skips_larger_images_and_still_writes_the_folder(prepared, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MODEL_FILE).write_text("an older run's model")
    result = companion(prepared, tmp_path / "out", tmp_path / "h.csv", tmp_path / "ckpt",
                       CompanionParams(max_side=16), seed=0)
    assert not result.trained and "24 px (> companion.max_side 16)" in result.why
    assert result.lines() == [f"no companion: {result.why}"]
    assert not (tmp_path / "out" / MODEL_FILE).exists()  # no stale model for finetune to pick up
    model, info = read_companion(tmp_path / "out")
    assert model is None and info["trained"] is False and info["why"] == result.why


def test_text_data_get_no_companion_and_say_why(tmp_path):
    from conftest import prepare_into

    for label, words in {"ham": "meeting notes", "spam": "cheap pills"}.items():
        (tmp_path / "texts" / label).mkdir(parents=True)
        for i in range(8):
            (tmp_path / "texts" / label / f"mail_{i}").write_text(f"{words} number {i}\n")
    manifest = prepare_into(tmp_path / "texts", tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    result = companion(manifest, tmp_path / "out", tmp_path / "h.csv", tmp_path / "ckpt",
                       CompanionParams(strategy="on"), seed=0)
    assert not result.trained and "texts" in result.why
    assert read_companion(tmp_path / "out")[0] is None


def test_a_refit_trains_again_from_scratch_on_train_and_val_for_the_best_epoch_count(prepared, tmp_path):
    from transferkit.train.companion import refit_companion

    params = CompanionParams(epochs=3, width=4, batch_size=8)
    companion(prepared, tmp_path / "out", tmp_path / "h.csv", tmp_path / "ckpt", params, seed=0)
    best = json.loads((tmp_path / "out" / INFO_FILE).read_text())["best_epoch"]
    manifest = pd.read_parquet(prepared)
    both = int(manifest["split"].isin(["train", "val"]).sum())
    model, epochs, steps, items = refit_companion(prepared, tmp_path / "out", tmp_path / "ckpt", params, seed=0)
    assert (epochs, items, steps) == (best + 1, both, (best + 1) * -(-both // 8))
    assert model.input_shape == (None, 24, 24, 3)
    again, *_ = refit_companion(prepared, tmp_path / "out", tmp_path / "ckpt", params, seed=0)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "ckpt").exists()
