"""The `extract` stage: run the frozen backbone once per image, cache the embeddings.

Cache layout under the features folder (a DVC output with persist: true, so
DVC does not wipe it before a rerun):

    <features>/<key>/spec.json           what the key stands for
    <features>/<key>/shard-*.npz         sha256[i] -> embedding[i], float32
    <features>/current.json              the key the current params use

The key hashes the backbone name, a fingerprint of its actual weights, the
image size, the decode/resize spec and the compute dtype: change any of them
and the old embeddings are simply never looked at. Within a key an image is
found by the sha256 of its bytes, so new images are the only new work and
identical files are computed once. Shards are written atomically every
`extract.shard_size` images: a killed run loses at most the shard in flight,
and memory stays flat however many images there are.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from transferkit import device
from transferkit.config import BackboneParams, ExtractParams
from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, read_json, remove_stale_temporaries, write_json
from transferkit.images import RESIZE_SPEC
from transferkit.progress import Progress


def cache_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingCache:
    """The shards of one cache key."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

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
            raise TransferkitError(f"{self.folder}: {missing} embeddings missing from the cache; re-run extract")
        return out


class ShardWriter:
    """Collects embeddings in order and writes exactly `shard_size` of them per shard.

    One preallocated (shard_size, dim) buffer: memory does not depend on the
    number of images, and nothing is copied more than once.
    """

    def __init__(self, cache: EmbeddingCache, hashes: list[str], shard_size: int, dim: int):
        self.cache, self.hashes, self.shard_size = cache, hashes, shard_size
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
        self.cache.write_shard(self.hashes[self.written:end], self.buffer[:self.filled])
        self.written, self.filled = end, 0


def embedder(model):
    """The backbone as one TF graph: (N, size, size, 3) uint8 pixels in, (N, D) float32 embeddings out.

    Any batch size uses the same graph (traced once, about 1.5 s): a last,
    smaller batch would otherwise trace a second one.
    """
    import tensorflow as tf

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8)]
    return tf.function(lambda x: tf.cast(model(tf.cast(x, tf.float32), training=False), tf.float32),
                       input_signature=signature)


def load_embeddings(features_dir: str | Path, hashes: list[str]) -> tuple[np.ndarray, dict]:
    """Embeddings for the given image hashes from the cache the last extract wrote."""
    current_path = Path(features_dir) / "current.json"
    if not current_path.exists():
        raise TransferkitError(f"{current_path}: not found; run the extract stage first (dvc repro extract)")
    current = read_json(current_path)
    unique = sorted(set(hashes))
    table = EmbeddingCache(Path(features_dir) / current["key"]).lookup(unique)
    index = {h: i for i, h in enumerate(unique)}
    return table[[index[h] for h in hashes]], current


def extract(manifest_path: str | Path, features_dir: str | Path, backbone_params: BackboneParams,
            extract_params: ExtractParams, seed: int) -> dict:
    """Compute the embeddings the cache lacks for the manifest's images; write current.json."""
    import tensorflow as tf

    from transferkit.backbones import build_backbone, weights_fingerprint
    from transferkit.datasets import decoded_batches
    from transferkit.data import load_manifest
    from transferkit.training import seed_everything

    manifest = load_manifest(manifest_path)
    plan = device.detect(extract_params.batch_size)
    device.apply(plan)
    seed_everything(seed)  # weights "none" must give finetune the same backbone; deterministic ops
    model = build_backbone(backbone_params.name, backbone_params.weights, backbone_params.image_size)
    spec = {
        "backbone": backbone_params.name,
        "weights_sha256": weights_fingerprint(model),
        "image_size": backbone_params.image_size,
        "resize": RESIZE_SPEC,
        "dtype": plan.policy,
    }
    key = cache_key(spec)
    cache = EmbeddingCache(Path(features_dir) / key)
    for leftover in remove_stale_temporaries(cache.folder) if cache.folder.exists() else []:
        print(f"extract: removed {leftover.name}, a half-written shard of an interrupted run", flush=True)
    write_json(cache.folder / "spec.json", spec)

    # One file per distinct content: duplicates share an embedding.
    first_path = manifest.drop_duplicates("sha256").set_index("sha256")["path"]
    todo = sorted(set(first_path.index) - cache.known_hashes())
    print(f"extract: {len(first_path)} distinct images, {len(first_path) - len(todo)} cached, "
          f"{len(todo)} to compute with {backbone_params.name} on {plan.device} ({plan.policy})", flush=True)

    warmup, started = 0.0, time.perf_counter()
    if todo:
        infer = embedder(model)
        writer = ShardWriter(cache, todo, extract_params.shard_size, int(model.output_shape[-1]))
        with tf.device(plan.device):
            # Trace the graph and let TF optimise it (about 2 s, once per run) before the clock
            # starts, so images/s and the ETA show the steady rate; the warm-up is reported apart.
            infer(np.zeros((plan.batch_size, *model.input_shape[1:]), np.uint8))
            warmup, started = time.perf_counter() - started, time.perf_counter()
            progress = Progress(len(todo), "extract")
            for batch in decoded_batches(first_path[todo].tolist(), backbone_params.image_size, plan.batch_size):
                embeddings = infer(batch).numpy()
                writer.add(embeddings)
                progress.update(len(embeddings))
        writer.close()
    seconds = time.perf_counter() - started
    # current.json holds only what downstream stages need, and nothing that
    # varies run to run (timings), so rerunning extract with nothing new to do
    # leaves the output identical and DVC does not re-run the stages after it.
    current = {
        "key": key,
        "spec": spec,
        "embedding_dim": int(model.output_shape[-1]),
        "images": int(len(manifest)),
    }
    write_json(Path(features_dir) / "current.json", current)
    return {
        **current,
        "distinct_images": int(len(first_path)),
        "computed": len(todo),
        "reused": int(len(first_path) - len(todo)),
        "seconds": round(seconds, 3),  # decoding and computing, after the warm-up
        "warmup_seconds": round(warmup, 3),
        "images_per_second": round(len(todo) / seconds, 2) if todo and seconds > 0 else None,
    }
