"""The companion and the ensemble on a small, low-resolution set far from ImageNet: digits.

scikit-learn's `load_digits` (1,797 images, 8x8, 17 grey levels) written as
32 px PNG files (bilinear), split by `prepare` with the default params
(65/15/20: about 1,168 train, 270 val, 359 test images). Then the pipeline's
own functions with the default params.yaml:

    prepare -> extract -> train_head -> companion -> finetune (the transfer model)

and the candidate choice of finetune (train/candidates.py: widen) on top of
the transfer model, so that each candidate can be scored on the same test
images: the transfer model alone, the companion alone, the ensemble (weight
chosen on val), what the choice publishes, and evaluate's baseline (the best
on val of the cheap classical candidates, refitted on train + val). Every
test figure with its 95% bootstrap interval.

    python benchmarks/bench_companion.py                      # digits
    python benchmarks/bench_companion.py --source data/sample  # any folder or manifest
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import common


def build_digits(root: Path) -> Path:
    """scikit-learn's digits as 32x32 grey PNG files, one folder per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = Image.fromarray(np.round(image * 255.0 / 16.0).astype(np.uint8), mode="L")
        pixels.resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a folder or manifest instead of digits")
    parser.add_argument("--params", type=Path, default=common.REPO / "params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--work", type=Path, help="keep the data and outputs here (default: a temporary folder)")
    args = parser.parse_args()
    what = str(args.source) if args.source else "digits (scikit-learn load_digits, 8x8 -> 32 px bilinear)"
    common.header(f"companion and ensemble on {what}")

    import keras
    import numpy as np
    import tensorflow as tf
    import yaml

    from transferkit.config import parse_params
    from transferkit.data.datasets import image_dataset
    from transferkit.data.manifest import load_manifest, split_of
    from transferkit.data.prepare import prepare
    from transferkit.deliver.published import load_published
    from transferkit.embeddings.extract import extract
    from transferkit.evaluate.baselines import fit_baseline
    from transferkit.train import candidates
    from transferkit.train.companion import companion, read_companion
    from transferkit.train.finetune import finetune
    from transferkit.train.train_head import train_head

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-companion-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(args.params.read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.safe_load(value)
    source = args.source or work / "digits"
    if not args.source and not source.exists():
        build_digits(source)
    raw["data"]["source"] = str(Path(source).resolve())
    params = parse_params(raw)
    print("params:", json.dumps({k: raw[k] for k in ("backbone", "finetune", "companion")}), flush=True)
    out = work / "out"
    seconds = {}
    try:
        start = time.perf_counter()
        prepare(Path(source), out / "manifest.parquet", out / "report.json", params.data)
        extract(out / "manifest.parquet", work / "store", out / "embeddings.npz", params.backbone, params.extract,
                params.data.seed)
        train_head(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras", out / "head.csv",
                   params.head, params.data.seed)
        seconds["head"] = time.perf_counter() - start
        start = time.perf_counter()
        made = companion(out / "manifest.parquet", out / "companion", out / "companion.csv", out / "ckpt-companion",
                         params.companion, params.data.seed)
        seconds["companion"] = time.perf_counter() - start
        print("companion:", json.dumps(made.metrics_file()), flush=True)
        start = time.perf_counter()
        summary = finetune(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras", out / "model.keras",
                           out / "model.json", out / "finetune.csv", out / "ckpt", params.backbone, params.finetune,
                           params.data.seed)
        seconds["transfer"] = seconds["head"] + time.perf_counter() - start
        print("transfer:", json.dumps({k: v for k, v in summary.metrics_file().items() if k != "recipe"}),
              flush=True)
        manifest = load_manifest(out / "manifest.parquet")
        val, test = split_of(manifest, "val"), split_of(manifest, "test")
        transfer, info = load_published(out / "model.keras", out / "model.json")
        size = info.image_size
        y_test = test["label_index"].to_numpy()

        def probs(model):
            images = image_dataset(test["path"], size, 64).map(lambda x: tf.cast(x, tf.float32))
            return model.predict(images, verbose=0)

        rows = {"transfer (published by finetune alone: " + summary.published + ")": probs(transfer)}
        model = None
        if made.trained:
            model, chosen, why, figures = candidates.widen(transfer, summary.published, out / "companion", val,
                                                           summary.metrics_file(), size, params.finetune.batch_size)
            print(f"choice on val: {chosen}: {why}", flush=True)
            print("val figures:", json.dumps(figures), flush=True)
            net, _ = read_companion(out / "companion")
            weight = figures["companion_weight"]
            rows["companion alone (through Resizing)"] = probs(candidates.at_input(net, size))
            rows[f"ensemble (companion weight {weight})"] = probs(candidates.ensemble(transfer, net, size, weight))
            rows[f"published after the choice: {chosen}"] = probs(model)
            model.save(work / "published.keras")
            again = keras.saving.load_model(work / "published.keras", safe_mode=True)
            print("published reloads with safe_mode=True, same output:",
                  bool(np.allclose(probs(again), rows[f"published after the choice: {chosen}"], atol=1e-5)))
        start = time.perf_counter()
        baseline = fit_baseline(manifest, out / "embeddings.npz", params.evaluate.baseline_max_train,
                                params.data.seed)
        seconds["baseline"] = time.perf_counter() - start
        print()
        print(f"{what}: {len(test)} test images, {len(val)} val images")
        print("| model | test accuracy | 95% bootstrap |")
        print("|---|---|---|")
        for name, p in rows.items():
            correct = int((p.argmax(1) == y_test).sum())
            lo, hi = candidates.interval(correct, len(y_test))
            print(f"| {name} | {correct / len(y_test):.4f} | {lo:.4f}-{hi:.4f} |")
        correct = round(baseline.test_accuracy * len(y_test))
        lo, hi = candidates.interval(correct, len(y_test))
        print(f"| baseline {baseline.name} (val {baseline.val_accuracy:.4f}) | {baseline.test_accuracy:.4f} | "
              f"{lo:.4f}-{hi:.4f} |")
        print("wall time (s):", json.dumps({k: round(v) for k, v in seconds.items()}))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
