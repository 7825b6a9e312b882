"""A backbone's layers grouped into whole blocks, and which blocks are trainable.

Fine-tuning unfreezes whole blocks from the top, never part of one, and never
counts activations or BatchNormalization layers (the pitfall of "unfreeze the
top 20 layers", which in EfficientNet-Lite means 6 weight layers).

The backbone's family module (backbones/<family>.py, found by the backbone's
name in the registry) says where its blocks begin and end: `blocks(model)`.
A family that cannot name its blocks, or a grouping that leaves out or repeats
a layer after the input preprocessing, is an error, never one big block. The
input preprocessing belongs to no block and is never trained.

BatchNormalization layers stay non-trainable whatever is unfrozen: in Keras 3
a non-trainable BN layer runs in inference mode (its moving statistics) even
inside fit(), which keeps a small dataset from wrecking the pretrained ones.
"""

from __future__ import annotations

import keras

from transferkit.backbones.build import BackboneError, family_of


def block_groups(backbone) -> list[tuple[str, list]]:
    """[(block name, its layers)] bottom to top, as the backbone's family names them; only blocks that hold weights."""
    family = family_of(backbone.name)
    blocks = getattr(family, "blocks", None)
    if blocks is None:
        raise BackboneError(f"backbone {backbone.name!r}: its family ({family.__name__}) does not name its blocks "
                            "(no blocks()), so it cannot be fine-tuned block by block")
    groups = blocks(backbone)
    # The blocks must hold every layer after the input preprocessing once, in order: no layer silently never trained.
    in_blocks = [id(layer) for _, layers in groups for layer in layers]
    if in_blocks != [id(layer) for layer in backbone.layers[len(backbone.layers) - len(in_blocks):]]:
        raise BackboneError(f"backbone {backbone.name!r}: its family ({family.__name__}) groups its layers into "
                            "blocks that leave out, repeat or reorder some of them")
    groups = [(name, layers) for name, layers in groups if any(layer.weights for layer in layers)]
    if not groups:
        raise BackboneError(f"backbone {backbone.name!r}: none of its weights is in a block of its family "
                            f"({family.__name__}), so there is nothing to fine-tune")
    return groups


def set_trainable_blocks(backbone, n_blocks: int) -> list[str]:
    """Make the top `n_blocks` whole blocks trainable (BatchNorm excepted), the rest frozen.

    Returns the names of the trainable blocks, top first."""
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
