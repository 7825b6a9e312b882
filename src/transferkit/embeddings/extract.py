"""The `extract` stage: run the frozen backbone once per image or text, keep the embeddings.

New embeddings go to the content-addressed store (store.py), in shards of
`extract.shard_size` written atomically: a killed run loses at most the shard
in flight, and memory stays flat however many images there are. Then the
embeddings of exactly the manifest's images are written as one table
(table.py), the only thing later stages read.

Texts (a text manifest and a text backbone; any other pairing stops with the
one line that says what to set, so a backbone change never re-runs prepare):
the store key is the text's content hash within a key folder of the weights,
the tokenizer (sha256 of tokenizer.json), the window settings (params.yaml's
`text`), the decoder (texts.TEXT_SPEC) and the runtime. Documents are read and
tokenised a shard at a time, sorted by their number of windows and tokens,
and batched so that a batch holds at most `extract.batch_size` windows of
similar length: little padding, and attention memory bounded whatever the
documents' lengths. TensorFlow runs them (extract.runtime auto -> tensorflow
for text; litert is an error: its converter's handling of the dynamic
windows and tokens is not checked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit import device
from transferkit.backbones.build import build_backbone, family_of, weights_fingerprint
from transferkit.backbones.registry import BACKBONES, BackboneError
from transferkit.config import BackboneParams, ExtractParams, TextParams
from transferkit.data.datasets import decoded_batches
from transferkit.data.images import RESIZE_SPEC
from transferkit.data.manifest import load_manifest, modality_of
from transferkit.data.texts import TEXT_SPEC, load_text
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
    distinct_images: int  # distinct images or texts (the metrics keep the image names for both)
    computed: int
    reused: int
    batch_size: int
    seconds: float  # decoding and computing, after the warm-up
    warmup_seconds: float
    images_per_second: float | None  # documents/s for texts
    unit: str = "images"  # images | documents
    windows: int | None = None  # texts: windows computed (each window is one encoder pass of max_tokens at most)

    def lines(self) -> list[str]:
        if not self.computed:
            return []
        windows = f", {self.windows} windows" if self.windows is not None else ""
        return [f"{self.computed} {self.unit} in {self.seconds:.1f} s ({self.images_per_second:.1f} {self.unit}/s"
                f"{windows}, after a {self.warmup_seconds:.1f} s warm-up)"]

    def metrics_file(self) -> dict:
        """Counts only: timings differ from run to run on the same inputs, so they go to MLflow and the terminal."""
        return {"distinct_images": self.distinct_images, "computed": self.computed, "reused": self.reused}

    def run_metrics(self) -> dict[str, float]:
        timings = {"seconds": self.seconds, "warmup_seconds": self.warmup_seconds,
                   "images_per_second": self.images_per_second, "windows": self.windows}
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


def check_modality(manifest_path: str | Path, modality: str, backbone: str) -> None:
    """A manifest of texts needs a text backbone, and images an image backbone: else one line saying what to set."""
    spec = BACKBONES[backbone]
    if spec.modality == modality:
        return
    fitting = [name for name, other in BACKBONES.items() if other.modality == modality]
    weights = "" if modality == "image" else " and backbone.weights: pretrained"
    article = "an" if spec.modality == "image" else "a"
    raise BackboneError(f"{manifest_path} holds {modality}s but backbone.name is {backbone}, {article} {spec.modality} "
                        f"backbone: set backbone.name: {fitting[0]}{weights}")


def text_batches(documents: list[list[list[int]]], max_windows: int) -> list[list[int]]:
    """Indices of `documents` in batches of similar length: sorted by (windows, longest window), each batch
    holding at most `max_windows` padded windows (at least one document), so padding stays small."""
    order = sorted(range(len(documents)), key=lambda i: (len(documents[i]), max(map(len, documents[i]))))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(documents[i]) * (len(batches[-1]) + 1) <= max_windows:
            batches[-1].append(i)  # sorted: document i has the most windows of its batch
        else:
            batches.append([i])
    return batches


def text_runner(model):
    """The text encoder as one traced graph, windows and tokens left open: (token_ids, padding_mask) -> (N, D)."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, None, None), tf.int32)
    graph = tf.function(lambda ids, mask: tf.cast(model([ids, mask], training=False), tf.float32),
                        input_signature=[spec, spec])
    return lambda ids, mask: graph(ids, mask).numpy()


def extract(manifest_path: str | Path, store_root: str | Path, table_path: str | Path,
            backbone_params: BackboneParams, extract_params: ExtractParams, seed: int,
            text_params: TextParams | None = None) -> ExtractResult:
    """Compute the embeddings the store lacks for the manifest's images or texts; write the table."""
    manifest = load_manifest(manifest_path)
    modality = modality_of(manifest)
    check_modality(manifest_path, modality, backbone_params.name)
    if modality == "text":
        return _extract_texts(manifest, store_root, table_path, backbone_params, extract_params, seed,
                              text_params or TextParams())
    import tensorflow as tf

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
    store, first_path, todo = _open_store(store_root, spec, manifest)
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
    return _finish(table_path, spec, store, first_path, todo, model, batch_size, started, warmup)


def _extract_texts(manifest, store_root: str | Path, table_path: str | Path, backbone_params: BackboneParams,
                   extract_params: ExtractParams, seed: int, text_params: TextParams) -> ExtractResult:
    import tensorflow as tf

    if extract_params.runtime == "litert":
        raise BackboneError(f"extract.runtime: litert does not run text backbones ({backbone_params.name}); "
                            f"set extract.runtime: auto (TensorFlow for text) or tensorflow")
    family = family_of(backbone_params.name)
    settings = family.WindowSettings(**text_params.model_dump())
    tokenizer_file = family.tokenizer_path(BACKBONES[backbone_params.name].source)
    tokenizer = family.load_tokenizer(tokenizer_file)
    plan = device.detect()
    device.apply(plan)
    seed_everything(seed)  # weights "none" must give finetune the same backbone
    model = build_backbone(backbone_params.name, backbone_params.weights)
    spec = {
        "backbone": backbone_params.name,
        "weights_sha256": weights_fingerprint(model),
        "tokenizer_sha256": family.tokenizer_fingerprint(tokenizer_file),
        "text": settings.key(),
        "decode": TEXT_SPEC,
        "dtype": plan.policy,
        "runtime": "tensorflow",
    }
    store, first_path, todo = _open_store(store_root, spec, manifest)
    # A batch holds extract.batch_size windows: a document has up to text.max_windows of them.
    window_budget = max(extract_params.batch_size, settings.max_windows)
    print(f"extract: {len(first_path)} distinct texts, {len(first_path) - len(todo)} cached, {len(todo)} to "
          f"compute with {backbone_params.name} on {plan.device} (tensorflow, {plan.policy}, batches of at most "
          f"{window_budget} windows of {settings.max_tokens} tokens)", flush=True)

    warmup, started, windows = 0.0, time.perf_counter(), 0
    if todo:
        infer = text_runner(model)
        writer = ShardWriter(store, todo, extract_params.shard_size, int(model.output_shape[-1]))
        with tf.device(plan.device):
            infer(*family.pad_windows([[[0, 0]]]))  # trace once before the clock starts (reported apart)
            warmup, started = time.perf_counter() - started, time.perf_counter()
            progress = Progress(len(todo), "extract", unit="documents")
            # A shard's worth of documents at a time: memory stays flat, and the shards split where a resumed
            # run splits them (store.py); within a shard, batches of similar length, put back in order.
            for start in range(0, len(todo), extract_params.shard_size):
                chunk = todo[start:start + extract_params.shard_size]
                documents = family.split_windows([load_text(p) for p in first_path[chunk]], tokenizer, settings)
                out = np.empty((len(chunk), int(model.output_shape[-1])), np.float32)
                for batch in text_batches(documents, window_budget):
                    token_ids, padding_mask = family.pad_windows([documents[i] for i in batch])
                    out[batch] = infer(token_ids, padding_mask)
                    windows += sum(len(documents[i]) for i in batch)
                    progress.update(len(batch))
                writer.add(out)
        writer.close()
    return _finish(table_path, spec, store, first_path, todo, model, window_budget, started, warmup,
                   unit="documents", windows=windows if todo else None)


def _open_store(store_root: str | Path, spec: dict, manifest):
    """The store for `spec` (its half-written shards removed and said), the first path of each distinct content
    (duplicates share an embedding) and the hashes the store lacks, sorted: a resumed run splits its shards
    where an uninterrupted one does."""
    store, leftovers = EmbeddingStore.open(store_root, spec)
    for leftover in leftovers:
        print(f"extract: removed {leftover.name}, a half-written shard of an interrupted run", flush=True)
    first_path = manifest.drop_duplicates("sha256").set_index("sha256")["path"]
    return store, first_path, store.missing(first_path.index)


def _finish(table_path: str | Path, spec: dict, store: EmbeddingStore, first_path, todo: list, model,
            batch_size: int, started: float, warmup: float, **extra) -> ExtractResult:
    """Write the manifest's embedding table from the store; the counts and rates of this run."""
    seconds = time.perf_counter() - started
    hashes = sorted(first_path.index)
    write_table(table_path, hashes, store.lookup(hashes), {**spec, "key": store.key})
    return ExtractResult(
        key=store.key, embedding_dim=int(model.output_shape[-1]), distinct_images=int(len(first_path)),
        computed=len(todo), reused=int(len(first_path) - len(todo)), batch_size=batch_size,
        seconds=round(seconds, 3), warmup_seconds=round(warmup, 3),
        images_per_second=round(len(todo) / seconds, 2) if todo and seconds > 0 else None, **extra)
