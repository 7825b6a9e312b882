import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferkit.config import DataParams
from transferkit.data.prepare import assign_splits, prepare
from transferkit.errors import TransferkitError
from transferkit.files import read_json

from conftest import make_image_folder


def run_prepare(source, tmp_path, **overrides):
    params = DataParams(**{"val_fraction": 0.25, "test_fraction": 0.25, **overrides})
    out = tmp_path / "prepared"
    report = prepare(source, out / "manifest.parquet", out / "report.json", params).report
    return report, pd.read_parquet(tmp_path / "prepared" / "manifest.parquet")


def test_folder_becomes_stratified_manifest(image_folder, tmp_path):
    report, manifest = run_prepare(image_folder, tmp_path)
    assert report["classes"] == ["circle", "square", "triangle"]
    assert len(manifest) == 24 and report["rejected"] == []
    # 8 per class, 25% val and test: 2 + 2 + 4 in every class.
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        assert set(report["per_split"][split].values()) == {n}
    assert manifest["sha256"].str.len().eq(64).all()
    assert read_json(tmp_path / "prepared" / "report.json") == report
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
    digest = manifest.loc[manifest["path"].str.endswith("circle_0_000.png"), "sha256"].iloc[0]
    copies = manifest[manifest["sha256"] == digest]
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


# ---- messy data: every kind of file real folders hold -------------------------------------------

def outcome_of(report: dict, manifest: pd.DataFrame, relative: str) -> str:
    """'ok' when the file is in the manifest, else the reason it was rejected or skipped."""
    if manifest["path"].str.endswith(relative).any():
        return "ok"
    listed = [r for r in report["rejected"] + report["skipped"] if r["path"].endswith(relative)]
    assert len(listed) == 1, f"{relative}: listed {len(listed)} times in the report"
    return listed[0]["reason"]


def test_messy_folder_keeps_good_images_and_reports_every_bad_one(image_folder, tmp_path):
    from messy_data import UNICODE_CLASS, add_messy_files

    expected = add_messy_files(image_folder)
    report, manifest = run_prepare(image_folder, tmp_path)

    for relative, wanted in expected.items():
        got = outcome_of(report, manifest, relative)
        assert (got == "ok") if wanted == "ok" else (wanted in got), f"{relative}: expected {wanted!r}, got {got!r}"
    assert report["classes"] == ["circle", UNICODE_CLASS, "square", "triangle"]
    assert report["duplicate_files"] == 1  # link.png: same bytes as its target
    assert manifest.groupby("sha256")["split"].nunique().max() == 1


def test_decompression_bomb_is_refused_without_decoding_it(tmp_path):
    """In a fresh process, so its peak memory is this check's alone: decoding the
    0.4-gigapixel PNG would take over 400 MiB; refusing it from the header takes nothing."""
    import subprocess
    import sys

    from messy_data import write_png_bomb

    write_png_bomb(tmp_path / "bomb.png")
    script = (
        "import re, sys\n"
        "from transferkit.data.images import ImageRejected, inspect_image\n"
        "try:\n"
        "    inspect_image(sys.argv[1], 8, 89_478_485)\n"
        "except ImageRejected as exc:\n"
        "    print(exc)\n"
        # VmHWM: this program's peak resident memory (ru_maxrss would include the forking parent's).
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bomb.png")], capture_output=True, text=True,
                         check=True)
    reason, peak_mib = out.stdout.strip().splitlines()
    assert reason.startswith("too large: 400000000 pixels is over data.max_image_pixels=89478485")
    assert int(peak_mib) < 200


def test_unusual_images_decode_to_upright_rgb(tmp_path):
    from transferkit.data.images import inspect_image, load_rgb

    from messy_data import add_messy_files

    root = make_image_folder(tmp_path / "images", per_class=3)
    add_messy_files(root)
    # EXIF orientation applied: stored 32x48, upright 48x32.
    assert Image.open(root / "square" / "rotated-exif.jpg").size == (32, 48)
    assert inspect_image(root / "square" / "rotated-exif.jpg", 1, 10**8) == (48, 32)
    # Alpha composited on white: the transparent corner is white, not black.
    assert (load_rgb(root / "circle" / "alpha.png", 40)[:4, :4] == 255).all()
    # 16-bit grey scaled to 8 bits (not clipped to white).
    stored = Image.open(root / "square" / "sixteen-bit.png")
    assert stored.mode.startswith("I")  # really 16-bit on disk
    sixteen = load_rgb(root / "square" / "sixteen-bit.png", 40)
    np.testing.assert_allclose(sixteen[..., 0], np.asarray(stored, np.float64) / 257, atol=1)
    # Animated GIF: the first frame (a green triangle, not the red circle of frame 2).
    first = load_rgb(root / "triangle" / "animated.gif", 40)
    r, g, _ = first[20:30, 18:22].reshape(-1, 3).mean(axis=0)
    assert g > r
    for name in ("circle/palette.png", "circle/grey.png", "square/cmyk.jpg", "triangle/photo.webp",
                 "triangle/bitmap.bmp"):
        pixels = load_rgb(root / name, 24)
        assert pixels.shape == (24, 24, 3) and pixels.dtype == np.uint8, name


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_messy_manifest(image_folder, tmp_path, kind):
    rows = [{"path": f"{c}/{c}_0_{i:03d}.png", "label": c, "split": None}
            for c in ("circle", "square", "triangle") for i in range(8)]
    rows += [
        {"path": "circle/missing.png", "label": "circle", "split": None},
        {"path": "circle/circle_0_000.png", "label": "circle", "split": None},  # listed twice
        {"path": "../../etc/passwd", "label": "circle", "split": None},
        {"path": "/etc/passwd", "label": "circle", "split": None},
        {"path": "square/square_0_001.png", "label": "square", "split": "holdout"},
        {"path": "triangle/triangle_0_000.png", "label": "", "split": None},
        {"path": "square/square_0_002.png", "label": "circle", "split": None},  # same bytes, second label
        {"path": "../elsewhere/x.png", "label": "dgo", "split": None},  # a bad row does not make a class
    ]
    # Labels that differ only in case or surrounding spaces are one class.
    rows[1]["label"], rows[2]["label"], rows[9]["label"] = " Circle", "CIRCLE ", "square  "
    table = pd.DataFrame(rows).assign(annotator="ann")  # an extra column: ignored, noted in the report
    manifest_path = image_folder / f"labels.{kind}"
    table.to_csv(manifest_path, index=False) if kind == "csv" else table.to_parquet(manifest_path, index=False)

    report, manifest = run_prepare(manifest_path, tmp_path)
    assert report["classes"] == ["circle", "square", "triangle"]
    assert {m["label"] for m in report["label_merges"]} == {" Circle".strip(), "CIRCLE"}
    reasons = [r["reason"] for r in report["rejected"]]
    for fragment in ("file not found", "manifest row 26 repeats row 1", "unknown split 'holdout'", "empty label",
                     "label conflict"):
        assert any(fragment in r for r in reasons), fragment
    assert sum("outside the data root" in r for r in reasons) == 3
    assert report["skipped"] == [{"path": str(manifest_path), "reason": "column(s) ignored: annotator"}]
    assert not manifest["path"].str.contains("passwd").any()
    assert (manifest["path"].str.endswith("circle_0_000.png")).sum() == 1


def test_empty_class_folder_stops_before_decoding(image_folder, tmp_path, monkeypatch):
    (image_folder / "empty class").mkdir()
    monkeypatch.setattr("transferkit.data.prepare.inspect_image", _must_not_decode)
    with pytest.raises(TransferkitError, match=r"empty class \(0\)"):
        run_prepare(image_folder, tmp_path)
    assert not (tmp_path / "prepared").exists()


def test_class_too_small_for_a_test_split_names_the_key(image_folder, tmp_path, monkeypatch):
    for path in sorted((image_folder / "triangle").iterdir())[2:]:
        path.unlink()
    monkeypatch.setattr("transferkit.data.prepare.inspect_image", _must_not_decode)
    with pytest.raises(TransferkitError,
                       match=r"data.test_fraction=0.25 leaves no test image for class\(es\) triangle"):
        run_prepare(image_folder, tmp_path, min_examples_per_class=1)


def test_class_emptied_by_rejects_stops_naming_it(image_folder, tmp_path):
    for path in (image_folder / "triangle").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(TransferkitError, match=r"valid images: triangle \(0\)"):
        run_prepare(image_folder, tmp_path)


def test_failed_prepare_keeps_previous_outputs(image_folder, tmp_path):
    report, _ = run_prepare(image_folder, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()}
    (image_folder / "new class").mkdir()
    with pytest.raises(TransferkitError):
        run_prepare(image_folder, tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()} == before


def _must_not_decode(*args, **kwargs):
    raise AssertionError("decoded an image although the counts alone decide")


def test_stage_prints_one_clear_message_and_no_traceback(image_folder, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import LOCAL_STORE, REPO

    (image_folder / "lonely").mkdir()
    Image.new("RGB", (40, 40)).save(image_folder / "lonely" / "only.png")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run(
        [sys.executable, str(REPO / "stages" / "prepare.py"), "--params", str(REPO / "params.yaml"),
         "--source", str(image_folder), "--manifest", str(tmp_path / "prepared" / "manifest.parquet"),
         "--report", str(tmp_path / "prepared" / "report.json"), *LOCAL_STORE],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "prepare: error:" in out.stderr and "lonely (1)" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_copies_do_not_make_a_class_big_enough(image_folder, tmp_path):
    originals = sorted((image_folder / "triangle").iterdir())
    for path in originals[1:]:
        path.unlink()
    for i in range(5):
        shutil.copy(originals[0], image_folder / "triangle" / f"copy {i}.png")
    with pytest.raises(TransferkitError, match=r"distinct valid images: triangle \(1\)"):
        run_prepare(image_folder, tmp_path)


def test_unicode_forms_of_a_label_are_one_class(image_folder, tmp_path):
    decomposed, composed = "cafe\u0301", "caf\u00e9"  # macOS writes folder names decomposed
    (image_folder / "circle").rename(image_folder / decomposed)
    rows = [{"path": str(p.relative_to(image_folder)), "label": p.parent.name}
            for p in sorted(image_folder.rglob("*.png"))]
    for i, row in enumerate(rows):
        if row["label"] == decomposed and i % 2:
            row["label"] = composed
    pd.DataFrame(rows).to_csv(image_folder / "labels.csv", index=False)
    folder_report, _ = run_prepare(image_folder, tmp_path / "folder")
    manifest_report, _ = run_prepare(image_folder / "labels.csv", tmp_path / "manifest")
    assert composed in folder_report["classes"]
    assert composed in manifest_report["classes"] and decomposed not in manifest_report["classes"]
