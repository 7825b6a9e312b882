"""transferkit.backbones.build: every backbone builds offline, owns its preprocessing, and
its weights come from exactly the source asked for."""

from __future__ import annotations

import re
from collections.abc import Callable

import h5py
import keras
import numpy as np
import pytest

from transferkit.backbones.build import (
    BACKBONES,
    FAMILIES,
    BackboneError,
    build_backbone,
    family_of,
    weights_fingerprint,
)
from transferkit.errors import TransferkitError

# Keras' weight saver calls np.array() on TF tensors, which numpy 2.4 flags as deprecated: not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

EXPECTED_DIMS = {
    "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280,
    "mobilenet_v2": 1280, "efficientnet_b0": 1280, "resnet50": 2048, "vgg16": 512, "inception_v3": 2048,
}
TEXT_DIMS = {"all_minilm_l6_v2": 384}  # tests/backbones/test_bert.py builds and runs it


def _small_size(name: str) -> int:
    return 75 if name == "inception_v3" else 64  # pixels; InceptionV3 needs at least 75


def _pixels(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype(np.float32)


def _build(name: str, weights: str, size: int, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_backbone(name, weights, size)


@pytest.fixture(scope="module")
def random_init() -> Callable[[str], keras.Model]:
    """name -> that backbone with weights "none", seed 0, small size; built once per module (builds take seconds)."""
    cache: dict[str, keras.Model] = {}

    def get(name: str) -> keras.Model:
        if name not in cache:
            cache[name] = _build(name, "none", _small_size(name), seed=0)
        return cache[name]

    return get


def test_registry_lists_the_supported_names():
    assert set(BACKBONES) == set(EXPECTED_DIMS) | set(TEXT_DIMS)
    assert {name: spec.embedding_dim for name, spec in BACKBONES.items()} == EXPECTED_DIMS | TEXT_DIMS


def test_every_family_is_one_module_with_the_family_interface():
    assert {spec.family for spec in BACKBONES.values()} == set(FAMILIES)
    for name, spec in BACKBONES.items():
        family = family_of(name)
        assert family is FAMILIES[spec.family] and family.__name__ == f"transferkit.backbones.{spec.family}"
        assert family.MODALITY == spec.modality, name
        assert callable(family.build) and callable(family.blocks), name


@pytest.mark.parametrize("name", list(EXPECTED_DIMS))
def test_builds_random_init_flat_model(name, random_init):
    size = _small_size(name)
    model = random_init(name)
    embedding = model(_pixels(size), training=False).numpy()

    assert model.name == name
    assert model.input_shape == (None, size, size, 3)
    assert embedding.shape == (2, EXPECTED_DIMS[name]) and np.isfinite(embedding).all()
    # Flat: the real conv / BN layers are the model's own layers, no nested models or Lambdas.
    assert not any(isinstance(layer, (keras.Model, keras.layers.Lambda)) for layer in model.layers)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) > 5


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_b0"])
def test_weights_file_round_trip(name, tmp_path, random_init):
    original = random_init(name)  # seed 0
    path = tmp_path / f"{name}.weights.h5"
    original.save_weights(path)

    restored = _build(name, str(path), 64, seed=1)  # a different random init, then the file

    np.testing.assert_array_equal(restored(_pixels(64)).numpy(), original(_pixels(64)).numpy())
    assert weights_fingerprint(restored) == weights_fingerprint(original)


def test_weights_file_of_another_backbone_is_rejected(tmp_path, random_init):
    path = tmp_path / "mobilenet_v2.weights.h5"
    random_init("mobilenet_v2").save_weights(path)
    with pytest.raises(BackboneError, match=re.escape(f"{path} does not fit backbone 'vgg16'") + ".*260 weight arrays"):
        build_backbone("vgg16", str(path), 64)


def test_weights_file_with_a_wrong_shape_is_rejected(tmp_path, random_init):
    path = tmp_path / "vgg16.weights.h5"
    random_init("vgg16").save_weights(path)
    with h5py.File(path, "r+") as f:  # same number of arrays, one of them a different shape
        kernels = []
        f.visititems(lambda key, obj: kernels.append(key) if key.endswith("conv2d_3/vars/0") else None)
        del f[kernels[0]]
        f[kernels[0]] = np.zeros((3, 3, 24, 7), np.float32)
    expected = re.escape(f"{path} does not fit backbone 'vgg16'") + r".*shapes.*\(3, 3, 24, 7\)"
    with pytest.raises(BackboneError, match=expected):
        build_backbone("vgg16", str(path), 64)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nowhere.weights.h5"
    with pytest.raises(BackboneError, match=re.escape(f"not found: {path}")):
        build_backbone("efficientnet_lite0", str(path), 64)


def test_unknown_name_lists_valid_names():
    with pytest.raises(BackboneError) as caught:
        build_backbone("resnet_50", "none", 64)
    assert all(name in str(caught.value) for name in BACKBONES)
    assert isinstance(caught.value, (ValueError, TransferkitError))
    with pytest.raises(BackboneError, match="efficientnet_lite0"):
        family_of("nope")


def test_image_size_too_small():
    with pytest.raises(BackboneError, match="image_size >= 75"):
        build_backbone("inception_v3", "none", 64)
    with pytest.raises(BackboneError, match="needs image_size >= 32 pixels, got None"):
        build_backbone("efficientnet_lite0", "none")


def test_pretrained_is_imagenet_for_image_backbones():
    imagenet = weights_fingerprint(_build("efficientnet_lite0", "imagenet", 64))
    assert weights_fingerprint(_build("efficientnet_lite0", "pretrained", 64)) == imagenet


def test_fingerprint_tracks_the_weights(random_init):
    pretrained = _build("efficientnet_lite0", "imagenet", 64)
    again = _build("efficientnet_lite0", "imagenet", 64)
    random_same_seed = _build("efficientnet_lite0", "none", 64, seed=0)

    fingerprint = weights_fingerprint(pretrained)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0  # sha256 hex
    assert weights_fingerprint(again) == fingerprint  # stable across builds
    assert weights_fingerprint(random_init("efficientnet_lite0")) != fingerprint
    # weights="none" is deterministic given the seed
    assert weights_fingerprint(random_same_seed) == weights_fingerprint(random_init("efficientnet_lite0"))


def test_fingerprint_changes_when_one_weight_changes(random_init):
    model = _build("vgg16", "none", 32)
    before = weights_fingerprint(model)
    kernel = model.get_layer("block5_conv3").kernel
    kernel.assign(kernel + 1e-3)
    assert weights_fingerprint(model) != before
