"""Target 1: extraction efficiency.

    ratio = images/s of the real `features.extract` (JPEG files on disk ->
            decode, resize -> backbone -> embedding shards on disk)
          / images/s of the bare backbone forward pass on the same images,
            already decoded in memory, same batch size, same process.

Both sides start from a fresh graph trace, as a stage run does, so both pay
the same one-time cost. Photo-like JPEGs of 320-520 px, the default
params.yaml (efficientnet_lite0 at 128 px, batch 32). Target >= 0.90.

    python benchmarks/bench_extract_efficiency.py [--images 768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets up the environment first)
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common.header("extraction efficiency: extract() vs the bare backbone on decoded images")

    from transferkit import device
    from transferkit.backbones import build_backbone
    from transferkit.config import load_params
    from transferkit.features import embedder, extract
    from transferkit.images import load_rgb

    params = load_params(common.REPO / "params.yaml")
    size = params.backbone.image_size
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        common.make_photos(work / "photos", args.images)
        manifest = common.prepare(work / "photos", work / "prepared")
        import pandas as pd

        paths = pd.read_parquet(manifest)["path"].tolist()
        plan = device.detect(params.extract.batch_size)
        device.apply(plan)
        print(f"{len(paths)} JPEG photos 320-520 px -> {size} px, {params.backbone.name}, "
              f"batch {plan.batch_size}, {plan.device} {plan.policy}", flush=True)

        model = build_backbone(params.backbone.name, params.backbone.weights, size)
        pixels = np.stack([load_rgb(p, size) for p in paths])  # decoded once, outside any timing
        batches = [pixels[i:i + plan.batch_size] for i in range(0, len(pixels), plan.batch_size)]
        steady: list[float] = []

        def bare() -> float:
            start = time.perf_counter()
            infer = embedder(model)  # a fresh trace, like every extract run
            infer(batches[0]).numpy()
            warm = time.perf_counter()
            for batch in batches[1:]:
                infer(batch).numpy()
            end = time.perf_counter()
            steady.append((len(pixels) - len(batches[0])) / (end - warm))
            return len(pixels) / (end - start)

        runs = iter(range(args.repeats))

        def real_extract() -> float:
            features = work / f"features-{next(runs)}"  # empty: every image is computed
            summary = extract(manifest, features, params.backbone, params.extract, params.data.seed)
            shutil.rmtree(features)
            assert summary["computed"] == len(paths)
            return summary["images_per_second"]

        figures = common.interleaved({"bare": bare, "extract": real_extract}, args.repeats)
        bare_rate, extract_rate = common.median(figures["bare"]), common.median(figures["extract"])
        print(f"bare backbone, decoded in memory: {bare_rate:.1f} images/s "
              f"(steady state after the trace: {common.median(steady):.1f})")
        print(f"extract, from JPEG files:         {extract_rate:.1f} images/s")
        ratio = extract_rate / bare_rate
        common.ratio_line("extraction_efficiency", ratio, ">= 0.90", ratio >= 0.90)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
