"""The prepared manifest: one row per usable image or text, written by `prepare`, read by every later stage.

One manifest holds one modality, images or texts, and its columns say which
(`modality_of`); the data report (report.json) records it too.

Image columns (MANIFEST_COLUMNS): path, label, label_index, split
(train/val/test), sha256 (of the file's bytes), width, height (upright pixels).

Text columns (TEXT_MANIFEST_COLUMNS): path, label, label_index, split, sha256
(of the decoded text's UTF-8 bytes, data.texts.text_sha256: the same text in
two encodings is one text), chars (characters after decoding), encoding (what
the file was decoded as: utf-8, utf-8-bom, utf-16-le, utf-16-be, cp1252).
`path` always names a file, so every stage reads texts with
data.texts.load_text(path): texts given inline in a source manifest are
written once by `prepare`, UTF-8 and named by their hash, under its texts
folder (data/prepared/texts/<sha256>.txt in dvc.yaml).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from transferkit.errors import TransferkitError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "label_index", "split", "sha256", "width", "height"]
TEXT_MANIFEST_COLUMNS = ["path", "label", "label_index", "split", "sha256", "chars", "encoding"]
MODALITIES = ("image", "text")


def columns_for(modality: str) -> list[str]:
    return TEXT_MANIFEST_COLUMNS if modality == "text" else MANIFEST_COLUMNS


def modality_of(manifest: pd.DataFrame) -> str:
    """'image' or 'text': what the manifest holds, from its columns (any slice of it keeps them)."""
    if "width" in manifest.columns:
        return "image"
    if "chars" in manifest.columns:
        return "text"
    raise TransferkitError(f"manifest has neither image (width) nor text (chars) columns: {list(manifest.columns)}; "
                           f"run the prepare stage again (dvc repro prepare)")


def load_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TransferkitError(f"{path}: manifest not found; run the prepare stage first (dvc repro prepare)")
    return pd.read_parquet(path)


def classes_of(manifest: pd.DataFrame) -> list[str]:
    """Class names in label_index order (every class has examples, so the manifest holds them all)."""
    pairs = manifest[["label_index", "label"]].drop_duplicates().sort_values("label_index")
    return pairs["label"].tolist()


def split_of(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split, in manifest order."""
    return manifest[manifest["split"] == split]
