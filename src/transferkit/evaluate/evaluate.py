"""The `evaluate` stage: the published model on the test split, beside the head-only model.

It runs the exact files `predict` would load on the raw test images, through
the same inference path (inference.predict_files), so the score covers the
whole path from pixels to probabilities, preprocessing included. With
`evaluate.tta` the published model's prediction is the mean over each image
and its mirror image; the accuracy without it is reported beside.

Beside it, the head-only model (the frozen backbone + the trained head, what
feature extraction alone gives) is scored on the same test images: the head
on their embeddings, which is that model's output without running the
backbone again. `finetune_gain` = what fine-tuning bought on test (without
TTA on either side, so it is fine-tuning's own gain).

With `evaluate.baseline`, cheap classical baselines (baselines.py: an RBF SVM
and a logistic regression on raw pixels, kNN on the embeddings) are fitted on
train, the best on val is refitted on train + val and scored on the same test
images: `gain_over_baseline` = the published model's test accuracy minus the
baseline's, and a line says so in plain words when the model loses.

The most confidently wrong test items are written to `errors` (plots/errors.csv
in dvc.yaml; logged to MLflow beside the plots): path, true and predicted
label, the predicted probability, and for a text model the first
ERROR_TEXT_CHARS characters of the text, most confident first. The same
mistakes as a page to look at (gallery.py: thumbnails grouped by confused
pair, a strip per class) go to `errors_html` (plots/errors.html, logged to
MLflow too, where the artifact view shows it).

A text model (ModelInfo.modality "text") goes through the same path: its test
texts are read by data.texts.load_text and tokenized as the model says
(inference.predict_files); the image-only parts (flip TTA) never apply, and
its baselines are TF-IDF + linear SVM and kNN on the embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transferkit.config import EvaluateParams
from transferkit.data.manifest import load_manifest, split_of
from transferkit.data.texts import load_text
from transferkit.deliver.inference import predict_files
from transferkit.deliver.published import load_published
from transferkit.embeddings.table import EmbeddingTable, read_table
from transferkit.errors import TransferkitError
from transferkit.evaluate.baselines import BaselineResult, fit_baseline
from transferkit.evaluate.gallery import write_gallery
from transferkit.evaluate.metrics import classification_report
from transferkit.evaluate.plots import calibration_png, confusion_png, curves_png
from transferkit.files import atomic_path
from transferkit.results import Attachment, StageResult

# The figures a run shows at a glance: the stage's MLflow run, and the pipeline's as test_<name>.
MAX_ERRORS = 50  # rows of the errors file: enough to see a pattern, few enough to read
ERROR_TEXT_CHARS = 300  # characters of each wrong text shown in the errors file
HEADLINE = ("accuracy", "macro_f1", "log_loss", "ece", "accuracy_without_tta", "head_only_accuracy",
            "head_only_macro_f1", "finetune_gain", "baseline_accuracy", "baseline_val_accuracy", "gain_over_baseline")


@dataclass(frozen=True)
class EvaluateOutputs:
    """Where evaluate writes (from the command line, i.e. dvc.yaml); the metrics file is the runner's."""
    confusion_csv: Path  # actual,predicted per test image: DVC's confusion-matrix plot data
    predictions: Path  # path,actual,predicted,confidence per test image, for error analysis
    errors: Path  # the most confidently wrong test items (CSV): path,actual,predicted,probability[,text]
    errors_html: Path  # the error gallery: the most confidently wrong test items as thumbnails (or snippets)
    confusion_png: Path
    calibration_png: Path
    curves_png: Path


@dataclass(frozen=True)
class EvaluateResult(StageResult):
    metrics_to_parent = True  # the test metrics beside the plots in the pipeline's run

    summary: dict  # the metrics file: accuracy, macro-F1, per class, calibration, head-only model, baseline
    outputs: EvaluateOutputs
    attached: tuple[Path, ...]  # logged to the pipeline's run beside the metrics: model.json, the data report
    min_accuracy: float | None  # evaluate.min_accuracy, the quality gate
    baseline_asked: bool = False  # evaluate.baseline
    baseline: BaselineResult | None = None  # None when not asked, or without val images to choose it on
    modality: str = "image"  # the published model's

    def lines(self) -> list[str]:
        s = self.summary
        items = "texts" if self.modality == "text" else "images"
        lines = [f"test accuracy {s['accuracy']:.4f}, macro-F1 {s['macro_f1']:.4f} on {s['test_images']} {items}"
                 f"{' (with TTA)' if s['tta'] else ''}"]
        if s.get("refit"):
            lines.append(f"the published {s['published']} was refitted on train + val (finetune.refit) after every "
                         f"choice was made on val: this test figure is the refitted model's, its val figures in "
                         f"metrics/finetune.json are the pre-refit ones")
        if "head_only_accuracy" in s:
            # The published model may be the companion or the ensemble: name what bought the gain.
            published = s.get("published", "finetuned")
            what = "fine-tuning" if published == "finetuned" else f"the published {published}"
            lines.append(f"head-only model (frozen backbone + head) {s['head_only_accuracy']:.4f}: "
                         + ("the published model is the head" if published == "head" else
                            f"{what} bought {s['finetune_gain'] * 100:+.2f} points"))
        if self.baseline is not None:
            lines += baseline_lines(self.baseline, s["accuracy"], self.modality)
        elif self.baseline_asked:
            lines.append("no baseline: the val split is empty (data.val_fraction), and a baseline is chosen on val")
        return lines

    def metrics_file(self) -> dict:
        return self.summary

    def run_metrics(self) -> dict[str, float]:
        return {k: self.summary[k] for k in HEADLINE if k in self.summary}

    def run_params(self) -> dict[str, str]:
        return {"baseline": self.baseline.name} if self.baseline else {}

    def parent_metrics(self) -> dict[str, float]:
        return {f"test_{k}": v for k, v in self.run_metrics().items()}

    def attachments(self) -> list[Attachment]:
        plots = [Attachment(path, "plots", parent=True) for path in (self.outputs.confusion_png,
                                                                    self.outputs.calibration_png,
                                                                    self.outputs.curves_png, self.outputs.errors,
                                                                    self.outputs.errors_html)]
        return [*plots, *(Attachment(path, parent=True) for path in self.attached)]

    def check(self) -> None:
        """evaluate.min_accuracy: below it the stage fails, so nothing downstream is exported or registered."""
        quality_gate(self.summary, self.min_accuracy)


def baseline_lines(baseline: BaselineResult, accuracy: float, modality: str = "image") -> list[str]:
    """Where the published model stands against the baseline, in plain words, and what the baseline cost."""
    name, test_accuracy = baseline.name, baseline.test_accuracy
    items = "texts" if modality == "text" else "images"
    if accuracy < test_accuracy:
        advice = ("try finetune.strategy full, or more text.max_windows so the encoder reads more of each text; "
                  "on short, keyword-driven texts a classical method can be the better model" if modality == "text"
                  else "try finetune.strategy full, a larger backbone.image_size or another backbone; on small, "
                       "low-resolution images a classical method can be the better model")
        verdict = (f"the published model ({accuracy:.4f}) is below the baseline {name} ({test_accuracy:.4f}) on "
                   f"the same test {items}: {advice}")
    else:
        verdict = (f"baseline {name} scores {test_accuracy:.4f} on the same test {items}: the published model "
                   f"gains {(accuracy - test_accuracy) * 100:+.2f} points over it")
    cost = (f"baseline: {len(baseline.val_scores)} candidates fitted on {baseline.train_images} train {items}, "
            f"{name} the best on {baseline.val_images} val {items} ({baseline.val_accuracy:.4f}), refitted on "
            f"train + val, in {baseline.seconds:.1f} s")
    return [verdict, cost]


def head_only_probs(head_path: str | Path, embeddings: EmbeddingTable, hashes: list[str]) -> np.ndarray:
    """The frozen backbone + head on these images: the head on their embeddings."""
    import keras

    head = keras.saving.load_model(head_path, safe_mode=True)
    return head.predict(embeddings.rows(hashes), verbose=0).astype(np.float64)


def evaluate(manifest_path: str | Path, model_path: str | Path, info_path: str | Path, outputs: EvaluateOutputs,
             histories: dict[str, str], params: EvaluateParams, seed: int, head_path: str | Path | None = None,
             embeddings_path: str | Path | None = None, report_path: str | Path | None = None) -> EvaluateResult:
    """Score the published model on the test split, the head-only model when `head_path` and
    `embeddings_path` are given, and the baseline (with kNN on the embeddings when given; `seed`: data.seed,
    which draws the baseline's capped images); write the plots and their data (the runner writes the
    metrics file)."""
    manifest = load_manifest(manifest_path)
    test = split_of(manifest, "test")
    if test.empty:
        raise TransferkitError("data.test_fraction: the test split is empty; nothing to evaluate")
    model, info = load_published(model_path, info_path)
    classes = info.classes
    tta = params.tta and info.modality == "image"  # a flip is an image's augmentation
    predictions = predict_files(model, info, test["path"].tolist(), params.batch_size, tta=tta,
                                runtime=params.runtime)
    probs = predictions.probabilities
    y_true = test["label_index"].to_numpy()
    report = classification_report(probs, y_true, classes, params.calibration_bins)
    report.summary["tta"] = tta
    report.summary["published"] = info.candidate or "unknown"  # which candidate finetune published, for the summary
    report.summary["refit"] = info.refit  # finetune.refit: trained again on train + val after the choice on val
    plain_accuracy = float((predictions.plain.argmax(axis=1) == y_true).mean())
    if tta:
        report.summary["accuracy_without_tta"] = plain_accuracy
    embeddings = read_table(embeddings_path) if embeddings_path is not None else None  # one read, two users
    if head_path is not None and embeddings is not None:
        head = classification_report(head_only_probs(head_path, embeddings, test["sha256"].tolist()),
                                     y_true, classes, params.calibration_bins).summary
        report.summary.update(head_only_accuracy=head["accuracy"], head_only_macro_f1=head["macro_f1"],
                              finetune_gain=plain_accuracy - head["accuracy"])
    baseline = (fit_baseline(manifest, embeddings, params.baseline_max_train, seed, info.modality)
                if params.baseline else None)
    if baseline is not None:
        report.summary.update(baseline=baseline.name, baseline_accuracy=baseline.test_accuracy,
                              baseline_val_accuracy=baseline.val_accuracy,
                              gain_over_baseline=report.summary["accuracy"] - baseline.test_accuracy)

    y_pred = probs.argmax(axis=1)
    actual, predicted = [classes[i] for i in y_true], [classes[i] for i in y_pred]
    with atomic_path(outputs.confusion_csv) as tmp:
        pd.DataFrame({"actual": actual, "predicted": predicted}).to_csv(tmp, index=False)
    with atomic_path(outputs.predictions) as tmp:
        pd.DataFrame({"path": test["path"].to_numpy(), "actual": actual, "predicted": predicted,
                      "confidence": probs.max(axis=1)}).to_csv(tmp, index=False)
    with atomic_path(outputs.errors) as tmp:
        confident_errors(test["path"].to_numpy(), y_true, probs, classes, info.modality).to_csv(tmp, index=False)
    write_gallery(outputs.errors_html, test["path"].tolist(), y_true, probs, classes, info.modality,
                  params.gallery_size)
    confusion_png(report.confusion, classes, outputs.confusion_png,
                  f"Test confusion matrix (accuracy {report.summary['accuracy']:.3f})")
    calibration_png(report.calibration, outputs.calibration_png, report.summary["ece"])
    curves_png(histories, outputs.curves_png)
    attached = (Path(info_path), *([Path(report_path)] if report_path else []))
    return EvaluateResult(report.summary, outputs, attached, params.min_accuracy, params.baseline, baseline,
                          info.modality)


def confident_errors(paths: np.ndarray, y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                     modality: str) -> pd.DataFrame:
    """The MAX_ERRORS most confidently wrong items, most confident first (ties: test order): path, actual,
    predicted, probability (of the predicted class), and for texts the first ERROR_TEXT_CHARS characters."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:MAX_ERRORS]
    frame = pd.DataFrame({"path": paths[wrong], "actual": [classes[i] for i in y_true[wrong]],
                          "predicted": [classes[i] for i in y_pred[wrong]],
                          "probability": probs[wrong, y_pred[wrong]]})
    if modality == "text":
        frame["text"] = [load_text(path)[:ERROR_TEXT_CHARS] for path in frame["path"]]
    return frame


def quality_gate(summary: dict, min_accuracy: float | None) -> None:
    if min_accuracy is not None and summary["accuracy"] < min_accuracy:
        raise TransferkitError(f"evaluate.min_accuracy: test accuracy {summary['accuracy']:.4f} on "
                               f"{summary['test_images']} images is below {min_accuracy}; "
                               f"nothing is exported or registered")
