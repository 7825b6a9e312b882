"""The `extract` stage: run the frozen backbone once per image, keep the embeddings.

New embeddings go to the content-addressed store (store.py), in shards of
`extract.shard_size` written atomically: a killed run loses at most the shard
in flight, and memory stays flat however many images there are. Then the
embeddings of exactly the manifest's images are written as one table
(table.py), the only thing later stages read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit import device
from transferkit.backbones.build import build_backbone, weights_fingerprint
from transferkit.config import BackboneParams, ExtractParams
from transferkit.data.datasets import decoded_batches
from transferkit.data.images import RESIZE_SPEC
from transferkit.data.manifest import load_manifest
from transferkit.deliver import runtimes
from transferkit.embeddings.store import EmbeddingStore, ShardWriter
from transferkit.embeddings.table import write_table
from transferkit.files import atomic_path
from transferkit.progress import Progress
from transferkit.results import StageResult
from transferkit.seeding import seed_everything


@dataclass(frozen=True)
class ExtractResult(StageResult):
    key: str  # the store key folder the embeddings are in
    embedding_dim: int
    distinct_images: int
    computed: int
    reused: int
    batch_size: int
    seconds: float  # decoding and computing, after the warm-up
    warmup_seconds: float
    images_per_second: float | None

    def lines(self) -> list[str]:
        if not self.computed:
            return []
        return [f"{self.computed} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s, "
                f"after a {self.warmup_seconds:.1f} s warm-up)"]

    def metrics_file(self) -> dict:
        """Counts only: timings differ from run to run on the same inputs, so they go to MLflow and the terminal."""
        return {"distinct_images": self.distinct_images, "computed": self.computed, "reused": self.reused}

    def run_metrics(self) -> dict[str, float]:
        timings = {"seconds": self.seconds, "warmup_seconds": self.warmup_seconds,
                   "images_per_second": self.images_per_second}
        return {**self.metrics_file(), **{k: v for k, v in timings.items() if v is not None},
                "batch_size": self.batch_size}


def litert_embedder(model, folder: Path) -> runtimes.Runner:
    """The backbone through LiteRT (XNNPACK): converted once per store key (weights, size, ...) and kept there.

    The store key has no converter version: runtimes.to_litert must keep giving
    these bytes for a Keras model, or old stores would mix with new embeddings.
    """
    path = folder / "backbone.tflite"
    if not path.exists():
        print("extract: converting the backbone to LiteRT (once per backbone, weights and image size)", flush=True)
        content = runtimes.to_litert(model)
        with atomic_path(path) as tmp:
            tmp.write_bytes(content)
    return runtimes.litert_runner(path)


def extract(manifest_path: str | Path, store_root: str | Path, table_path: str | Path,
            backbone_params: BackboneParams, extract_params: ExtractParams, seed: int) -> ExtractResult:
    """Compute the embeddings the store lacks for the manifest's images; write the table."""
    import tensorflow as tf

    manifest = load_manifest(manifest_path)
    plan = device.detect()
    device.apply(plan)
    batch_size = device.inference_batch_size(plan, extract_params.batch_size)
    seed_everything(seed)  # weights "none" must give finetune the same backbone; deterministic ops
    model = build_backbone(backbone_params.name, backbone_params.weights, backbone_params.image_size)
    runtime = runtimes.resolve(extract_params.runtime, plan.gpu)
    spec = {
        "backbone": backbone_params.name,
        "weights_sha256": weights_fingerprint(model),
        "image_size": backbone_params.image_size,
        "resize": RESIZE_SPEC,
        "dtype": plan.policy,
        "runtime": runtime,
    }
    store, leftovers = EmbeddingStore.open(store_root, spec)
    for leftover in leftovers:
        print(f"extract: removed {leftover.name}, a half-written shard of an interrupted run", flush=True)

    # One file per distinct content: duplicates share an embedding.
    first_path = manifest.drop_duplicates("sha256").set_index("sha256")["path"]
    todo = store.missing(first_path.index)  # sorted: a resumed run splits shards where an uninterrupted one does
    print(f"extract: {len(first_path)} distinct images, {len(first_path) - len(todo)} cached, "
          f"{len(todo)} to compute with {backbone_params.name} on {plan.device} ({runtime}, {plan.policy}, "
          f"batch {batch_size})", flush=True)

    warmup, started = 0.0, time.perf_counter()
    if todo:
        # TensorFlow: uint8 pixels in, cast to float32 inside the graph (a quarter of the bytes to a GPU)
        infer = runtimes.keras_runner(model) if runtime == "tensorflow" else litert_embedder(model, store.folder)
        writer = ShardWriter(store, todo, extract_params.shard_size, int(model.output_shape[-1]))
        with tf.device(plan.device):
            # Trace the graph and let TF optimise it (about 2 s, once per run) before the clock
            # starts, so images/s and the ETA show the steady rate; the warm-up is reported apart.
            infer(np.zeros((batch_size, *model.input_shape[1:]), np.uint8))
            warmup, started = time.perf_counter() - started, time.perf_counter()
            progress = Progress(len(todo), "extract")
            for batch in decoded_batches(first_path[todo].tolist(), backbone_params.image_size, batch_size):
                embeddings = infer(batch)
                writer.add(embeddings)
                progress.update(len(embeddings))
        writer.close()
    seconds = time.perf_counter() - started
    hashes = sorted(first_path.index)
    write_table(table_path, hashes, store.lookup(hashes), {**spec, "key": store.key})
    return ExtractResult(
        key=store.key, embedding_dim=int(model.output_shape[-1]), distinct_images=int(len(first_path)),
        computed=len(todo), reused=int(len(first_path) - len(todo)), batch_size=batch_size,
        seconds=round(seconds, 3), warmup_seconds=round(warmup, 3),
        images_per_second=round(len(todo) / seconds, 2) if todo and seconds > 0 else None)
