"""The published model: what the pipeline hands to `predict`, evaluation, serving and export.

One Keras model to class probabilities, with the backbone's preprocessing
inside it, so no consumer can preprocess differently. Beside it, a JSON
record (ModelInfo, models/model.json) says which classes the outputs are and
what input the model takes. By modality:

- image (`assemble`): raw RGB pixels, float32 0..255, (N, image_size, image_size, 3), input `image`;
- text (`assemble_text`): two int32 inputs (N, windows, tokens), `token_ids` and `padding_mask`, made
  from raw text by the backbone's tokenizer and windows (backbones/bert.py: encode_texts) with the
  window settings in ModelInfo.text (`text_model_info` writes them). `image_size` is None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from transferkit.errors import TransferkitError
from transferkit.files import atomic_path, read_json, write_json

INPUT_DESCRIPTION = "RGB pixels 0..255, float32, shape (N, image_size, image_size, 3)"
TEXT_INPUT_DESCRIPTION = ("token_ids and padding_mask, int32, shape (N, windows, tokens): the backbone's tokenizer "
                          "(tokenizer.json) over each text, cut into windows as `text` says (backbones/bert.py)")
TEXT_SETTINGS = ("max_tokens", "overlap", "max_windows")  # the keys of ModelInfo.text: params.yaml's `text`


@dataclass(frozen=True)
class ModelInfo:
    classes: list[str]  # output i is the probability of classes[i]
    image_size: int | None  # pixels, square; None for a text model
    backbone: str
    backbone_weights_sha256: str
    input: str = INPUT_DESCRIPTION
    candidate: str | None = None  # what finetune published: head, finetuned, companion or ensemble
    modality: str = "image"  # image | text (data/manifest.MODALITIES)
    # text only: how documents are cut into windows, {max_tokens, overlap, max_windows} (bert.WindowSettings),
    # and the sha256 of the tokenizer.json the token ids come from
    text: dict | None = None
    tokenizer_sha256: str | None = None
    refit: bool = False  # finetune.refit: trained again on train + val after every choice was made on val
    refit_steps: int | None = None  # the refit's optimizer steps (all branches)

    def window_settings(self):
        """The text model's bert.WindowSettings (what every consumer tokenizes with)."""
        from transferkit.backbones.bert import WindowSettings

        if self.modality != "text" or not self.text:
            raise TransferkitError(f"model of modality {self.modality!r} has no text window settings")
        return WindowSettings(**{key: int(self.text[key]) for key in TEXT_SETTINGS})

    @classmethod
    def from_json(cls, path: str | Path) -> ModelInfo:
        data = read_json(path)
        try:
            info = cls(**data)
        except TypeError as exc:
            raise TransferkitError(f"{path}: not a transferkit model description ({exc})") from None
        if info.modality not in ("image", "text"):
            raise TransferkitError(f"{path}: modality {info.modality!r}: expected image or text")
        if info.modality == "text" and (not isinstance(info.text, dict) or set(info.text) != set(TEXT_SETTINGS)):
            raise TransferkitError(f"{path}: a text model needs `text` with {', '.join(TEXT_SETTINGS)}, "
                                   f"got {info.text!r}")
        return info


def text_settings(settings) -> dict[str, int]:
    """ModelInfo.text of `settings` (a bert.WindowSettings, or config.TextParams)."""
    return {key: int(getattr(settings, key)) for key in TEXT_SETTINGS}


def text_model_info(classes: list[str], backbone: str, backbone_weights_sha256: str, settings, **more) -> ModelInfo:
    """The description of a text model read with `settings`; `more`: the other ModelInfo fields."""
    return ModelInfo(classes=list(classes), image_size=None, backbone=backbone,
                     backbone_weights_sha256=backbone_weights_sha256, input=TEXT_INPUT_DESCRIPTION, modality="text",
                     text=text_settings(settings), **more)


def assemble(backbone, head, image_size: int | None):
    """raw pixels -> backbone -> head; a text backbone (image_size None): token ids and padding mask in."""
    import keras

    if image_size is None:
        return assemble_text(backbone, head)
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    outputs = head(backbone(inputs))
    return keras.Model(inputs, outputs, name="classifier")


def assemble_text(backbone, head):
    """token_ids, padding_mask -> text backbone (bert.build) -> head; the inputs keep their names."""
    import keras

    token_ids = keras.Input((None, None), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None, None), dtype="int32", name="padding_mask")
    outputs = head(backbone([token_ids, padding_mask]))
    return keras.Model([token_ids, padding_mask], outputs, name="classifier")


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
