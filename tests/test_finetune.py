"""Fine-tuning on a tiny real pipeline: real backbone, real images, real files."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

from transferkit.backbones import build_backbone
from transferkit.config import BackboneParams, ExtractParams, FinetuneParams, HeadParams
from transferkit.extract import extract
from transferkit.finetune import finetune, unfreeze_top
from transferkit.images import load_rgb
from transferkit.train_head import train_head

BACKBONE = BackboneParams(name="efficientnet_lite0", weights="imagenet", image_size=32)
SEED = 0


@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    from conftest import make_image_folder, prepare_into

    root = tmp_path_factory.mktemp("pipeline")
    images = make_image_folder(root / "images", per_class=6)
    manifest = prepare_into(images, root / "prepared", val_fraction=0.2, test_fraction=0.2)
    extract(manifest, root / "store", root / "embeddings.npz", BACKBONE, ExtractParams(batch_size=8), seed=SEED)
    train_head(manifest, root / "embeddings.npz", root / "head.keras", root / "head.csv", HeadParams(epochs=10),
               seed=SEED)
    return root


def run_finetune(root, name, params, tracker=None, head="head.keras"):
    return finetune(root / "prepared" / "manifest.parquet", root / "embeddings.npz", root / head,
                    root / f"{name}.keras", root / f"{name}.json", root / f"{name}.csv", root / f"ckpt-{name}",
                    BACKBONE, params, SEED, tracker=tracker)


def test_unfreeze_top_keeps_batchnorm_frozen():
    backbone = build_backbone("efficientnet_lite0", "none", 32)
    unfreeze_top(backbone, 30)
    top, rest = backbone.layers[-30:], backbone.layers[:-30]
    assert not any(layer.trainable for layer in rest)
    assert all(not layer.trainable for layer in top if isinstance(layer, keras.layers.BatchNormalization))
    assert any(layer.trainable and layer.weights for layer in top)


def test_finetune_changes_only_unfrozen_weights(trained_head):
    root = trained_head
    result = run_finetune(root, "model", FinetuneParams(epochs=2, unfreeze=12, learning_rate=1e-3, patience=5))
    assert result["epochs_run"] == 2 and result["trainable_backbone_layers"] > 0
    model = keras.saving.load_model(root / "model.keras", safe_mode=True)
    tuned = model.get_layer("efficientnet_lite0")
    fresh = build_backbone("efficientnet_lite0", "imagenet", 32)
    cutoff = len(fresh.layers) - 12
    changed = []
    for index, (a, b) in enumerate(zip(fresh.layers, tuned.layers)):
        same = all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
        if index < cutoff or isinstance(a, keras.layers.BatchNormalization):
            assert same, f"{a.name} must stay frozen (BatchNorm statistics included)"
        elif a.weights:
            changed.append(not same)
    assert changed and all(changed)
    meta = json.loads((root / "model.json").read_text())
    assert meta["classes"] == ["circle", "square", "triangle"] and meta["image_size"] == 32
    assert not (root / "ckpt-model").exists()  # cleared once the model is published


def test_disabled_finetune_publishes_backbone_plus_head(trained_head):
    root = trained_head
    run_finetune(root, "plain", FinetuneParams(enabled=False))
    model = keras.saving.load_model(root / "plain.keras", safe_mode=True)
    head = keras.saving.load_model(root / "head.keras", safe_mode=True)
    backbone = build_backbone("efficientnet_lite0", "imagenet", 32)
    path = pd.read_parquet(root / "prepared" / "manifest.parquet")["path"].iloc[0]
    pixels = load_rgb(path, 32)[None].astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), head.predict(backbone.predict(pixels, verbose=0), verbose=0),
                               atol=1e-5)


class StopAfterFirstEpoch:
    """Stands in for the MLflow tracker: its callback interrupts training like a Ctrl-C would."""

    def keras_callback(self):
        class _Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise KeyboardInterrupt

        return _Stop()


def test_interrupted_finetune_resumes_from_last_epoch(trained_head, capsys):
    root = trained_head
    params = FinetuneParams(epochs=3, unfreeze=12, patience=5)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(root, "resumed", params, tracker=StopAfterFirstEpoch())
    state = json.loads((root / "ckpt-resumed" / "state.json").read_text())
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert not (root / "resumed.keras").exists()  # nothing published from an unfinished run
    capsys.readouterr()
    result = run_finetune(root, "resumed", params)
    assert "resuming after epoch 0" in capsys.readouterr().out
    assert result["epochs_run"] == 3
    assert pd.read_csv(root / "resumed.csv")["epoch"].tolist() == [0, 1, 2]


def test_nan_loss_stops_finetune_and_publishes_nothing(trained_head):
    from transferkit.errors import TransferkitError

    root = trained_head
    head = keras.saving.load_model(root / "head.keras", safe_mode=True)
    output = head.get_layer("head_output")
    kernel, bias = output.get_weights()
    output.set_weights([np.full_like(kernel, 3e38), bias])  # logits overflow: inf - inf = NaN
    head.save(root / "head-broken.keras")
    with pytest.raises(TransferkitError, match=r"finetune: loss became nan.*Lower finetune.learning_rate"):
        run_finetune(root, "broken", FinetuneParams(epochs=2), head="head-broken.keras")
    assert not (root / "broken.keras").exists() and not (root / "broken.json").exists()
