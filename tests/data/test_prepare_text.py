"""`prepare` on texts: folders and manifests of text files, texts inline, mixed encodings, bad files."""

import codecs
from pathlib import Path

import pandas as pd
import pytest

from transferkit.config import DataParams
from transferkit.data.manifest import TEXT_MANIFEST_COLUMNS, load_manifest, modality_of
from transferkit.data.prepare import prepare
from transferkit.data.texts import load_text, text_sha256
from transferkit.errors import TransferkitError

from conftest import make_image_folder

TOPICS = {"ham": "meeting notes about the build server and the release", "spam": "cheap pills, you won a prize"}


def body(label: str, i: int) -> str:
    return f"Subject: {label} number {i}\n\n{TOPICS[label]} ({i}), größer – “fine”\n"


def make_text_folder(root: Path, per_class: int = 8) -> Path:
    """root/<class>/mail_<i> (no extension) and a few .txt files: distinct UTF-8 texts."""
    for label in TOPICS:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"mail_{i:03d}" if i % 2 else f"note_{i:03d}.txt"
            (root / label / name).write_bytes(body(label, i).encode("utf-8"))
    return root


def run_prepare(source, tmp_path, **overrides):
    params = DataParams(**{"val_fraction": 0.25, "test_fraction": 0.25, **overrides})
    out = tmp_path / "prepared"
    report = prepare(source, out / "manifest.parquet", out / "report.json", params, out / "texts").report
    return report, load_manifest(out / "manifest.parquet")


def reason_for(report: dict, ending: str) -> str:
    listed = [r["reason"] for r in report["rejected"] if r["path"].endswith(ending)]
    assert len(listed) == 1, f"{ending}: listed {len(listed)} times"
    return listed[0]


def test_text_folder_in_every_encoding_with_bad_files(tmp_path):
    root = make_text_folder(tmp_path / "texts")
    extra = "Subject: extra\n\nÜberweisung für Café – 10 €, “bitte”\n"
    (root / "ham" / "bom-utf8").write_bytes(codecs.BOM_UTF8 + extra.encode("utf-8"))
    (root / "ham" / "utf16le.txt").write_bytes(codecs.BOM_UTF16_LE + ("le " + extra).encode("utf-16-le"))
    (root / "ham" / "utf16be.txt").write_bytes(codecs.BOM_UTF16_BE + ("be " + extra).encode("utf-16-be"))
    (root / "ham" / "windows.txt").write_bytes(("cp " + extra).replace("\n", "\r\n").encode("cp1252"))
    (root / "ham" / "00001.7c53336b37003a9286aba55d2945844c").write_bytes(b"Subject: raw e-mail\n\nhello\n")
    # The same text in another encoding and another file: one text, a duplicate, kept in one split.
    (root / "ham" / "copy-latin1").write_bytes(("cp " + extra).encode("cp1252"))
    # Bad files: each rejected with its reason.
    (root / "spam" / "binary").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    (root / "spam" / "empty.txt").write_bytes(b"")
    (root / "spam" / "blank").write_bytes(b"  \r\n\t\n")
    (root / "spam" / "huge.txt").write_bytes(b"buy now " * 200)
    (root / "spam" / "page.md").write_bytes(b"# markdown")
    (root / "spam" / "stray.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    # The same text under both labels: a conflict, every copy rejected.
    (root / "spam" / "conflict").write_bytes(body("ham", 1).encode("utf-8"))

    report, manifest = run_prepare(root, tmp_path, max_text_bytes=1000)

    assert report["modality"] == "text" and modality_of(manifest) == "text"
    assert list(manifest.columns) == TEXT_MANIFEST_COLUMNS
    assert report["texts"] == len(manifest) == 8 + 8 - 1 + 6  # the conflicted ham text is gone
    assert reason_for(report, "spam/binary").startswith("binary file (NUL byte")
    assert reason_for(report, "spam/empty.txt") == "empty file (0 bytes)"
    assert reason_for(report, "spam/blank") == "empty text (nothing but whitespace)"
    assert reason_for(report, "spam/huge.txt") == "too large: 1600 bytes is over data.max_text_bytes=1000"
    assert reason_for(report, "spam/page.md").startswith("not a text file type (.md)")
    assert reason_for(report, "spam/stray.png").startswith("an image file in text data (.png)")
    assert reason_for(report, "spam/conflict") == "label conflict: the same text is also labelled ham"
    assert reason_for(report, "ham/mail_001") == "label conflict: the same text is also labelled spam"

    rows = manifest.set_index(manifest["path"].str.rsplit("/", n=1).str[-1])
    assert rows.loc["bom-utf8", "encoding"] == "utf-8-bom"
    assert rows.loc["utf16le.txt", "encoding"] == "utf-16-le" and rows.loc["utf16be.txt", "encoding"] == "utf-16-be"
    assert rows.loc["windows.txt", "encoding"] == rows.loc["copy-latin1", "encoding"] == "cp1252"
    # CRLF in one file, LF in the other: after decoding the same text, so the same hash and split.
    assert rows.loc["windows.txt", "sha256"] == rows.loc["copy-latin1", "sha256"] == text_sha256("cp " + extra)
    assert rows.loc["windows.txt", "split"] == rows.loc["copy-latin1", "split"]
    assert report["duplicate_files"] == 1 and report["unique_texts"] == len(manifest) - 1
    assert rows.loc["utf16be.txt", "chars"] == len("be " + extra)
    assert report["encodings"] == {"cp1252": 2, "utf-16-be": 1, "utf-16-le": 1, "utf-8": 16, "utf-8-bom": 1}
    # Every later stage reads the manifest's files through the one decoder and gets the hashed text.
    for row in manifest.itertuples():
        assert text_sha256(load_text(row.path)) == row.sha256
    assert not any((tmp_path / "prepared" / "texts").iterdir())  # file sources write no text copies


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_inline_texts_are_written_once_by_hash(tmp_path, kind):
    rows = [{"text": body(label, i), "label": label, "split": "test" if i == 0 else None}
            for label in TOPICS for i in range(8)]
    rows += [
        {"text": body("ham", 3), "label": "ham", "split": None},  # a repeated row
        {"text": body("ham", 4).replace("\n", "\r\n"), "label": "ham", "split": None},  # same text, CRLF
        {"text": body("spam", 5), "label": "ham", "split": None},  # same text, second label
        {"text": "   ", "label": "spam", "split": None},
        {"text": "NA", "label": "spam", "split": None},  # a text, not a missing value
        {"text": body("spam", 9), "label": "spam", "split": "holdout"},
    ]
    source = tmp_path / f"texts.{kind}"
    table = pd.DataFrame(rows)
    table.to_csv(source, index=False) if kind == "csv" else table.to_parquet(source, index=False)

    report, manifest = run_prepare(source, tmp_path)

    assert report["modality"] == "text" and modality_of(manifest) == "text"
    shown = str(source)
    reasons = {r["path"]: r["reason"] for r in report["rejected"]}
    assert reasons[f"{shown} row 17"] == "manifest row 17 repeats row 4 (same text and label)"
    assert reasons[f"{shown} row 19"] == "label conflict: the same text is also labelled spam"
    assert reasons[f"{shown} row 14"] == "label conflict: the same text is also labelled ham"
    assert reasons[f"{shown} row 20"] == "empty text (nothing but whitespace)"
    assert reasons[f"{shown} row 22"].startswith("unknown split 'holdout'")
    texts = tmp_path / "prepared" / "texts"
    written = sorted(p.name for p in texts.iterdir())
    assert written == sorted(f"{h}.txt" for h in set(manifest["sha256"]))  # one file per distinct text
    for row in manifest.itertuples():
        assert Path(row.path).parent == texts and load_text(row.path) == (texts / f"{row.sha256}.txt").read_text()
        assert text_sha256(load_text(row.path)) == row.sha256 and row.encoding == "utf-8"
    crlf = manifest[manifest["sha256"] == text_sha256(body("ham", 4))]
    assert len(crlf) == 2 and crlf["split"].nunique() == 1  # the CRLF copy is the same text
    assert (manifest.loc[manifest["sha256"] == text_sha256(body("ham", 0)), "split"] == "test").all()
    assert text_sha256("NA") in set(manifest["sha256"])
    assert report["inline_texts_written"] == len(written)


def test_inline_texts_need_a_texts_folder(tmp_path):
    pd.DataFrame({"text": [body("ham", i) for i in range(4)], "label": "ham"}).to_csv(tmp_path / "t.csv")
    with pytest.raises(TransferkitError, match="texts inline, which need a texts folder"):
        prepare(tmp_path / "t.csv", tmp_path / "m.parquet", tmp_path / "r.json", DataParams())


def test_manifest_of_text_file_paths(tmp_path):
    root = make_text_folder(tmp_path / "texts")
    rows = [{"path": str(p.relative_to(root)), "label": p.parent.name} for p in sorted(root.rglob("*")) if p.is_file()]
    rows.append({"path": "ham/missing", "label": "ham"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    report, manifest = run_prepare(root / "labels.csv", tmp_path)
    assert report["modality"] == "text" and len(manifest) == 16
    assert [r["reason"] for r in report["rejected"]] == ["file not found"]
    assert manifest["path"].str.startswith(str(root)).all()  # the user's files, not copies


def test_both_path_and_text_columns_is_an_error(tmp_path):
    pd.DataFrame({"path": ["a"], "text": ["b"], "label": ["c"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TransferkitError, match="both a path and a text column"):
        run_prepare(tmp_path / "t.csv", tmp_path)


def test_images_and_texts_in_one_source_name_a_file_of_each(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=4, classes=("circle", "square"))
    make_text_folder(root, per_class=4)  # ham/ and spam/ beside the image classes
    with pytest.raises(TransferkitError, match=r"mixes images and texts \(e\.g\. .*circle_0_000\.png and "
                                               r".*ham/mail_001\)"):
        run_prepare(root, tmp_path)


def test_a_stray_text_among_images_is_rejected_not_a_mix(image_folder, tmp_path):
    (image_folder / "circle" / "notes.txt").write_text("taken on a sunny day")
    report, manifest = run_prepare(image_folder, tmp_path)
    assert report["modality"] == "image" and modality_of(manifest) == "image"
    assert reason_for(report, "circle/notes.txt") == "not an image file type (.txt)"
    assert not any((tmp_path / "prepared" / "texts").iterdir())


def test_too_few_texts_names_the_class(tmp_path):
    root = make_text_folder(tmp_path / "texts")
    for path in sorted((root / "spam").iterdir())[2:]:
        path.write_bytes(b"\x00binary")
    with pytest.raises(TransferkitError, match=r"min_examples_per_class=3 distinct valid texts: spam \(2\)"):
        run_prepare(root, tmp_path)


def test_the_committed_text_sample_prepares_without_rejects(tmp_path):
    from conftest import REPO

    report, manifest = run_prepare(REPO / "data" / "sample_text", tmp_path, **{"val_fraction": 0.15,
                                                                                 "test_fraction": 0.2})
    assert report["modality"] == "text" and report["classes"] == ["ham", "spam"]
    assert report["texts"] == 300 and report["rejected"] == []
    assert report["per_split"]["test"] == {"ham": 30, "spam": 30}
    assert report["encodings"]["cp1252"] > 0  # legacy mail read through the fallback, not rejected
    assert {s["reason"] for s in report["skipped"]} == {"not inside a class folder"}  # LICENSE, README.md
