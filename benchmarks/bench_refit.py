"""The refit on train + val (finetune.refit): does it pay? Off vs on, same split, same choices.

The pipeline's own functions with the default params.yaml (prepare -> extract -> train_head -> companion ->
finetune, the companion competing as in `dvc repro`), `finetune` with the refit on. Refit off publishes the
model chosen on val, which the refit-on run holds when the choice is made (candidates.widen returns it): the
benchmark keeps that model, and the time it took, so one run gives both arms (a second run with the refit off
would repeat the same seeded training). Both models are scored on the same test images: accuracy with its
95% bootstrap interval, the items where they differ, a paired bootstrap interval of the difference, and the
finetune stage's wall time on / off (the refit's added cost as a ratio). With --work, outputs already there
(prepare to companion) are reused and checkpoints resumed.

    python benchmarks/bench_refit.py                      # digits (as bench_quality.py --dataset digits builds them)
    python benchmarks/bench_refit.py --source data/sample  # any folder or manifest
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench_quality import build_digits

import common


def paired_interval(right_a, right_b, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of accuracy(b) - accuracy(a), resampling the same test items for both."""
    import numpy as np

    diff = right_b.astype(float) - right_a.astype(float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a folder or manifest instead of digits")
    parser.add_argument("--params", type=Path, default=common.REPO / "params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--work", type=Path, help="keep the data and outputs here (default: a temporary folder)")
    parser.add_argument("--off-run", action="store_true",
                        help="also run finetune with the refit off, and check it publishes the model kept")
    args = parser.parse_args()
    what = str(args.source) if args.source else "digits (scikit-learn load_digits, 8x8 -> 32 px bilinear)"
    common.header(f"refit on train + val, off vs on, on {what}")


    from transferkit.config import parse_params
    from transferkit.data.manifest import load_manifest, split_of
    from transferkit.data.prepare import prepare
    from transferkit.deliver.inference import predict_files
    from transferkit.deliver.published import load_published
    from transferkit.embeddings.extract import extract
    from transferkit.train import candidates
    from transferkit.train.companion import companion
    from transferkit.train.finetune import finetune
    from transferkit.train.train_head import train_head

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-refit-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = common.read_params(args.params, args.set)
    source = args.source or work / "digits"
    if not args.source and not source.exists():
        build_digits(source)
    raw["data"]["source"] = str(Path(source).resolve())
    out = work / "out"
    seconds, right = {}, {}
    try:
        params = parse_params(raw)
        start = time.perf_counter()
        if not (out / "companion" / "companion.json").exists():  # else made by an earlier run in --work
            prepare(Path(source), out / "manifest.parquet", out / "report.json", params.data)
            extract(out / "manifest.parquet", work / "store", out / "embeddings.npz", params.backbone,
                    params.extract, params.data.seed)
            train_head(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras", out / "head.csv",
                       params.head, params.data.seed)
            companion(out / "manifest.parquet", out / "companion", out / "companion.csv", out / "ckpt-companion",
                      params.companion, params.data.seed)
        seconds["before finetune"] = time.perf_counter() - start
        manifest = load_manifest(out / "manifest.parquet")
        test = split_of(manifest, "test")
        y_test = test["label_index"].to_numpy()
        kept = {}
        widen = candidates.widen

        def keep_the_choice(*args, **kwargs):  # the model refit off would publish, and when it is ready
            chosen = widen(*args, **kwargs)
            kept.update(model=chosen[0], seconds=time.perf_counter() - start)
            return chosen

        candidates.widen = keep_the_choice
        raw["finetune"]["refit"] = True
        params = parse_params(raw)
        start = time.perf_counter()
        on = finetune(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras", out / "model-on.keras",
                      out / "model-on.json", out / "finetune-on.csv", out / "ckpt-on", params.backbone,
                      params.finetune, params.data.seed, companion_path=out / "companion", text_params=params.text,
                      head_params=params.head, companion_params=params.companion, head_history=out / "head.csv")
        seconds["finetune refit on"] = time.perf_counter() - start
        seconds["finetune refit off"] = kept["seconds"]  # a resumed run: the resumed part only
        candidates.widen = widen
        model, info = load_published(out / "model-on.keras", out / "model-on.json")
        right["on"] = predict_files(model, info, test["path"].tolist(), 64).probabilities.argmax(1) == y_test
        right["off"] = predict_files(kept["model"], info, test["path"].tolist(), 64).probabilities.argmax(1) == y_test
        print("refit on:", json.dumps({k: v for k, v in on.metrics_file().items()
                                       if k not in ("recipe", "candidates")}), flush=True)
        if args.off_run:
            raw["finetune"]["refit"] = False
            params = parse_params(raw)
            off = finetune(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras",
                           out / "model-off.keras", out / "model-off.json", out / "finetune-off.csv",
                           out / "ckpt-off", params.backbone, params.finetune, params.data.seed,
                           companion_path=out / "companion", text_params=params.text)
            model, info = load_published(out / "model-off.keras", out / "model-off.json")
            again = predict_files(model, info, test["path"].tolist(), 64).probabilities.argmax(1) == y_test
            print(f"refit off run: published {off.published}, the same test results as the model kept: "
                  f"{bool((again == right['off']).all())}")
        print()
        print(f"{what}: {len(test)} test items, {common.machine()}, {time.strftime('%Y-%m-%d %H:%M')} UTC")
        print(f"chosen on val: {on.published} (best fine-tuned epoch {on.best_epoch}, companion weight "
              f"{on.companion_weight})")
        print(f"refit: {on.refit_items} train + val items, {on.refit_steps} steps, epochs {on.refit_epochs}")
        print("| refit | test accuracy | 95% bootstrap |")
        print("|---|---|---|")
        for name in ("off", "on"):
            correct = int(right[name].sum())
            lo, hi = candidates.interval(correct, len(y_test))
            print(f"| {name} | {correct / len(y_test):.4f} | {lo:.4f}-{hi:.4f} |")
        lo, hi = paired_interval(right["off"], right["on"])
        gained, lost = int((right["on"] & ~right["off"]).sum()), int((right["off"] & ~right["on"]).sum())
        print(f"on - off: {(right['on'].mean() - right['off'].mean()) * 100:+.2f} points (paired 95% bootstrap "
              f"{lo * 100:+.2f} to {hi * 100:+.2f}); {gained} test items right only with the refit, {lost} only "
              f"without")
        ratio = seconds["finetune refit on"] / seconds["finetune refit off"]
        whole = (seconds["before finetune"] + seconds["finetune refit on"]) / (
            seconds["before finetune"] + seconds["finetune refit off"])
        print(f"wall time: finetune with the refit / without {ratio:.2f}x; prepare..finetune {whole:.2f}x")
        print("wall time (s):", json.dumps({k: round(v) for k, v in seconds.items()}))
        common.ratio_line("finetune wall time, refit on / off", ratio, "information only", None)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
