"""params.yaml, validated once into typed, frozen objects.

Every knob of the pipeline lives in params.yaml, one section per stage. Unknown
keys, wrong types and out-of-range values are errors that name the key, so a
typo never silently falls back to a default. STAGE_PARAMS says which sections
each stage reads; dvc.yaml's `params:` lists the same (a test checks it).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from transferkit.backbones.registry import BACKBONE_NAMES, BACKBONES, check_pretrained_word
from transferkit.errors import TransferkitError

# data.max_image_pixels' default, also the limit of `predict` and the served model: Pillow's own
# default, about 0.27 GB of RGB pixels once decoded.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# data.max_text_bytes' default, also the limit of `predict` and the served model: 1 MB, about 200 pages of
# plain text; an e-mail with a large attachment inline can exceed it.
DEFAULT_MAX_TEXT_BYTES = 1_000_000

# The params each stage reads, as dvc.yaml lists them under `params:` (a
# section, or section.key). The `tracking` section is read by every stage, but
# only to decide where runs are recorded: it never shapes an output, so it is
# listed by none and changing it re-runs nothing.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "prepare": ("data",),
    "extract": ("backbone", "extract", "text", "data.seed"),
    "train_head": ("head", "data.seed"),
    "companion": ("companion", "data.seed"),
    "finetune": ("backbone", "finetune", "text", "head", "companion", "data.seed"),  # head, companion: the refit
    "evaluate": ("evaluate", "data.seed"),
    "export": ("export",),
}


def check_weights(value: str) -> None:
    """backbone.weights: 'pretrained', 'imagenet', 'none' or an existing .weights.h5 file, else ValueError.

    Which word fits which backbone is checked with the backbone (registry.check_pretrained_word)."""
    if value in ("pretrained", "imagenet", "none"):
        return
    if not value.endswith(".weights.h5"):
        raise ValueError(f"must be 'pretrained', 'imagenet' (image backbones), 'none' or a path to a Keras "
                         f"'.weights.h5' file, got {value!r}")
    if not Path(value).is_file():
        raise ValueError(f"weights file not found: {Path(value).resolve()}")


class Section(BaseModel):
    # frozen: stage code cannot change a knob behind params.yaml's back.
    # extra="forbid": an unknown key (a typo) is an error, never ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    source: str = Field("data/sample", description="image or text folder (one sub-folder per class) or CSV/Parquet "
                                                   "manifest")
    seed: int = Field(42, ge=0, description="seed for the split and for every random init")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="evaluate needs test examples in every class")
    min_examples_per_class: int = Field(3, ge=1, description="a class with fewer valid images or texts stops the run")
    min_image_side: int = Field(8, ge=1, description="pixels; smaller images are rejected")
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1,
                                  description="larger images are rejected (decompression bombs)")
    max_text_bytes: int = Field(DEFAULT_MAX_TEXT_BYTES, ge=1, description="bytes; larger text files are rejected")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        # Renamed when texts arrived (the count is of images or texts): the old name says where it went.
        if isinstance(raw, dict) and "min_images_per_class" in raw:
            raise ValueError("data.min_images_per_class was renamed: use data.min_examples_per_class")
        return raw


class BackboneParams(Section):
    name: Literal[BACKBONE_NAMES] = "efficientnet_lite0"  # type: ignore[valid-type]
    # validate_default: the default 'imagenet' must be checked against a text backbone's name too.
    weights: str = Field("imagenet", validate_default=True,
                         description="'pretrained' (any backbone), 'imagenet' (image backbones), "
                                     "'none' (random init) or a path to a .weights.h5 file")
    image_size: int = Field(160, ge=32, le=1024, description="pixels (square); images are resized to it; "
                                                             "unused by text backbones")

    @field_validator("weights")
    @classmethod
    def _weights_word_or_existing_file(cls, value: str, info: ValidationInfo) -> str:
        # Checked when params.yaml is read, so a typo stops every stage at once,
        # not after prepare has decoded the whole dataset. Whether the file fits
        # the architecture is checked when the backbone is built (start of extract).
        check_weights(value)
        name = info.data.get("name")  # absent when the name itself was invalid
        if name is not None:
            check_pretrained_word(BACKBONES[name], value)
        return value

    @field_validator("image_size")
    @classmethod
    def _size_fits_backbone(cls, value: int, info: ValidationInfo) -> int:
        name = info.data.get("name")  # absent when the name itself was invalid
        if name is not None and BACKBONES[name].min_size is not None and value < BACKBONES[name].min_size:
            raise ValueError(f"backbone {name} needs image_size >= {BACKBONES[name].min_size} pixels, got {value}")
        return value


class ExtractParams(Section):
    runtime: Literal["auto", "tensorflow", "litert"] = Field(
        "auto", description="what runs the backbone; auto: LiteRT on CPU (about 1.8x faster), TensorFlow on a GPU")
    batch_size: int = Field(32, ge=1, le=4096)
    shard_size: int = Field(1024, ge=1, description="embeddings per cache file; a kill loses at most one shard")


class TextParams(Section):
    """How a text backbone reads a document: windows of tokens (backbones/bert.py)."""
    max_tokens: int = Field(256, ge=3, le=512, description="tokens per window, [CLS] and [SEP] included "
                                                           "(256: the encoder's sentence-transformers setting)")
    overlap: int = Field(32, ge=0, description="tokens shared by consecutive windows of a long document")
    max_windows: int = Field(8, ge=1, le=64, description="windows per document at most; a longer document gets "
                                                         "them spread from its start to its end")

    @field_validator("overlap")
    @classmethod
    def _overlap_leaves_room(cls, value: int, info: ValidationInfo) -> int:
        max_tokens = info.data.get("max_tokens")  # absent when max_tokens itself was invalid
        if max_tokens is not None and value > max_tokens - 3:
            raise ValueError(f"must leave each window at least one new token: at most max_tokens - 3 = "
                             f"{max_tokens - 3}, got {value}")
        return value


class HeadParams(Section):
    hidden_units: int = Field(0, ge=0, description="0 = a linear classifier on the embeddings")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    epochs: int = Field(400, ge=1, description="a cap; early stopping on val decides when it has converged")
    batch_size: int = Field(32, ge=1)
    patience: int = Field(20, ge=1, description="epochs without val_loss improvement before stopping")
    class_weights: Literal["balanced", "none"] = "balanced"


Strategy = Literal["auto", "head", "top", "full", "gradual"]


class FinetuneParams(Section):
    """Knobs left null are filled by the recipe for the case the data falls in (recipe.py, README)."""
    strategy: Strategy = Field("auto", description="auto | head | top | full | gradual")
    blocks: int | None = Field(None, ge=1, description="top/gradual: whole backbone blocks made trainable")
    epochs: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0.0, le=1.0, description="peak rate of the top block and head")
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="rate multiplier per block further down")
    warmup: float | None = Field(None, ge=0.0, lt=1.0, description="fraction of the steps spent warming up")
    weight_decay: float | None = Field(None, ge=0.0, le=1.0, description="AdamW decoupled weight decay")
    label_smoothing: float | None = Field(None, ge=0.0, lt=1.0)
    clip_norm: float | None = Field(None, gt=0.0, description="global gradient-norm clip")
    flip: bool | None = Field(None, description="random left-right flip; null: kept only if it does not hurt on val")
    translate: float | None = Field(None, ge=0.0, lt=1.0, description="random shift, fraction of the side")
    zoom: float | None = Field(None, ge=0.0, lt=1.0, description="random zoom, fraction of the side")
    erase: float | None = Field(None, ge=0.0, le=1.0,
                                description="random erasing: share of training images with a noise patch")
    min_steps: int | None = Field(None, ge=0, description="optimizer steps the fine-tune gets at least (epochs raised "
                                                          "to reach them; a floor, never a cap; 0: the case table's "
                                                          "epochs; null: 800 for images, 400 for texts)")
    batch_size: int = Field(32, ge=1)
    patience: int | None = Field(None, ge=1, description="epochs without val improvement before stopping; "
                                                          "null: half the planned epochs, at least 3")
    refit: bool = Field(False, description="once everything is chosen on val, train the chosen candidate again on "
                                           "train + val for its best epoch count, and publish that")


class CompanionParams(Section):
    """A small CNN trained from scratch at the images' native size (train/companion.py)."""
    strategy: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: only when the images' median native side <= max_side; on; off")
    max_side: int = Field(64, ge=16, le=256, description="pixels: auto's bar, and the cap of the network's input side")
    width: int = Field(32, ge=4, le=256, description="filters of the first conv stage (then 2x and 4x)")
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    epochs: int = Field(60, ge=1, description="a cap: early stopping on val keeps the best epoch")
    patience: int = Field(10, ge=1, description="epochs without val improvement before stopping")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW peak rate, cosine decay to 0 over epochs")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    batch_size: int = Field(64, ge=1)
    translate: float = Field(0.1, ge=0.0, lt=1.0, description="random shift, fraction of the side")
    zoom: float = Field(0.1, ge=0.0, lt=1.0, description="random zoom, fraction of the side")


class EvaluateParams(Section):
    runtime: Literal["tensorflow", "litert"] = Field(
        "tensorflow", description="what runs the published model on the test images")
    batch_size: int = Field(64, ge=1)
    calibration_bins: int = Field(10, ge=2, le=100)
    tta: bool = Field(False, description="test-time augmentation: average over the image and its left-right flip")
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0,
                                       description="quality gate: a lower test accuracy fails evaluate (null: off)")
    baseline: bool = Field(True, description="fit cheap classical baselines (SVM, logistic regression on raw "
                                             "pixels, kNN on the embeddings); the best on val is scored on test")
    baseline_max_train: int = Field(2000, ge=1, description="train images the baselines are fitted on at most (and "
                                                             "as many val images), drawn per class with data.seed")
    gallery_size: int = Field(48, ge=0, le=1000, description="the most confidently wrong test items shown in "
                                                             "plots/errors.html (0: none, the per-class strips only)")


class ExportParams(Section):
    quantize: Literal["none", "dynamic", "int8"] = Field(
        "none", description="also write a quantized LiteRT file: dynamic-range or full-integer (int8)")
    calibration_images: int = Field(100, ge=1, description="training images that calibrate the int8 file")
    onnx_opset: int = Field(17, ge=13, le=18, description="ONNX opset (tf2onnx 1.17 writes up to 18)")
    batch_size: int = Field(32, ge=1)


class TrackingParams(Section):
    experiment: str = Field("transferkit", min_length=1)
    registered_model: str = Field("transferkit", min_length=1, description="MLflow model registry name")
    required: bool = Field(True,
                           description="an unreachable tracking server stops the run (false: warn, track locally)")


class Params(Section):
    data: DataParams = DataParams()
    backbone: BackboneParams = BackboneParams()
    extract: ExtractParams = ExtractParams()
    text: TextParams = TextParams()
    head: HeadParams = HeadParams()
    finetune: FinetuneParams = FinetuneParams()
    companion: CompanionParams = CompanionParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    tracking: TrackingParams = TrackingParams()


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The params a stage reads (STAGE_PARAMS), nested as in params.yaml: what its MLflow run logs."""
    selected: dict[str, Any] = {}
    dumped = params.model_dump()
    for entry in STAGE_PARAMS[stage]:
        section, _, key = entry.partition(".")
        if key:
            selected.setdefault(section, {})[key] = dumped[section][key]
        else:
            selected[section] = dumped[section]
    return selected


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys at the place `loc` points into (for 'did you mean')."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        model = field.annotation
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(Params, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{key}: unknown key{suggestion}; allowed here: {', '.join(allowed)}"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise TransferkitError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TransferkitError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        raise TransferkitError(f"{source}: invalid parameters:\n{lines}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TransferkitError(f"{path}: parameters file not found") from None
    except yaml.YAMLError as exc:
        raise TransferkitError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))
