"""Target 5: how close the backbone runs to the machine's limit.

    achieved GFLOP/s = FLOPs per image (counted from the layers) x images/s of the
                       bare backbone (batch of uint8 pixels in memory -> embeddings)
    ratio            = achieved GFLOP/s / float32 matmul GFLOP/s (2048 x 2048 x 2048
                       tf.matmul, same process, interleaved with the backbone)

FLOPs: 2 per multiply-add of every Conv2D, DepthwiseConv2D and Dense layer
(BatchNorm, ReLU6, adds and pooling are about 1% more and not counted).

The default configuration is what `extract` runs on a CPU (extract.runtime
auto: the LiteRT interpreter, XNNPACK). Then the knobs one could turn, each in
a fresh process because TensorFlow reads threading and oneDNN settings once at
start-up: TensorFlow itself, its batch size, intra/inter op threads,
TF_ENABLE_ONEDNN_OPTS, input size, bfloat16 compute. Each line gives images/s,
GFLOP/s, the ratio, and the max abs difference of the embeddings from the
float32 TensorFlow run. The last line is the default configuration's ratio
(target >= 0.40).

    python benchmarks/bench_machine_limit.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common

MATMUL_N = 2048
# (label, environment, argv for the child): the knobs tried. Threading and oneDNN need a fresh process.
CONFIGS = [
    ("default: extract.runtime auto = LiteRT, batch 32", {}, ["--engine", "litert"]),
    ("TensorFlow: TF threads, oneDNN on, batch 32", {}, []),
    ("batch 8", {}, ["--batch", "8"]),
    ("batch 128", {}, ["--batch", "128"]),
    ("intra-op 2, inter-op 1", {}, ["--intra", "2", "--inter", "1"]),
    ("intra-op 1, inter-op 1 (one core)", {}, ["--intra", "1", "--inter", "1"]),
    ("TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)", {"TF_ENABLE_ONEDNN_OPTS": "0"}, []),
    ("image_size 224 (lite0 native size)", {}, ["--size", "224"]),
    ("bfloat16 compute (mixed_bfloat16, AMX)", {}, ["--policy", "mixed_bfloat16"]),
]
QUICK = {"default: extract.runtime auto = LiteRT, batch 32"}


def count_flops(model) -> int:
    """Floating-point operations of one forward pass of one image (2 per multiply-add)."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def matmul_gflops(repeats: int = 3) -> float:
    import tensorflow as tf

    a = tf.random.normal((MATMUL_N, MATMUL_N), seed=1)
    b = tf.random.normal((MATMUL_N, MATMUL_N), seed=2)
    matmul = tf.function(tf.matmul)
    matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = matmul(a, b)
    result.numpy()
    return repeats * 2 * MATMUL_N**3 / (time.perf_counter() - start) / 1e9


def child(args) -> None:
    """Measure one configuration; print one JSON line."""
    import numpy as np
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    import keras

    from transferkit.backbones.build import build_backbone
    from transferkit.deliver import runtimes

    model = build_backbone("efficientnet_lite0", "imagenet", args.size)
    flops = count_flops(model)
    pixels = np.random.default_rng(0).integers(0, 256, size=(args.batch, args.size, args.size, 3), dtype=np.uint8)
    reference = runtimes.keras_runner(model)(pixels)  # float32 TensorFlow: what the cache holds
    if args.engine == "litert":  # what extract runs on a CPU: float32, converted by runtimes.to_litert
        run = runtimes.litert_runner(runtimes.to_litert(model))
    else:
        if args.policy != "float32":
            keras.mixed_precision.set_global_policy(args.policy)
            fast = build_backbone("efficientnet_lite0", "imagenet", args.size)  # same weights, new compute dtype
            keras.mixed_precision.set_global_policy("float32")
        else:
            fast = model
        run = runtimes.keras_runner(fast)
    diff = float(np.max(np.abs(np.asarray(run(pixels), np.float32) - reference)))
    per_round = max(1, 128 // args.batch)  # about 128 images per timing

    def backbone() -> float:
        start = time.perf_counter()
        for _ in range(per_round):
            run(pixels)
        return per_round * args.batch / (time.perf_counter() - start)

    figures = common.interleaved({"images/s": backbone, "matmul GFLOP/s": matmul_gflops}, args.repeats)
    rate, peak = common.median(figures["images/s"]), common.median(figures["matmul GFLOP/s"])
    print(json.dumps({"images_per_second": rate, "flops_per_image": flops, "matmul_gflops": peak,
                      "achieved_gflops": rate * flops / 1e9, "ratio": rate * flops / 1e9 / peak,
                      "max_abs_diff": diff}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the default configuration only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--intra", type=int, default=0)
    parser.add_argument("--inter", type=int, default=0)
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--engine", default="tensorflow")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        return child(args)

    common.header("machine limit: backbone GFLOP/s over float32 matmul GFLOP/s")
    print("efficientnet_lite0, uint8 pixels in memory -> embeddings; matmul 2048^3 float32", flush=True)
    print(f"{'configuration':44} {'images/s':>9} {'GFLOP/img':>9} {'GFLOP/s':>8} {'matmul':>7} {'ratio':>6} "
          f"{'max|diff|':>9}", flush=True)
    default = None
    for label, environment, argv in CONFIGS:
        if args.quick and label not in QUICK:
            continue
        out = subprocess.run([sys.executable, __file__, "--child", *argv], env={**os.environ, **environment},
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{label:44} failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{label:44} {r['images_per_second']:9.1f} {r['flops_per_image'] / 1e9:9.3f} "
              f"{r['achieved_gflops']:8.1f} {r['matmul_gflops']:7.1f} {r['ratio']:6.3f} {r['max_abs_diff']:9.1e}",
              flush=True)
        default = default or r
    if default is None:
        sys.exit("the default configuration failed")
    common.ratio_line("backbone_gflops_over_matmul_gflops", default["ratio"], ">= 0.40", default["ratio"] >= 0.40)


if __name__ == "__main__":
    main()
