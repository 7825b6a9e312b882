import numpy as np

from transferkit.deliver.inference import predict_files, top_k
from transferkit.deliver.published import load_published

from conftest import save_colour_model


def test_predictions_follow_the_files(image_folder, tmp_path):
    model, info = load_published(*save_colour_model(tmp_path))
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    probs = predict_files(model, info, paths, batch_size=5)
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
    tensorflow = predict_files(model, info, paths, batch_size=5)
    litert = predict_files(model, info, paths, batch_size=5, runtime="litert")
    assert litert.shape == tensorflow.shape and litert.dtype == np.float64
    np.testing.assert_allclose(litert, tensorflow, atol=1e-5)
