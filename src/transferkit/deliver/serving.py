"""The model the pipeline registers in MLflow: image files or texts in, labels out.

    mlflow models serve -m models:/transferkit/latest --env-manager local
    POST /invocations {"dataframe_records": [{"image": "<base64 of a JPEG/PNG/WebP... file>"}]}
    -> {"predictions": [{"label": "bag", "probability": 0.97, "probabilities": {"bag": 0.97, ...}}]}

A text model (registered under its own tracking.registered_model, e.g. transferkit-text) takes a
column `text` of strings instead: {"dataframe_records": [{"text": "Dear friend, ..."}]}; each text
goes through data.texts.check_text (the decoder's rules for a given string) and the tokenizer.json
logged with the model, with the window settings of its model.json (inference.predict_texts).

A pyfunc (models-from-code: served_model.py, no pickle) around the exported
ONNX file that passed the export stage's parity gate, run by onnxruntime
through inference.predict_batches, the batch path every consumer uses (no
TensorFlow in the server: nothing this module imports may import it). Each
image is decoded by the pipeline's own decoder (images.load_rgb: EXIF
orientation, RGB, the resize spec), whose code travels inside the logged
model, so serving sees the pixels training saw.

A request the model cannot use (no `image` or `text` column, a value that is
not base64 of an image file, a text that is not a string or is empty) is a 400
with a one-line message; see ClientError.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from transferkit.config import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_TEXT_BYTES
from transferkit.data.images import ImageRejected, load_rgb
from transferkit.data.texts import TextRejected, check_text, load_text
from transferkit.deliver import runtimes
from transferkit.deliver.inference import predict_batches, predict_texts, tokenizer_for
from transferkit.deliver.published import ModelInfo
from transferkit.files import read_json

if TYPE_CHECKING:
    import pandas as pd

INPUT_COLUMN = "image"  # an image model's request column
TEXT_COLUMN = "text"  # a text model's
MODEL_ARTIFACT, INFO_ARTIFACT, TOKENIZER_ARTIFACT = "model", "info", "tokenizer"  # files inside the logged model
BATCH_SIZE = 32


class ClientError(MlflowException):
    """A 400 whose body is only this message.

    MLflow 3.17's scoring server turns any other exception raised in `predict`
    into a body with the whole stack trace, and rewrites an MlflowException's
    `message` to prepend the request data (the images' base64); this keeps the
    first message it was given. Pinned mlflow; tests/e2e checks the body.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


def decode_image(value, row: int, size: int) -> np.ndarray:
    """One base64-encoded image file -> (size, size, 3) uint8, through the pipeline's decoder."""
    if not isinstance(value, (str, bytes)) or not value:
        raise ClientError(f"{INPUT_COLUMN} {row}: expected a base64-encoded image file, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"{INPUT_COLUMN} {row}: not valid base64") from None
    try:
        return load_rgb(io.BytesIO(raw), size, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    except ImageRejected as exc:
        raise ClientError(f"{INPUT_COLUMN} {row}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ClientError(f"{INPUT_COLUMN} {row}: cannot decode: {exc}") from None


def check_request_text(value, row: int) -> str:
    """One request text, by the decoder's rules for a given string (data.texts.check_text)."""
    try:
        return check_text(value, DEFAULT_MAX_TEXT_BYTES)
    except TextRejected as exc:
        raise ClientError(f"{TEXT_COLUMN} {row}: {exc}") from None


def column_of(info: ModelInfo) -> str:
    return TEXT_COLUMN if info.modality == "text" else INPUT_COLUMN


class Classifier(PythonModel):
    """The served model of either modality (its model.json says which)."""
    # The signature is explicit (model_signature) and predict checks its input itself: no type-hint
    # validation (MLflow would otherwise warn that predict has no type hints).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        described = read_json(context.artifacts[INFO_ARTIFACT])  # export's <file>.json: ModelInfo and more
        self.info = ModelInfo(**{f.name: described[f.name] for f in fields(ModelInfo) if f.name in described})
        self.run = runtimes.runner(context.artifacts[MODEL_ARTIFACT], "onnxruntime")
        self.tokenizer = (tokenizer_for(self.info, context.artifacts[TOKENIZER_ARTIFACT])
                          if self.info.modality == "text" else None)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        info = getattr(self, "info", None)
        column = column_of(info) if info is not None else INPUT_COLUMN
        if not isinstance(model_input, pd.DataFrame) or column not in model_input.columns:
            what = "texts, strings" if column == TEXT_COLUMN else "base64-encoded image files"
            raise ClientError(f"the request has no column '{column}' ({what})")
        if column == TEXT_COLUMN:
            return classify_texts(self.run, info, self.tokenizer, model_input[column].tolist())
        return classify(self.run, info, model_input[column].tolist())


ImageClassifier = Classifier  # its name before text models


def classify(run: runtimes.Runner, info: ModelInfo, values: list) -> pd.DataFrame:
    """One row per value (a base64 image file): its label, that label's probability, every class's."""
    # Decoded a batch at a time, as predict_batches asks for it: a bad value stops the request there.
    batches = (np.stack([decode_image(v, start + i, info.image_size)
                         for i, v in enumerate(values[start:start + BATCH_SIZE])])
               for start in range(0, len(values), BATCH_SIZE))
    return answer(info, predict_batches(run, batches).plain)


def classify_texts(run: runtimes.Runner, info: ModelInfo, tokenizer, values: list) -> pd.DataFrame:
    """One row per value (a text): its label, that label's probability, every class's. Every text is checked
    before any runs, so a bad one answers 400 at once."""
    texts = [check_request_text(value, row) for row, value in enumerate(values)]
    return answer(info, predict_texts(run, info, texts, BATCH_SIZE, tokenizer).plain)


def answer(info: ModelInfo, probabilities: np.ndarray) -> pd.DataFrame:
    """The response rows: label, its probability, every class's probability."""
    import pandas as pd

    rows = []
    for probs in probabilities:
        best = int(np.argmax(probs))
        rows.append({"label": info.classes[best], "probability": float(probs[best]),
                     "probabilities": {c: float(p) for c, p in zip(info.classes, probs, strict=True)}})
    return pd.DataFrame(rows, columns=["label", "probability", "probabilities"])


# Characters of a test text shown as the logged model's input example (the MLflow UI shows it whole).
EXAMPLE_CHARS = 300


def input_example(path: str | Path, info: ModelInfo | None = None):
    """A request of one test file, as the served model takes it (shown in the MLflow UI): an image file in
    base64, or the start of a text."""
    import pandas as pd

    if info is not None and info.modality == "text":
        return pd.DataFrame({TEXT_COLUMN: [load_text(path)[:EXAMPLE_CHARS]]})
    return pd.DataFrame({INPUT_COLUMN: [base64.b64encode(Path(path).read_bytes()).decode("ascii")]})


def model_signature(info: ModelInfo):
    """Input: a string column `image` (base64 image files) or `text` (a text model); output: label, probability,
    per-class probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Map, Schema

    return ModelSignature(
        # Not `required`: a request without it reaches predict, which answers with a one-line 400
        # (MLflow's own schema error would echo the whole request).
        inputs=Schema([ColSpec("string", column_of(info), required=False)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability"),
                        ColSpec(Map("double"), "probabilities")]),
    )


def pip_requirements(info: ModelInfo | None = None) -> list[str]:
    """What the served model imports (MLflow adds itself): onnxruntime, not TensorFlow; tokenizers for text."""
    names = ("onnxruntime", "numpy", "pandas", "pillow", *(("tokenizers",) if info and info.modality == "text" else ()))
    return [f"{name}=={metadata.version(name)}" for name in names]


def code_path() -> Path:
    """The transferkit package folder (the whole package): logged with the model, so it decodes with this exact code."""
    return Path(__file__).resolve().parents[1]


def model_file() -> Path:
    """The models-from-code file MLflow loads (it calls mlflow.models.set_model)."""
    return Path(__file__).resolve().parent / "served_model.py"
