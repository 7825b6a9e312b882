"""Fine-tuning on a tiny real pipeline: real backbone, real images, real files."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from transferkit.backbones.build import build_backbone
from transferkit.config import BackboneParams, ExtractParams, FinetuneParams, HeadParams
from transferkit.data.images import load_rgb
from transferkit.embeddings.extract import extract
from transferkit.train.finetune import augmenter, finetune
from transferkit.train.recipe import Facts, resolve
from transferkit.train.train_head import train_head

BACKBONE = BackboneParams(name="efficientnet_lite0", weights="imagenet", image_size=32)
SEED = 0


@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    from conftest import make_image_folder, prepare_into

    root = tmp_path_factory.mktemp("pipeline")
    images = make_image_folder(root / "images", per_class=6)
    manifest = prepare_into(images, root / "prepared", val_fraction=0.2, test_fraction=0.2)
    extract(manifest, root / "store", root / "embeddings.npz", BACKBONE, ExtractParams(batch_size=8), seed=SEED)
    train_head(manifest, root / "embeddings.npz", root / "head.keras", root / "head.csv",
               HeadParams(epochs=100, patience=100, learning_rate=0.01),
               seed=SEED)
    return root


def run_finetune(root, name, params, tracker=None, head="head.keras"):
    return finetune(root / "prepared" / "manifest.parquet", root / "embeddings.npz", root / head,
                    root / f"{name}.keras", root / f"{name}.json", root / f"{name}.csv", root / f"ckpt-{name}",
                    BACKBONE, params, SEED, tracker=tracker)


class Recorder:
    """Stands in for the MLflow tracker: its callback snapshots the backbone's weights after every epoch."""

    def __init__(self):
        self.epochs: list[dict[str, list]] = []

    def keras_callback(self):
        recorder = self

        class _Snapshot(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                backbone = self.model.get_layer("classifier").get_layer("efficientnet_lite0")
                recorder.epochs.append({layer.name: [w.copy() for w in layer.get_weights()]
                                        for layer in backbone.layers if layer.weights})

        return _Snapshot()


def changed_layers(before: dict, after: dict) -> set[str]:
    return {name for name in before
            if not all(np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True))}


def block_of(name: str) -> str:
    return name.split("_")[0]


def test_gradual_unfreezes_whole_blocks_from_the_top_and_never_moves_batchnorm(trained_head):
    """BatchNorm stays frozen in inference mode: not one moving mean or variance changes in any epoch."""
    root, recorder = trained_head, Recorder()
    fresh = {layer.name: layer.get_weights() for layer in build_backbone("efficientnet_lite0", "imagenet", 32).layers
             if layer.weights}
    result = run_finetune(root, "gradual", FinetuneParams(strategy="gradual", blocks=2, epochs=2, learning_rate=1e-3,
                                                          flip=False, patience=5), tracker=recorder)
    assert result.strategy == "gradual" and result.epochs_run == 2
    steps = result.recipe["steps_per_epoch"]  # the budget line and the steps run follow the train images
    assert result.steps_run == 2 * steps and result.recipe["budget"].startswith(f"2 epochs x {steps} steps")
    bn = {name for name in fresh if name.endswith("_bn")}
    first, second = changed_layers(fresh, recorder.epochs[0]), changed_layers(fresh, recorder.epochs[1])
    assert not (first | second) & bn, "a BatchNorm weight or moving statistic changed"
    assert {block_of(n) for n in first} == {"top"}  # epoch 0: the top block only
    assert {block_of(n) for n in second} == {"top", "block7a"}  # epoch 1: one more block, whole
    assert second == {n for n in fresh if block_of(n) in ("top", "block7a")} - bn
    meta = json.loads((root / "gradual.json").read_text())
    assert meta["classes"] == ["circle", "square", "triangle"] and meta["image_size"] == 32
    assert not (root / "ckpt-gradual").exists()  # cleared once the model is published


def test_random_erasing_patches_every_training_image_and_leaves_inference_alone():
    recipe = resolve(FinetuneParams(strategy="full", flip=False, translate=0.0, zoom=0.0, erase=1.0),
                     Facts(100, 0.5, 18, 300), lambda: None)
    images = np.full((16, 32, 32, 3), 100.0, np.float32)
    erased = np.asarray(augmenter(recipe, SEED)(images, training=True))
    share = (erased != 100.0).mean(axis=(1, 2, 3))
    assert (share > 0.01).all() and (share < 0.5).all()  # a patch of 2-33% of the area in every image
    assert np.array_equal(np.asarray(augmenter(recipe, SEED)(images, training=False)), images)
    default = resolve(FinetuneParams(strategy="full", flip=False), Facts(100, 0.5, 18, 300), lambda: None)
    assert default.erase == 0.0 and augmenter(default, SEED).layers[-1].name != "random_erasing"


def published_matches_backbone_plus_head(root, name):
    model = keras.saving.load_model(root / f"{name}.keras", safe_mode=True)
    head = keras.saving.load_model(root / "head.keras", safe_mode=True)
    backbone = build_backbone("efficientnet_lite0", "imagenet", 32)
    paths = pd.read_parquet(root / "prepared" / "manifest.parquet")["path"].iloc[:4]
    pixels = np.stack([load_rgb(p, 32) for p in paths]).astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels, verbose=0),
                               head.predict(backbone.predict(pixels, verbose=0), verbose=0), atol=1e-5)


def test_head_strategy_publishes_backbone_plus_head(trained_head):
    root = trained_head
    result = run_finetune(root, "plain", FinetuneParams(strategy="head"))
    assert (result.published, result.epochs_run) == ("head", 0)
    published_matches_backbone_plus_head(root, "plain")


def test_a_finetune_that_hurts_on_val_publishes_the_head(trained_head, monkeypatch):
    """Do no harm: fine-tuned epochs that are worse on val lose to the head on the frozen backbone."""
    import transferkit.train.finetune as module

    def harmful_training(model, backbone, recipe, train, val, n_classes, image_size, batch_size, seed, ckpt, tracker,
                         text=None, stop=None):
        for variable in model.trainable_variables:  # wreck every trained weight, as a bad rate would
            variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype(np.float32) * 10)
        ckpt.state.update(best_epoch=0, history=[{"epoch": 0, "loss": 9.0, "accuracy": 0.0, "val_loss": 9.0,
                                                  "val_accuracy": 0.0}])

    monkeypatch.setattr(module, "_train", harmful_training)
    root = trained_head
    result = run_finetune(root, "wrecked", FinetuneParams(strategy="full", epochs=1, flip=False))
    assert result.published == "head" and "no fine-tuned epoch beats the head" in result.published_why
    assert "(best: epoch 1/1," in result.published_why  # numbered as Keras prints it, not from 0
    assert result.val_accuracy == result.head_val_accuracy
    published_matches_backbone_plus_head(root, "wrecked")


class StopAfterFirstEpoch:
    """Stands in for the MLflow tracker: its callback interrupts training like a Ctrl-C would."""

    def keras_callback(self):
        class _Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise KeyboardInterrupt

        return _Stop()


def test_interrupted_finetune_resumes_from_last_epoch(trained_head, capsys):
    root = trained_head
    params = FinetuneParams(strategy="top", blocks=2, epochs=3, patience=5, flip=False)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(root, "resumed", params, tracker=StopAfterFirstEpoch())
    (state_path,) = (root / "ckpt-resumed").glob("*/state.json")  # the run's own folder under the root
    state = json.loads(state_path.read_text())
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert not (root / "resumed.keras").exists()  # nothing published from an unfinished run
    capsys.readouterr()
    result = run_finetune(root, "resumed", params)
    assert "resuming after epoch 0" in capsys.readouterr().out
    assert result.epochs_run == 3
    assert pd.read_csv(root / "resumed.csv")["epoch"].tolist() == [0, 1, 2]
    assert not (root / "ckpt-resumed").exists()  # cleared once published


def test_nan_loss_stops_finetune_and_publishes_nothing(trained_head):
    from transferkit.errors import TransferkitError

    root = trained_head
    head = keras.saving.load_model(root / "head.keras", safe_mode=True)
    output = head.get_layer("head_output")
    kernel, bias = output.get_weights()
    output.set_weights([np.full_like(kernel, 3e38), bias])  # logits overflow: inf - inf = NaN
    head.save(root / "head-broken.keras")
    with pytest.raises(TransferkitError, match=r"finetune: loss became nan.*Lower finetune.learning_rate"):
        run_finetune(root, "broken", FinetuneParams(strategy="top", blocks=1, epochs=2, flip=False),
                     head="head-broken.keras")
    assert not (root / "broken.keras").exists() and not (root / "broken.json").exists()


def test_a_companion_competes_and_what_is_published_is_what_was_chosen(trained_head, capsys):
    from transferkit.config import CompanionParams
    from transferkit.deliver.published import load_published
    from transferkit.train.companion import companion

    root = trained_head
    companion(root / "prepared" / "manifest.parquet", root / "companion", root / "companion.csv",
              root / "ckpt-companion", CompanionParams(epochs=3, width=4, batch_size=8), SEED)
    result = finetune(root / "prepared" / "manifest.parquet", root / "embeddings.npz", root / "head.keras",
                      root / "with.keras", root / "with.json", root / "with.csv", root / "ckpt-with", BACKBONE,
                      FinetuneParams(strategy="head"), SEED, companion_path=root / "companion")
    out = capsys.readouterr().out
    assert "finetune: candidates on" in out and "95% bootstrap interval" in out
    assert set(result.candidates) == {"head", "companion", "ensemble"}
    assert result.published in result.candidates and 0 < result.companion_weight < 1
    model, info = load_published(root / "with.keras", root / "with.json")  # safe_mode=True
    assert info.candidate == result.published
    names = {layer.name for layer in model.layers}
    assert ("weighted_average" in names) is (result.published == "ensemble")
    assert ("to_companion_side" in names) is (result.published in ("companion", "ensemble"))
    assert json.loads((root / "with.json").read_text())["candidate"] == result.published


def weakened_head(root):
    """The head with its output layer zeroed (uniform probabilities): a fine-tune beats it on val."""
    if not (root / "head-weak.keras").exists():
        head = keras.saving.load_model(root / "head.keras", safe_mode=True)
        output = head.get_layer("head_output")
        output.set_weights([np.zeros_like(w) for w in output.get_weights()])
        head.save(root / "head-weak.keras")
    return "head-weak.keras"


class StopInTheRefit:
    """Stands in for the MLflow tracker: interrupts the refit (its logs are named refit_*) after its first epoch."""

    def keras_callback(self):
        class _Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if "refit_loss" in (logs or {}):
                    raise KeyboardInterrupt

        return _Stop()


def run_refit(root, name, params, tracker=None, head="head.keras", companion=None):
    from transferkit.config import CompanionParams

    return finetune(root / "prepared" / "manifest.parquet", root / "embeddings.npz", root / head,
                    root / f"{name}.keras", root / f"{name}.json", root / f"{name}.csv", root / f"ckpt-{name}",
                    BACKBONE, params, SEED, tracker=tracker, companion_path=companion, head_params=REFIT_HEAD,
                    companion_params=CompanionParams(epochs=3, width=4, batch_size=8), head_history=root / "head.csv")


REFIT_HEAD = HeadParams(epochs=100, patience=100, learning_rate=0.01)  # what trained the fixture's head


def standardiser_mean(model) -> np.ndarray:
    return np.asarray(model.get_layer("head").get_layer("head_standardise").mean).ravel()


def test_a_refit_finetune_trains_on_train_and_val_and_resumes_after_an_interruption(trained_head, capsys):
    from transferkit.deliver.published import load_published
    from transferkit.embeddings.table import read_table

    root = trained_head
    params = FinetuneParams(strategy="top", blocks=1, epochs=2, patience=5, flip=False, learning_rate=0.01,
                            refit=True)
    with pytest.raises(KeyboardInterrupt):
        run_refit(root, "refit", params, tracker=StopInTheRefit(), head=weakened_head(root))
    assert not (root / "refit.keras").exists()  # nothing published from an unfinished refit
    assert len(list((root / "ckpt-refit").glob("*/state.json"))) == 2  # the val run's and the refit's
    capsys.readouterr()
    result = run_refit(root, "refit", params, head=weakened_head(root))
    assert "resuming after epoch 0" in capsys.readouterr().out
    manifest = pd.read_parquet(root / "prepared" / "manifest.parquet")
    both = manifest[manifest["split"].isin(["train", "val"])]
    assert result.published == "finetuned" and result.refit and result.refit_items == len(both)
    assert result.refit_epochs == {"head": pd.read_csv(root / "head.csv")["val_loss"].idxmin() + 1,
                                   "finetuned": result.best_epoch + 1}
    per_epoch = -(-len(both) // 32)
    assert result.refit_steps == result.refit_epochs["head"] * per_epoch + (result.best_epoch + 1) * per_epoch
    assert "refitted on" in result.published_why and "pre-refit" in result.published_why
    model, info = load_published(root / "refit.keras", root / "refit.json")
    assert (info.candidate, info.refit, info.refit_steps) == ("finetuned", True, result.refit_steps)
    # The refit started from a head standardised on train + val: it saw the val images.
    table = read_table(root / "embeddings.npz")
    np.testing.assert_allclose(standardiser_mean(model), table.rows(both["sha256"].tolist()).mean(0), rtol=1e-4,
                               atol=1e-4)
    assert not (root / "ckpt-refit").exists()  # both runs cleared once published


def test_a_refit_keeps_the_kind_chosen_on_val(trained_head):
    """Nothing is chosen again: the refit publishes the candidate kind and weight the run without it publishes.
    (Each branch's refit is deterministic: test_train_head.py, test_companion.py.)"""
    from transferkit.config import CompanionParams
    from transferkit.train.companion import companion

    root = trained_head
    if not (root / "companion").exists():
        companion(root / "prepared" / "manifest.parquet", root / "companion", root / "companion.csv",
                  root / "ckpt-companion", CompanionParams(epochs=3, width=4, batch_size=8), SEED)
    kept = run_refit(root, "kept", FinetuneParams(strategy="head"), companion=root / "companion")
    first = run_refit(root, "refit1", FinetuneParams(strategy="head", refit=True), companion=root / "companion")
    assert not kept.refit and kept.refit_steps is None
    assert json.loads((root / "kept.json").read_text())["refit"] is False
    assert (first.published, first.companion_weight) == (kept.published, kept.companion_weight)
    branches = {"head": {"head"}, "companion": {"companion"}, "ensemble": {"head", "companion"}}[first.published]
    assert set(first.refit_epochs) == branches
    assert json.loads((root / "refit1.json").read_text())["candidate"] == first.published
    a, c = (keras.saving.load_model(root / f"{name}.keras", safe_mode=True) for name in ("refit1", "kept"))
    assert any(not np.array_equal(x, y) for x, y in zip(a.get_weights(), c.get_weights(), strict=True))


def test_a_refit_needs_the_head_params_and_history(trained_head):
    from transferkit.errors import TransferkitError

    with pytest.raises(TransferkitError, match="finetune.refit: the refit needs the head's params"):
        run_finetune(trained_head, "nothing", FinetuneParams(strategy="head", refit=True))
