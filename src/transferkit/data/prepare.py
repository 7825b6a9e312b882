"""The `prepare` stage: scan, validate, hash and split the user's images or texts.

Input is a folder (one sub-folder per class) or a CSV/Parquet manifest with
columns `path,label[,split]` (files) or `text,label[,split]` (texts inline).
Every file is decoded once, by the decoder every later stage uses
(data/images.py, data/texts.py), to prove it is usable; files that are not
are listed in the data report with a reason and left out. Raw data is only
read, never modified.

The modality (image or text) is decided from the source (`decide_modality`)
and recorded in the manifest's columns (manifest.modality_of) and in the
report. Texts given inline are written once, UTF-8, named by their hash, to
the texts folder, and the manifest's `path` points there: later stages read
files only.

The split is stratified by class and grouped by content hash (an image's
bytes, a text's decoded characters), so identical examples always land in the
same split (a duplicate in train and test would inflate the test score). The
same content under two labels is a conflict: all copies are rejected.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.config import DataParams
from transferkit.data.images import IMAGE_SUFFIXES, ImageRejected, inspect_image, sha256_file
from transferkit.data.manifest import SPLITS, columns_for
from transferkit.data.sources import Candidate, display_path, read_manifest, scan_folder
from transferkit.data.texts import TEXT_SUFFIXES, TextRejected, check_text, inspect_text, text_sha256, text_suffix
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, write_json
from transferkit.results import Attachment, StageResult


@dataclass(frozen=True)
class PrepareResult(StageResult):
    report: dict  # the data report, as written to report_path
    report_path: Path

    def lines(self) -> list[str]:
        split = {s: sum(self.report["per_split"][s].values()) for s in SPLITS}
        noun = _noun(self.report["modality"])
        return [f"{self.report[noun]} {noun} in {len(self.report['classes'])} classes (train {split['train']}, "
                f"val {split['val']}, test {split['test']}); {len(self.report['rejected'])} rejected"]

    def run_metrics(self) -> dict[str, float]:
        noun = _noun(self.report["modality"])
        return {noun: self.report[noun], "classes": len(self.report["classes"]),
                "rejected": len(self.report["rejected"]), "duplicate_files": self.report["duplicate_files"]}

    def attachments(self) -> list[Attachment]:
        return [Attachment(self.report_path)]


def _noun(modality: str) -> str:
    return "texts" if modality == "text" else "images"


def kind_of(path: Path) -> str | None:
    """Which decoder a file's name offers it to: 'image', 'text' (see data/texts.py) or None (neither)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if text_suffix(path) in TEXT_SUFFIXES:
        return "text"
    return None


def decide_modality(candidates: list[Candidate], min_per_class: int, source: Path) -> str:
    """'text' or 'image', from the source's files (a manifest's `text` column: text).

    A kind whose files are fewer than data.min_examples_per_class in every
    class is strays (a readme.txt among images), rejected later with a reason;
    when both kinds have that many files in some class, the source mixes
    images and texts: an error naming a file of each.
    """
    if any(c.text is not None for c in candidates):
        return "text"
    per_label: dict[str, Counter] = {"image": Counter(), "text": Counter()}
    first: dict[str, Path] = {}
    for c in candidates:
        kind = None if c.problem else kind_of(c.path)
        if kind:
            per_label[kind][c.label] += 1
            first.setdefault(kind, c.path)
    enough = {kind: any(n >= min_per_class for n in counts.values()) for kind, counts in per_label.items()}
    if enough["image"] and enough["text"]:
        raise TransferkitError(
            f"data.source: {source} mixes images and texts (e.g. {display_path(first['image'])} and "
            f"{display_path(first['text'])}); a source holds one kind: move the other files out")
    if enough["image"] or enough["text"]:
        return "image" if enough["image"] else "text"
    return "text" if per_label["text"].total() > per_label["image"].total() else "image"


def validate(candidates: list[Candidate], params: DataParams,
             modality: str = "image") -> tuple[pd.DataFrame, list[dict], dict[str, str]]:
    """Decode and hash each candidate.

    Returns the valid rows, the rejects with reasons and the inline texts by
    hash (for the texts folder; their rows' `path` names the manifest row
    until `prepare` points it at the file there).
    """
    rows, rejects, inline = [], [], {}
    for c in candidates:
        shown = c.shown
        try:
            if c.problem:
                raise ImageRejected(c.problem)
            if not c.label:
                raise ImageRejected("empty label")
            if c.text is not None:
                text = check_text(c.text, params.max_text_bytes)
                digest = text_sha256(text)
                inline[digest] = text
                # `path` names the manifest row until prepare knows the file in the texts folder.
                rows.append({"path": shown, "label": c.label, "split": c.split, "sha256": digest,
                             "chars": len(text), "encoding": "utf-8"})
                continue
            if c.path.is_symlink() and not c.path.exists():
                raise ImageRejected(f"broken symlink (points to {os.readlink(c.path)})")
            if not c.path.exists():
                raise ImageRejected("file not found")
            if not c.path.is_file():
                raise ImageRejected("not a regular file")
            if modality == "text":
                rows.append({"path": shown, "label": c.label, "split": c.split, **_inspect_text_file(c.path, params)})
                continue
            if c.path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageRejected(f"not an image file type ({c.path.suffix or 'no suffix'})")
            width, height = inspect_image(c.path, params.min_image_side, params.max_image_pixels)
            digest = sha256_file(c.path)
        except (ImageRejected, TextRejected) as exc:
            rejects.append({"path": shown, "label": c.label, "reason": str(exc)})
            continue
        except OSError as exc:  # unreadable: permissions, symlink loop, I/O error
            rejects.append({"path": shown, "label": c.label, "reason": f"cannot read: {exc.strerror or exc}"})
            continue
        rows.append({"path": shown, "label": c.label, "split": c.split, "sha256": digest, "width": width,
                     "height": height})
    facts = ["chars", "encoding"] if modality == "text" else ["width", "height"]
    frame = pd.DataFrame(rows, columns=["path", "label", "split", "sha256", *facts])
    frame, rejects = _reject_label_conflicts(frame, rejects, "text" if modality == "text" else "image bytes")
    return frame, rejects, inline


def _inspect_text_file(path: Path, params: DataParams) -> dict:
    suffix = text_suffix(path)
    if suffix not in TEXT_SUFFIXES:
        kind = "an image file in text data" if path.suffix.lower() in IMAGE_SUFFIXES else "not a text file type"
        raise TextRejected(f"{kind} ({suffix}): texts are {', '.join(sorted(TEXT_SUFFIXES - {''}))} "
                           f"or files with no extension")
    decoded = inspect_text(path, params.max_text_bytes)
    return {"sha256": text_sha256(decoded.text), "chars": len(decoded.text), "encoding": decoded.encoding}


def normalize_label(label: str) -> str:
    return unicodedata.normalize("NFC", label).strip()


def merge_label_spellings(labels: list[str]) -> dict[str, str]:
    """Labels that differ only in case ("Cat", "cat") are one class, spelled the most common way.

    Returns {spelling: canonical} for every spelling that changes. Ties go to
    the alphabetically first spelling, so the result never depends on order.
    """
    counts = Counter(labels)
    by_folded: dict[str, list[str]] = {}
    for label in counts:
        by_folded.setdefault(label.casefold(), []).append(label)
    renames = {}
    for spellings in by_folded.values():
        canonical = min(spellings, key=lambda s: (-counts[s], s))
        renames.update({s: canonical for s in spellings if s != canonical})
    return renames


def _reject_label_conflicts(frame: pd.DataFrame, rejects: list[dict],
                            content: str = "image bytes") -> tuple[pd.DataFrame, list[dict]]:
    """The same content under two labels cannot both be right: reject every copy."""
    labels_per_hash = frame.groupby("sha256")["label"].nunique()
    conflicted = set(labels_per_hash[labels_per_hash > 1].index)
    if not conflicted:
        return frame.reset_index(drop=True), rejects
    bad = frame["sha256"].isin(conflicted)
    for row in frame[bad].itertuples(index=False):
        others = sorted(set(frame.loc[frame["sha256"] == row.sha256, "label"]) - {row.label})
        rejects.append({"path": row.path, "label": row.label,
                        "reason": f"label conflict: the same {content} is also labelled {', '.join(others)}"})
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


def _check_class_sizes(counts: Counter, labels: list[str], params: DataParams, source: Path, counted: str,
                       splits_given: bool) -> None:
    """Stop, naming the classes, when one has too few images to train on or to test on.

    Run twice: on the file counts before anything is decoded (so an obviously
    too small class stops the run at once) and on the valid images after.
    """
    least = params.min_examples_per_class
    too_few = {label: counts.get(label, 0) for label in labels if counts.get(label, 0) < least}
    if too_few:
        listed = ", ".join(f"{k} ({v})" for k, v in too_few.items())
        raise TransferkitError(
            f"{source}: class(es) with fewer than data.min_examples_per_class={least} "
            f"{counted}: {listed}. Add examples, remove the class (its folder or manifest rows), "
            f"or lower data.min_examples_per_class.")
    if len(labels) < 2:
        raise TransferkitError(
            f"{source}: found {len(labels)} class ({', '.join(labels)}); a classifier needs at least 2")
    if splits_given:
        return  # a manifest's own splits decide; checked on the final split
    no_test = [label for label in labels
               if _split_counts(counts[label], params.val_fraction, params.test_fraction)[1] == 0]
    if no_test:
        raise TransferkitError(
            f"data.test_fraction={params.test_fraction} leaves no test image for class(es) {', '.join(no_test)} "
            f"({counted}: {', '.join(str(counts[c]) for c in no_test)}); raise data.test_fraction or add images")


def prepare(source: str | Path, manifest_path: str | Path, report_path: str | Path,
            params: DataParams, texts_folder: str | Path | None = None) -> PrepareResult:
    """Run the whole stage; write the manifest (Parquet), the data report (JSON) and the texts folder.

    texts_folder receives the texts given inline (<sha256>.txt, UTF-8); it is
    written (empty when there are none) whenever given, so DVC always finds
    the output, and is required when the source has inline texts.
    Outputs are written only when the whole stage succeeds, each atomically:
    a failed run leaves the previous outputs as they were.
    """
    source = Path(source)
    if source.is_dir():
        candidates, skipped, folders = scan_folder(source)
    elif source.is_file() and source.suffix.lower() in (".csv", ".parquet"):
        (candidates, skipped), folders = read_manifest(source), []
    else:
        raise TransferkitError(
            f"data.source: {source} is neither a folder of class sub-folders nor a .csv/.parquet manifest")
    if not candidates:
        raise TransferkitError(f"data.source: no image or text files found in {source}")
    modality = decide_modality(candidates, params.min_examples_per_class, source)
    if texts_folder is None and any(c.text is not None for c in candidates):
        raise TransferkitError(f"data.source: {source} holds texts inline, which need a texts folder to be written "
                               f"to (prepare --texts, given in dvc.yaml)")
    noun = _noun(modality)

    # Labels: surrounding spaces never matter, nor the Unicode form (macOS writes
    # folder names decomposed), and case-only variants are one class.
    folders = [normalize_label(f) for f in folders]
    for c in candidates:
        c.label = normalize_label(c.label)
    renames = merge_label_spellings([c.label for c in candidates if c.label] + folders)
    for c in candidates:
        c.label = renames.get(c.label, c.label)
    # The classes: every class folder, and every label of a manifest row that names a file.
    labels = sorted({renames.get(f, f) for f in folders} | {c.label for c in candidates if c.label and not c.problem})

    # Cheap checks first: counting files costs nothing, decoding them all does.
    splits_given = any(c.split for c in candidates)
    inline_source = any(c.text is not None for c in candidates)
    _check_class_sizes(Counter(c.label for c in candidates if not c.problem), labels, params, source,
                       noun if inline_source else f"{modality} files", splits_given)
    frame, rejects, inline = validate(candidates, params, modality)
    if inline:
        frame["path"] = [display_path(Path(texts_folder) / f"{h}.txt") for h in frame["sha256"]]
    # Identical content is one example: copies do not make a class big enough.
    distinct = Counter(frame.drop_duplicates(["label", "sha256"])["label"])
    _check_class_sizes(distinct, labels, params, source, f"distinct valid {noun}", splits_given)
    classes = labels

    frame = assign_splits(frame, params.val_fraction, params.test_fraction, params.seed)
    frame["label_index"] = frame["label"].map({c: i for i, c in enumerate(classes)}).astype("int32")
    frame = frame[columns_for(modality)].sort_values(["split", "label", "path"]).reset_index(drop=True)

    per_split = {s: frame.loc[frame["split"] == s, "label"].value_counts().reindex(classes, fill_value=0)
                 .astype(int).to_dict()
                 for s in SPLITS}
    # Every class needs test images, whether splits were assigned here or given by a manifest.
    empty = [c for c in classes if per_split["test"][c] == 0]
    if empty:
        raise TransferkitError(
            f"no test image for class(es) {', '.join(empty)}: raise data.test_fraction, add images, "
            f"or give them split=test in the manifest")
    report = {
        "source": str(source),
        "modality": modality,
        noun: int(len(frame)),
        "classes": classes,
        "per_split": per_split,
        f"unique_{noun}": int(frame["sha256"].nunique()),
        "duplicate_files": int(len(frame) - frame["sha256"].nunique()),
        "label_merges": [{"label": old, "merged_into": new} for old, new in sorted(renames.items())],
        "rejected": rejects,
        "skipped": skipped,
    }
    if modality == "text":
        report["encodings"] = {k: int(v) for k, v in sorted(frame["encoding"].value_counts().items())}
        if inline_source:
            report["inline_texts_written"] = len(set(frame["sha256"]))
    if texts_folder is not None:
        _write_texts(Path(texts_folder), {h: inline[h] for h in sorted(set(frame["sha256"])) if h in inline})
    with atomic_path(manifest_path) as tmp:
        frame.to_parquet(tmp, index=False)
    write_json(report_path, report)
    return PrepareResult(report, Path(report_path))


def _write_texts(folder: Path, texts: dict[str, str]) -> None:
    """Replace `folder` with one holding <sha256>.txt (UTF-8) per text, swapped in whole when complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{os.getpid()}-{folder.name}")
    old = folder.with_name(f".old-{os.getpid()}-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for digest, text in texts.items():
        (tmp / f"{digest}.txt").write_bytes(text.encode("utf-8"))
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
