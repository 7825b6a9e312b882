"""The recipe: the README's four cases, knobs set by hand win, the flip is kept only when it does not hurt, the
step floor raises the epochs of small sets only, early stopping waits half the planned epochs."""

import pytest

from transferkit.config import FinetuneParams
from transferkit.train.recipe import Facts, resolve


def no_flip_score():
    """Passed where the flip must not be scored."""
    pytest.fail("the flip must not be scored here")


@pytest.mark.parametrize("per_class, accuracy, case, strategy, blocks", [
    (50, 0.95, "small_similar", "head", 0),
    (510, 0.87, "small_different", "top", 12),
    (510, 0.94, "small_different", "top", 12),  # Fashion-MNIST at 224 px: fine-tuning bought 3.7 points
    (5000, 0.95, "large_similar", "top", 6),
    (5000, 0.70, "large_different", "full", 18),
])
def test_auto_picks_the_case_from_size_and_similarity(per_class, accuracy, case, strategy, blocks):
    recipe = resolve(FinetuneParams(flip=False), Facts(per_class, accuracy, 18, per_class * 3), no_flip_score)
    assert (recipe.case, recipe.strategy, recipe.blocks) == (case, strategy, blocks)
    assert recipe.epochs == (0 if strategy == "head" else recipe.epochs)
    assert (strategy == "head") == (recipe.epochs == 0)
    assert any("auto: case" in reason for reason in recipe.reasons)


def test_knobs_set_in_params_win_over_the_case():
    params = FinetuneParams(strategy="top", blocks=4, epochs=2, learning_rate=1e-3, layer_decay=0.5, warmup=0.0,
                            label_smoothing=0.0, translate=0.0, zoom=0.2, flip=True)
    recipe = resolve(params, Facts(50, 0.99, 18, 150), no_flip_score)  # small and similar: auto would say head
    assert (recipe.strategy, recipe.blocks, recipe.epochs, recipe.learning_rate, recipe.layer_decay) == \
        ("top", 4, 2, 1e-3, 0.5)
    chosen = (recipe.warmup, recipe.label_smoothing, recipe.translate, recipe.zoom, recipe.flip)
    assert chosen == (0.0, 0.0, 0.0, 0.2, True)


def test_no_val_split_means_different_and_no_flip():
    recipe = resolve(FinetuneParams(), Facts(30, None, 18, 90), lambda: None)
    assert recipe.case == "small_different" and recipe.flip is False
    assert any("no val split" in reason for reason in recipe.reasons)


@pytest.mark.parametrize("plain, flipped, keep", [(0.90, 0.89, True), (0.90, 0.80, False), (0.70, 0.75, True)])
def test_flip_is_kept_only_when_it_does_not_hurt_the_head_on_val(plain, flipped, keep):
    recipe = resolve(FinetuneParams(), Facts(100, 0.5, 18, 300), lambda: (plain, flipped))
    assert recipe.flip is keep
    assert any(reason.startswith(f"flip {'on' if keep else 'off'}: the head scores") for reason in recipe.reasons)


def test_gradual_adds_blocks_from_the_top_epoch_by_epoch():
    recipe = resolve(FinetuneParams(strategy="gradual", blocks=6, epochs=3, flip=False), Facts(100, 0.5, 18, 300),
                     no_flip_score)
    assert [recipe.blocks_at(e) for e in range(3)] == [2, 4, 6]
    full = resolve(FinetuneParams(strategy="full", epochs=2, flip=False), Facts(100, 0.5, 18, 300), no_flip_score)
    assert [full.blocks_at(e) for e in range(2)] == [18, 18]


def test_phase_end_is_the_epoch_count_keras_prints_for_each_fit():
    """finetune names the published epoch as Keras printed it: under gradual each phase is its own fit()."""
    gradual = resolve(FinetuneParams(strategy="gradual", blocks=2, epochs=6, flip=False), Facts(100, 0.5, 18, 300),
                      no_flip_score)
    assert [gradual.blocks_at(e) for e in range(6)] == [1, 1, 1, 2, 2, 2]
    assert [gradual.phase_end(e) for e in range(6)] == [3, 3, 3, 6, 6, 6]
    top = resolve(FinetuneParams(strategy="top", blocks=4, epochs=6, flip=False), Facts(100, 0.5, 18, 300),
                  no_flip_score)
    assert [top.phase_end(e) for e in range(6)] == [6] * 6


@pytest.mark.parametrize("train_images, epochs, steps", [
    (1169, 22, 814),  # a glyph set: 37 steps an epoch, the table's 12 epochs give 444
    (520, 48, 816),  # the sample: 17 steps an epoch
    (10, 800, 800),  # one step an epoch: the floor still holds
    (5100, 12, 1920),  # Fashion-MNIST 10%: 160 steps an epoch, the table's 12 epochs already pass the floor
])
def test_the_step_floor_raises_the_epochs_of_small_sets_only(train_images, epochs, steps):
    recipe = resolve(FinetuneParams(min_steps=800, flip=False), Facts(100, 0.5, 18, train_images), no_flip_score)
    assert recipe.case == "small_different" and (recipe.epochs, recipe.steps) == (epochs, steps)
    assert recipe.steps == recipe.epochs * recipe.steps_per_epoch >= 800
    assert f"= {steps} steps" in recipe.budget and f"budget: {recipe.budget}" in recipe.reasons
    if epochs > 12:
        assert f">= finetune.min_steps 800; the case table's 12 epochs would give {12 * recipe.steps_per_epoch}" \
            in recipe.budget


def test_the_step_floor_yields_to_explicit_epochs_and_to_zero():
    explicit = resolve(FinetuneParams(min_steps=800, epochs=2, flip=False), Facts(100, 0.5, 18, 520), no_flip_score)
    assert (explicit.epochs, explicit.steps) == (2, 34) and "set in params.yaml wins" in explicit.budget
    off = resolve(FinetuneParams(min_steps=0, flip=False), Facts(100, 0.5, 18, 520), no_flip_score)
    assert (off.epochs, off.steps) == (12, 204)
    head = resolve(FinetuneParams(min_steps=800, flip=False), Facts(50, 0.99, 18, 150), no_flip_score)
    assert (head.strategy, head.epochs, head.steps) == ("head", 0, 0)


@pytest.mark.parametrize("modality, epochs", [("image", 48), ("text", 24)])
def test_the_step_floor_left_null_is_800_image_steps_or_400_text_steps(modality, epochs):
    recipe = resolve(FinetuneParams(flip=False), Facts(100, 0.5, 18, 520, modality=modality), no_flip_score)
    floor = {"image": 800, "text": 400}[modality]
    assert recipe.epochs == epochs and recipe.steps >= floor > recipe.steps - recipe.steps_per_epoch
    assert f">= finetune.min_steps {floor} (the {modality} default)" in recipe.budget


@pytest.mark.parametrize("min_steps, patience, expected", [(0, None, 6), (800, None, 24), (800, 5, 5)])
def test_early_stopping_waits_half_the_planned_epochs_unless_set(min_steps, patience, expected):
    recipe = resolve(FinetuneParams(min_steps=min_steps, patience=patience, flip=False), Facts(100, 0.5, 18, 520),
                     no_flip_score)
    assert recipe.patience == expected
    assert any(reason.startswith(f"early stopping after {expected} epochs") for reason in recipe.reasons)
