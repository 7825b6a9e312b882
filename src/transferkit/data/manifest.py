"""The prepared manifest: one row per usable image, written by `prepare`, read by every later stage.

Columns: path, label, label_index, split (train/val/test), sha256 (of the
file's bytes), width, height.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from transferkit.errors import TransferkitError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "label_index", "split", "sha256", "width", "height"]


def load_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TransferkitError(f"{path}: manifest not found; run the prepare stage first (dvc repro prepare)")
    return pd.read_parquet(path)


def classes_of(manifest: pd.DataFrame) -> list[str]:
    """Class names in label_index order (every class has images, so the manifest holds them all)."""
    pairs = manifest[["label_index", "label"]].drop_duplicates().sort_values("label_index")
    return pairs["label"].tolist()


def split_of(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split, in manifest order."""
    return manifest[manifest["split"] == split]
