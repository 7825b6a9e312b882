"""The export stage's files and parity gate, on a tiny real model (the colour model: milliseconds per image)."""

import json
from pathlib import Path

import numpy as np
import pytest

from transferkit.config import ExportParams
from transferkit.deliver import runtimes
from transferkit.deliver.export import Artifact, ExportResult, artifacts_for, compare, export, gate, write_artifact
from transferkit.deliver.published import load_published
from transferkit.errors import TransferkitError

from conftest import prepare_into, save_colour_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every file, the int8 variant included, written once for the module."""
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("export")
    manifest = prepare_into(make_image_folder(root / "images"), root / "prepared", val_fraction=0.25,
                            test_fraction=0.25)
    paths = save_colour_model(root)
    model, info = load_published(*paths)
    summary = export(manifest, *paths, root / "export",
                     ExportParams(quantize="int8", calibration_images=8, batch_size=4), registered_model="transferkit")
    return root, model, info, summary


def test_every_format_is_written_with_its_description(exported):
    root, _, info, summary = exported
    folder = root / "export"
    assert (folder / "saved_model" / "saved_model.pb").exists()
    for name in ("saved_model", "model.tflite", "model.onnx", "model_int8.tflite"):
        described = json.loads((folder / f"{name}.json").read_text())
        assert described["classes"] == info.classes and described["file"] == name
        assert described["input_spec"]["shape"] == [-1, 32, 32, 3]
    assert json.loads(json.dumps(summary.metrics_file())) == {"test_images": summary.test_images,
                                                              "keras_accuracy": summary.keras_accuracy,
                                                              "artifacts": summary.figures}
    assert set(summary.figures) == {"saved_model", "litert", "onnx", "litert_int8"}


def test_float_files_match_keras_and_the_gate_passes(exported):
    _, _, _, summary = exported
    assert summary.failures == []
    summary.check()
    for name in ("saved_model", "litert", "onnx"):
        figures = summary.figures[name]
        assert figures["max_abs_diff"] <= 1e-4 and figures["top1_agreement"] == 1.0
    assert summary.figures["litert_int8"]["accuracy"] >= summary.keras_accuracy - 0.01


def test_each_file_runs_in_its_own_runtime_on_raw_pixels(exported):
    root, model, _, _ = exported
    pixels = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    reference = model.predict(pixels, verbose=0)
    folder = root / "export"
    for source, runtime in ((model, "tensorflow"), (folder / "saved_model", "tensorflow"),
                            (folder / "model.tflite", "litert"), (folder / "model.onnx", "onnxruntime")):
        runner = runtimes.runner(source, runtime)
        out = runner(pixels)
        assert out.dtype == np.float32 and np.abs(out - reference).max() < 1e-5, (source, runtime)
        np.testing.assert_array_equal(runner(pixels.astype(np.uint8)), out)  # uint8 in: the same, exactly
        assert runner(pixels[:1]).shape == (1, 3)  # another batch size: resized, not an error
    with pytest.raises(ValueError, match="expected one of tensorflow, litert, onnxruntime, onnx"):
        runtimes.runner(model, "tflite")


def test_the_served_model_classifies_with_the_onnx_file_without_tensorflow(exported):
    """What MLflow's server does with the registered model, in a fresh process: load it, classify one file."""
    import subprocess
    import sys

    root, _, _, summary = exported
    folder = root / "export"
    code = f"""
import base64, sys
from types import SimpleNamespace
import pandas as pd
from transferkit.deliver.serving import ImageClassifier
model = ImageClassifier()
model.load_context(SimpleNamespace(artifacts={{"model": {str(folder / "model.onnx")!r},
                                               "info": {str(folder / "model.onnx.json")!r}}}))
image = base64.b64encode(open({summary.example!r}, "rb").read()).decode()
print(model.predict(None, pd.DataFrame({{"image": [image]}}))["label"][0])
assert "tensorflow" not in sys.modules, "tensorflow imported"
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == Path(summary.example).parent.name


def test_the_gate_names_the_file_and_the_figure():
    reference = np.array([[0.9, 0.1], [0.6, 0.4], [0.50001, 0.49999]])
    labels = np.array([0, 0, 0])
    drifted = compare(reference, reference + np.array([0.0, 0.0, 2e-4])[:, None] * [-1, 1], labels)
    assert "max |probability difference| 0.0002 > 0.0001" in gate(Artifact("onnx", "model.onnx", "onnxruntime", False),
                                                                   drifted, 1.0)
    tie_flipped = compare(reference, np.array([[0.9, 0.1], [0.6, 0.4], [0.49999, 0.50001]]), labels)
    assert tie_flipped["top1_agreement"] < 1.0 and tie_flipped["clear_top1_changed"] == 0
    assert gate(Artifact("litert", "model.tflite", "litert", False), tie_flipped, 1.0) is None
    flipped = compare(reference, np.array([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]]), labels)
    assert flipped["top1_agreement"] == pytest.approx(2 / 3) and flipped["clear_top1_changed"] == 1
    int8 = Artifact("litert_int8", "model_int8.tflite", "litert", True)
    assert "top-1 agreement 66.67% < 99%" in gate(int8, flipped, 1.0)
    why = "models/export/model.onnx (onnxruntime): max |probability difference| 0.1 > 0.0001"
    failed = ExportResult(test_images=3, keras_accuracy=1.0, figures={"onnx": drifted}, folder=Path("models/export"),
                          failures=[why], info=None, example="", registered_model="transferkit")
    assert failed.metrics_file()["artifacts"] == {"onnx": drifted}  # written before the gate fails the stage
    with pytest.raises(TransferkitError, match=r"model\.onnx \(onnxruntime\): max"):
        failed.check()


def test_normalization_layers_export_as_constants(tmp_path):
    """The pipeline's head standardises its input with a keras Normalization layer, and
    efficientnet_b0 normalises its pixels with one: every exported file carries their statistics
    inside, the ONNX file taking only the image (tf2onnx alone makes them extra inputs)."""
    import keras

    from transferkit.config import HeadParams
    from transferkit.deliver.published import ModelInfo, assemble, save_published
    from transferkit.train.train_head import build_head

    features = np.random.default_rng(0).normal(5.0, 3.0, (50, 3)).astype(np.float32)
    pixels_normalised = keras.layers.Normalization(mean=[100, 120, 140], variance=[900, 1600, 2500])
    backbone = keras.Sequential([keras.Input((32, 32, 3)), pixels_normalised, keras.layers.GlobalAveragePooling2D()],
                                name="backbone")
    model = assemble(backbone, build_head(3, 3, HeadParams(hidden_units=0), features), 32)
    info = ModelInfo(classes=["a", "b", "c"], image_size=32, backbone="mean", backbone_weights_sha256="0" * 64)
    save_published(model, info, tmp_path / "model.keras", tmp_path / "model.json")
    model, _ = load_published(tmp_path / "model.keras", tmp_path / "model.json")
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    reference = model.predict(pixels, verbose=0)
    for artifact in artifacts_for(ExportParams())[1:]:  # litert (from a SavedModel), onnx
        write_artifact(model, artifact, tmp_path, ExportParams())
        assert np.abs(artifact.runner(tmp_path)(pixels) - reference).max() < 1e-5, artifact.name
