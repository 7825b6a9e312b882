"""Writing outputs so that an interrupted stage never leaves a half file.

Every output is written to a temporary name in the same folder and renamed
when complete: a rename within one filesystem is atomic, so a reader (or DVC)
sees either the old file or the whole new one.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: some writers (Keras, numpy) look at it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder` (their pid is gone); returns them.

    A SIGKILL skips atomic_path's clean-up, so a `.tmp-<pid>-*` file can
    remain. It was never renamed, so no reader ever used it; a temporary of a
    live process (a concurrent writer) is left alone.
    """
    removed = []
    for tmp in Path(folder).glob(".tmp-*"):
        pid = tmp.name.split("-")[1]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue  # not one of ours, or its writer is still at work
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed `.npz` (what `np.load` reads) whose bytes depend only on `arrays`.

    Every member is dated ZIP_TIME and written without pickle. numpy's savez
    (2.4) happens to date members 1980 too, but only by way of how it opens
    them (numpy before 1.15 used the time of writing): for files whose hash DVC
    compares, the guarantee is kept here, by construction.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME), buffer.getvalue())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
