import base64
import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferkit.deliver.published import ModelInfo
from transferkit.deliver.serving import ClientError, ImageClassifier, classify, model_signature, pip_requirements

INFO = ModelInfo(["circle", "square", "triangle"], 32, "colour", "0" * 64)


def encoded(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    """A stand-in runner: the share of each channel (R, G, B -> circle, triangle, square)."""
    means = pixels.mean(axis=(1, 2))[:, [0, 2, 1]]
    return (means / means.sum(axis=1, keepdims=True)).astype(np.float32)


def test_signature_takes_a_column_of_image_files_and_returns_labels():
    signature = model_signature(INFO)
    (image,) = signature.inputs.inputs
    assert (image.name, image.type.name) == ("image", "string")
    assert [c.name for c in signature.outputs.inputs] == ["label", "probability", "probabilities"]


def test_requirements_are_the_onnx_runtime_not_tensorflow():
    requirements = pip_requirements()
    assert any(r.startswith("onnxruntime==") for r in requirements)
    assert not any(r.startswith(("tensorflow", "keras")) for r in requirements)


def test_jpeg_and_png_files_are_decoded_by_the_pipeline_decoder_and_labelled():
    red, blue = Image.new("RGB", (50, 40), (220, 30, 30)), Image.new("RGBA", (20, 20), (20, 30, 230, 255))
    out = classify(mean_colour, INFO, [encoded(red, "JPEG"), encoded(blue, "PNG")])
    assert list(out["label"]) == ["circle", "square"]
    assert out["probability"][0] == pytest.approx(out["probabilities"][0]["circle"])
    assert set(out["probabilities"][1]) == set(INFO.classes)


@pytest.mark.parametrize("value, message", [
    ("aGVsbG8=", "image 1: not an image"),  # base64 of b"hello"
    ("%%%", "image 1: not valid base64"),
    (5, "image 1: expected a base64-encoded image file, got int"),
])
def test_a_bad_value_is_a_one_line_client_error_naming_the_row(value, message):
    good = encoded(Image.new("RGB", (8, 8), (200, 0, 0)), "PNG")
    with pytest.raises(ClientError) as caught:
        classify(mean_colour, INFO, [good, value])
    assert caught.value.message.startswith(message) and "\n" not in caught.value.message
    assert caught.value.get_http_status_code() == 400


def test_a_request_without_the_image_column_is_a_client_error():
    with pytest.raises(ClientError, match="no column 'image'"):
        ImageClassifier().predict(None, pd.DataFrame({"picture": ["x"]}))


def test_the_scoring_server_cannot_prepend_the_request_to_the_message():
    error = ClientError("image 0: not an image")
    error.message = f"Failed to predict data '<every image as base64>'. \nError: {error.message}"
    assert error.message == "image 0: not an image"
    assert "stack_trace" not in error.serialize_as_json()


def test_the_serving_path_imports_no_tensorflow():
    """The served model's environment has no TensorFlow: nothing it imports may import it (at module level)."""
    code = ("import sys, transferkit.deliver.serving, transferkit.deliver.inference; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
