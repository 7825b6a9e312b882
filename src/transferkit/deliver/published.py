"""The published model: what the pipeline hands to `predict`, evaluation, serving and export.

A Keras model from raw RGB pixels (0..255, float32, image_size x image_size)
to class probabilities, with the backbone's preprocessing inside it, so no
consumer can preprocess differently. Beside it, a JSON record (ModelInfo)
says which classes the outputs are and what input the model takes.

Text: the same, one Keras model, text encoder + head, whose two int32 inputs
`token_ids` and `padding_mask` (N, windows, tokens) are what
backbones/bert.encode_texts makes of raw texts with the tokenizer and the
window settings that ModelInfo records (`text`, `tokenizer_sha256`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, read_json, write_json

INPUT_DESCRIPTION = "RGB pixels 0..255, float32, shape (N, image_size, image_size, 3)"
TEXT_INPUT_DESCRIPTION = ("token_ids and padding_mask, int32, shape (N, windows, tokens): texts through the "
                          "backbone's tokenizer.json cut into windows by `text` (backbones/bert.encode_texts)")


@dataclass(frozen=True)
class ModelInfo:
    classes: list[str]  # output i is the probability of classes[i]
    image_size: int | None  # pixels, square; None for text
    backbone: str
    backbone_weights_sha256: str
    input: str = INPUT_DESCRIPTION
    modality: str = "image"  # image | text
    # Text only: params.yaml's `text` (max_tokens, overlap, max_windows: bert.WindowSettings) and the sha256 of
    # the tokenizer.json the token ids come from.
    text: dict | None = None
    tokenizer_sha256: str | None = None
    candidate: str | None = None  # what finetune published: head, finetuned, companion or ensemble

    @classmethod
    def from_json(cls, path: str | Path) -> ModelInfo:
        data = read_json(path)
        try:
            return cls(**data)
        except TypeError as exc:
            raise TransferkitError(f"{path}: not a transferkit model description ({exc})") from None


def assemble(backbone, head, image_size: int | None):
    """raw pixels -> backbone -> head; a text backbone (image_size None): token ids and padding mask in."""
    import keras

    if image_size is None:
        token_ids = keras.Input((None, None), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None, None), dtype="int32", name="padding_mask")
        return keras.Model([token_ids, padding_mask], head(backbone([token_ids, padding_mask])), name="classifier")
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    outputs = head(backbone(inputs))
    return keras.Model(inputs, outputs, name="classifier")


def save_published(model, info: ModelInfo, model_path: str | Path, info_path: str | Path) -> None:
    """The model first, then its description: a description never points at a missing model."""
    with atomic_path(model_path) as tmp:
        model.save(tmp)
    described = asdict(info)
    if info.modality == "image":  # an image model's record stays as it was before texts (from_json fills these in)
        for key in ("modality", "text", "tokenizer_sha256"):
            described.pop(key)
    write_json(info_path, described)


def load_published(model_path: str | Path, info_path: str | Path):
    """(Keras model, ModelInfo); the model is loaded with safe_mode=True (no code runs from the file)."""
    import keras

    for path in (model_path, info_path):
        if not Path(path).exists():
            raise TransferkitError(f"{path}: not found; train a model first: `make run` (or `.venv/bin/dvc repro`)")
    return keras.saving.load_model(model_path, safe_mode=True), ModelInfo.from_json(info_path)
