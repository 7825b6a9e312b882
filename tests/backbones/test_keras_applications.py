"""The keras.applications family: its preprocessing inside the model, its block naming rules, and the
message when its ImageNet weights cannot be downloaded."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest

from transferkit.backbones import keras_applications
from transferkit.backbones.build import BackboneError, build_backbone
from transferkit.backbones.registry import BACKBONES


@pytest.fixture(scope="module")
def random_init() -> Callable[[str], keras.Model]:
    """name -> that backbone with random weights (seed 0) at its smallest size; built once per module."""
    cache: dict[str, keras.Model] = {}

    def get(name: str) -> keras.Model:
        if name not in cache:
            keras.utils.set_random_seed(0)
            spec = BACKBONES[name]
            cache[name] = keras_applications.build(spec, max(spec.min_size, 64), pretrained=False)
        return cache[name]

    return get


def test_caffe_preprocessing_is_bgr_minus_mean(random_init):
    layer = random_init("vgg16").get_layer("preprocess_caffe")
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    np.testing.assert_allclose(layer(rgb).numpy()[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-5)
    assert not layer.trainable


def test_tf_preprocessing_maps_pixels_to_unit_range(random_init):
    layer = random_init("mobilenet_v2").get_layer("preprocess_rescale")
    np.testing.assert_allclose(layer(np.array([[0.0, 127.5, 255.0]], np.float32)).numpy(), [[-1, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("name, names, first_layers, last_layers", [
    # the layers before the first `block_N_` form the stem; `Conv_1`, `out_relu` join the last block
    ("mobilenet_v2", ["stem", *(f"block_{i}" for i in range(1, 17))],
     ["Conv1", "bn_Conv1", "Conv1_relu"], ["Conv_1", "Conv_1_bn", "out_relu"]),
    ("efficientnet_b0", ["stem", "block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b",
                         "block4c", "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d",
                         "block7a", "top"],
     ["stem_conv_pad", "stem_conv", "stem_bn"], ["top_conv", "top_bn", "top_activation"]),
    ("resnet50", ["stem", *(f"conv{stage}_block{i}" for stage, n in ((2, 3), (3, 4), (4, 6), (5, 3))
                            for i in range(1, n + 1))],
     ["conv1_pad", "conv1_conv", "conv1_bn"], ["conv5_block3_add", "conv5_block3_out"]),
    ("vgg16", [f"block{i}" for i in range(1, 6)], ["block1_conv1", "block1_conv2", "block1_pool"], None),
    # each `mixedN` closes a block; the pooling after mixed10 is a block of its own, without weights
    ("inception_v3", ["stem", *(f"after_mixed{i}" for i in range(10)), "after_mixed10"], None, None),
])
def test_blocks_follow_the_layer_name_rules(random_init, name, names, first_layers, last_layers):
    model = random_init(name)
    groups = keras_applications.blocks(model)
    assert [block for block, _ in groups] == names
    assert not any(layer.name in ("image", "preprocess_caffe", "preprocess_rescale", "rescaling", "normalization")
                   for _, layers in groups for layer in layers)  # input and preprocessing: in no block
    if first_layers:
        assert [layer.name for layer in groups[0][1][:len(first_layers)]] == first_layers
    if last_layers:  # then the pooling
        assert [layer.name for layer in groups[-1][1][-len(last_layers) - 1:-1]] == last_layers
    assert isinstance(groups[-1][1][-1], keras.layers.GlobalAveragePooling2D)
    if name == "inception_v3":
        assert [groups[i][1][-1].name for i in range(11)] == [f"mixed{i}" for i in range(11)]


def test_a_model_whose_layer_names_name_no_block_is_an_error():
    inputs = keras.Input((4,), name="image")
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc2")(keras.layers.Dense(3, name="fc1")(inputs)),
                        name="mobilenet_v3")
    with pytest.raises(BackboneError, match="'mobilenet_v3'.*none of its layer names"):
        keras_applications.blocks(model)


def test_failed_imagenet_download_explains_offline_setup(monkeypatch, tmp_path):
    # Every HTTP(S) request goes to a closed local port: refused at once, for real.
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    # An empty Keras cache, so nothing is found already downloaded. Keras reads
    # KERAS_HOME once at import, so its cached copy of the path is patched as well.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    from keras.src.backend import config as keras_config
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    with pytest.raises(BackboneError) as caught:
        build_backbone("mobilenet_v2", "imagenet", 96)

    message = str(caught.value)
    assert "could not download the ImageNet weights for backbone 'mobilenet_v2'" in message
    assert "backbone.weights: /path/to/mobilenet_v2.weights.h5" in message
    assert "efficientnet_lite" in message
    assert not list(tmp_path.rglob("*.h5"))
