import numpy as np
import pandas as pd
import pytest

from transferkit.config import BackboneParams, ExtractParams
from transferkit.embeddings.extract import extract
from transferkit.embeddings.store import EmbeddingStore
from transferkit.embeddings.table import read_table
from transferkit.errors import TransferkitError

from conftest import make_image_folder, prepare_into

BACKBONE = BackboneParams(name="efficientnet_lite0", weights="imagenet", image_size=32)
SPLITS = {"val_fraction": 0.25, "test_fraction": 0.25}


@pytest.fixture
def prepared(image_folder, tmp_path):
    return prepare_into(image_folder, tmp_path / "prepared", **SPLITS)


def run_extract(prepared, tmp_path, backbone=BACKBONE, table="embeddings.npz", **extract_params):
    """TensorFlow unless asked: converting the backbone to LiteRT costs seconds per store (one test covers it)."""
    params = ExtractParams(**{"runtime": "tensorflow", **extract_params})
    return extract(prepared, tmp_path / "store", tmp_path / table, backbone, params, seed=0)


def test_extract_caches_and_reuses(prepared, tmp_path, image_folder, capsys):
    first = run_extract(prepared, tmp_path, batch_size=8, shard_size=10)
    assert (first.computed, first.reused, first.embedding_dim) == (24, 0, 1280)
    store = EmbeddingStore(tmp_path / "store" / first.key)
    assert len(store.shards()) == 3  # 24 images, 10 per shard: 10 + 10 + 4
    assert "images/s" in capsys.readouterr().err  # progress with throughput

    manifest = pd.read_parquet(prepared)
    table = read_table(tmp_path / "embeddings.npz")
    embeddings = table.rows(manifest["sha256"].tolist())
    assert embeddings.shape == (24, 1280) and np.isfinite(embeddings).all()
    assert table.spec["key"] == first.key and table.spec["image_size"] == 32

    # Add images: only the new ones are computed, the old embeddings are untouched.
    make_image_folder(image_folder, per_class=2, seed=1)
    prepare_into(image_folder, prepared.parent, **SPLITS)
    second = run_extract(prepared, tmp_path, batch_size=8, shard_size=10)
    assert (second.computed, second.reused) == (6, 24)
    grown = read_table(tmp_path / "embeddings.npz")
    assert len(grown.hashes) == 30
    np.testing.assert_array_equal(grown.rows(manifest["sha256"].tolist()), embeddings)


def test_two_fresh_runs_write_byte_identical_store_folders(prepared, tmp_path):
    """The same embeddings give the same files, names and bytes: dvc.lock keeps the store's hash, and
    `dvc push` uploads nothing new."""
    first = run_extract(prepared, tmp_path / "a", shard_size=10)
    second = run_extract(prepared, tmp_path / "b", shard_size=10)
    assert first.key == second.key
    folders = [tmp_path / run / "store" / first.key for run in ("a", "b")]
    contents = [{p.name: p.read_bytes() for p in sorted(folder.iterdir())} for folder in folders]
    assert contents[0] == contents[1] and len(contents[0]) == 1 + 3  # spec.json and 10 + 10 + 4 embeddings


def test_the_table_holds_exactly_the_manifest_and_is_byte_identical_for_the_same_inputs(prepared, tmp_path):
    run_extract(prepared, tmp_path, table="a.npz")
    other = prepare_into(make_image_folder(tmp_path / "other", per_class=4, seed=5), tmp_path / "other-prepared",
                         **SPLITS)
    run_extract(other, tmp_path, table="other.npz")  # the store now holds more than the first manifest
    run_extract(prepared, tmp_path, table="b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    table = read_table(tmp_path / "b.npz")
    assert sorted(table.hashes) == sorted(set(pd.read_parquet(prepared)["sha256"]))
    with pytest.raises(TransferkitError, match="lacks images"):
        table.rows(read_table(tmp_path / "other.npz").hashes[:1].tolist())


def test_embeddings_match_a_direct_forward_pass(prepared, tmp_path):
    from transferkit.backbones.build import build_backbone
    from transferkit.data.images import load_rgb

    run_extract(prepared, tmp_path, batch_size=5)
    manifest = pd.read_parquet(prepared).iloc[:4]
    cached = read_table(tmp_path / "embeddings.npz").rows(manifest["sha256"].tolist())
    model = build_backbone(BACKBONE.name, BACKBONE.weights, BACKBONE.image_size)
    pixels = np.stack([load_rgb(p, 32) for p in manifest["path"]]).astype(np.float32)
    np.testing.assert_allclose(cached, model.predict(pixels, verbose=0), atol=1e-4)


def test_litert_runtime_matches_tensorflow_and_is_a_cache_key_of_its_own(prepared, tmp_path, capsys):
    tensorflow = run_extract(prepared, tmp_path, table="tf.npz", batch_size=5)
    litert = run_extract(prepared, tmp_path, table="litert.npz", batch_size=5, runtime="litert")
    assert litert.key != tensorflow.key and litert.computed == tensorflow.computed > 0
    assert (tmp_path / "store" / litert.key / "backbone.tflite").exists()  # converted once, kept with its key
    a, b = read_table(tmp_path / "tf.npz"), read_table(tmp_path / "litert.npz")
    assert b.spec["runtime"] == "litert" and a.spec["runtime"] == "tensorflow"
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-4)
    assert "converting the backbone to LiteRT" in capsys.readouterr().out
    for shard in (tmp_path / "store" / litert.key).glob("shard-*.npz"):
        shard.unlink()
    again = run_extract(prepared, tmp_path, table="litert.npz", runtime="litert")
    assert again.computed == litert.computed and "converting" not in capsys.readouterr().out


def test_auto_runtime_is_litert_on_cpu_and_tensorflow_on_gpu():
    from transferkit.deliver.runtimes import resolve

    assert resolve("auto", gpu=False) == "litert" and resolve("auto", gpu=True) == "tensorflow"
    assert resolve("tensorflow", gpu=False) == "tensorflow"


def test_new_weights_or_size_never_reuse_stale_embeddings(prepared, tmp_path):
    base = run_extract(prepared, tmp_path)
    other_size = run_extract(prepared, tmp_path, BACKBONE.model_copy(update={"image_size": 48}))
    random_init = run_extract(prepared, tmp_path, BACKBONE.model_copy(update={"weights": "none"}))
    assert len({base.key, other_size.key, random_init.key}) == 3
    assert other_size.computed == random_init.computed == 24


def test_missing_embeddings_are_an_error(prepared, tmp_path):
    with pytest.raises(TransferkitError, match="extract"):
        read_table(tmp_path / "no-embeddings.npz")
    with pytest.raises(TransferkitError, match="missing from the store"):
        EmbeddingStore(tmp_path / "empty-key").lookup(["abc"])


def test_changed_weights_file_or_preprocessing_never_reuse_stale_embeddings(prepared, tmp_path, monkeypatch):
    from transferkit.backbones.build import build_backbone

    weights = tmp_path / "lite0.weights.h5"
    model = build_backbone("efficientnet_lite0", "none", 32)
    model.save_weights(weights)
    from_file = BACKBONE.model_copy(update={"weights": str(weights)})
    first = run_extract(prepared, tmp_path, from_file)

    # Same path, new contents (one weight nudged): the key follows the weights, not the file name.
    kernel = model.layers[-3].weights[0]
    kernel.assign(kernel.numpy() + 1e-3)
    model.save_weights(weights)
    second = run_extract(prepared, tmp_path, from_file)
    assert second.key != first.key and second.computed == 24 and second.reused == 0

    # A change to how pixels are decoded or resized gets a new key too.
    monkeypatch.setattr("transferkit.embeddings.extract.RESIZE_SPEC", "pil-exif-rgb-bicubic-squash-v2")
    third = run_extract(prepared, tmp_path, from_file)
    assert third.key not in (first.key, second.key) and third.computed == 24

    # The downstream stages read the embeddings of the key the last extract wrote.
    assert read_table(tmp_path / "embeddings.npz").spec["key"] == third.key


def test_decoded_batches_keep_order_and_match_load_rgb(image_folder):
    from transferkit.data.datasets import decoded_batches
    from transferkit.data.images import load_rgb

    paths = sorted(str(p) for p in image_folder.rglob("*.png"))  # 24 files
    batches = list(decoded_batches(paths, 32, batch_size=5, workers=2, ahead=2))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (32, 32, 3) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), np.stack([load_rgb(p, 32) for p in paths]))
    assert [len(b) for b in decoded_batches(paths[:3], 32, batch_size=5)] == [3]
    assert list(decoded_batches([], 32, batch_size=5)) == []
