import pytest
from pydantic import ValidationError

from transferkit.config import Params, load_params, parse_params, stage_params
from transferkit.errors import TransferkitError

from conftest import REPO


def test_repo_params_yaml_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    # Every key in the schema is written in params.yaml: nothing hides in code defaults.
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, model in Params.model_fields.items():
        assert section in raw, section
        assert set(raw[section]) == set(model.annotation.model_fields), section
    assert params.backbone.name == "efficientnet_lite0"


def test_defaults_are_used_for_missing_sections():
    params = parse_params({"head": {"learning_rate": 0.01}})
    assert params.head.learning_rate == 0.01
    assert params.head.epochs == Params().head.epochs


@pytest.mark.parametrize("raw, expected", [
    ({"head": {"learning_rat": 0.1}}, "head.learning_rat: unknown key (did you mean 'learning_rate'?)"),
    ({"hed": {}}, "hed: unknown key (did you mean 'head'?)"),
    ({"head": {"learning_rate": -1}}, "head.learning_rate: Input should be greater than 0"),
    ({"head": {"epochs": "many"}}, "head.epochs: Input should be a valid integer"),
    ({"data": {"test_fraction": 1.5}}, "data.test_fraction: Input should be less than 1"),
    ({"backbone": {"name": "resnet9000"}}, "backbone.name: Input should be 'efficientnet_lite0'"),
    ({"finetune": {"flip": "maybe"}}, "finetune.flip: Input should be a valid boolean"),
    ({"finetune": {"refit": "maybe"}}, "finetune.refit: Input should be a valid boolean"),
    ({"finetune": {"refit": 2}}, "finetune.refit: Input should be a valid boolean"),
    ({"finetune": {"strategy": "deep"}},
     "finetune.strategy: Input should be 'auto', 'head', 'top', 'full' or 'gradual'"),
    ({"finetune": {"unfreeze": 20}}, "finetune.unfreeze: unknown key; allowed here: strategy, blocks"),
    ({"backbone": {"weights": "imagenett"}},
     "backbone.weights: Value error, must be 'pretrained', 'imagenet' (image backbones), 'none' or a path"),
    ({"backbone": {"name": "all_minilm_l6_v2"}},
     "backbone.weights: Value error, weights 'imagenet' do not apply to the text backbone all_minilm_l6_v2; "
     "set backbone.weights: pretrained"),
    ({"text": {"max_tokens": 513}}, "text.max_tokens: Input should be less than or equal to 512"),
    ({"text": {"max_tokens": 64, "overlap": 62}},
     "text.overlap: Value error, must leave each window at least one new token: at most max_tokens - 3 = 61"),
    ({"text": {"max_window": 3}}, "text.max_window: unknown key (did you mean 'max_windows'?)"),
    ({"backbone": {"weights": "missing/lite0.weights.h5"}}, "backbone.weights: Value error, weights file not found"),
    ({"backbone": {"image_size": 16}}, "backbone.image_size: Input should be greater than or equal to 32"),
    ({"backbone": {"name": "inception_v3", "image_size": 64}},
     "backbone.image_size: Value error, backbone inception_v3 needs image_size >= 75 pixels, got 64"),
    ({"data": {"min_examples_per_class": 0}},
     "data.min_examples_per_class: Input should be greater than or equal to 1"),
    ({"data": {"min_images_per_class": 3}}, "data.min_images_per_class was renamed: use data.min_examples_per_class"),
    ({"data": {"max_text_bytes": 0}}, "data.max_text_bytes: Input should be greater than or equal to 1"),
    ({"tracking": {"required": "sometimes"}}, "tracking.required: Input should be a valid boolean"),
    ({"data": {"max_image_pixel": 10}}, "data.max_image_pixel: unknown key (did you mean 'max_image_pixels'?)"),
    ({"evaluate": {"baseline_max_train": 0}},
     "evaluate.baseline_max_train: Input should be greater than or equal to 1"),
])
def test_bad_params_name_the_key(raw, expected):
    with pytest.raises(TransferkitError) as info:
        parse_params(raw)
    assert expected in str(info.value)


def test_text_backbone_takes_pretrained_and_ignores_image_size():
    params = parse_params({"backbone": {"name": "all_minilm_l6_v2", "weights": "pretrained", "image_size": 32}})
    assert params.backbone.weights == "pretrained" and params.text.max_tokens == 256
    # "pretrained" also names an image backbone's ImageNet weights.
    assert parse_params({"backbone": {"weights": "pretrained"}}).backbone.weights == "pretrained"


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(ValidationError, match="frozen"):
        params.head.learning_rate = 1.0  # type: ignore[misc]


def test_yaml_scientific_notation_string_is_accepted():
    # PyYAML reads `1e-4` (no dot) as a string; it must still mean 0.0001.
    assert parse_params({"finetune": {"learning_rate": "1e-4"}}).finetune.learning_rate == 1e-4


def test_recipe_knobs_default_to_null_so_the_recipe_fills_them():
    finetune = parse_params({}).finetune
    assert finetune.strategy == "auto"
    assert all(getattr(finetune, k) is None for k in ("blocks", "epochs", "learning_rate", "layer_decay", "warmup",
                                                      "weight_decay", "label_smoothing", "clip_norm", "flip"))


def test_the_refit_is_off_by_default():
    """finetune.refit did not pay on the measured sets (README "Budget"): off in code and in params.yaml."""
    assert parse_params({}).finetune.refit is False
    assert load_params(REPO / "params.yaml").finetune.refit is False


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(TransferkitError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("head: [unclosed")
    with pytest.raises(TransferkitError, match="not valid YAML"):
        load_params(bad)


def test_stage_params_select_what_each_stage_reads():
    params = parse_params({"head": {"epochs": 7}, "data": {"seed": 3}})
    selected = stage_params(params, "train_head")
    assert selected == {"head": params.head.model_dump(), "data": {"seed": 3}}
    assert stage_params(params, "prepare") == {"data": params.data.model_dump()}


def test_the_readme_text_line_sets_valid_params():
    """The README's text-sample line: every -S it sets is a valid key and value, text backbone and weights agree."""
    import shlex

    import yaml


    line = next(line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
                if line.startswith(".venv/bin/dvc exp run -S data.source=data/sample_text"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    words = shlex.split(line)
    for flag, setting in zip(words, words[1:], strict=False):
        if flag == "-S":
            key, value = setting.split("=", 1)
            section, name = key.split(".")
            raw[section][name] = yaml.safe_load(value)
    params = parse_params(raw)
    assert (params.data.source, params.backbone.name) == ("data/sample_text", "all_minilm_l6_v2")
    assert params.tracking.registered_model != "transferkit"  # the image model's "latest" is not overwritten
