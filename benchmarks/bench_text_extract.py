"""Text extraction efficiency: extract() on text files vs the bare encoder forward on the same token batches.

    ratio = documents/s of the real `extract.extract` (text files on disk ->
            decode, tokenise, windows, batches of similar length -> the
            encoder through TensorFlow -> embedding shards on disk)
          / documents/s of the bare encoder forward (extract's traced graph) on
            the same token batches, already padded in memory, same process;
            rounds alternate the sides, each side's fastest round counts.

Both are steady rates (extract warms its graph up before its clock starts; the
bare side is timed after the same warm-up). The documents: data/sample_text
(300 e-mails, headers included), params.yaml's `text` and extract.batch_size
(windows per batch). Target >= 0.9.

    python benchmarks/bench_text_extract.py [--repeats 3] [--max-windows 8] [--per-class 150]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets up the environment first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-windows", type=int, help="override text.max_windows of params.yaml")
    parser.add_argument("--per-class", type=int, default=150, help="e-mails of each class (the sample has 150)")
    args = parser.parse_args()
    common.header("text extraction efficiency: extract() vs the bare encoder on the same token batches")

    import pandas as pd

    from transferkit.backbones import bert
    from transferkit.backbones.build import build_backbone
    from transferkit.config import DataParams, load_params
    from transferkit.data.prepare import prepare
    from transferkit.data.texts import load_text
    from transferkit.embeddings.extract import extract, text_batches, text_runner
    from transferkit.seeding import pin_threads

    pin_threads()  # the stages' TensorFlow thread count, before the bare side runs anything

    params = load_params(common.REPO / "params.yaml")
    text = params.text if not args.max_windows else params.text.model_copy(update={"max_windows": args.max_windows})
    backbone = params.backbone.model_copy(update={"name": "all_minilm_l6_v2", "weights": "pretrained"})
    work = Path(tempfile.mkdtemp(prefix="bench-text-extract-"))
    try:
        manifest = work / "manifest.parquet"
        for label in ("ham", "spam"):  # the first --per-class e-mails of each class, by name
            (work / "mails" / label).mkdir(parents=True)
            for path in sorted((common.REPO / "data" / "sample_text" / label).iterdir())[:args.per_class]:
                shutil.copy2(path, work / "mails" / label / path.name)
        prepare(work / "mails", manifest, work / "report.json", DataParams(), work / "texts")
        paths = pd.read_parquet(manifest)["path"].tolist()
        settings = bert.WindowSettings(**text.model_dump())
        documents = bert.split_windows([load_text(p) for p in paths], bert.load_tokenizer(), settings)
        budget = max(params.extract.batch_size, settings.max_windows)
        batches = [bert.pad_windows([documents[i] for i in batch]) for batch in text_batches(documents, budget)]
        windows = sum(map(len, documents))
        print(f"{len(paths)} e-mails, {windows} windows of <= {settings.max_tokens} tokens "
              f"(max_windows {settings.max_windows}), batches of <= {budget} windows", flush=True)
        infer = text_runner(build_backbone(backbone.name, backbone.weights))
        infer(*bert.pad_windows([[[0, 0]]]))

        def bare() -> float:
            start = time.perf_counter()
            for ids, mask in batches:
                infer(ids, mask)
            return len(paths) / (time.perf_counter() - start)

        runs = iter(range(args.repeats))

        def real_extract() -> float:
            store = work / f"store-{next(runs)}"  # empty: every document is computed
            summary = extract(manifest, store, work / "embeddings.npz", backbone, params.extract, params.data.seed,
                              text_params=text)
            shutil.rmtree(store)
            assert summary.computed == len(paths)
            return summary.images_per_second

        figures = common.interleaved({"bare": bare, "extract": real_extract}, args.repeats)
        bare_rate, extract_rate = max(figures["bare"]), max(figures["extract"])
        per_window = windows / len(paths)
        print(f"bare encoder on padded token batches: {bare_rate:.2f} documents/s ({bare_rate * per_window:.1f} "
              f"windows/s; fastest of {args.repeats}, median {common.median(figures['bare']):.2f})")
        print(f"extract, from text files:             {extract_rate:.2f} documents/s "
              f"(fastest of {args.repeats}, median {common.median(figures['extract']):.2f})")
        ratio = extract_rate / bare_rate
        common.ratio_line("text extract / bare encoder", ratio, ">= 0.9", ratio >= 0.9)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
