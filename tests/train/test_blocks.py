"""Whole blocks: what fine-tuning unfreezes, never part of one, never BatchNorm."""

from types import SimpleNamespace

import keras
import pytest

from transferkit.backbones import build
from transferkit.backbones.build import BackboneError, build_backbone
from transferkit.train.blocks import block_groups, depth_of_variables, set_trainable_blocks


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0", "none", 32)


def test_efficientnet_lite_blocks_are_stem_mbconv_blocks_and_head_conv(lite0):
    names = [name for name, _ in block_groups(lite0)]
    assert names[0] == "stem" and names[-1] == "top" and names[-2] == "block7a"
    assert len(names) == 1 + 16 + 1  # Lite0: 16 MBConv blocks
    for name, layers in block_groups(lite0):
        assert all(layer.name.startswith(name + "_") for layer in layers if layer.weights), name


def assert_whole_blocks(backbone, n_trainable):
    groups = block_groups(backbone)
    for index, (name, layers) in enumerate(groups):
        weighted = [layer for layer in layers if layer.weights]
        expected = index >= len(groups) - n_trainable
        for layer in weighted:
            if isinstance(layer, keras.layers.BatchNormalization):
                assert not layer.trainable, f"{layer.name}: BatchNorm must stay frozen"
            else:
                assert layer.trainable == expected, f"{layer.name} in block {name}"


def test_top_blocks_are_unfrozen_whole_with_batchnorm_frozen(lite0):
    assert set_trainable_blocks(lite0, 3) == ["top", "block7a", "block6d"]
    assert_whole_blocks(lite0, 3)
    assert set_trainable_blocks(lite0, 100) == [name for name, _ in reversed(block_groups(lite0))]
    assert_whole_blocks(lite0, 18)
    assert set_trainable_blocks(lite0, 0) == [] and not lite0.trainable_weights


def test_depth_counts_blocks_from_the_top(lite0):
    depths = depth_of_variables(lite0)
    assert depths["top_conv/kernel"] == 0 and depths["block7a_project_conv/kernel"] == 1
    assert depths["stem_conv/kernel"] == 17


@pytest.mark.parametrize("name, first, last, count", [
    ("mobilenet_v2", "stem", "block_16", 17),
    ("resnet50", "stem", "conv5_block3", 17),
])
def test_keras_applications_blocks_follow_their_name_prefixes(name, first, last, count):
    backbone = build_backbone(name, "none", 32)
    names = [n for n, _ in block_groups(backbone)]
    assert (names[0], names[-1], len(names)) == (first, last, count)
    set_trainable_blocks(backbone, 2)
    assert_whole_blocks(backbone, 2)
    assert not any(layer.trainable for layer in backbone.layers if layer.name.startswith("preprocess"))


def _dense_model(name):
    """A backbone in name only: its layers (fc1, fc2) follow no family's block naming."""
    inputs = keras.Input((4,), name="image")
    return keras.Model(inputs, keras.layers.Dense(2, name="fc2")(keras.layers.Dense(3, name="fc1")(inputs)), name=name)


@pytest.mark.parametrize("name, message", [
    ("efficientnet_lite0", "'efficientnet_lite0'.*none of its weights is in a block"),
    ("mobilenet_v2", "'mobilenet_v2'.*none of its layer names"),
    ("my_net", "unknown backbone 'my_net'"),
])
def test_layers_in_no_block_fail_loudly_never_one_big_block(name, message):
    model = _dense_model(name)
    for call in (block_groups, depth_of_variables, lambda backbone: set_trainable_blocks(backbone, 1)):
        with pytest.raises(BackboneError, match=message):
            call(model)


def test_a_family_that_cannot_name_its_blocks_fails_loudly(monkeypatch, lite0):
    without_blocks = SimpleNamespace(__name__="transferkit.backbones.efficientnet_lite", MODALITY="image")
    monkeypatch.setattr(build, "FAMILIES", {**build.FAMILIES, "efficientnet_lite": without_blocks})
    with pytest.raises(BackboneError, match="'efficientnet_lite0'.*does not name its blocks"):
        block_groups(lite0)


def test_a_family_whose_blocks_leave_out_a_layer_fails_loudly(monkeypatch, lite0):
    def blocks_without_block2a_bn(model):
        return [(name, [layer for layer in layers if layer.name != "block2a_bn"])
                for name, layers in build.efficientnet_lite.blocks(model)]

    leaky = SimpleNamespace(__name__="leaky", MODALITY="image", blocks=blocks_without_block2a_bn)
    monkeypatch.setattr(build, "FAMILIES", {**build.FAMILIES, "efficientnet_lite": leaky})
    with pytest.raises(BackboneError, match="'efficientnet_lite0'.*leave out, repeat or reorder"):
        block_groups(lite0)
