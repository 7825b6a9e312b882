"""The content-addressed embedding store, shared by every backbone and every run.

    <store>/<key>/spec.json        what the key stands for
    <store>/<key>/shard-*.npz      sha256[i] -> embedding[i], float32

The key hashes the backbone name, a fingerprint of its actual weights, the
image size, the decode/resize spec and the compute dtype: change any of them
and the old embeddings are simply never looked at. Within a key an image is
found by the sha256 of its bytes, so new images are the only new work and
identical files are computed once. The store only grows; the `extract` stage
writes it (a DVC output with persist: true) and copies out the embeddings the
current manifest needs (see embeddings.py). No other stage reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, remove_stale_temporaries, write_json


def cache_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingStore:
    """The shards of one key: `EmbeddingStore.open(root, spec)`, or `EmbeddingStore(folder)` to read one."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @classmethod
    def open(cls, root: str | Path, spec: dict) -> tuple["EmbeddingStore", list[Path]]:
        """The key folder for `spec`, ready to write; returns it and the half-written shards it removed."""
        store = cls(Path(root) / cache_key(spec))
        removed = remove_stale_temporaries(store.folder) if store.folder.exists() else []
        write_json(store.folder / "spec.json", spec)
        return store, removed

    @property
    def key(self) -> str:
        return self.folder.name

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npz")) if self.folder.exists() else []

    def known_hashes(self) -> set[str]:
        known: set[str] = set()
        for shard in self.shards():
            with np.load(shard, allow_pickle=False) as data:
                known.update(data["sha256"].tolist())
        return known

    def write_shard(self, hashes: list[str], embeddings: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Time + pid make names unique across runs and sort in creation order.
        path = self.folder / f"shard-{time.time_ns():020d}-{os.getpid()}.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, sha256=np.asarray(hashes, dtype="U64"), embeddings=embeddings.astype(np.float32))
        return path

    def lookup(self, hashes: list[str]) -> np.ndarray:
        """Embeddings for `hashes`, in order; reads only the rows asked for."""
        wanted = {h: i for i, h in enumerate(hashes)}
        out: np.ndarray | None = None
        found = np.zeros(len(hashes), dtype=bool)
        for shard in self.shards():
            with np.load(shard, allow_pickle=False) as data:
                shard_hashes = data["sha256"]
                rows = [(i, wanted[h]) for i, h in enumerate(shard_hashes.tolist()) if h in wanted]
                if not rows:
                    continue
                embeddings = data["embeddings"]
                if out is None:
                    out = np.zeros((len(hashes), embeddings.shape[1]), dtype=np.float32)
                for src, dst in rows:
                    out[dst] = embeddings[src]
                    found[dst] = True
        if out is None or not found.all():
            missing = len(hashes) - int(found.sum())
            raise TransferkitError(f"{self.folder}: {missing} embeddings missing from the store; re-run extract")
        return out


class ShardWriter:
    """Collects embeddings in order and writes exactly `shard_size` of them per shard.

    One preallocated (shard_size, dim) buffer: memory does not depend on the
    number of images, and nothing is copied more than once.
    """

    def __init__(self, store: EmbeddingStore, hashes: list[str], shard_size: int, dim: int):
        self.store, self.hashes, self.shard_size = store, hashes, shard_size
        self.buffer = np.empty((shard_size, dim), dtype=np.float32)
        self.filled = 0  # rows of the buffer in use
        self.written = 0  # embeddings already in shards; hashes[written:written + filled] are in the buffer

    def add(self, embeddings: np.ndarray) -> None:
        start = 0
        while start < len(embeddings):
            take = min(self.shard_size - self.filled, len(embeddings) - start)
            self.buffer[self.filled:self.filled + take] = embeddings[start:start + take]
            self.filled += take
            start += take
            if self.filled == self.shard_size:
                self._flush()

    def close(self) -> None:
        """Write the last, partial shard."""
        if self.filled:
            self._flush()

    def _flush(self) -> None:
        end = self.written + self.filled
        self.store.write_shard(self.hashes[self.written:end], self.buffer[:self.filled])
        self.written, self.filled = end, 0
