"""Target 3: incremental extraction.

A dataset whose embeddings are cached gets 5% new images; `prepare` and
`extract` run again. Only the new images go through the backbone.

    ratio = wall time of the rerun of extract.extract (5% new images)
          / wall time of the full extract.extract of the original images

Both are timed around the whole extract() call, in one process: building the
backbone, fingerprinting its weights, reading the cache index, tracing the
graph, decoding and computing, writing shards and current.json. (Starting the
stage process, about 8 s of `import tensorflow`, is the same for both and not
part of extraction.) Photo-like JPEGs of 128-192 px. Target <= 0.10.

    python benchmarks/bench_incremental.py [--images 12000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--new-fraction", type=float, default=0.05)
    args = parser.parse_args()
    common.header("incremental extraction: 5% new images on a cached dataset")

    from transferkit.config import load_params
    from transferkit.embeddings.extract import extract

    params = load_params(common.REPO / "params.yaml")
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        photos = common.make_photos(work / "photos", args.images, seed=0, sizes=(128, 192))
        manifest = common.prepare(photos, work / "prepared")

        def run() -> dict:
            return extract(manifest, work / "store", work / "embeddings.npz", params.backbone, params.extract,
                           params.data.seed)

        full, full_seconds = common.timed(run)
        new = max(1, round(args.images * args.new_fraction))
        common.make_photos(photos, new, seed=1, sizes=(128, 192), prefix="new")
        common.prepare(photos, work / "prepared")
        rerun, rerun_seconds = common.timed(run)
        assert (rerun.computed, rerun.reused) == (new, full.computed), rerun

        per_image = (full_seconds - rerun_seconds) / (full.computed - new)  # seconds per computed image
        fixed = rerun_seconds - new * per_image
        print(f"full:  {full.computed} images computed in {full_seconds:.1f} s")
        print(f"rerun: {rerun.computed} new images computed, {rerun.reused} reused, in {rerun_seconds:.1f} s")
        print(f"(fixed cost of a run, estimated: {fixed:.1f} s; per image: {per_image * 1000:.1f} ms)")
        ratio = rerun_seconds / full_seconds
        common.ratio_line("incremental_rerun_fraction", ratio, "<= 0.10", ratio <= 0.10)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
