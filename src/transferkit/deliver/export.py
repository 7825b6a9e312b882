"""The `export` stage: the published model as SavedModel, LiteRT and ONNX files, and the parity gate.

The SavedModel and ONNX files are written by Keras' own exporter
(`model.export(format=...)`), the LiteRT files by runtimes.to_litert from that
SavedModel (Keras' litert export does the same through a temporary one), so
the backbone's preprocessing travels inside every file: each takes raw RGB pixels
0..255, float32, (N, size, size, 3), named `image`, and returns one
probability per class. Beside each file, `<file>.json` holds its class list
and input spec.

The parity gate then runs each file through its own runtime (TensorFlow,
the LiteRT interpreter, onnxruntime; runtimes.runner) on the test images,
decoded once by the pipeline's one decoder, and compares it with the Keras
model, each through inference.predict_batches. A float32 file fails the
stage when a probability differs by more than FLOAT_TOLERANCE, or when it
changes a prediction the Keras model makes by a clear margin; a quantized
file (export.quantize) fails when it agrees on fewer than
QUANTIZED_MIN_AGREEMENT of the predictions or loses more than
QUANTIZED_MAX_ACCURACY_DROP of accuracy.

A text model (ModelInfo.modality "text") is exported the same way: each
file takes `token_ids` and `padding_mask`, int32 (N, windows, tokens), and
holds the encoder and the head. Beside the files: `tokenizer.json` (the one
that makes the token ids) and, in each `<file>.json`, the window settings
(`text`: max_tokens, overlap, max_windows). Its parity gate runs the raw test
texts through the tokenizer and windows (inference.text_batches, batched by
length) into each file. No browser (web) folder for text, and no int8 file
(its calibration is images); `export.quantize: dynamic` works.

An image model also gets `web/` (deliver/web.py): a static page that runs
model.onnx in the browser with onnxruntime-web (copied in from `web_runtime`,
node_modules/onnxruntime-web/dist). The stage never starts a browser: the
page's own check is `make web-check` and tests/deliver/test_web.py.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from transferkit.config import ExportParams
from transferkit.data.datasets import decoded_batches
from transferkit.data.manifest import load_manifest, split_of
from transferkit.data.texts import load_text
from transferkit.deliver import runtimes, web
from transferkit.deliver.inference import predict_batches, text_batches, tokenizer_file, tokenizer_for
from transferkit.deliver.published import ModelInfo, load_published
from transferkit.errors import TransferkitError
from transferkit.files import write_json
from transferkit.results import StageResult

FLOAT_TOLERANCE = 1e-4  # max |probability difference| of a float32 file from the Keras model
MARGIN = 1e-4  # a changed top-1 counts when the Keras model's top-2 margin is above this
QUANTIZED_MIN_AGREEMENT = 0.99  # of top-1 predictions, for export.quantize: dynamic | int8
QUANTIZED_MAX_ACCURACY_DROP = 0.01  # test accuracy, quantized file vs Keras model
ONNX_OUTPUT = runtimes.ONNX_OUTPUT
TOKENIZER_FILE = "tokenizer.json"  # a text model's tokenizer, copied beside its files


@dataclass(frozen=True)
class Artifact:
    name: str  # saved_model, litert, litert_dynamic, litert_int8, onnx
    file: str  # name inside the export folder
    runtime: str  # tensorflow, litert, onnxruntime
    quantized: bool

    def runner(self, folder: Path) -> runtimes.Runner:
        return runtimes.runner(folder / self.file, self.runtime)


SAVED_MODEL = Artifact("saved_model", "saved_model", "tensorflow", False)  # the LiteRT files are converted from it


def artifacts_for(params: ExportParams) -> list[Artifact]:
    found = [SAVED_MODEL,
             Artifact("litert", "model.tflite", "litert", False),
             Artifact("onnx", "model.onnx", "onnxruntime", False)]
    if params.quantize != "none":
        found.append(Artifact(f"litert_{params.quantize}", f"model_{params.quantize}.tflite", "litert", True))
    return found


def write_artifact(model, artifact: Artifact, folder: Path, params: ExportParams,
                   calibration: np.ndarray | None = None) -> None:
    """Write `artifact` into `folder`; a LiteRT file is converted from the SavedModel in `folder` (written
    first if it is not there), a quantized one as `params.quantize` says, int8 calibrated on `calibration`."""
    path = folder / artifact.file
    saved_model = folder / SAVED_MODEL.file
    if artifact.runtime == "litert" and not saved_model.exists():
        write_artifact(model, SAVED_MODEL, folder, params)
    if artifact == SAVED_MODEL:
        model.export(str(path), format="tf_saved_model", verbose=False)
    elif artifact.runtime == "onnxruntime":
        runtimes.to_onnx(model, path, params.onnx_opset)
    elif artifact.runtime == "litert":
        # From the SavedModel just written: converting the Keras model would trace it again (about 9 s).
        quantize = params.quantize if artifact.quantized else "none"
        path.write_bytes(runtimes.to_litert(saved_model, quantize, calibration))
    else:
        raise ValueError(artifact.name)


def input_spec(info: ModelInfo) -> dict:
    if info.modality == "text":
        return {"names": list(runtimes.TEXT_INPUTS), "dtype": "int32", "shape": [-1, -1, -1],
                "tokens": f"{TOKENIZER_FILE} (beside this file) over each text, [CLS] window [SEP], windows of "
                          f"`text` max_tokens overlapping by `text` overlap, at most `text` max_windows (spread "
                          f"over a longer text); padding_mask 1 for a real token, 0 for padding"}
    size = info.image_size
    return {"name": "image", "dtype": "float32", "shape": [-1, size, size, 3],
            "pixels": "RGB 0..255, resized to image_size x image_size; no other preprocessing (it is inside the model)"}


def description(info: ModelInfo, artifact: Artifact) -> dict:
    """What sits beside each file: its classes and exactly what goes in and comes out."""
    return {
        **asdict(info),
        "format": artifact.name, "file": artifact.file, "runtime": artifact.runtime,
        "quantized": artifact.quantized,
        "input_spec": input_spec(info),
        "output_spec": {"name": ONNX_OUTPUT if artifact.name == "onnx" else "output_0", "dtype": "float32",
                        "shape": [-1, len(info.classes)], "meaning": "probability of classes[i]"},
    }


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
    """Figures of one file's probabilities against the Keras model's on the same images."""
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.concatenate(
        [np.zeros_like(reference), reference], axis=1)
    clear = (top2[:, 1] - top2[:, 0]) > MARGIN
    flipped = probs.argmax(axis=1) != reference.argmax(axis=1)
    return {
        "max_abs_diff": float(np.max(np.abs(probs - reference))),
        "top1_agreement": float(1.0 - flipped.mean()),
        "clear_top1_changed": int((flipped & clear).sum()),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
    }


def gate(artifact: Artifact, figures: dict, reference_accuracy: float) -> str | None:
    """Why this file fails the parity gate, naming the figure, or None."""
    if not artifact.quantized:
        if figures["max_abs_diff"] > FLOAT_TOLERANCE:
            return f"max |probability difference| {figures['max_abs_diff']:.3g} > {FLOAT_TOLERANCE:g}"
        if figures["clear_top1_changed"]:
            return (f"changed {figures['clear_top1_changed']} top-1 prediction(s) whose top-2 margin in the Keras "
                    f"model is above {MARGIN:g}")
        return None
    if figures["top1_agreement"] < QUANTIZED_MIN_AGREEMENT:
        return f"top-1 agreement {figures['top1_agreement']:.2%} < {QUANTIZED_MIN_AGREEMENT:.0%}"
    drop = reference_accuracy - figures["accuracy"]
    if drop > QUANTIZED_MAX_ACCURACY_DROP + 1e-12:
        return (f"test accuracy {figures['accuracy']:.4f} is {drop * 100:.2f} points below the Keras model's "
                f"{reference_accuracy:.4f} (allowed: {QUANTIZED_MAX_ACCURACY_DROP * 100:g})")
    return None


@dataclass(frozen=True)
class ExportResult(StageResult):
    """The parity gate's figures; `check` fails the stage after they are written and recorded, and only a
    file set that passes registers the served model (`finish`)."""
    test_images: int
    keras_accuracy: float
    figures: dict[str, dict]  # per exported file (artifact name): compare()'s figures
    failures: list[str]  # one line per file that fails the gate, naming it and the figure
    folder: Path
    info: ModelInfo
    example: str  # a test image file: the served model's input example
    registered_model: str  # tracking.registered_model
    web_folder: Path | None = None  # the browser page's folder (image models, when a web runtime was given)

    def lines(self) -> list[str]:
        items = "test texts" if self.info.modality == "text" else "test images"
        lines = [f"{name}: max |prob diff| {f['max_abs_diff']:.2g}, top-1 agreement {f['top1_agreement']:.2%} "
                 f"on {self.test_images} {items}" for name, f in self.figures.items()]
        if self.info.modality == "text":
            lines.append(f"text model: {TOKENIZER_FILE} and the window settings beside the files; no browser (web) "
                         f"folder (the browser page is for image models)")
        elif self.web_folder is not None:
            lines.append(f"browser page: {self.web_folder} ({web.folder_megabytes(self.web_folder):.1f} MB with the "
                         f"model and onnxruntime-web); `make web` serves it, `make web-check` compares it")
        return lines

    def metrics_file(self) -> dict:
        return {"test_images": self.test_images, "keras_accuracy": self.keras_accuracy, "artifacts": self.figures}

    def run_metrics(self) -> dict[str, float]:
        return {f"{name}.{key}": value for name, f in self.figures.items() for key, value in f.items()}

    def parent_metrics(self) -> dict[str, float]:
        return {f"export.{key}": value for key, value in self.run_metrics().items()}

    def check(self) -> None:
        """Raise TransferkitError naming each file that failed the parity gate, and the figure."""
        if self.failures:
            raise TransferkitError("parity gate failed, exported files differ from the Keras model:\n  "
                                   + "\n  ".join(self.failures))

    def finish(self, tracker) -> list[str]:
        """Log the served model (the ONNX file that passed, with the decoder's code) and register it."""
        from transferkit.deliver import serving

        artifacts = {serving.MODEL_ARTIFACT: str(self.folder / "model.onnx"),
                     serving.INFO_ARTIFACT: str(self.folder / "model.onnx.json")}
        if self.info.modality == "text":
            artifacts[serving.TOKENIZER_ARTIFACT] = str(self.folder / TOKENIZER_FILE)
        uri = tracker.log_model(serving.model_file(), artifacts, [serving.code_path()],
                                serving.model_signature(self.info), serving.input_example(self.example, self.info),
                                serving.pip_requirements(self.info), self.registered_model, self.info.modality)
        return [f"parity gate passed; served model logged as {uri} and registered as '{self.registered_model}'"]


def export(manifest_path: str | Path, model_path: str | Path, info_path: str | Path, folder: str | Path,
           params: ExportParams, registered_model: str, web_runtime: str | Path | None = None) -> ExportResult:
    """Write every file into `folder` (replaced whole) and run the parity gate on each.

    web_runtime: onnxruntime-web's dist folder; given, an image model also gets the browser page in
    `folder`/web (deliver/web.py). A text model never does."""
    folder = Path(folder)
    model, info = load_published(model_path, info_path)
    manifest = load_manifest(manifest_path)
    test = split_of(manifest, "test")
    if test.empty:
        raise TransferkitError("data.test_fraction: the test split is empty; the parity gate needs test items")
    labels = test["label_index"].to_numpy()
    if web_runtime is not None and info.modality == "image":
        web.find_runtime(web_runtime)  # before the minutes of conversion, not after
    calibration = None
    if info.modality == "text":
        if params.quantize == "int8":
            raise TransferkitError("export.quantize: int8 is calibrated on images; for a text model use none or "
                                   "dynamic")
        # Tokenized once, batched by length; the labels follow the rows' new order.
        pairs = list(text_batches([load_text(p) for p in test["path"]], tokenizer_for(info),
                                  info.window_settings(), params.batch_size))
        batches = [batch for _, batch in pairs]
        labels = labels[np.concatenate([rows for rows, _ in pairs])]
    else:
        # Decoded once, kept as uint8 (a quarter of float32's memory): every runner casts to float32 itself.
        batches = list(decoded_batches(test["path"].tolist(), info.image_size, params.batch_size))
    if params.quantize == "int8":
        paths = split_of(manifest, "train")["path"].tolist()[:params.calibration_images]
        calibration = np.concatenate(list(decoded_batches(paths, info.image_size, params.batch_size)))

    work = folder.with_name(f".tmp-{os.getpid()}-{folder.name}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        artifacts = artifacts_for(params)
        for artifact in artifacts:
            write_artifact(model, artifact, work, params, calibration)
            write_json(work / f"{artifact.file}.json", description(info, artifact))
        if info.modality == "text":
            shutil.copyfile(tokenizer_file(info), work / TOKENIZER_FILE)
        elif web_runtime is not None:
            web.write_web_folder(work / web.WEB_FOLDER, work / "model.onnx", web_runtime)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = predict_batches(runtimes.runner(model, "tensorflow"), batches).plain
    keras_accuracy = float((reference.argmax(axis=1) == labels).mean())
    figures = {a.name: compare(reference, predict_batches(a.runner(folder), batches).plain, labels) for a in artifacts}
    failures = [f"{folder / a.file} ({a.runtime}): {why}" for a in artifacts
                if (why := gate(a, figures[a.name], keras_accuracy))]
    return ExportResult(test_images=int(len(labels)), keras_accuracy=keras_accuracy, figures=figures,
                        failures=failures, folder=folder, info=info, example=test["path"].iloc[0],
                        registered_model=registered_model,
                        web_folder=folder / web.WEB_FOLDER if info.modality == "image" and web_runtime else None)
