"""The `transferkit` command: use a trained model.

    transferkit predict IMAGE_OR_FOLDER... [--top-k K] [--format csv|json]
                        [--model models/model.keras --model-info models/model.json]
                        [--runtime tensorflow|litert]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from transferkit.config import DEFAULT_MAX_IMAGE_PIXELS
from transferkit.data.images import IMAGE_SUFFIXES, ImageRejected, inspect_image

# What `--runtime` offers: runners of deliver/runtimes.RUNNERS that take the Keras model itself.
PREDICT_RUNTIMES = ("tensorflow", "litert")


def collect_images(targets: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders searched recursively for image files; returns (images, problems)."""
    images, problems = [], []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                problems.append((target, "folder holds no image files"))
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            problems.append((target, "no such file or folder"))
    return images, problems


def predict(args: argparse.Namespace) -> int:
    from transferkit.seeding import pin_threads_at_start
    from transferkit.stage import quiet_tensorflow

    quiet_tensorflow()
    pin_threads_at_start()  # the probabilities evaluate reported, to the bit, on any core count
    from transferkit.deliver.inference import predict_files, top_k
    from transferkit.deliver.published import load_published
    from transferkit.errors import TransferkitError

    images, problems = collect_images(args.images)
    usable = []
    for path in images:  # validate first so one bad file does not stop the batch
        try:
            inspect_image(path, min_side=1, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
            usable.append(path)
        except ImageRejected as exc:
            problems.append((str(path), str(exc)))
        except OSError as exc:
            problems.append((str(path), f"cannot read: {exc}"))
    for path, reason in problems:
        print(f"transferkit predict: skipped {path}: {reason}", file=sys.stderr)
    if not usable:
        print("transferkit predict: no usable images", file=sys.stderr)
        return 1
    try:
        model, info = load_published(args.model, args.model_info)
    except TransferkitError as exc:
        print(f"transferkit predict: error: {exc}", file=sys.stderr)
        return 1
    probs = predict_files(model, info, usable, args.batch_size, runtime=args.runtime).probabilities
    results = [{"path": str(path), "predictions": [{**p, "probability": round(p["probability"], 6)} for p in ranked]}
               for path, ranked in zip(usable, top_k(probs, info.classes, args.top_k), strict=True)]
    if args.format == "json":
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "label", "probability"])
        for result in results:
            for rank, p in enumerate(result["predictions"], start=1):
                writer.writerow([result["path"], rank, p["label"], f"{p['probability']:.6f}"])
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="transferkit", description="Use a model trained by the transferkit pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="classify images with the trained model")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--model", default="models/model.keras",
                   help="model file written by the pipeline (default: %(default)s)")
    p.add_argument("--model-info", default="models/model.json",
                   help="its description (classes, image size) written beside it (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1, help="how many labels per image (default: %(default)s)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runtime", choices=PREDICT_RUNTIMES, default="tensorflow",
                   help="what runs the model: TensorFlow, or LiteRT (converts it first, a few seconds; faster on "
                        "many images on a CPU) (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "predict":
        return predict(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
