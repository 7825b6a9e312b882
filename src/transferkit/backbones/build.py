"""Pretrained backbones: raw RGB 0..255 pixels (or token ids of text windows) in, pooled embedding out.

`build_backbone` looks the name up in the registry and hands it to its
family's module (FAMILIES). Every family module in backbones/ provides:
- ``MODALITY``: what the backbone takes in ("image" or "text");
- ``build(spec, image_size, pretrained)``: the flat functional ``keras.Model``
  named ``spec.name``, preprocessing inside it with stock Keras layers only (no
  Lambda, no custom layers), so what is trained, saved, served and used by
  ``predict`` all take the same raw input and reload with ``safe_mode=True``;
  ``pretrained`` False is random init, deterministic after
  ``keras.utils.set_random_seed``. Text (backbones/bert.py) ignores
  ``image_size``; its tokenizer runs outside the model (see that module);
- optionally ``build_for_weights_file(spec, path)``: the architecture of the
  size a ``.weights.h5`` file holds (bert: a smaller encoder of the same
  tokenizer); a family without it loads files of its one size only;
- ``blocks(model)``: [(block name, its layers)] bottom to top, every layer after
  the input and its preprocessing in exactly one whole block (what fine-tuning
  unfreezes and gives a learning rate; see train/blocks.py).

Weights: ``"pretrained"`` (the family's pretrained weights: offline for
efficientnet_lite* and the text encoder, a Keras download for the
keras.applications ones; ``"imagenet"`` says the same for image backbones),
``"none"`` (random init) or a path to a ``.weights.h5`` file written by
``model.save_weights`` on a model built here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from types import MappingProxyType, ModuleType

import h5py
import keras
import numpy as np

from transferkit.backbones import bert, efficientnet_lite, keras_applications
from transferkit.backbones.registry import (
    BACKBONES,
    PRETRAINED_WORDS,
    BackboneError,
    BackboneSpec,
    check_pretrained_word,
)

# registry.BackboneSpec.family -> the module that builds the family and names its blocks.
FAMILIES = MappingProxyType({
    "efficientnet_lite": efficientnet_lite,
    "keras_applications": keras_applications,
    "bert": bert,
})


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}") from None


def family_of(name: str) -> ModuleType:
    """The family module of the backbone called `name` (a built model's name is its registry name)."""
    return FAMILIES[_spec(name).family]


def build_backbone(name: str, weights: str, image_size: int | None = None) -> keras.Model:
    """Image: input (None, image_size, image_size, 3) raw RGB 0..255 float32 -> (None, D) embedding.

    Text: inputs token_ids and padding_mask (None, windows, tokens) int32 -> (None, D) (see bert.py);
    image_size is ignored."""
    spec = _spec(name)
    if spec.modality == "image" and (not isinstance(image_size, int) or image_size < spec.min_size):
        raise BackboneError(f"backbone {name!r} needs image_size >= {spec.min_size} pixels, got {image_size!r}")
    # backbone.weights was checked when params.yaml was read (config.check_weights); callers that
    # skip the config get the same word check here.
    check_pretrained_word(spec, weights)
    pretrained = weights in PRETRAINED_WORDS[spec.modality]
    weights_path = None if pretrained or weights == "none" else Path(weights)
    family = family_of(name)
    if weights_path is not None and hasattr(family, "build_for_weights_file"):
        model = family.build_for_weights_file(spec, weights_path)  # a family of many sizes: the file's size
    else:
        model = family.build(spec, image_size if spec.modality == "image" else None, pretrained=pretrained)
    return _with_weights_file(model, weights_path, spec, image_size)


def _with_weights_file(model: keras.Model, path: Path | None, spec: BackboneSpec,
                       image_size: int | None) -> keras.Model:
    """Load a .weights.h5 file into the model; it must fit the architecture exactly."""
    if path is None:
        return model
    if not path.is_file():  # config checked it exists; it may have gone since
        raise BackboneError(f"backbone.weights: weights file not found: {path}")
    shape = f" ({image_size} px)" if spec.modality == "image" else ""
    problem = f"backbone.weights: weights file {path} does not fit backbone {spec.name!r}{shape}"
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
