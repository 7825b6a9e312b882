"""A backbone's layers grouped into whole blocks, and which blocks are trainable.

Fine-tuning unfreezes whole blocks from the top, never part of one, and never
counts activations or BatchNormalization layers (the pitfall of "unfreeze the
top 20 layers", which in EfficientNet-Lite means 6 weight layers).

Blocks are read off the layer names the builders give:
- efficientnet_lite*, efficientnet_b0, vgg16: `stem_`, `block6a_`, `block5_`,
  `top_` prefixes (the head conv `top_*` is the topmost block);
- mobilenet_v2: `block_12_`; the layers after the last one (`Conv_1`,
  `out_relu`) join it, the layers before the first (`Conv1`,
  `expanded_conv_*`) form the stem;
- resnet50: `conv4_block3_`;
- inception_v3 (no prefixes): each `mixedN` concatenation closes a block.
Layers with no prefix join the block before them. Input preprocessing
(Rescaling, Normalization, the fixed caffe conv) belongs to no block and is
never trained.

BatchNormalization layers stay non-trainable whatever is unfrozen: in Keras 3
a non-trainable BN layer runs in inference mode (its moving statistics) even
inside fit(), which keeps a small dataset from wrecking the pretrained ones.
"""

from __future__ import annotations

import re

BLOCK_PREFIXES = (
    re.compile(r"^(conv\d+_block\d+)_"),  # resnet50
    re.compile(r"^(block_?\d+[a-z]?)_"),  # efficientnet*, vgg16, mobilenet_v2
    re.compile(r"^(stem|top)_"),  # efficientnet* stem and head conv
)
PREPROCESSING = re.compile(r"^(rescaling|normalization|preprocess_)")


def block_groups(backbone) -> list[tuple[str, list]]:
    """[(block name, its layers)] bottom to top; only blocks that hold weights."""
    groups: list[tuple[str, list]] = []
    current = "stem"
    closed = False
    for layer in backbone.layers:
        if layer.__class__.__name__ == "InputLayer" or PREPROCESSING.match(layer.name):
            continue
        for pattern in BLOCK_PREFIXES:
            match = pattern.match(layer.name)
            if match:
                current, closed = match.group(1), False
                break
        else:
            if closed:  # the layer after an inception `mixedN` starts the next block
                current, closed = f"after_{current}", False
        if not groups or groups[-1][0] != current:
            groups.append((current, []))
        groups[-1][1].append(layer)
        if re.fullmatch(r"mixed\d+", layer.name):
            current, closed = layer.name, True
    return [(name, layers) for name, layers in groups if any(layer.weights for layer in layers)]


def set_trainable_blocks(backbone, n_blocks: int) -> list[str]:
    """Make the top `n_blocks` whole blocks trainable (BatchNorm excepted), the rest frozen.

    Returns the names of the trainable blocks, top first."""
    import keras

    groups = block_groups(backbone)
    n_blocks = max(0, min(n_blocks, len(groups)))
    backbone.trainable = n_blocks > 0
    for layer in backbone.layers:
        layer.trainable = False
    chosen = groups[len(groups) - n_blocks:] if n_blocks else []
    for _, layers in chosen:
        for layer in layers:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return [name for name, _ in reversed(chosen)]


def depth_of_variables(backbone) -> dict[str, int]:
    """Variable path -> block depth from the top (top block 0, the one below 1, ...)."""
    depths = {}
    groups = block_groups(backbone)
    for depth, (_, layers) in enumerate(reversed(groups)):
        for layer in layers:
            for variable in layer.weights:
                depths[variable.path] = depth
    return depths
