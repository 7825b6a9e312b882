"""The embedding table: exactly the embeddings the current manifest needs, with their spec.

`extract` writes it from the store; `train_head` and `finetune` read it and
nothing else of extract's, so their inputs change only when these
embeddings do, whichever backbones the store has also seen.

One `.npz` file with three arrays: `sha256` (sorted, distinct), `embeddings`
(float32, one row per hash) and `spec` (the JSON the store key hashes:
backbone, weights fingerprint, image size, decoding, dtype, runtime). The same
inputs give the same bytes (`files.write_npz`: no time in the file, rows sorted
by hash), which lets DVC see an unchanged table as unchanged and restore later
stages from its run-cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.files import write_npz


@dataclass(frozen=True)
class EmbeddingTable:
    hashes: np.ndarray  # (N,) sha256 hex strings, sorted
    embeddings: np.ndarray  # (N, D) float32
    spec: dict

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def rows(self, hashes: list[str]) -> np.ndarray:
        """Embeddings for `hashes`, in that order (repeats allowed)."""
        index = np.searchsorted(self.hashes, hashes)
        index = np.minimum(index, len(self.hashes) - 1)
        if len(hashes) and (len(self.hashes) == 0 or not np.all(self.hashes[index] == np.asarray(hashes))):
            raise TransferkitError("the embedding table lacks images of the manifest; "
                                   "re-run extract (dvc repro extract)")
        return self.embeddings[index]


def write_table(path: str | Path, hashes: list[str], embeddings: np.ndarray, spec: dict) -> None:
    order = np.argsort(np.asarray(hashes))
    arrays = {
        "sha256": np.asarray(hashes, dtype="U64")[order],
        "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)[order],
        "spec": np.asarray(json.dumps(spec, sort_keys=True)),
    }
    write_npz(path, arrays)


def read_table(path: str | Path) -> EmbeddingTable:
    path = Path(path)
    if not path.exists():
        raise TransferkitError(f"{path}: not found; run the extract stage first (dvc repro extract)")
    with np.load(path, allow_pickle=False) as data:
        table = EmbeddingTable(data["sha256"], data["embeddings"], json.loads(str(data["spec"])))
    if not np.isfinite(table.embeddings).all():
        raise TransferkitError(f"{path}: the embeddings hold NaN or infinite values; the backbone weights "
                               f"are broken (check backbone.weights)")
    return table
