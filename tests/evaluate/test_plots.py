import numpy as np
import pandas as pd
from PIL import Image

from transferkit.evaluate.plots import calibration_png, confusion_png, curves_png


def test_plots_are_real_pngs(tmp_path):
    confusion_png(np.array([[3, 1], [0, 4]]), ["cat", "dog"], tmp_path / "confusion.png", "title")
    calibration_png([{"confidence": 0.6, "accuracy": 0.5}, {"confidence": 0.9, "accuracy": 0.95}],
                    tmp_path / "calibration.png", 0.05)
    calibration_png([], tmp_path / "calibration-empty.png", 0.0)
    for name in ("confusion.png", "calibration.png", "calibration-empty.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_curves_put_phases_end_to_end_and_skip_missing_or_empty_histories(tmp_path):
    pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5], "accuracy": [0.5, 0.8]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(columns=["epoch", "loss", "accuracy"]).to_csv(tmp_path / "empty.csv", index=False)
    curves_png({"head": tmp_path / "a.csv", "empty": tmp_path / "empty.csv", "missing": tmp_path / "no.csv"},
               tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").format == "PNG"
    assert not list(tmp_path.glob(".tmp-*"))
