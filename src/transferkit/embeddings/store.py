"""The content-addressed embedding store, shared by every backbone and every run.

    <store>/<key>/spec.json           what the key stands for
    <store>/<key>/shard-<digest>.npz  sha256[i] -> embedding[i], float32, rows sorted by sha256
    <store>/<key>/backbone.tflite     the backbone converted to LiteRT (runtime litert only; extract.py)

The key hashes the backbone name, a fingerprint of its actual weights, the
image size, the decode/resize spec, the compute dtype and the runtime: change
any of them and the old embeddings are simply never looked at. Within a key an
image is found by the sha256 of its bytes, so new images are the only new work
and identical files are computed once. The store only grows; the `extract`
stage writes it (a DVC output with persist: true) and copies out the
embeddings the current manifest needs (see table.py). No other stage reads it.

Nothing in a key folder depends on when or by which process it was written,
so two runs that compute the same embeddings into an empty store leave the same
files: dvc.lock keeps the store's hash and `dvc push` uploads nothing new.
- spec.json is written once, keys sorted (a function of the key);
- a shard is named by a digest of the hashes it holds and written by
  `files.write_npz` (no time in the zip, rows sorted by hash);
- backbone.tflite is converted once per key, and TF's converter gives the
  same bytes for the same model (EfficientNet-Lite0 at 160 px, TF 2.21:
  converted in two processes, same sha256).

Where shards split: a run writes the hashes the store lacks (`missing`), in
sorted order, in shards of exactly `shard_size`; only the last, partial one is
written when the run completes (ShardWriter.close). A killed run therefore
leaves whole shards holding the first k * shard_size hashes of that sorted
list (the shard in flight is lost: a temporary that the next `open` removes),
and the rerun's list is the rest of the same list, split at the same places:
an interrupted and resumed run ends with exactly the shards of an
uninterrupted one. A different history gives a different layout of the same
embeddings: images added by a later run (or a changed `shard_size`) go to new
shards of their own, where one run over all of them would have split them
elsewhere. That is accepted rather than made canonical: a canonical layout
(say, shards by hash range) would rewrite, and `dvc push` upload again, every
shard a new image falls into, and new images spread over the whole hash
space: 100 new images would rewrite most shards of a 100-shard store (100k
embeddings). Appending never rewrites a shard, lookups do not depend on the
layout, and the table that later stages read is byte-identical either way.

Stores written before shards were named by content (`shard-<time>-<pid>.npz`,
written by np.savez) read as before; their shards are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from transferkit.errors import TransferkitError
from transferkit.files import remove_stale_temporaries, write_json, write_npz


def cache_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingStore:
    """The shards of one key: `EmbeddingStore.open(root, spec)`, or `EmbeddingStore(folder)` to read one."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @classmethod
    def open(cls, root: str | Path, spec: dict) -> tuple[EmbeddingStore, list[Path]]:
        """The key folder for `spec`, ready to write; returns it and the half-written shards it removed."""
        store = cls(Path(root) / cache_key(spec))
        removed = remove_stale_temporaries(store.folder) if store.folder.exists() else []
        spec_path = store.folder / "spec.json"
        if not spec_path.exists():  # the key is the spec's hash: an existing file already says the same
            write_json(spec_path, spec, sort_keys=True)
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

    def missing(self, hashes: Iterable[str]) -> list[str]:
        """The distinct `hashes` the store lacks, sorted: the order a ShardWriter must get them in."""
        return sorted(set(hashes) - self.known_hashes())

    def write_shard(self, hashes: list[str], embeddings: np.ndarray) -> Path:
        """One shard whose name and bytes depend only on the (hash, embedding) pairs it holds."""
        order = np.argsort(np.asarray(hashes))
        sha256 = np.asarray(hashes, dtype="U64")[order]
        # 128 bits of the digest: two different sets of hashes never meet under one name in practice.
        digest = hashlib.sha256("\n".join(sha256.tolist()).encode()).hexdigest()[:32]
        path = self.folder / f"shard-{digest}.npz"
        write_npz(path, {"sha256": sha256, "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)[order]})
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

    `hashes` must be sorted (as `EmbeddingStore.missing` returns them) and the
    embeddings added in that order: that, and writing the last, partial shard
    only in `close`, is what makes a resumed run split where an uninterrupted
    one does (see the module docstring).

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
        """Write the last, partial shard: only once every embedding has been added."""
        if self.filled:
            self._flush()

    def _flush(self) -> None:
        end = self.written + self.filled
        self.store.write_shard(self.hashes[self.written:end], self.buffer[:self.filled])
        self.written, self.filled = end, 0
