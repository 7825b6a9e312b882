"""The export stage on a text model: SavedModel, LiteRT and ONNX of encoder + head, tokenizer.json and the window
settings beside them, and the parity gate from raw text."""

import json

import numpy as np
import pytest

from transferkit.backbones import bert
from transferkit.config import ExportParams
from transferkit.deliver import runtimes
from transferkit.deliver.export import export
from transferkit.deliver.published import load_published
from transferkit.errors import TransferkitError

from text_models import TINY_WINDOWS


def test_every_file_takes_token_ids_and_mask_with_the_tokenizer_and_windows_beside(text_exported):
    root, _, _, info_path, result = text_exported
    folder = root / "export"
    assert (folder / "saved_model" / "saved_model.pb").exists()
    assert (folder / "tokenizer.json").read_bytes() == bert.tokenizer_path().read_bytes()
    for name in ("saved_model", "model.tflite", "model.onnx"):
        described = json.loads((folder / f"{name}.json").read_text())
        assert described["modality"] == "text" and described["text"] == TINY_WINDOWS, name
        assert described["input_spec"]["names"] == ["token_ids", "padding_mask"]
        assert described["classes"] == json.loads(info_path.read_text())["classes"]
    assert not (folder / "web").exists()
    assert any("no browser (web) folder" in line for line in result.lines())


def test_the_parity_gate_runs_raw_test_texts_through_each_file(text_exported):
    _, _, _, _, result = text_exported
    result.check()
    assert set(result.figures) == {"saved_model", "litert", "onnx"} and result.test_images == 6
    for name, figures in result.figures.items():
        assert figures["max_abs_diff"] <= 1e-4 and figures["top1_agreement"] == 1.0, name
    assert result.keras_accuracy == 1.0  # labels follow the length-sorted batches
    assert all("test texts" in line for line in result.lines()[:3])


def test_each_file_gives_the_keras_model_s_probabilities_on_a_long_text(text_exported):
    """A text of more windows than max_windows, padded in a batch with a short one: every runtime agrees."""
    root, _, model_path, info_path, _ = text_exported
    model, info = load_published(model_path, info_path)
    texts = ["sunny " * 200 + "goal", "refund please"]
    token_ids, padding_mask = bert.encode_texts(texts, bert.load_tokenizer(), info.window_settings())
    assert token_ids.shape[1] == TINY_WINDOWS["max_windows"]
    batch = {"token_ids": token_ids, "padding_mask": padding_mask}
    reference = model.predict(batch, verbose=0)
    folder = root / "export"
    for source, runtime in ((model, "tensorflow"), (folder / "saved_model", "tensorflow"),
                            (folder / "model.tflite", "litert"), (folder / "model.onnx", "onnxruntime")):
        out = runtimes.runner(source, runtime)(batch)
        assert out.dtype == np.float32 and np.abs(out - reference).max() < 1e-5, (source, runtime)


def test_int8_is_refused_for_text_with_one_line(text_exported, tmp_path):
    _, manifest, model_path, info_path, _ = text_exported
    with pytest.raises(TransferkitError, match="int8 is calibrated on images; for a text model use none or dynamic"):
        export(manifest, model_path, info_path, tmp_path / "export", ExportParams(quantize="int8"), "transferkit-text")


def test_a_text_model_gets_no_web_folder(text_exported):
    root, _, _, _, result = text_exported
    assert not (root / "export" / "web").exists() and result.web_folder is None
    assert any("no browser (web) folder" in line for line in result.lines())
