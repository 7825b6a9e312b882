"""Target 4: memory does not grow with the number of images.

The real `extract` stage (stages/extract.py: MLflow tracking included) runs as
a subprocess on a base set of photos, then on 4x as many, each into an empty
cache. Peak resident memory (RSS) of each process comes from the kernel's own
accounting (`os.wait4` rusage, ru_maxrss), so no peak between two polls is missed.

    ratio = peak RSS on 4x the images / peak RSS on the base set

Photo-like JPEGs of 320-520 px; the default params.yaml except
`extract.shard_size: 256`, so both runs write several shards (the shard
buffer is the one thing that legitimately fills up). Target <= 1.2.

    python benchmarks/bench_memory.py [--images 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import common


def peak_rss_of_stage(work: Path, manifest: Path, name: str) -> tuple[float, dict, float]:
    """Run stages/extract.py; (peak RSS in MiB, its metrics, wall seconds)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(common.REPO / "src"), environ.get("PYTHONPATH")])),
                   TF_CPP_MIN_LOG_LEVEL="2", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1")
    command = [sys.executable, str(common.REPO / "stages" / "extract.py"), "--params", str(work / "params.yaml"),
               "--mlflow-db", "mlflow.db", "--mlflow-artifacts", "mlruns",
               "--manifest", str(manifest), "--store", str(work / f"store-{name}"),
               "--embeddings", str(work / f"embeddings-{name}.npz"), "--metrics", str(work / f"metrics-{name}.json")]
    start = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=work, env=environ, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"extract failed on the {name} set:\n" + (work / f"{name}.log").read_text()[-3000:])
    return usage.ru_maxrss / 1024, json.loads((work / f"metrics-{name}.json").read_text()), seconds  # ru_maxrss: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="base set; the large set has 4x as many")
    args = parser.parse_args()
    common.header("memory: peak RSS of the extract stage on 4x more images")

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        params = yaml.safe_load((common.REPO / "params.yaml").read_text())
        params["extract"]["shard_size"] = 256
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        base = common.prepare(common.make_photos(work / "base", args.images, seed=0), work / "prepared-base")
        large = common.prepare(common.make_photos(work / "large", 4 * args.images, seed=1), work / "prepared-large")

        results = {}
        for name, manifest in (("base", base), ("4x", large)):
            rss, metrics, seconds = peak_rss_of_stage(work, manifest, name)
            results[name] = rss
            print(f"{name:>4}: {metrics['computed']:5d} images, peak RSS {rss:7.1f} MiB, "
                  f"{metrics['computed'] / seconds:.1f} images/s over the whole stage ({seconds:.1f} s)", flush=True)
        ratio = results["4x"] / results["base"]
        common.ratio_line("memory_peak_rss_4x_over_1x", ratio, "<= 1.2", ratio <= 1.2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
