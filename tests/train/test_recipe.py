"""The recipe: the README's four cases, knobs set by hand win, the flip is kept only when it does not hurt."""

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
    recipe = resolve(FinetuneParams(flip=False), Facts(per_class, accuracy, 18), no_flip_score)
    assert (recipe.case, recipe.strategy, recipe.blocks) == (case, strategy, blocks)
    assert recipe.epochs == (0 if strategy == "head" else recipe.epochs)
    assert (strategy == "head") == (recipe.epochs == 0)
    assert any("auto: case" in reason for reason in recipe.reasons)


def test_knobs_set_in_params_win_over_the_case():
    params = FinetuneParams(strategy="top", blocks=4, epochs=2, learning_rate=1e-3, layer_decay=0.5, warmup=0.0,
                            label_smoothing=0.0, translate=0.0, zoom=0.2, flip=True)
    recipe = resolve(params, Facts(50, 0.99, 18), no_flip_score)  # small and similar: auto would say head
    assert (recipe.strategy, recipe.blocks, recipe.epochs, recipe.learning_rate, recipe.layer_decay) == \
        ("top", 4, 2, 1e-3, 0.5)
    chosen = (recipe.warmup, recipe.label_smoothing, recipe.translate, recipe.zoom, recipe.flip)
    assert chosen == (0.0, 0.0, 0.0, 0.2, True)


def test_no_val_split_means_different_and_no_flip():
    recipe = resolve(FinetuneParams(), Facts(30, None, 18), lambda: None)
    assert recipe.case == "small_different" and recipe.flip is False
    assert any("no val split" in reason for reason in recipe.reasons)


@pytest.mark.parametrize("plain, flipped, keep", [(0.90, 0.89, True), (0.90, 0.80, False), (0.70, 0.75, True)])
def test_flip_is_kept_only_when_it_does_not_hurt_the_head_on_val(plain, flipped, keep):
    recipe = resolve(FinetuneParams(), Facts(100, 0.5, 18), lambda: (plain, flipped))
    assert recipe.flip is keep
    assert any(reason.startswith(f"flip {'on' if keep else 'off'}: the head scores") for reason in recipe.reasons)


def test_gradual_adds_blocks_from_the_top_epoch_by_epoch():
    recipe = resolve(FinetuneParams(strategy="gradual", blocks=6, epochs=3, flip=False), Facts(100, 0.5, 18),
                     no_flip_score)
    assert [recipe.blocks_at(e) for e in range(3)] == [2, 4, 6]
    full = resolve(FinetuneParams(strategy="full", epochs=2, flip=False), Facts(100, 0.5, 18), no_flip_score)
    assert [full.blocks_at(e) for e in range(2)] == [18, 18]


def test_phase_end_is_the_epoch_count_keras_prints_for_each_fit():
    """finetune names the published epoch as Keras printed it: under gradual each phase is its own fit()."""
    gradual = resolve(FinetuneParams(strategy="gradual", blocks=2, epochs=6, flip=False), Facts(100, 0.5, 18),
                      no_flip_score)
    assert [gradual.blocks_at(e) for e in range(6)] == [1, 1, 1, 2, 2, 2]
    assert [gradual.phase_end(e) for e in range(6)] == [3, 3, 3, 6, 6, 6]
    top = resolve(FinetuneParams(strategy="top", blocks=4, epochs=6, flip=False), Facts(100, 0.5, 18), no_flip_score)
    assert [top.phase_end(e) for e in range(6)] == [6] * 6
