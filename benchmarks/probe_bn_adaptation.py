"""Probe: do BatchNorm statistics re-estimated on the user's images (AdaBN) make better frozen features?

AdaBN is the cheapest domain adaptation there is: run the training images through
the backbone in training mode once, so each BatchNormalization layer's moving
mean and variance become the target data's, then keep everything frozen. On
Fashion-MNIST (grey 28x28 clothes, far from ImageNet) it would be the obvious
thing to try before fine-tuning. This script measures it before it is built:
a logistic-regression probe (standardised embeddings, C in 0.01/0.05/0.2) on
the 10% set's 5,100 train images, C chosen on its 900 val images, scored on
3,000 of the official test images; first with ImageNet's statistics, then with
the adapted ones: each layer's statistics averaged over the batches of train
images (momentum k/(k+1) at batch k), with the backbone's stochastic-depth
dropout off, as it is at inference.

Not part of `make bench`: it backs a decision recorded in benchmarks/README.md.

    python benchmarks/probe_bn_adaptation.py --image-size 160
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench_quality import build_set

import common  # noqa: F401  (quiet TensorFlow start-up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--work", type=Path, help="keep the images here (default: a temporary folder)")
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="probe-bn-"))
    try:
        probe_both(root, args.image_size, args.backbone)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


def probe_both(root: Path, size: int, backbone_name: str) -> None:
    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from transferkit.backbones.build import build_backbone
    from transferkit.data.datasets import decoded_batches
    from transferkit.data.manifest import split_of
    from transferkit.deliver.runtimes import keras_runner

    if not (root / "manifest.csv").exists():
        build_set(root, per_class=600, seed=0)
    manifest = pd.read_csv(root / "manifest.csv")
    classes = {name: i for i, name in enumerate(sorted(manifest["label"].unique()))}
    manifest["y"] = manifest["label"].map(classes)
    train, val = split_of(manifest, "train"), split_of(manifest, "val")
    test = split_of(manifest, "test").sample(3000, random_state=0)
    backbone = build_backbone(backbone_name, "imagenet", size)
    forward = keras_runner(backbone)  # inference mode; reads the BatchNorm statistics as they are at each call

    def paths(frame):
        return [str(root / p) for p in frame["path"]]

    def probe(tag: str) -> tuple[float, float]:
        start = time.perf_counter()
        train_x, val_x, test_x = (np.concatenate([forward(b) for b in decoded_batches(paths(f), size, 64)])
                                  for f in (train, val, test))
        scaler = StandardScaler().fit(train_x)
        train_x, val_x, test_x = scaler.transform(train_x), scaler.transform(val_x), scaler.transform(test_x)
        scores = []
        for c in (0.01, 0.05, 0.2):
            fit = LogisticRegression(C=c, max_iter=2000).fit(train_x, train["y"])
            scores.append((fit.score(val_x, val["y"]), fit.score(test_x, test["y"])))
            print(f"{tag}, C={c}: val {scores[-1][0]:.4f}, test (3,000) {scores[-1][1]:.4f}", flush=True)
        print(f"  embeddings {time.perf_counter() - start:.0f} s", flush=True)
        return max(scores)  # the C with the best val accuracy: (val, test)

    before = probe("ImageNet BN statistics")
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # training=True is for BatchNorm only: no dropped branches while measuring
    start = time.perf_counter()
    for k, batch in enumerate(decoded_batches(paths(train.sample(frac=1, random_state=0)), size, 64)):
        for layer in norms:
            layer.momentum = k / (k + 1.0)  # a running mean over every batch so far, not a decay
        backbone(tf.cast(batch, tf.float32), training=True)
    print(f"adapted {len(norms)} BatchNormalization layers in {time.perf_counter() - start:.0f} s", flush=True)
    after = probe("adapted BN statistics")
    print(f"AdaBN minus ImageNet statistics (C chosen on val): val {100 * (after[0] - before[0]):+.1f} points, "
          f"test {100 * (after[1] - before[1]):+.1f} points")


if __name__ == "__main__":
    main()
