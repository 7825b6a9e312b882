"""Where the images or texts come from: a folder with one sub-folder per class, or a manifest table.

Both give `Candidate`s (a file, or a text given inline, and its label, maybe a
split) for `prepare` to validate; entries that are passed over are returned
with a reason, so the data report lists them instead of letting them vanish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from transferkit.data.manifest import SPLITS
from transferkit.errors import TransferkitError


@dataclass
class Candidate:
    path: Path  # as found on disk
    label: str
    split: str | None = None  # given by a manifest, else assigned here
    problem: str | None = None  # known bad before decoding (a manifest row that cannot be used)
    text: str | None = None  # a text given inline (a manifest's `text` column); path is then the manifest
    row: int | None = None  # manifest row number (from 1, header excluded), for inline texts' report entries

    @property
    def shown(self) -> str:
        """How the data report names it: the file, or the manifest row of an inline text."""
        return f"{display_path(self.path)} row {self.row}" if self.text is not None else display_path(self.path)


# Folders that archivers and file browsers leave behind; never a class.
JUNK_FOLDERS = {"__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information"}
JUNK_FILES = {"Thumbs.db", "ehthumbs.db", "desktop.ini", "Icon\r"}


def display_path(path: Path) -> str:
    """Path relative to the working directory when inside it (portable across clones), else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def scan_folder(root: Path) -> tuple[list[Candidate], list[dict], list[str]]:
    """One sub-folder per class.

    Returns the candidate files, the entries passed over (with reasons) and the
    class folder names (including empty ones, so an empty class is reported
    rather than silently dropped). Symlinked files are followed; symlinked
    folders below a class folder are not (they can loop).
    """
    candidates, skipped, classes = [], [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in JUNK_FOLDERS or entry.name in JUNK_FILES:
            skipped.append({"path": display_path(entry), "reason": "hidden or system entry"})
            continue
        if not entry.is_dir():
            skipped.append({"path": display_path(entry), "reason": "not inside a class folder"})
            continue
        classes.append(entry.name)
        def unreadable(error: OSError) -> None:
            skipped.append({"path": display_path(Path(error.filename)),
                            "reason": f"cannot read folder: {error.strerror}"})

        # os.walk(followlinks=False): a symlinked sub-folder is listed, not entered.
        for folder, subfolders, files in os.walk(entry, onerror=unreadable):
            folder_path = Path(folder)
            for name in sorted(subfolders):
                if name.startswith(".") or name in JUNK_FOLDERS:
                    skipped.append({"path": display_path(folder_path / name), "reason": "hidden or system entry"})
                elif (folder_path / name).is_symlink():
                    skipped.append({"path": display_path(folder_path / name),
                                    "reason": "symlinked folder inside a class folder is not followed"})
            subfolders[:] = sorted(n for n in subfolders if not n.startswith(".") and n not in JUNK_FOLDERS)
            for name in sorted(files):
                path = folder_path / name
                if name.startswith(".") or name in JUNK_FILES:  # .DS_Store, ._resource forks, Thumbs.db
                    skipped.append({"path": display_path(path), "reason": "hidden or system entry"})
                    continue
                candidates.append(Candidate(path, entry.name))
    return candidates, skipped, classes


def _cell(value, strip: bool = True) -> str:
    """A manifest cell as text; empty for missing values (NaN/None), never the string 'nan'."""
    if value is None or pd.isna(value):
        return ""
    return str(value).strip() if strip else str(value)


def read_manifest(path: Path) -> tuple[list[Candidate], list[dict]]:
    """A CSV or Parquet table of path,label[,split] or text,label[,split].

    Paths are relative to the manifest's folder. A `text` column holds the
    texts themselves (one document per cell; a CSV is read as UTF-8).
    Rows that cannot be used (no path, a path leaving the manifest's folder,
    an unknown split, a row repeated) become candidates with a `problem`, so
    they appear in the data report instead of vanishing. Other columns are
    ignored and listed in the returned notes.
    """
    try:
        # keep_default_na=False: an inline text "NA" or "null" is a text, not a missing value.
        table = (pd.read_parquet(path) if path.suffix.lower() == ".parquet"
                 else pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8"))
    except Exception as exc:  # pandas raises many types for unreadable tables
        raise TransferkitError(f"{path}: cannot read manifest: {exc}") from None
    if "text" in table.columns and "path" in table.columns:
        raise TransferkitError(f"{path}: manifest has both a path and a text column; use path,label[,split] "
                               f"(files) or text,label[,split] (texts inline), not both")
    if "text" in table.columns:
        return _read_inline_texts(path, table)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise TransferkitError(f"{path}: manifest lacks column(s) {sorted(missing)}; need path,label[,split] "
                               f"or text,label[,split]")
    ignored = sorted(str(c) for c in set(table.columns) - {"path", "label", "split"})
    notes = [{"path": display_path(path), "reason": f"column(s) ignored: {', '.join(ignored)}"}] if ignored else []
    root = path.parent
    candidates, seen = [], {}
    # Rows are numbered from 1, header excluded (in a CSV, row n is usually line n + 1).
    for number, row in enumerate(table.itertuples(index=False), start=1):
        raw_path, label = _cell(row.path, strip=False), _cell(row.label)
        split = _cell(getattr(row, "split", None)).lower() or None
        candidate = Candidate(root / raw_path, label, split)
        # Lexical check: a manifest may only point inside its own folder (symlinks
        # placed there by the data's owner are followed like in a folder source).
        normal = os.path.normpath(raw_path) if raw_path else ""
        if not raw_path:
            candidate.problem = f"manifest row {number}: empty path"
        elif os.path.isabs(raw_path) or normal == ".." or normal.startswith(".." + os.sep):
            candidate.problem = f"path leads outside the data root {display_path(root)}"
        elif split is not None and split not in SPLITS:
            candidate.problem = f"unknown split {split!r} (allowed: {', '.join(SPLITS)})"
        elif (normal, label.casefold()) in seen:
            first = seen[normal, label.casefold()]
            candidate.problem = f"manifest row {number} repeats row {first} (same path and label)"
        else:
            seen[normal, label.casefold()] = number
        candidates.append(candidate)
    return candidates, notes


def _read_inline_texts(path: Path, table: pd.DataFrame) -> tuple[list[Candidate], list[dict]]:
    """text,label[,split]: every row is a candidate whose `text` is the cell as written (not stripped)."""
    if "label" not in table.columns:
        raise TransferkitError(f"{path}: manifest lacks column(s) ['label']; need text,label[,split]")
    ignored = sorted(str(c) for c in set(table.columns) - {"text", "label", "split"})
    notes = [{"path": display_path(path), "reason": f"column(s) ignored: {', '.join(ignored)}"}] if ignored else []
    candidates, seen = [], {}
    for number, row in enumerate(table.itertuples(index=False), start=1):
        value, label = row.text, _cell(row.label)
        split = _cell(getattr(row, "split", None)).lower() or None
        # A cell that is not a string (a number in a Parquet column, a missing value) is kept as given and
        # rejected by the text check with its type; an empty cell is rejected there as an empty text.
        text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else value
        candidate = Candidate(path, label, split, text=text, row=number)
        if split is not None and split not in SPLITS:
            candidate.problem = f"unknown split {split!r} (allowed: {', '.join(SPLITS)})"
        elif isinstance(text, str) and (text, label.casefold()) in seen:
            first = seen[text, label.casefold()]
            candidate.problem = f"manifest row {number} repeats row {first} (same text and label)"
        elif isinstance(text, str):
            seen[text, label.casefold()] = number
        candidates.append(candidate)
    return candidates, notes
