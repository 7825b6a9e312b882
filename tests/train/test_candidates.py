"""More candidates: the ensemble graph (one file, safe_mode, the weighted average) and the choice with ties."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from transferkit.train.candidates import at_input, best_weight, choose, ensemble, interval
from transferkit.train.companion import build_companion

from conftest import colour_model


@pytest.fixture(scope="module")
def branches():
    keras.utils.set_random_seed(0)
    return colour_model(image_size=32), build_companion(16, 3, width=4, dropout=0.3)  # as trained


def test_ensemble_reloads_with_safe_mode_and_averages_the_branches(branches, tmp_path):
    transfer, companion = branches
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    model = ensemble(transfer, companion, 32, 0.3)
    model.save(tmp_path / "ensemble.keras")
    again = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    companion_probs = companion.predict(tf.image.resize(pixels, (16, 16), method="bilinear"), verbose=0)
    expected = 0.7 * transfer.predict(pixels, verbose=0) + 0.3 * companion_probs
    np.testing.assert_allclose(again.predict(pixels, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(at_input(companion, 32).predict(pixels, verbose=0), companion_probs, atol=1e-6)
    assert again.input_shape == (None, 32, 32, 3)


def test_ties_go_to_the_cheaper_candidate():
    assert choose({"finetuned": 90, "companion": 90, "ensemble": 90}) == "companion"
    assert choose({"head": 88, "companion": 88}) == "head"
    assert choose({"head": 88, "companion": 87, "ensemble": 90}) == "ensemble"
    assert choose({"finetuned": 91, "ensemble": 91}) == "finetuned"


def test_a_lead_of_one_val_image_is_a_tie():
    assert choose({"head": 88, "companion": 87, "ensemble": 89}) == "head"
    assert choose({"finetuned": 105, "ensemble": 106}) == "finetuned"
    assert choose({"head": 88, "companion": 90, "ensemble": 91}) == "companion"  # 1 over the companion
    assert choose({"head": 88, "companion": 89, "ensemble": 90}) == "ensemble"  # 2 over the head


def test_the_weight_is_chosen_on_val_accuracy():
    labels = np.array([0, 1, 0, 1])
    transfer = np.array([[0.9, 0.1], [0.6, 0.4], [0.9, 0.1], [0.6, 0.4]])  # wrong on the 1s, barely
    companion = np.array([[0.4, 0.6], [0.0, 1.0], [0.4, 0.6], [0.0, 1.0]])  # wrong on the 0s, barely
    weight = best_weight(transfer, companion, labels)
    mixed = weight * companion + (1 - weight) * transfer
    assert (mixed.argmax(1) == labels).all()


def test_interval_holds_the_accuracy():
    lo, hi = interval(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.15
    assert interval(10, 10) == (1.0, 1.0)


def test_export_passes_its_parity_gate_on_an_ensemble(branches, tmp_path):
    """SavedModel, LiteRT and ONNX of the two-branch graph (Resizing included) match the Keras model."""
    from transferkit.config import ExportParams
    from transferkit.deliver.export import export
    from transferkit.deliver.published import ModelInfo, save_published

    from conftest import make_image_folder, prepare_into

    transfer, companion = branches
    manifest = prepare_into(make_image_folder(tmp_path / "images", per_class=4, size=32), tmp_path / "prepared",
                            val_fraction=0.0, test_fraction=0.5)
    info = ModelInfo(classes=["circle", "square", "triangle"], image_size=32, backbone="colour",
                     backbone_weights_sha256="0" * 64, candidate="ensemble")
    save_published(ensemble(transfer, companion, 32, 0.4), info, tmp_path / "model.keras", tmp_path / "model.json")
    result = export(manifest, tmp_path / "model.keras", tmp_path / "model.json", tmp_path / "export",
                    ExportParams(), "test")
    result.check()  # raises on a parity failure
    assert not result.failures and set(result.figures) == {"saved_model", "litert", "onnx"}
    assert all(f["max_abs_diff"] < 1e-4 for f in result.figures.values())
