"""Fine-tuning a text encoder: the tiny encoder (backbone.weights: a .weights.h5), real tokenizer, real files."""

import json

import keras
import numpy as np
import pytest

from transferkit.backbones import bert
from transferkit.backbones.build import build_backbone
from transferkit.config import BackboneParams, ExtractParams, FinetuneParams, HeadParams, TextParams
from transferkit.deliver.published import load_published
from transferkit.embeddings.extract import extract
from transferkit.train.finetune import WindowBatches, finetune
from transferkit.train.recipe import Facts, resolve
from transferkit.train.train_head import train_head

TEXT = TextParams(max_tokens=24, overlap=4, max_windows=3)
SEED = 0


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_text_weights):
    from conftest import make_text_folder, prepare_into

    root = tmp_path_factory.mktemp("text-pipeline")
    manifest = prepare_into(make_text_folder(root / "texts", per_class=8), root / "prepared",
                            val_fraction=0.25, test_fraction=0.25)
    backbone = BackboneParams(name="all_minilm_l6_v2", weights=str(tiny_text_weights))
    extract(manifest, root / "store", root / "embeddings.npz", backbone, ExtractParams(batch_size=4), seed=SEED,
            text_params=TEXT)
    train_head(manifest, root / "embeddings.npz", root / "head.keras", root / "head.csv",
               HeadParams(epochs=20, patience=20, learning_rate=0.01), seed=SEED)
    return root, backbone


def run_finetune(root, backbone, name, params):
    return finetune(root / "prepared" / "manifest.parquet", root / "embeddings.npz", root / "head.keras",
                    root / f"{name}.keras", root / f"{name}.json", root / f"{name}.csv", root / f"ckpt-{name}",
                    backbone, params, SEED, text_params=TEXT)


class EncoderSnapshots:
    """Stands in for the MLflow tracker: its callback keeps the encoder's weights after every epoch."""

    def __init__(self):
        self.epochs: list[dict[str, list]] = []

    def keras_callback(self):
        snapshots = self

        class _Snapshot(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                encoder = self.model.get_layer("classifier").get_layer("all_minilm_l6_v2")
                snapshots.epochs.append({layer.name: [w.copy() for w in layer.get_weights()]
                                         for layer in encoder.layers if layer.weights})

        return _Snapshot()


def test_text_finetune_trains_whole_top_layers_and_publishes_one_model_on_token_ids(text_run):
    root, backbone = text_run
    snapshots = EncoderSnapshots()
    # translate and zoom are image transforms: set here, never applied to text.
    result = finetune(root / "prepared" / "manifest.parquet", root / "embeddings.npz", root / "head.keras",
                      root / "top.keras", root / "top.json", root / "top.csv", root / "ckpt-top", backbone,
                      FinetuneParams(strategy="top", blocks=1, epochs=2, batch_size=6, learning_rate=1e-3,
                                     translate=0.2, zoom=0.2), SEED, tracker=snapshots, text_params=TEXT)
    assert result.epochs_run == 2 and result.recipe["translate"] == 0.0 and result.recipe["zoom"] == 0.0
    assert any("image transforms, ignored" in reason for reason in result.recipe["reasons"])
    model, info = load_published(root / "top.keras", root / "top.json")  # safe_mode, no optimizer in the file
    assert [i.name for i in model.inputs] == ["token_ids", "padding_mask"]
    assert info.modality == "text" and info.image_size is None
    assert info.text == TEXT.model_dump() and info.tokenizer_sha256 == bert.tokenizer_fingerprint()
    assert json.loads((root / "top.json").read_text())["modality"] == "text"

    # Training moved the top layer only, whole (every weight layer of layer1); the embeddings and layer0 stayed.
    fresh = build_backbone(backbone.name, backbone.weights)
    built = {layer.name: layer.get_weights() for layer in fresh.layers if layer.weights}
    last = snapshots.epochs[-1]
    moved = {name for name, weights in last.items()
             if any(not np.array_equal(a, b) for a, b in zip(weights, built[name], strict=True))}
    assert moved == {name for name in built if name.startswith("layer1_")}

    # The published model is the encoder + head on token ids: the frozen one when do-no-harm kept the head.
    texts = ["cheap pills now", "the build server notes"]
    ids, mask = bert.encode_texts(texts, bert.load_tokenizer(), bert.WindowSettings(**TEXT.model_dump()))
    if result.published == "head":
        head = keras.saving.load_model(root / "head.keras")
        np.testing.assert_allclose(model.predict([ids, mask], verbose=0),
                                   head.predict(fresh.predict([ids, mask], verbose=0), verbose=0), atol=1e-5)


def test_text_head_strategy_publishes_encoder_and_head(text_run):
    root, backbone = text_run
    result = run_finetune(root, backbone, "frozen", FinetuneParams(strategy="head"))
    assert result.published == "head" and result.epochs_run == 0
    model, info = load_published(root / "frozen.keras", root / "frozen.json")
    assert info.modality == "text" and [i.name for i in model.inputs] == ["token_ids", "padding_mask"]


def test_text_recipe_has_transformer_rates_no_augmentation_and_counts_window_batches():
    # 200 documents in 40 batches of windows: the step floor (finetune.min_steps null: 400 for text) counts them.
    facts = Facts(per_class=100, head_val_accuracy=0.8, n_blocks=7, train_images=200, modality="text",
                  steps_per_epoch=40)
    recipe = resolve(FinetuneParams(), facts, score_flip=lambda: pytest.fail("no flip check for text"))
    assert (recipe.strategy, recipe.blocks, recipe.steps_per_epoch, recipe.epochs) == ("top", 3, 40, 10)
    assert "finetune.min_steps 400 (the text default)" in recipe.budget
    assert recipe.learning_rate <= 1e-4 and not recipe.flip
    assert (recipe.translate, recipe.zoom, recipe.erase) == (0.0, 0.0, 0.0)
    similar = Facts(per_class=100, head_val_accuracy=0.99, n_blocks=7, train_images=200, modality="text")
    assert resolve(FinetuneParams(), similar, lambda: None).strategy == "head"


def test_window_batches_hold_the_budget_and_reshuffle_every_epoch():
    rng = np.random.default_rng(1)
    documents = [[[1] * 5] * int(rng.integers(1, 4)) for _ in range(30)]
    labels = rng.integers(0, 2, 30)
    batches = WindowBatches(documents, labels, 2, max_windows=6, seed=3)
    first, second = batches.batches(), batches.batches()
    assert len(first) == len(second) == len(batches)
    assert first != second and sorted(sum(first, [])) == list(range(30))
    for batch in first:
        assert len({len(documents[i]) for i in batch}) == 1 and len(batch) * len(documents[batch[0]]) <= 6
    (ids, mask), onehot = next(iter(WindowBatches(documents, labels, 2, max_windows=6)))
    assert ids.shape == mask.shape and ids.dtype == np.int32 and onehot.shape == (len(ids), 2)
