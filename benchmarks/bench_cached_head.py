"""Target 2: training the head on cached embeddings vs the textbook recipe.

The textbook recipe (keras.io "transfer learning"): the frozen backbone sits
inside the model, called with training=False, and runs over the images every
epoch. transferkit runs it once (`extract`) and trains the head on the cached
embeddings. Same head (`train_head.build_head`), same initial weights, same epochs,
same batches in the same order (one seeded shuffle), same class weights;
no early stopping, so both run exactly E epochs.

    ratio = wall time of E epochs, textbook recipe / wall time of E epochs on the cache

The cached side's time includes reading the embeddings from the cache. The
one-time extraction is reported on its own line. The cached side trains as
`train_head` does (`train_head.fit_head`: one graph call per epoch). Data: the
embedded sample (800 Fashion-MNIST images, 10 classes), or with
`--fmnist-per-class 600` the Fashion-MNIST 10% set of bench_quality.py
(5,100 train + 900 val embeddings; 100 test images per class of the official
test set). Target >= 50 at equal test accuracy (within one point).

    python benchmarks/bench_cached_head.py [--epochs 15]
    python benchmarks/bench_cached_head.py --fmnist-per-class 600 --epochs 3
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--fmnist-per-class", type=int, help="use the Fashion-MNIST set of bench_quality.py")
    args = parser.parse_args()
    common.header("cached head vs the textbook recipe (frozen backbone inside the model)")

    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from transferkit.backbones.build import build_backbone
    from transferkit.config import load_params
    from transferkit.data.datasets import image_dataset
    from transferkit.embeddings.extract import extract
    from transferkit.embeddings.table import read_table
    from transferkit.seeding import seed_everything
    from transferkit.train.common import class_weights, compile_classifier
    from transferkit.train.train_head import build_head, fit_head

    params = load_params(common.REPO / "params.yaml")
    size, seed, head_params = params.backbone.image_size, params.data.seed, params.head
    work = Path(tempfile.mkdtemp(prefix="bench-head-"))
    try:
        source = common.SAMPLE
        if args.fmnist_per_class:
            import bench_quality

            source = bench_quality.build_set(work / "fmnist", args.fmnist_per_class, 0)
            lines = source.read_text().splitlines()
            tests_kept: dict[str, int] = {}
            kept = [lines[0]]
            for line in lines[1:]:
                label, split = line.split(",")[1:]
                if split == "test":
                    tests_kept[label] = tests_kept.get(label, 0) + 1
                    if tests_kept[label] > 100:
                        continue
                kept.append(line)
            source.write_text("\n".join(kept) + "\n")
        manifest_path = common.prepare(source, work / "prepared", seed=seed)
        manifest = pd.read_parquet(manifest_path)
        split = {name: manifest[manifest["split"] == name] for name in ("train", "val", "test")}
        labels = {name: frame["label_index"].to_numpy(np.int32) for name, frame in split.items()}
        n_classes = int(manifest["label_index"].max()) + 1
        weights = class_weights(labels["train"], n_classes, head_params.class_weights)
        print(f"sample: {len(split['train'])} train, {len(split['val'])} val, {len(split['test'])} test images, "
              f"{n_classes} classes; {args.epochs} epochs, batch {head_params.batch_size}", flush=True)

        summary, extract_seconds = common.timed(
            lambda: extract(manifest_path, work / "store", work / "embeddings.npz", params.backbone, params.extract,
                            seed))

        def shuffled(data, n):  # shuffled as datasets.image_dataset does: same batches, same order
            return (tf.data.Dataset.from_tensor_slices(data).shuffle(n, seed=seed, reshuffle_each_iteration=True)
                    .batch(head_params.batch_size))

        epoch_ends: dict[str, list[float]] = {"cached": [], "textbook": []}

        def clock(name: str):
            class EpochClock(keras.callbacks.Callback):
                def on_epoch_end(self, epoch, logs=None):
                    epoch_ends[name].append(time.perf_counter())
            return EpochClock()

        def later_epochs(name: str) -> float:
            """Median seconds of an epoch after the first (which also traces the training graph)."""
            ends = epoch_ends[name]
            return common.median([b - a for a, b in itertools.pairwise(ends)]) if len(ends) > 1 else float("nan")

        cached_start: list[float] = []

        def cached() -> tuple[float, float]:
            start = time.perf_counter()
            cached_start.append(start)
            table = read_table(work / "embeddings.npz")
            x = {name: table.rows(frame["sha256"].tolist()) for name, frame in split.items()}
            seed_everything(seed)
            head = build_head(summary.embedding_dim, n_classes, head_params, features=x["train"])
            fit_head(head, x["train"], labels["train"], weights, (x["val"], labels["val"]), head_params, seed,
                     [clock("cached")], epochs=args.epochs)
            seconds = time.perf_counter() - start
            return seconds, head.evaluate(x["test"], labels["test"], verbose=0)[1]

        def textbook() -> tuple[float, float]:
            start = time.perf_counter()
            backbone = build_backbone(params.backbone.name, params.backbone.weights, size)
            backbone.trainable = False
            seed_everything(seed)
            # The same head, standardisation included (its mean/variance are the train embeddings'; a
            # textbook user would adapt it with one pass over the images, not counted here).
            train_features = read_table(work / "embeddings.npz").rows(split["train"]["sha256"].tolist())
            head = build_head(summary.embedding_dim, n_classes, head_params, features=train_features)
            inputs = keras.Input((size, size, 3), name="image")
            model = keras.Model(inputs, head(backbone(inputs, training=False)))
            compile_classifier(model, head_params.learning_rate)

            def as_float(images, y):
                return tf.cast(images, tf.float32), y

            paths = {name: frame["path"].tolist() for name, frame in split.items()}
            # The pipeline's own tf.data reader, shuffled like the cached side: same seed, same size.
            train = image_dataset(paths["train"], size, head_params.batch_size, labels["train"],
                                  shuffle_seed=seed).map(as_float)
            val = image_dataset(paths["val"], size, head_params.batch_size, labels["val"]).map(as_float)
            model.fit(train, validation_data=val, epochs=args.epochs, class_weight=weights, verbose=0,
                      callbacks=[clock("textbook")])
            seconds = time.perf_counter() - start
            test = image_dataset(paths["test"], size, head_params.batch_size, labels["test"]).map(as_float)
            return seconds, model.evaluate(test, verbose=0)[1]

        (cached_seconds, cached_accuracy) = cached()
        (textbook_seconds, textbook_accuracy) = textbook()
        print(f"one-time extraction of {summary.computed} images: {extract_seconds:.1f} s "
              f"(included in neither side below)")
        print(f"cached head:   {cached_seconds:7.2f} s for {args.epochs} epochs, test accuracy {cached_accuracy:.4f}")
        print(f"textbook:      {textbook_seconds:7.2f} s for {args.epochs} epochs, "
              f"test accuracy {textbook_accuracy:.4f}")
        print(f"cached head + one-time extraction: {cached_seconds + extract_seconds:.1f} s "
              f"= {textbook_seconds / (cached_seconds + extract_seconds):.1f}x less than the textbook recipe")
        print(f"per epoch after the first: cached {later_epochs('cached'):.3f} s, textbook "
              f"{later_epochs('textbook'):.2f} s ({later_epochs('textbook') / later_epochs('cached'):.0f}x); "
              f"the cached side's fixed cost (first epoch: graph traces) is "
              f"{epoch_ends['cached'][0] - cached_start[0]:.2f} s")
        gap = abs(cached_accuracy - textbook_accuracy) * 100
        ratio = textbook_seconds / cached_seconds
        print(f"accuracy gap: {gap:.2f} points (target <= 1)")
        common.ratio_line("cached_head_speedup", ratio, ">= 50 at equal accuracy", ratio >= 50 and gap <= 1.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
