"""The `transferkit` command: use a trained model.

    transferkit predict FILE_OR_FOLDER... [--text "..."]... [--top-k K] [--format csv|json]
                        [--model models/model.keras --model-info models/model.json]
                        [--runtime tensorflow|litert|onnx]

The published model's model.json says what it reads: image files, or texts
(text files, folders searched for them, and `--text` strings, each read by
data/texts.py's rules and tokenized as the model was trained).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from transferkit.config import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TEXT_BYTES
from transferkit.data.images import IMAGE_SUFFIXES, ImageRejected, inspect_image
from transferkit.data.texts import TextRejected, check_text, inspect_text, is_text_file_name

# What `--runtime` offers: runners of deliver/runtimes.RUNNERS that take the Keras model itself.
PREDICT_RUNTIMES = ("tensorflow", "litert", "onnx")


def collect_images(targets: list[str], kind: str = "image") -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders searched recursively for image files (kind "text": text files, by
    data.texts.is_text_file_name); returns (files, problems)."""
    images, problems = [], []
    wanted = is_text_file_name if kind == "text" else (lambda p: p.suffix.lower() in IMAGE_SUFFIXES)
    for target in targets:
        path = Path(target)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and wanted(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                problems.append((target, f"folder holds no {kind} files"))
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
    from transferkit.deliver import runtimes
    from transferkit.deliver.inference import predict_files, predict_texts, top_k
    from transferkit.deliver.published import ModelInfo, load_published
    from transferkit.errors import TransferkitError

    if not args.images and not args.text:
        print("transferkit predict: error: nothing to classify: give files or folders (or --text for a text model)",
              file=sys.stderr)
        return 2
    modality = "image"
    if Path(args.model_info).exists():  # else load_published below says what is missing
        try:
            modality = ModelInfo.from_json(args.model_info).modality
        except TransferkitError as exc:
            print(f"transferkit predict: error: {exc}", file=sys.stderr)
            return 1
    if args.text and modality != "text":
        print(f"transferkit predict: error: --text needs a text model; {args.model_info} describes an "
              f"{modality} model", file=sys.stderr)
        return 2
    files, problems = collect_images(args.images, modality)
    usable, texts, names = [], [], []
    for path in files:  # validate first so one bad file does not stop the batch
        try:
            if modality == "text":
                texts.append(inspect_text(path, DEFAULT_MAX_TEXT_BYTES).text)
                names.append(str(path))
            else:
                inspect_image(path, min_side=1, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
            usable.append(path)
        except (ImageRejected, TextRejected) as exc:
            problems.append((str(path), str(exc)))
        except OSError as exc:
            problems.append((str(path), f"cannot read: {exc}"))
    for number, value in enumerate(args.text or [], start=1):
        try:
            texts.append(check_text(value, DEFAULT_MAX_TEXT_BYTES))
            names.append(f"--text {number}")
        except TextRejected as exc:
            problems.append((f"--text {number}", str(exc)))
    for path, reason in problems:
        print(f"transferkit predict: skipped {path}: {reason}", file=sys.stderr)
    if not (texts if modality == "text" else usable):
        print(f"transferkit predict: no usable {'texts' if modality == 'text' else 'images'}", file=sys.stderr)
        return 1
    try:
        model, info = load_published(args.model, args.model_info)
    except TransferkitError as exc:
        print(f"transferkit predict: error: {exc}", file=sys.stderr)
        return 1
    if info.modality == "text":
        probs = predict_texts(runtimes.runner(model, args.runtime), info, texts, args.batch_size).probabilities
    else:
        probs = predict_files(model, info, usable, args.batch_size, runtime=args.runtime).probabilities
        names = [str(path) for path in usable]
    results = [{"path": name, "predictions": [{**p, "probability": round(p["probability"], 6)} for p in ranked]}
               for name, ranked in zip(names, top_k(probs, info.classes, args.top_k), strict=True)]
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
    p = commands.add_parser("predict", help="classify images or texts with the trained model")
    p.add_argument("images", nargs="*", metavar="FILE_OR_FOLDER",
                   help="image files, or text files for a text model; folders are searched for them")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a text to classify (a text model; repeatable); shown as `--text N` in the output")
    p.add_argument("--model", default="models/model.keras",
                   help="model file written by the pipeline (default: %(default)s)")
    p.add_argument("--model-info", default="models/model.json",
                   help="its description (classes, what it reads) written beside it (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1, help="how many labels per image (default: %(default)s)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--runtime", choices=PREDICT_RUNTIMES, default="tensorflow",
                   help="what runs the model: TensorFlow, or LiteRT (converts it first, a few seconds; faster on "
                        "many images on a CPU), or onnxruntime (converts it to ONNX first, as the export stage does: "
                        "what the browser page and the served model run) (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "predict":
        return predict(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
