import json

import pandas as pd
import pytest
from PIL import Image

from transferkit.config import EvaluateParams
from transferkit.errors import TransferkitError
from transferkit.evaluate.evaluate import EvaluateOutputs, evaluate

from conftest import prepare_into, save_colour_model


def outputs_in(folder) -> EvaluateOutputs:
    return EvaluateOutputs(confusion_csv=folder / "confusion.csv",
                           predictions=folder / "predictions.csv", confusion_png=folder / "confusion.png",
                           calibration_png=folder / "calibration.png", curves_png=folder / "curves.png")


def test_scores_the_test_split_and_writes_every_output(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    model_path, info_path = save_colour_model(tmp_path)
    history = tmp_path / "head.csv"
    pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5], "accuracy": [0.5, 0.9], "val_loss": [1.1, 0.6],
                  "val_accuracy": [0.4, 0.8]}).to_csv(history, index=False)
    out = outputs_in(tmp_path / "out")
    histories = {"train_head": str(history), "finetune": str(tmp_path / "none.csv")}
    result = evaluate(manifest, model_path, info_path, out, histories, EvaluateParams(batch_size=4))
    report = result.summary
    test = pd.read_parquet(manifest).query("split == 'test'")
    assert report["test_images"] == len(test) == 6 and report["accuracy"] == 1.0
    assert json.loads(json.dumps(result.metrics_file())) == report  # the metrics file the runner writes
    assert result.parent_metrics()["test_accuracy"] == 1.0
    assert result.metrics_to_parent and {a.path for a in result.attachments()} >= {out.confusion_png, info_path}
    predictions = pd.read_csv(out.predictions)
    assert sorted(predictions["path"]) == sorted(test["path"])
    assert (predictions["actual"] == predictions["predicted"]).all()
    assert list(pd.read_csv(out.confusion_csv).columns) == ["actual", "predicted"]
    for png in (out.confusion_png, out.calibration_png, out.curves_png):
        assert Image.open(png).format == "PNG"


def test_an_empty_test_split_is_an_error(image_folder, tmp_path):
    manifest = prepare_into(image_folder, tmp_path / "prepared", val_fraction=0.25, test_fraction=0.25)
    frame = pd.read_parquet(manifest)
    frame[frame["split"] != "test"].to_parquet(manifest)
    with pytest.raises(TransferkitError, match="test split is empty"):
        evaluate(manifest, *save_colour_model(tmp_path), outputs_in(tmp_path / "out"), {}, EvaluateParams())


def test_quality_gate_is_off_by_default_and_fails_below_min_accuracy():
    from transferkit.evaluate.evaluate import quality_gate

    summary = {"accuracy": 0.75, "test_images": 40}
    quality_gate(summary, EvaluateParams().min_accuracy)
    quality_gate(summary, 0.75)
    with pytest.raises(TransferkitError,
                       match=r"test accuracy 0\.7500 on 40 images is below 0\.8; nothing is exported"):
        quality_gate(summary, 0.8)


def test_head_only_model_and_tta_are_scored_beside_the_published_model(image_folder, tmp_path):
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
    report = evaluate(manifest, *save_colour_model(tmp_path), outputs_in(tmp_path / "out"), {},
                      EvaluateParams(batch_size=4, tta=True), head_path=tmp_path / "head.keras",
                      embeddings_path=tmp_path / "embeddings.npz").summary
    assert report["tta"] is True and report["accuracy"] == report["accuracy_without_tta"] == 1.0  # colour: flip-proof
    assert report["head_only_accuracy"] == 1.0 and report["finetune_gain"] == 0.0
