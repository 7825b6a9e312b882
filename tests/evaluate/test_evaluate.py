import json

import pandas as pd
import pytest
from PIL import Image

from transferkit.config import EvaluateParams
from transferkit.errors import TransferkitError
from transferkit.evaluate.evaluate import EvaluateOutputs, evaluate

from conftest import DEFAULT_CLASSES, colour_model, prepare_into, save_colour_model


def outputs_in(folder) -> EvaluateOutputs:
    return EvaluateOutputs(confusion_csv=folder / "confusion.csv",
                           predictions=folder / "predictions.csv", errors=folder / "errors.csv",
                           errors_html=folder / "errors.html",
                           confusion_png=folder / "confusion.png",
                           calibration_png=folder / "calibration.png", curves_png=folder / "curves.png")


def test_scores_the_test_split_and_writes_every_output(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    model_path, info_path = save_colour_model(tmp_path)
    history = tmp_path / "head.csv"
    pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5], "accuracy": [0.5, 0.9], "val_loss": [1.1, 0.6],
                  "val_accuracy": [0.4, 0.8]}).to_csv(history, index=False)
    out = outputs_in(tmp_path / "out")
    histories = {"train_head": str(history), "finetune": str(tmp_path / "none.csv")}
    result = evaluate(manifest, model_path, info_path, out, histories, EvaluateParams(batch_size=4), seed=0)
    report = result.summary
    test = pd.read_parquet(manifest).query("split == 'test'")
    assert report["test_images"] == len(test) == 6 and report["accuracy"] == 1.0
    assert json.loads(json.dumps(result.metrics_file())) == report  # the metrics file the runner writes
    assert result.parent_metrics()["test_accuracy"] == 1.0
    assert result.metrics_to_parent and {a.path for a in result.attachments()} >= {out.confusion_png, info_path,
                                                                                   out.errors_html}
    assert out.errors_html.read_text(encoding="utf-8").count("<img") == 6  # no error: each test image in its strip
    predictions = pd.read_csv(out.predictions)
    assert sorted(predictions["path"]) == sorted(test["path"])
    assert (predictions["actual"] == predictions["predicted"]).all()
    assert list(pd.read_csv(out.confusion_csv).columns) == ["actual", "predicted"]
    for png in (out.confusion_png, out.calibration_png, out.curves_png):
        assert Image.open(png).format == "PNG"
    # The baseline, on the same test images: the colour model is perfect, so it is not below it.
    assert report["baseline"] == result.run_params()["baseline"] and 0 < report["baseline_accuracy"] <= 1.0
    assert report["gain_over_baseline"] == 1.0 - report["baseline_accuracy"]
    assert {"test_baseline_accuracy", "test_baseline_val_accuracy", "test_gain_over_baseline"} <= set(
        result.parent_metrics())
    lines = result.lines()
    assert any(line.startswith(f"baseline {report['baseline']} scores") and "points over it" in line for line in lines)
    assert not any("below the baseline" in line for line in lines)


def test_an_empty_test_split_is_an_error(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    frame = pd.read_parquet(manifest)
    frame[frame["split"] != "test"].to_parquet(manifest)
    with pytest.raises(TransferkitError, match="test split is empty"):
        evaluate(manifest, *save_colour_model(tmp_path), outputs_in(tmp_path / "out"), {}, EvaluateParams(), seed=0)


def test_quality_gate_is_off_by_default_and_fails_below_min_accuracy():
    from transferkit.evaluate.evaluate import quality_gate

    summary = {"accuracy": 0.75, "test_images": 40}
    quality_gate(summary, EvaluateParams().min_accuracy)
    quality_gate(summary, 0.75)
    with pytest.raises(TransferkitError,
                       match=r"test accuracy 0\.7500 on 40 images is below 0\.8; nothing is exported"):
        quality_gate(summary, 0.8)


def test_head_only_model_and_tta_are_scored_beside_the_published_model(image_folder, tmp_path, monkeypatch):
    import keras
    import numpy as np

    from transferkit.embeddings.table import write_table

    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    frame = pd.read_parquet(manifest)
    # Embeddings that say the class outright, and a head that reads them: the head-only model is always right.
    write_table(tmp_path / "embeddings.npz", frame["sha256"].tolist(),
                np.eye(3, dtype=np.float32)[frame["label_index"].to_numpy()], {"key": "k"})
    inputs = keras.Input((3,))
    head = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="out")(inputs))
    head.get_layer("out").set_weights([np.eye(3, dtype=np.float32) * 20, np.zeros(3, np.float32)])
    head.save(tmp_path / "head.keras")
    reads = []  # the embedding table is read once, for the head-only model and the kNN baseline both
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: reads.append(str(path)) or real_load(path, *a, **k))
    result = evaluate(manifest, *save_colour_model(tmp_path), outputs_in(tmp_path / "out"), {},
                      EvaluateParams(batch_size=4, tta=True), seed=0, head_path=tmp_path / "head.keras",
                      embeddings_path=tmp_path / "embeddings.npz")
    report = result.summary
    assert report["tta"] is True and report["accuracy"] == report["accuracy_without_tta"] == 1.0  # colour: flip-proof
    assert report["head_only_accuracy"] == 1.0 and report["finetune_gain"] == 0.0
    assert reads.count(str(tmp_path / "embeddings.npz")) == 1 and "knn1_embeddings" in result.baseline.val_scores


def save_first_class_model(folder):
    """(model.keras, model.json) of a published model that always answers the first class: a bad model."""
    import numpy as np

    from transferkit.deliver.published import ModelInfo, save_published

    model = colour_model()
    model.get_layer("colour").set_weights([np.zeros((3, 3), np.float32), np.array([1, 0, 0], np.float32)])
    info = ModelInfo(classes=list(DEFAULT_CLASSES), image_size=32, backbone="colour", backbone_weights_sha256="0" * 64)
    save_published(model, info, folder / "model.keras", folder / "model.json")
    return folder / "model.keras", folder / "model.json"


def test_a_model_below_the_baseline_is_named_in_plain_words(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    result = evaluate(manifest, *save_first_class_model(tmp_path), outputs_in(tmp_path / "out"), {},
                      EvaluateParams(batch_size=4), seed=0)
    report = result.summary
    assert report["accuracy"] == pytest.approx(1 / 3)  # 2 of the 6 test images are the first class
    assert report["baseline_accuracy"] == 1.0 and report["gain_over_baseline"] == pytest.approx(-2 / 3)
    assert (f"the published model (0.3333) is below the baseline {report['baseline']} (1.0000) on the same test "
            f"images: try") in "\n".join(result.lines())


def test_baseline_false_leaves_the_baseline_out(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    result = evaluate(manifest, *save_first_class_model(tmp_path), outputs_in(tmp_path / "out"), {},
                      EvaluateParams(batch_size=4, baseline=False), seed=0)
    assert not [key for key in result.summary if "baseline" in key]
    assert not [key for key in result.parent_metrics() if "baseline" in key] and result.run_params() == {}
    assert not [line for line in result.lines() if "baseline" in line]


def test_without_val_images_a_line_says_why_there_is_no_baseline(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.0, test_fraction=0.25)
    result = evaluate(manifest, *save_colour_model(tmp_path), outputs_in(tmp_path / "out"), {},
                      EvaluateParams(batch_size=4), seed=0)
    assert "baseline" not in result.summary
    assert "no baseline: the val split is empty (data.val_fraction), and a baseline is chosen on val" in result.lines()
