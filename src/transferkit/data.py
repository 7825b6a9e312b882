"""The `prepare` stage: scan, validate, hash and split the user's images.

Input is an image folder (one sub-folder per class) or a CSV/Parquet manifest
with columns `path,label[,split]`. Every image is decoded once to prove it is
usable; files that are not are listed in the data report with a reason and
left out. Raw data is only read, never modified.

The split is stratified by class and grouped by content hash, so identical
image bytes always land in the same split (a duplicate in train and test would
inflate the test score). The same bytes under two labels is a conflict: all
copies are rejected.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.config import DataParams
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, write_json
from transferkit.images import IMAGE_SUFFIXES, ImageRejected, inspect_image, sha256_file

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "label", "label_index", "split", "sha256", "width", "height"]


@dataclass
class Candidate:
    path: Path  # as found on disk
    label: str
    split: str | None = None  # given by a manifest, else assigned here


def display_path(path: Path) -> str:
    """Path relative to the working directory when inside it (portable across clones), else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def scan_folder(root: Path) -> tuple[list[Candidate], list[dict]]:
    """One sub-folder per class. Returns candidates and the files passed over (with reasons)."""
    candidates, skipped = [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden files and folders (.DS_Store, .git ...)
        if not entry.is_dir():
            skipped.append({"path": display_path(entry), "reason": "not inside a class folder"})
            continue
        for path in sorted(p for p in entry.rglob("*") if p.is_file() or p.is_symlink()):
            relative_parts = path.relative_to(entry).parts
            if any(part.startswith(".") for part in relative_parts):
                continue  # hidden
            candidates.append(Candidate(path, entry.name))
    return candidates, skipped


def read_manifest(path: Path) -> list[Candidate]:
    """A CSV or Parquet table of path,label[,split]; paths are relative to the manifest's folder."""
    try:
        table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, dtype=str)
    except Exception as exc:  # pandas raises many types for unreadable tables
        raise TransferkitError(f"{path}: cannot read manifest: {exc}") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise TransferkitError(f"{path}: manifest lacks column(s) {sorted(missing)}; need path,label[,split]")
    root = path.parent
    candidates = []
    for row in table.itertuples(index=False):
        split = getattr(row, "split", None)
        split = None if split is None or pd.isna(split) or str(split).strip() == "" else str(split).strip().lower()
        candidates.append(Candidate(root / str(row.path), str(row.label), split))
    return candidates


def validate(candidates: list[Candidate], root: Path, params: DataParams) -> tuple[pd.DataFrame, list[dict]]:
    """Decode and hash each candidate. Returns the valid rows and the rejects with reasons."""
    rows, rejects = [], []
    root_resolved = root.resolve()
    for c in candidates:
        shown = display_path(c.path)
        label = c.label.strip()
        try:
            if not label:
                raise ImageRejected("empty label")
            if c.split is not None and c.split not in SPLITS:
                raise ImageRejected(f"unknown split {c.split!r} (allowed: {', '.join(SPLITS)})")
            if not c.path.exists():
                raise ImageRejected("file not found")
            if not c.path.resolve().is_relative_to(root_resolved):
                raise ImageRejected(f"path leads outside the data root {display_path(root)}")
            if c.path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageRejected(f"not an image file type ({c.path.suffix or 'no suffix'})")
            width, height = inspect_image(c.path, params.min_image_side, params.max_image_pixels)
            digest = sha256_file(c.path)
        except ImageRejected as exc:
            rejects.append({"path": shown, "label": label, "reason": str(exc)})
            continue
        except OSError as exc:  # unreadable: permissions, broken symlink, I/O error
            rejects.append({"path": shown, "label": label, "reason": f"cannot read: {exc.strerror or exc}"})
            continue
        rows.append({"path": shown, "label": label, "split": c.split, "sha256": digest, "width": width, "height": height})
    frame = pd.DataFrame(rows, columns=["path", "label", "split", "sha256", "width", "height"])
    frame = frame.drop_duplicates(subset=["path", "label"])  # a manifest listing a file twice
    return _reject_label_conflicts(frame, rejects)


def _reject_label_conflicts(frame: pd.DataFrame, rejects: list[dict]) -> tuple[pd.DataFrame, list[dict]]:
    """The same bytes under two labels cannot both be right: reject every copy."""
    labels_per_hash = frame.groupby("sha256")["label"].nunique()
    conflicted = set(labels_per_hash[labels_per_hash > 1].index)
    if not conflicted:
        return frame.reset_index(drop=True), rejects
    bad = frame["sha256"].isin(conflicted)
    for row in frame[bad].itertuples(index=False):
        others = sorted(set(frame.loc[frame["sha256"] == row.sha256, "label"]) - {row.label})
        rejects.append({"path": row.path, "label": row.label,
                        "reason": f"label conflict: the same image bytes are also labelled {', '.join(others)}"})
    return frame[~bad].reset_index(drop=True), rejects


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of n groups go to val and test; every split gets one when there are enough."""
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if test_fraction > 0 and n_test == 0 and n >= 3:
        n_test = 1
    if val_fraction > 0 and n_val == 0 and n >= 3:
        n_val = 1
    while n_val + n_test >= n and (n_val or n_test):  # keep at least one group for training
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """Fill missing splits: stratified by label, grouped by content hash."""
    frame = frame.copy()
    rng = np.random.default_rng(seed)
    # Duplicates of an image that already has a split (from a manifest) follow it.
    given = frame.dropna(subset=["split"]).drop_duplicates("sha256").set_index("sha256")["split"]
    todo = frame["split"].isna() & frame["sha256"].isin(given.index)
    frame.loc[todo, "split"] = frame.loc[todo, "sha256"].map(given)
    for label in sorted(frame["label"].unique()):
        open_rows = (frame["label"] == label) & frame["split"].isna()
        groups = np.array(sorted(frame.loc[open_rows, "sha256"].unique()))
        rng.shuffle(groups)
        n_val, n_test = _split_counts(len(groups), val_fraction, test_fraction)
        split_of = {h: "test" for h in groups[:n_test]}
        split_of.update({h: "val" for h in groups[n_test:n_test + n_val]})
        split_of.update({h: "train" for h in groups[n_test + n_val:]})
        frame.loc[open_rows, "split"] = frame.loc[open_rows, "sha256"].map(split_of)
    return frame


def prepare(source: str | Path, out_dir: str | Path, params: DataParams) -> dict:
    """Run the whole stage; write manifest.parquet, classes.json and report.json to out_dir."""
    source, out_dir = Path(source), Path(out_dir)
    if source.is_dir():
        candidates, skipped = scan_folder(source)
        root = source
    elif source.is_file() and source.suffix.lower() in (".csv", ".parquet"):
        candidates, skipped = read_manifest(source), []
        root = source.parent
    else:
        raise TransferkitError(
            f"data.source: {source} is neither a folder of class sub-folders nor a .csv/.parquet manifest")
    if not candidates:
        raise TransferkitError(f"data.source: no image files found in {source}")

    frame, rejects = validate(candidates, root, params)
    counts = Counter(frame["label"])
    all_labels = sorted({c.label.strip() for c in candidates if c.label.strip()})
    too_few = {label: counts.get(label, 0) for label in all_labels if counts.get(label, 0) < params.min_images_per_class}
    if too_few:
        listed = ", ".join(f"{k} ({v})" for k, v in too_few.items())
        raise TransferkitError(
            f"{source}: class(es) with fewer than data.min_images_per_class={params.min_images_per_class} "
            f"valid images: {listed}. Add images, remove the class, or lower data.min_images_per_class.")
    classes = sorted(counts)
    if len(classes) < 2:
        raise TransferkitError(f"{source}: found {len(classes)} class ({', '.join(classes)}); a classifier needs at least 2")

    frame = assign_splits(frame, params.val_fraction, params.test_fraction, params.seed)
    frame["label_index"] = frame["label"].map({c: i for i, c in enumerate(classes)}).astype("int32")
    frame = frame[MANIFEST_COLUMNS].sort_values(["split", "label", "path"]).reset_index(drop=True)

    per_split = {s: frame.loc[frame["split"] == s, "label"].value_counts().reindex(classes, fill_value=0).astype(int).to_dict()
                 for s in SPLITS}
    if params.test_fraction > 0:
        empty = [c for c in classes if per_split["test"][c] == 0]
        if empty:
            raise TransferkitError(
                f"data.test_fraction={params.test_fraction} leaves no test image for class(es) {', '.join(empty)}; "
                f"raise data.test_fraction or add images")
    report = {
        "source": str(source),
        "images": int(len(frame)),
        "classes": classes,
        "per_split": per_split,
        "unique_images": int(frame["sha256"].nunique()),
        "duplicate_files": int(len(frame) - frame["sha256"].nunique()),
        "rejected": rejects,
        "skipped": skipped,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    write_json(out_dir / "classes.json", classes)
    write_json(out_dir / "report.json", report)
    return report


def classes_of(manifest: pd.DataFrame) -> list[str]:
    """Class names in label_index order (every class has images, so the manifest holds them all)."""
    pairs = manifest[["label_index", "label"]].drop_duplicates().sort_values("label_index")
    return pairs["label"].tolist()


def load_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TransferkitError(f"{path}: manifest not found; run the prepare stage first (dvc repro prepare)")
    return pd.read_parquet(path)
