"""Target 1: extraction efficiency.

    ratio = images/s of the real `extract.extract` (JPEG files on disk ->
            decode, resize -> backbone through extract.runtime (auto: LiteRT
            on CPU) -> embedding shards on disk)
          / images/s of the bare TensorFlow forward pass of the backbone on
            the same images, already decoded in memory, same batch size, same
            process; rounds alternate the sides, each side's fastest round counts.
    Also: the bare LiteRT forward on the same decoded images over the bare
    TensorFlow one (the backbone alone; target >= 1.7).

All are steady rates: extract() loads (or converts, once per store key) and
warms up its backbone before its clock starts (reported apart), the bare sides
are timed after the same warm-up. Photo-like JPEGs of 320-520 px, the default
params.yaml (efficientnet_lite0 at 128 px, batch 32). Target >= 1.3.

    python benchmarks/bench_extract_efficiency.py [--images 512] [--repeats 5] [--image-size 224]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401  (sets up the environment first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, help="override backbone.image_size of params.yaml")
    args = parser.parse_args()
    common.header("extraction efficiency: extract() vs the bare backbone on decoded images")

    from transferkit import device
    from transferkit.backbones.build import build_backbone
    from transferkit.config import load_params
    from transferkit.data.images import load_rgb
    from transferkit.deliver import runtimes
    from transferkit.embeddings.extract import extract

    params = load_params(common.REPO / "params.yaml")
    if args.image_size:
        backbone = params.backbone.model_copy(update={"image_size": args.image_size})
        params = params.model_copy(update={"backbone": backbone})
    size = params.backbone.image_size
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        common.make_photos(work / "photos", args.images)
        manifest = common.prepare(work / "photos", work / "prepared")
        import pandas as pd

        paths = pd.read_parquet(manifest)["path"].tolist()
        plan = device.detect()
        device.apply(plan)
        batch_size = device.inference_batch_size(plan, params.extract.batch_size)
        runtime = runtimes.resolve(params.extract.runtime, plan.gpu)
        print(f"{len(paths)} JPEG photos 320-520 px -> {size} px, {params.backbone.name}, "
              f"batch {batch_size}, {plan.device} {plan.policy}, extract.runtime {params.extract.runtime} "
              f"-> {runtime}", flush=True)

        model = build_backbone(params.backbone.name, params.backbone.weights, size)
        decode_start = time.process_time()
        pixels = np.stack([load_rgb(p, size) for p in paths])  # decoded once, outside any timing
        decode_cpu = (time.process_time() - decode_start) / len(paths)  # CPU seconds per image, one thread
        batches = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)]
        infer = runtimes.keras_runner(model)  # extract's TensorFlow graph, warmed up like extract warms it up
        infer(batches[0])
        lite = runtimes.litert_runner(runtimes.to_litert(model))
        lite(batches[0])
        bare_cpu: list[float] = []  # CPU seconds per image the backbone uses (all its threads)

        def bare_litert() -> float:
            start = time.perf_counter()
            for batch in batches:
                lite(batch)
            return len(pixels) / (time.perf_counter() - start)

        def bare() -> float:
            cpu_start, start = _cpu_seconds(), time.perf_counter()
            for batch in batches:
                infer(batch)
            seconds = time.perf_counter() - start
            bare_cpu.append((_cpu_seconds() - cpu_start) / len(pixels))
            return len(pixels) / seconds

        runs = iter(range(args.repeats))
        warmups: list[float] = []

        def real_extract() -> float:
            store = work / f"store-{next(runs)}"  # empty: every image is computed
            summary = extract(manifest, store, work / "embeddings.npz", params.backbone, params.extract,
                              params.data.seed)
            shutil.rmtree(store)
            assert summary.computed == len(paths)
            warmups.append(summary.warmup_seconds)
            return summary.images_per_second

        figures = common.interleaved({"bare": bare, "litert": bare_litert, "extract": real_extract}, args.repeats)
        # Other processes (and the hypervisor) only ever slow a round down, so each side's
        # fastest round is the best estimate of what it can do; the ratio compares those.
        bare_rate, extract_rate = max(figures["bare"]), max(figures["extract"])
        litert_rate = max(figures["litert"])
        print(f"bare backbone, decoded in memory: {bare_rate:.1f} images/s TensorFlow "
              f"(fastest of {args.repeats} rounds; median {common.median(figures['bare']):.1f}), "
              f"{litert_rate:.1f} LiteRT (median {common.median(figures['litert']):.1f}): "
              f"LiteRT / TensorFlow = {litert_rate / bare_rate:.3f} (target >= 1.7)")
        print(f"extract, from JPEG files:         {extract_rate:.1f} images/s "
              f"(fastest of {args.repeats} rounds; median {common.median(figures['extract']):.1f}; "
              f"plus a one-time warm-up of {common.median(warmups):.1f} s per run)")
        # If every core is busy in both runs, decoding simply adds its CPU time per image:
        # the ratio cannot beat backbone / (backbone + decode); only core time the bare
        # backbone leaves idle leaves room above that.
        backbone_cpu = bare_cpu[figures["bare"].index(bare_rate)]  # CPU of the fastest bare round
        lite_cpu = backbone_cpu * bare_rate / litert_rate  # if LiteRT keeps the cores as busy
        print(f"CPU per image: TF backbone {backbone_cpu * 1000:.1f} ms (all threads, "
              f"{backbone_cpu * bare_rate:.2f} cores busy), LiteRT about {lite_cpu * 1000:.1f} ms, decode + resize "
              f"{decode_cpu * 1000:.2f} ms -> CPU-bound estimate {backbone_cpu / (lite_cpu + decode_cpu):.3f}")
        print(f"per-round ratios (noisy, for reference): "
              f"{', '.join(f'{e / b:.3f}' for e, b in zip(figures['extract'], figures['bare'], strict=True))}")
        ratio = extract_rate / bare_rate
        common.ratio_line("extraction_efficiency", ratio, ">= 1.3", ratio >= 1.3)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
