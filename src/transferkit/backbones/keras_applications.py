"""The keras.applications family: mobilenet_v2, efficientnet_b0, resnet50, vgg16, inception_v3.

Each model is rebuilt flat: our Input, our preprocessing layers (stock Keras
layers, so ``.keras`` files reload with ``safe_mode=True``), then the
keras.applications body extending that graph, then average pooling; its
``.layers`` are the real conv/BN layers. ``pretrained`` weights are Keras' own
ImageNet files, downloaded (and cached) by Keras, copied layer by layer.

Blocks are read off the layer names keras.applications gives:
- efficientnet_b0, vgg16: `stem_`, `block6a_`, `block5_`, `top_` prefixes (the
  head conv `top_*` is the topmost block);
- mobilenet_v2: `block_12_`; the layers after the last one (`Conv_1`,
  `out_relu`) join it, the layers before the first (`Conv1`,
  `expanded_conv_*`) form the stem;
- resnet50: `conv4_block3_` (the layers before the first, `conv1_*` and
  `pool1_*`, form the stem);
- inception_v3 (no prefixes): each `mixedN` concatenation closes a block.
Layers with no prefix join the block before them. Input preprocessing
(Rescaling, Normalization, the fixed caffe conv) belongs to no block.
"""

from __future__ import annotations

import re

import keras
import numpy as np
from keras import layers

from transferkit.backbones.registry import BackboneError, BackboneSpec, Modality

MODALITY: Modality = "image"

# Caffe-style models (resnet50, vgg16) expect BGR minus these means, in BGR order.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# ImageNet mean / standard deviation of RGB scaled to 0..1 (efficientnet_b0).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

# A layer whose name matches one of these starts (or continues) the block the group names.
BLOCK_PREFIXES = (
    re.compile(r"^(conv\d+_block\d+)_"),  # resnet50
    re.compile(r"^(block_?\d+[a-z]?)_"),  # efficientnet_b0, vgg16, mobilenet_v2
    re.compile(r"^(stem|top)_"),  # efficientnet_b0 stem and head conv
)
CLOSES_BLOCK = re.compile(r"mixed\d+")  # inception_v3's concatenations
PREPROCESSING = re.compile(r"^(rescaling|normalization|preprocess_)")


def build(spec: BackboneSpec, image_size: int, pretrained: bool) -> keras.Model:
    """Input (None, image_size, image_size, 3) raw RGB 0..255 float32 -> (None, D) pooled embedding.

    ``pretrained``: Keras' ImageNet weights (a download), else random init
    (deterministic after ``keras.utils.set_random_seed``)."""
    # Download first: offline, this fails in about a second, before the slower build.
    reference = _keras_imagenet_model(spec, image_size) if pretrained else None
    model, preprocessing = _keras_app_graph(spec, image_size)
    if reference is not None:
        _copy_weights(reference, model, preprocessing, spec)
    elif spec.preprocessing == "builtin":
        # Random init: plain ImageNet normalisation instead of Keras' identity placeholder.
        _set_normalization(model, IMAGENET_MEAN_RGB, np.square(IMAGENET_STD_RGB))
    return model


def blocks(model: keras.Model) -> list[tuple[str, list[layers.Layer]]]:
    """[(block name, its layers)] bottom to top, by the naming rules above; the input and its preprocessing are
    in no block. A model none of whose layer names starts or closes a block is an error, not one big block."""
    groups: list[tuple[str, list[layers.Layer]]] = []
    current = "stem"
    closed = False  # the last layer was an inception `mixedN`
    named = False  # some layer name started or closed a block
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or PREPROCESSING.match(layer.name):
            continue
        for pattern in BLOCK_PREFIXES:
            match = pattern.match(layer.name)
            if match:
                current, closed, named = match.group(1), False, True
                break
        else:
            if closed:  # the layer after an inception `mixedN` starts the next block
                current, closed = f"after_{current}", False
        if not groups or groups[-1][0] != current:
            groups.append((current, []))
        groups[-1][1].append(layer)
        if CLOSES_BLOCK.fullmatch(layer.name):
            current, closed, named = layer.name, True, True
    if not named:
        raise BackboneError(
            f"backbone {model.name!r}: none of its layer names starts or closes a block by the keras.applications "
            "naming rules, so its blocks are unknown; add its rule to backbones/keras_applications.py")
    return groups


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


def _keras_app(spec: BackboneSpec):
    """The keras.applications constructor the registry names."""
    return getattr(keras.applications, spec.source)


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
        raise BackboneError(_offline_message(spec, error)) from error


def _copy_weights(reference: keras.Model, model: keras.Model, preprocessing: list[layers.Layer],
                  spec: BackboneSpec) -> None:
    """Copy Keras' pretrained weights into our flat model, layer by layer in graph order."""
    preprocessing_ids = {id(layer) for layer in preprocessing}
    ours = [layer for layer in model.layers if layer.weights and id(layer) not in preprocessing_ids]
    theirs = [layer for layer in reference.layers if layer.weights]
    if len(ours) != len(theirs):
        raise RuntimeError(f"{spec.name}: {len(ours)} weighted layers here, {len(theirs)} in the reference")
    for dst, src in zip(ours, theirs, strict=True):  # same length: checked above
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


def _offline_message(spec: BackboneSpec, error: Exception) -> str:
    name = spec.name
    return (
        f"could not download the ImageNet weights for backbone {name!r} ({error}). "
        "To use them offline: on a machine with internet access run\n"
        f"  python -c \"from transferkit.backbones.build import build_backbone; "
        f"build_backbone('{name}', 'imagenet', {spec.native_size}).save_weights('{name}.weights.h5')\"\n"
        f"copy {name}.weights.h5 here and set `backbone.weights: /path/to/{name}.weights.h5` in params.yaml "
        "(the file works at any image_size). Or use an efficientnet_lite0/1/2 backbone, "
        "whose ImageNet weights ship with transferkit."
    )
