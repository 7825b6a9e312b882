import numpy as np
import pytest

from transferkit.deliver.inference import predict_batches, predict_files, top_k
from transferkit.deliver.published import load_published

from conftest import save_colour_model


def test_predictions_follow_the_files(image_folder, tmp_path):
    model, info = load_published(*save_colour_model(tmp_path))
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    probs = predict_files(model, info, paths, batch_size=5).probabilities
    assert probs.shape == (len(paths), 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    predicted = [info.classes[i] for i in probs.argmax(axis=1)]
    assert predicted == [p.split("/")[-2] for p in paths]  # every shape told apart by its colour


def test_top_k_orders_by_probability_and_breaks_ties_by_class_order():
    probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]])
    ranked = top_k(probs, ["a", "b", "c"], 2)
    assert [[p["label"] for p in row] for row in ranked] == [["b", "c"], ["a", "c"]]
    assert ranked[0][0]["probability"] == 0.5
    assert len(top_k(probs, ["a", "b", "c"], 10)[0]) == 3 and len(top_k(probs, ["a", "b", "c"], 0)[0]) == 1


def test_litert_runtime_gives_the_tensorflow_probabilities(image_folder, tmp_path):
    model, info = load_published(*save_colour_model(tmp_path))
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    tensorflow = predict_files(model, info, paths, batch_size=5).probabilities
    litert = predict_files(model, info, paths, batch_size=5, runtime="litert").probabilities
    assert litert.shape == tensorflow.shape and litert.dtype == np.float64
    np.testing.assert_allclose(litert, tensorflow, atol=1e-5)


def halves(pixels: np.ndarray) -> np.ndarray:
    """A stand-in runner that a mirror image changes: (mean of the left half, mean of the right half)."""
    width = pixels.shape[2]
    return np.stack([pixels[:, :, :width // 2].mean(axis=(1, 2, 3)), pixels[:, :, width // 2:].mean(axis=(1, 2, 3))],
                    axis=1).astype(np.float32)


def test_predict_batches_keeps_input_order_and_averages_each_image_with_its_mirror_image():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    for i in range(5):
        images[i, :, :2] = 10 * i  # image i: left half 10 * i, right half 0
    calls = []

    def run(batch):
        calls.append(len(batch))
        return halves(batch)

    batches = (images[i:i + 2] for i in range(0, 5, 2))  # a generator: it can be read only once
    predictions = predict_batches(run, batches, tta=True)
    expected = np.stack([10.0 * np.arange(5), np.zeros(5)], axis=1)
    np.testing.assert_array_equal(predictions.plain, expected)
    np.testing.assert_array_equal(predictions.flipped, expected[:, ::-1])
    np.testing.assert_array_equal(predictions.probabilities, np.repeat(5.0 * np.arange(5)[:, None], 2, axis=1))
    assert predictions.plain.dtype == np.float32 and predictions.probabilities.dtype == np.float64
    assert calls == [2, 2, 2, 2, 1, 1]  # each batch, then its mirror image, right after it

    plain = predict_batches(halves, [images[:3], images[3:]])
    assert plain.flipped is None
    np.testing.assert_array_equal(plain.probabilities, expected)


def test_predict_batches_of_nothing_never_runs_the_model():
    def run(batch):
        raise AssertionError("called")

    predictions = predict_batches(run, iter([]), tta=True)
    assert predictions.plain.shape == predictions.flipped.shape == predictions.probabilities.shape == (0, 0)


@pytest.mark.parametrize("runtime", ["tensorflow", "litert"])
def test_predict_files_flips_each_image_for_tta(tmp_path, runtime):
    """A model that sees only the left half of an image: with TTA it also sees the right half, mirrored."""
    import keras
    from PIL import Image

    from transferkit.deliver.published import ModelInfo

    inputs = keras.Input((8, 8, 3), name="image")
    left = keras.layers.Cropping2D(((0, 0), (0, 4)))(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(left))
    info = ModelInfo(classes=["red", "green", "blue"], image_size=8, backbone="left half", backbone_weights_sha256="0")
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, :4, 0] = pixels[:, 4:, 2] = 200
    Image.fromarray(pixels).save(tmp_path / "red left.png")
    predictions = predict_files(model, info, [tmp_path / "red left.png"] * 3, batch_size=2, tta=True, runtime=runtime)
    np.testing.assert_allclose(predictions.plain, [[200, 0, 0]] * 3, atol=1e-4)
    np.testing.assert_allclose(predictions.flipped, [[0, 0, 200]] * 3, atol=1e-4)
    np.testing.assert_allclose(predictions.probabilities, [[100, 0, 100]] * 3, atol=1e-4)


def test_every_runtime_a_user_can_name_has_a_runner():
    """config (which may not import deliver/) and the `transferkit` command list runtimes of their own: a new
    runtime is one builder and one entry in runtimes.RUNNERS, and this catches a list it was not added to."""
    import typing

    from transferkit.cli import PREDICT_RUNTIMES
    from transferkit.config import EvaluateParams, ExtractParams
    from transferkit.deliver.runtimes import RUNNERS

    named = set(PREDICT_RUNTIMES)
    for section in (ExtractParams, EvaluateParams):
        named |= set(typing.get_args(section.model_fields["runtime"].annotation)) - {"auto"}
    assert named <= set(RUNNERS), sorted(named - set(RUNNERS))


def test_the_onnx_runner_converts_as_the_shipped_params_export():
    """`predict --runtime onnx` converts with runtimes.DEFAULT_ONNX_OPSET (deliver/ reads no params.yaml): the
    opset export writes model.onnx with when params.yaml is as shipped."""
    import yaml

    from transferkit.config import ExportParams
    from transferkit.deliver.runtimes import DEFAULT_ONNX_OPSET

    from conftest import REPO

    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["export"]["onnx_opset"]
    assert DEFAULT_ONNX_OPSET == ExportParams().onnx_opset == shipped


def test_texts_are_batched_by_length_and_come_back_in_input_order(tiny_text_encoder, text_tokenizer):
    """predict_texts sorts texts by length into batches; each row is still its own text's output, as if it ran
    alone (padding changes nothing), whatever the batch size."""
    from transferkit.backbones.bert import WindowSettings, encode_texts
    from transferkit.deliver import runtimes
    from transferkit.deliver.inference import length_order, predict_texts, text_batches
    from transferkit.deliver.published import text_model_info

    settings = WindowSettings(16, 4, 3)
    info = text_model_info(["x"], "all_minilm_l6_v2", "0" * 64, settings)
    texts = ["a long text about the weather " * 20, "short", "a middle sized text of words", "tiny", "rain " * 30]
    # The encoder itself as the model: its embedding rows are what is compared.
    run = runtimes.runner(tiny_text_encoder, "tensorflow")
    alone = np.concatenate([run(dict(zip(("token_ids", "padding_mask"), encode_texts([t], text_tokenizer, settings),
                                         strict=True))) for t in texts])
    for batch_size in (1, 2, 5):
        got = predict_texts(run, info, texts, batch_size, text_tokenizer).probabilities
        np.testing.assert_allclose(got, alone, atol=1e-5)
    rows = [batch_rows.tolist() for batch_rows, _ in text_batches(texts, text_tokenizer, settings, 2)]
    # One window of 3, 3, then 8 tokens (short first); then texts 0 and 4, three full windows each (input order)
    assert rows == [[1, 3], [2, 0], [4]]
    assert length_order([[[1, 2]], [[1]], [[1], [2]]]) == [1, 0, 2]
