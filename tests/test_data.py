import shutil

import pandas as pd
import pytest

from transferkit.config import DataParams
from transferkit.data import assign_splits, prepare
from transferkit.errors import TransferkitError
from transferkit.files import read_json

from conftest import make_image_folder


def run_prepare(source, tmp_path, **overrides):
    params = DataParams(**{"val_fraction": 0.25, "test_fraction": 0.25, **overrides})
    report = prepare(source, tmp_path / "prepared", params)
    return report, pd.read_parquet(tmp_path / "prepared" / "manifest.parquet")


def test_folder_becomes_stratified_manifest(image_folder, tmp_path):
    report, manifest = run_prepare(image_folder, tmp_path)
    assert report["classes"] == ["circle", "square", "triangle"]
    assert len(manifest) == 24 and report["rejected"] == []
    # 8 per class, 25% val and test: 2 + 2 + 4 in every class.
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        assert set(report["per_split"][split].values()) == {n}
    assert manifest["sha256"].str.len().eq(64).all()
    assert read_json(tmp_path / "prepared" / "classes.json") == report["classes"]
    assert set(manifest["label_index"]) == {0, 1, 2}


def test_split_is_deterministic_and_seed_dependent(image_folder, tmp_path):
    _, a = run_prepare(image_folder, tmp_path / "a")
    _, b = run_prepare(image_folder, tmp_path / "b")
    _, c = run_prepare(image_folder, tmp_path / "c", seed=7)
    assert a.equals(b)
    assert not a["split"].equals(c.set_index("path").loc[a["path"], "split"].reset_index(drop=True))


def test_identical_images_share_a_split(image_folder, tmp_path):
    source = image_folder / "circle" / "circle_0_000.png"
    for i in range(5):
        shutil.copy(source, image_folder / "circle" / f"copy_{i}.png")
    report, manifest = run_prepare(image_folder, tmp_path)
    copies = manifest[manifest["sha256"] == manifest.loc[manifest["path"].str.endswith("circle_0_000.png"), "sha256"].iloc[0]]
    assert len(copies) == 6 and copies["split"].nunique() == 1
    assert report["duplicate_files"] == 5


def test_bad_files_are_rejected_with_reasons(image_folder, tmp_path):
    (image_folder / "circle" / "empty.png").write_bytes(b"")
    (image_folder / "circle" / "notes.jpg").write_text("this is text, not a JPEG")
    good = (image_folder / "square" / "square_0_000.png").read_bytes()
    (image_folder / "square" / "truncated.png").write_bytes(good[: len(good) // 2])
    (image_folder / "square" / "readme.txt").write_text("hello")
    (image_folder / "triangle" / ".DS_Store").write_bytes(b"\x00\x01")
    (image_folder / "LICENSE.md").write_text("licence text")
    report, manifest = run_prepare(image_folder, tmp_path)
    reasons = {r["path"].rsplit("/", 1)[-1]: r["reason"] for r in report["rejected"]}
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["notes.jpg"].startswith("not an image")
    assert "cannot decode" in reasons["truncated.png"] or "not an image" in reasons["truncated.png"]
    assert reasons["readme.txt"].startswith("not an image file type")
    assert ".DS_Store" not in reasons  # hidden files are not candidates at all
    assert report["skipped"][0]["reason"] == "not inside a class folder"
    assert len(manifest) == 24


def test_same_bytes_under_two_labels_is_a_conflict(image_folder, tmp_path):
    shutil.copy(image_folder / "circle" / "circle_0_000.png", image_folder / "square" / "mislabelled.png")
    report, manifest = run_prepare(image_folder, tmp_path)
    conflicts = [r for r in report["rejected"] if r["reason"].startswith("label conflict")]
    assert len(conflicts) == 2
    assert not manifest["path"].str.endswith(("circle_0_000.png", "mislabelled.png")).any()


def test_manifest_csv_with_fixed_splits_and_escaping_path(image_folder, tmp_path):
    rows = [{"path": f"{c}/{c}_0_{i:03d}.png", "label": c, "split": "test" if i == 0 else ""}
            for c in ("circle", "square", "triangle") for i in range(8)]
    rows.append({"path": "../../etc/passwd", "label": "circle", "split": ""})
    rows.append({"path": "circle/circle_0_001.png", "label": "circle", "split": "holdout"})
    pd.DataFrame(rows).to_csv(image_folder / "labels.csv", index=False)
    report, manifest = run_prepare(image_folder / "labels.csv", tmp_path)
    reasons = [r["reason"] for r in report["rejected"]]
    assert any("outside the data root" in r or "not found" in r for r in reasons)
    assert any("unknown split 'holdout'" in r for r in reasons)
    fixed = manifest[manifest["path"].str.endswith("_0_000.png")]
    assert set(fixed["split"]) == {"test"}


def test_too_few_images_names_the_class(image_folder, tmp_path):
    for path in list((image_folder / "triangle").iterdir())[1:]:
        path.unlink()
    with pytest.raises(TransferkitError, match=r"triangle \(1\)"):
        run_prepare(image_folder, tmp_path)


def test_one_class_is_an_error(tmp_path):
    source = make_image_folder(tmp_path / "one", classes=("circle",))
    with pytest.raises(TransferkitError, match="at least 2"):
        run_prepare(source, tmp_path)


def test_missing_source_names_it(tmp_path):
    with pytest.raises(TransferkitError, match="data.source"):
        run_prepare(tmp_path / "nowhere", tmp_path)


def test_assign_splits_keeps_one_training_group_for_tiny_classes():
    frame = pd.DataFrame({"path": ["a", "b"], "label": ["x", "x"], "split": [None, None], "sha256": ["1", "2"]})
    out = assign_splits(frame, 0.5, 0.5, seed=0)
    assert "train" in set(out["split"])
