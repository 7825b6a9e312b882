"""The served text model: a column `text` in, label / probability / probabilities out, bad input a one-line 400;
served for real over HTTP (`mlflow models serve`, no TensorFlow in the model), agreeing with `transferkit predict
--text`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transferkit.backbones.bert import WindowSettings
from transferkit.cli import main
from transferkit.deliver import serving
from transferkit.deliver.export import TOKENIZER_FILE
from transferkit.deliver.published import text_model_info
from transferkit.deliver.serving import Classifier, ClientError, classify_texts, model_signature, pip_requirements

from conftest import free_port
from servers import post_json, wait_until_up
from text_models import text_of

INFO = text_model_info(["a", "b"], "all_minilm_l6_v2", "0" * 64, WindowSettings(16, 4, 3))
# New texts of the tiny project's classes (not its files): a long one (more windows than max_windows) first.
TEXTS = [text_of(label, i, np.random.default_rng(7)) for i, label in enumerate(("weather", "billing", "sports"))]


def never_runs(batch):
    raise AssertionError("the model ran on a bad request")


def test_signature_takes_a_column_of_texts_and_returns_labels():
    (column,) = model_signature(INFO).inputs.inputs
    assert (column.name, column.type.name) == ("text", "string")
    assert [c.name for c in model_signature(INFO).outputs.inputs] == ["label", "probability", "probabilities"]


def test_requirements_add_the_tokenizer_not_tensorflow():
    requirements = pip_requirements(INFO)
    assert any(r.startswith("tokenizers==") for r in requirements) and any(r.startswith("onnxruntime==")
                                                                            for r in requirements)
    assert not any(r.startswith(("tensorflow", "keras")) for r in requirements)


@pytest.mark.parametrize("value, message", [
    (5, "text 1: not a string (int)"),
    (None, "text 1: not a string (NoneType)"),
    ("", "text 1: empty text"),
    ("  \n ", "text 1: empty text (nothing but whitespace)"),
])
def test_a_bad_text_is_a_one_line_client_error_naming_the_row(value, message):
    with pytest.raises(ClientError) as caught:
        classify_texts(never_runs, INFO, None, ["fine", value])
    assert caught.value.message == message and caught.value.get_http_status_code() == 400


def test_a_request_without_the_text_column_is_a_client_error():
    model = Classifier()
    model.info = INFO
    with pytest.raises(ClientError, match=r"^the request has no column 'text' \(texts, strings\)$"):
        model.predict(None, pd.DataFrame({"image": ["x"]}))


# ---------------------------------------------------------------- served for real




@pytest.fixture(scope="module")
def served(text_exported, tmp_path_factory):
    """The exported text model saved as the export stage logs it (the same files, code, signature and
    requirements), served once for the module by `mlflow models serve` on loopback; yields its URL."""
    import mlflow

    root, _, _, info_path, result = text_exported
    folder = result.folder
    saved = tmp_path_factory.mktemp("served") / "model"
    mlflow.pyfunc.save_model(
        str(saved), python_model=str(serving.model_file()),
        artifacts={serving.MODEL_ARTIFACT: str(folder / "model.onnx"),
                   serving.INFO_ARTIFACT: str(folder / "model.onnx.json"),
                   serving.TOKENIZER_ARTIFACT: str(folder / TOKENIZER_FILE)},
        code_paths=[str(serving.code_path())], signature=serving.model_signature(result.info),
        input_example=serving.input_example(result.example, result.info),
        pip_requirements=pip_requirements(result.info))
    port, log = free_port(), saved.parent / "serve.log"
    bin_dir = Path(sys.executable).parent  # mlflow runs uvicorn by name
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "w") as sink:
        server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", str(saved), "--env-manager",
                                   "local", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=sink,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/ping", server, log, 180)
        yield url
    finally:
        os.killpg(server.pid, 15)  # the server and its uvicorn workers
        server.wait(timeout=30)


def test_the_served_model_answers_texts_like_predict_text(served, text_exported, capsys):
    _, _, model_path, info_path, _ = text_exported
    status, body = post_json(f"{served}/invocations", {"dataframe_records": [{"text": t} for t in TEXTS]})
    assert status == 200, body
    served_rows = body["predictions"]
    args = ["predict", "--model", str(model_path), "--model-info", str(info_path), "--format", "json", "--top-k", "3"]
    for text in TEXTS:
        args += ["--text", text]
    assert main(args) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in predicted] == ["--text 1", "--text 2", "--text 3"]
    assert [row["label"] for row in served_rows] == [r["predictions"][0]["label"] for r in predicted]
    assert [row["label"] for row in served_rows] == ["weather", "billing", "sports"]  # the tiny model is right here
    for row, mine in zip(served_rows, predicted, strict=True):
        assert set(row["probabilities"]) == {"billing", "sports", "weather"}
        for p in mine["predictions"]:  # onnxruntime vs TensorFlow: within the parity gate's tolerance
            assert row["probabilities"][p["label"]] == pytest.approx(p["probability"], abs=1e-4)


@pytest.mark.parametrize("records, message", [
    ([{"text": 7}], "text 0: not a string (int)"),
    ([{"text": ""}], "text 0: empty text"),
    ([{"words": "hello"}], "the request has no column 'text' (texts, strings)"),
])
def test_bad_requests_get_a_one_line_400(served, records, message):
    status, body = post_json(f"{served}/invocations", {"dataframe_records": records})
    assert status == 400 and body["message"] == message, body
    assert "stack_trace" not in body
