"""Make the embedded sample dataset under data/sample/ from Fashion-MNIST.

Source: Debian's `dataset-fashion-mnist` package (Zalando Research, MIT licence),
which installs the original IDX files under /usr/share/datasets/fashion-mnist.
We take a fixed, class-balanced random subset of the 10,000-image test set and
write each image as a 28x28 grayscale PNG in one folder per class, which is the
layout transferkit expects from a user.

    apt-get install dataset-fashion-mnist
    python scripts/make_sample_data.py --per-class 80 --out data/sample

The output is deterministic for a given --seed, so the committed PNGs can be
re-made bit for bit.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
# Label order of the original dataset; folder names are what a user would type.
CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format): big-endian header, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=80, help="images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=Path("data/sample"))
    args = parser.parse_args()

    images = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(args.seed)
    for label, name in enumerate(CLASSES):
        chosen = rng.choice(np.flatnonzero(labels == label), size=args.per_class, replace=False)
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in sorted(chosen):
            Image.fromarray(images[index], mode="L").save(folder / f"fmnist_{index:05d}.png", optimize=True)
    print(f"wrote {args.per_class * len(CLASSES)} images in {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
