"""Pretrained backbones: raw RGB 0..255 pixels in, pooled embedding out.

Every backbone owns its preprocessing, inside the model, with stock Keras
layers only (no Lambda, no custom layers), so what is trained, saved, served
and used by ``predict`` all take the same raw pixels and reload with
``safe_mode=True``. Each model is one flat functional ``keras.Model`` whose
``.layers`` are the real conv/BN layers (a caller can unfreeze the top N).

Weights: ``"imagenet"`` (offline for efficientnet_lite*, a Keras download for
the keras.applications ones), ``"none"`` (random init, deterministic after
``keras.utils.set_random_seed``) or a path to a ``.weights.h5`` file written by
``model.save_weights`` on a model built here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import layers

from transferkit.backbones.efficientnet_lite import build_efficientnet_lite
from transferkit.errors import TransferkitError
from transferkit.backbones.registry import BACKBONES, BackboneSpec

# Caffe-style models (resnet50, vgg16) expect BGR minus these means, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# ImageNet mean / standard deviation of RGB scaled to 0..1 (efficientnet_b0).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


class BackboneError(TransferkitError, ValueError):
    """A backbone problem the user can fix: unknown name, missing or unfit weights, offline."""


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}") from None


def embedding_dim(name: str) -> int:
    """Length of the embedding the backbone returns."""
    return _spec(name).embedding_dim


def _keras_app(spec: BackboneSpec):
    """The keras.applications constructor the registry names."""
    return getattr(keras.applications, spec.source)


def build_backbone(name: str, weights: str, image_size: int) -> keras.Model:
    """Input (None, image_size, image_size, 3) raw RGB 0..255 float32 -> (None, D) embedding."""
    spec = _spec(name)
    if not isinstance(image_size, int) or image_size < spec.min_size:
        raise BackboneError(f"backbone {name!r} needs image_size >= {spec.min_size} pixels, got {image_size!r}")
    # backbone.weights was checked when params.yaml was read (config.check_weights).
    weights_path = None if weights in ("imagenet", "none") else Path(weights)

    if spec.family == "efficientnet_lite":
        # imagenet: offline, from the packaged .pth
        model = build_efficientnet_lite(int(spec.source), image_size, pretrained=weights == "imagenet")
        return _with_weights_file(model, weights_path, spec, image_size)

    # Download first: offline, this fails in about a second, before the slower build.
    reference = _keras_imagenet_model(spec, image_size) if weights == "imagenet" else None
    model, preprocessing = _keras_app_graph(spec, image_size)
    if reference is not None:
        _copy_weights(reference, model, preprocessing, spec)
    elif spec.preprocessing == "builtin":
        # Random init: plain ImageNet normalisation instead of Keras' identity placeholder.
        _set_normalization(model, IMAGENET_MEAN_RGB, np.square(IMAGENET_STD_RGB))
    return _with_weights_file(model, weights_path, spec, image_size)


def _preprocessing_layers(kind: str) -> list[layers.Layer]:
    """Layers that turn raw RGB 0..255 into what a keras.applications model expects."""
    if kind == "tf":  # x / 127.5 - 1, i.e. [-1, 1]
        return [layers.Rescaling(scale=1 / 127.5, offset=-1.0, name="preprocess_rescale")]
    if kind == "caffe":
        # A fixed 1x1 conv does RGB->BGR (kernel = channel permutation) and
        # subtracts the BGR means (bias); exact in float32 (weights are 0/1).
        return [layers.Conv2D(3, 1, use_bias=True, trainable=False, name="preprocess_caffe")]
    if kind == "builtin":  # efficientnet_b0 has its own Rescaling + Normalization
        return []
    raise ValueError(kind)


def _set_caffe_constants(layer: layers.Layer) -> None:
    kernel = np.zeros((1, 1, 3, 3), np.float32)  # (h, w, in, out)
    for rgb in range(3):
        kernel[0, 0, rgb, 2 - rgb] = 1.0  # out channel 0 (B) <- in channel 2 (B), etc.
    layer.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, np.float32)])


def _keras_app_graph(spec: BackboneSpec, image_size: int) -> tuple[keras.Model, list[layers.Layer]]:
    """Randomly initialised flat model: Input -> preprocessing -> keras.applications body -> avg pool."""
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    preprocessing = _preprocessing_layers(spec.preprocessing)
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    # Passing input_tensor makes keras.applications extend our graph instead of nesting a model.
    body = _keras_app(spec)(include_top=False, weights=None, input_tensor=x, pooling="avg")
    model = keras.Model(inputs, body.output, name=spec.name)
    for layer in preprocessing:
        if layer.name == "preprocess_caffe":
            _set_caffe_constants(layer)
    return model, preprocessing


def _keras_imagenet_model(spec: BackboneSpec, image_size: int) -> keras.Model:
    """Keras' own pretrained model (Keras downloads and caches the weights file)."""
    try:
        return _keras_app(spec)(include_top=False, weights="imagenet",
                              input_shape=(image_size, image_size, 3), pooling="avg")
    except Exception as error:  # Keras raises a bare Exception when the download fails
        raise BackboneError(_offline_message(spec.name, error)) from error


def _copy_weights(reference: keras.Model, model: keras.Model, preprocessing: list[layers.Layer],
                  spec: BackboneSpec) -> None:
    """Copy Keras' pretrained weights into our flat model, layer by layer in graph order."""
    preprocessing_ids = {id(layer) for layer in preprocessing}
    ours = [layer for layer in model.layers if layer.weights and id(layer) not in preprocessing_ids]
    theirs = [layer for layer in reference.layers if layer.weights]
    if len(ours) != len(theirs):
        raise RuntimeError(f"{spec.name}: {len(ours)} weighted layers here, {len(theirs)} in the reference")
    for dst, src in zip(ours, theirs):
        values = src.get_weights()
        if type(dst) is not type(src) or [v.shape for v in values] != [tuple(w.shape) for w in dst.weights]:
            raise RuntimeError(f"{spec.name}: layer {dst.name} does not match reference layer {src.name}")
        dst.set_weights(values)
    if spec.preprocessing == "builtin":
        _fold_b0_normalization(model)


def _fold_b0_normalization(model: keras.Model) -> None:
    """Make efficientnet_b0's input normalisation independent of how it was built.

    With weights="imagenet" Keras inserts an extra Rescaling(1/sqrt(std)) after
    its Normalization layer; with weights=None it does not. We always build the
    weights=None graph and fold that factor into the Normalization variance:
    (x - m) / sqrt(v) / sqrt(s) == (x - m) / sqrt(v * s). The folded values are
    saved with the weights, so a weights file reproduces this model exactly.
    """
    mean, variance = _normalization_layer(model).get_weights()[:2]
    _set_normalization(model, mean, variance * np.asarray(IMAGENET_STD_RGB, np.float32))


def _normalization_layer(model: keras.Model) -> layers.Normalization:
    (layer,) = [layer for layer in model.layers if isinstance(layer, layers.Normalization)]
    return layer


def _set_normalization(model: keras.Model, mean, variance) -> None:
    layer = _normalization_layer(model)
    count = layer.get_weights()[2]
    layer.set_weights([np.asarray(mean, np.float32), np.asarray(variance, np.float32), count])
    layer.finalize_state()  # Normalization caches mean/variance as tensors; refresh them


def _offline_message(name: str, error: Exception) -> str:
    return (
        f"could not download the ImageNet weights for backbone {name!r} ({error}). "
        "To use them offline: on a machine with internet access run\n"
        f"  python -c \"from transferkit.backbones.build import build_backbone; "
        f"build_backbone('{name}', 'imagenet', {BACKBONES[name].native_size}).save_weights('{name}.weights.h5')\"\n"
        f"copy {name}.weights.h5 here and set `backbone.weights: /path/to/{name}.weights.h5` in params.yaml "
        "(the file works at any image_size). Or use an efficientnet_lite0/1/2 backbone, "
        "whose ImageNet weights ship with transferkit."
    )


def _with_weights_file(model: keras.Model, path: Path | None, spec: BackboneSpec, image_size: int) -> keras.Model:
    """Load a .weights.h5 file into the model; it must fit the architecture exactly."""
    if path is None:
        return model
    if not path.is_file():  # config checked it exists; it may have gone since
        raise BackboneError(f"backbone.weights: weights file not found: {path}")
    problem = f"backbone.weights: weights file {path} does not fit backbone {spec.name!r} ({image_size} px)"
    try:
        with h5py.File(path, "r") as f:
            shapes: list[tuple[int, ...]] = []
            f.visititems(lambda key, obj: shapes.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    except OSError as error:
        raise BackboneError(f"{problem}: not a readable HDF5 file ({error})") from error
    # Keras silently ignores extra arrays and its shape errors dump whole
    # tensors, so compare the arrays' count and shapes first, with a short message.
    if len(shapes) != len(model.weights):
        raise BackboneError(f"{problem}: it holds {len(shapes)} weight arrays, the model has {len(model.weights)}")
    unexpected = Counter(shapes) - Counter(tuple(w.shape) for w in model.weights)
    if unexpected:
        raise BackboneError(f"{problem}: it has arrays of shapes the model does not, e.g. {next(iter(unexpected))}")
    try:
        model.load_weights(path)
    except ValueError as error:  # Keras: arrays in a different order than this architecture's
        raise BackboneError(f"{problem}: {str(error)[:500]}") from error
    return model


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 hex of every weight (name, dtype, shape, bytes) in order: a cache key for the weights.

    Uses the variable's short name (e.g. "kernel"), not its path, because
    keras.applications auto-names some layers ("conv2d_57") differently in
    each build; the order of the weights pins down which layer each one is.
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        array = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{variable.name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
