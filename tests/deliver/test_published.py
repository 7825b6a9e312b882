import json
from dataclasses import asdict

import numpy as np
import pytest

from transferkit.deliver.published import INPUT_DESCRIPTION, ModelInfo, assemble, load_published
from transferkit.errors import TransferkitError

from conftest import colour_model, save_colour_model


def test_saved_model_and_info_load_back_identical(tmp_path):
    model_path, info_path = save_colour_model(tmp_path)
    model, info = load_published(model_path, info_path)
    assert info == ModelInfo(["circle", "square", "triangle"], 32, "colour", "0" * 64)
    assert json.loads(info_path.read_text())["input"] == INPUT_DESCRIPTION
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), colour_model().predict(pixels, verbose=0), atol=1e-6)


def test_missing_files_and_foreign_json_are_clear_errors(tmp_path):
    model_path, info_path = save_colour_model(tmp_path)
    with pytest.raises(TransferkitError, match=r"nowhere.keras: not found; train a model first"):
        load_published(tmp_path / "nowhere.keras", info_path)
    info_path.write_text(json.dumps({"labels": ["a"]}))
    with pytest.raises(TransferkitError, match="not a transferkit model description"):
        load_published(model_path, info_path)


def test_assemble_puts_the_head_on_the_backbone():
    import keras

    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D()])
    head = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model = assemble(backbone, head, 8)
    assert model.input_shape == (None, 8, 8, 3) and model.output_shape == (None, 2)
    x = np.ones((1, 8, 8, 3), np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), head.predict(backbone.predict(x, verbose=0), verbose=0))


def test_a_text_model_description_keeps_its_modality_and_window_settings(tmp_path):
    from transferkit.backbones.bert import WindowSettings
    from transferkit.deliver.published import text_model_info
    from transferkit.files import write_json

    info = text_model_info(["ham", "spam"], "all_minilm_l6_v2", "1" * 64, WindowSettings(128, 16, 4))
    write_json(tmp_path / "model.json", asdict(info))
    loaded = ModelInfo.from_json(tmp_path / "model.json")
    assert loaded == info and loaded.modality == "text" and loaded.image_size is None
    assert loaded.text == {"max_tokens": 128, "overlap": 16, "max_windows": 4}
    assert loaded.window_settings() == WindowSettings(128, 16, 4)

    write_json(tmp_path / "bad.json", {**asdict(info), "text": {"max_tokens": 128}})
    with pytest.raises(TransferkitError, match="bad.json: a text model needs `text` with max_tokens, overlap, "
                                               "max_windows"):
        ModelInfo.from_json(tmp_path / "bad.json")
    image = {key: value for key, value in asdict(info).items() if key not in ("modality", "text")}
    write_json(tmp_path / "old.json", {**image, "image_size": 32})  # written before text models: an image model
    assert ModelInfo.from_json(tmp_path / "old.json").modality == "image"
