import numpy as np
import pandas as pd
import pytest

from transferkit.config import BackboneParams, DataParams, ExtractParams
from transferkit.data import prepare
from transferkit.errors import TransferkitError
from transferkit.features import EmbeddingCache, extract, load_embeddings

from conftest import make_image_folder

BACKBONE = BackboneParams(name="efficientnet_lite0", weights="imagenet", image_size=32)


@pytest.fixture
def prepared(image_folder, tmp_path):
    prepare(image_folder, tmp_path / "prepared", DataParams(val_fraction=0.25, test_fraction=0.25))
    return tmp_path / "prepared" / "manifest.parquet"


def test_extract_caches_and_reuses(prepared, tmp_path, image_folder, capsys):
    features = tmp_path / "features"
    first = extract(prepared, features, BACKBONE, ExtractParams(batch_size=8, shard_size=10), seed=0)
    assert (first["computed"], first["reused"], first["embedding_dim"]) == (24, 0, 1280)
    cache = EmbeddingCache(features / first["key"])
    assert len(cache.shards()) == 3  # 24 images, 10 per shard: 10 + 10 + 4
    assert "images/s" in capsys.readouterr().err  # progress with throughput

    manifest = pd.read_parquet(prepared)
    embeddings, current = load_embeddings(features, manifest["sha256"].tolist())
    assert embeddings.shape == (24, 1280) and np.isfinite(embeddings).all()
    assert current["key"] == first["key"]

    # Add images: only the new ones are computed, the old embeddings are untouched.
    make_image_folder(image_folder, per_class=2, seed=1)
    prepare(image_folder, prepared.parent, DataParams(val_fraction=0.25, test_fraction=0.25))
    second = extract(prepared, features, BACKBONE, ExtractParams(batch_size=8, shard_size=10), seed=0)
    assert (second["computed"], second["reused"]) == (6, 24)
    again, _ = load_embeddings(features, manifest["sha256"].tolist())
    np.testing.assert_array_equal(again, embeddings)


def test_embeddings_match_a_direct_forward_pass(prepared, tmp_path):
    from transferkit.backbones import build_backbone
    from transferkit.images import load_rgb

    features = tmp_path / "features"
    extract(prepared, features, BACKBONE, ExtractParams(batch_size=5), seed=0)
    manifest = pd.read_parquet(prepared).iloc[:4]
    cached, _ = load_embeddings(features, manifest["sha256"].tolist())
    model = build_backbone(BACKBONE.name, BACKBONE.weights, BACKBONE.image_size)
    pixels = np.stack([load_rgb(p, 32) for p in manifest["path"]]).astype(np.float32)
    np.testing.assert_allclose(cached, model.predict(pixels, verbose=0), atol=1e-4)


def test_new_weights_or_size_never_reuse_stale_embeddings(prepared, tmp_path):
    features = tmp_path / "features"
    base = extract(prepared, features, BACKBONE, ExtractParams(), seed=0)
    other_size = extract(prepared, features, BACKBONE.model_copy(update={"image_size": 48}), ExtractParams(), seed=0)
    random_init = extract(prepared, features, BACKBONE.model_copy(update={"weights": "none"}), ExtractParams(), seed=0)
    assert len({base["key"], other_size["key"], random_init["key"]}) == 3
    assert other_size["computed"] == random_init["computed"] == 24


def test_missing_embeddings_are_an_error(prepared, tmp_path):
    with pytest.raises(TransferkitError, match="extract"):
        load_embeddings(tmp_path / "no-features", ["abc"])


def test_changed_weights_file_or_preprocessing_never_reuse_stale_embeddings(prepared, tmp_path, monkeypatch):
    from transferkit.backbones import build_backbone

    features = tmp_path / "features"
    weights = tmp_path / "lite0.weights.h5"
    model = build_backbone("efficientnet_lite0", "none", 32)
    model.save_weights(weights)
    from_file = BACKBONE.model_copy(update={"weights": str(weights)})
    first = extract(prepared, features, from_file, ExtractParams(), seed=0)

    # Same path, new contents (one weight nudged): the key follows the weights, not the file name.
    kernel = model.layers[-3].weights[0]
    kernel.assign(kernel.numpy() + 1e-3)
    model.save_weights(weights)
    second = extract(prepared, features, from_file, ExtractParams(), seed=0)
    assert second["key"] != first["key"] and second["computed"] == 24 and second["reused"] == 0

    # A change to how pixels are decoded or resized gets a new key too.
    monkeypatch.setattr("transferkit.features.RESIZE_SPEC", "pil-exif-rgb-bicubic-squash-v2")
    third = extract(prepared, features, from_file, ExtractParams(), seed=0)
    assert third["key"] not in (first["key"], second["key"]) and third["computed"] == 24

    # The downstream stages read the embeddings of the key the last extract wrote.
    manifest = pd.read_parquet(prepared)
    _, current = load_embeddings(features, manifest["sha256"].tolist())
    assert current["key"] == third["key"]


def test_shard_writer_writes_exactly_shard_size_per_file_across_uneven_batches(tmp_path):
    from transferkit.features import ShardWriter

    cache = EmbeddingCache(tmp_path / "key")
    hashes = [f"{i:064x}" for i in range(23)]
    writer = ShardWriter(cache, hashes, shard_size=5, dim=3)
    rows = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    for start in range(0, 23, 7):  # batches of 7 straddle the shard boundaries
        writer.add(rows[start:start + 7])
    writer.close()
    sizes = []
    for shard in cache.shards():
        with np.load(shard, allow_pickle=False) as data:
            sizes.append(len(data["sha256"]))
    assert sizes == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(cache.lookup(hashes), rows)


def test_decoded_batches_keep_order_and_match_load_rgb(image_folder):
    from transferkit.datasets import decoded_batches
    from transferkit.images import load_rgb

    paths = sorted(str(p) for p in image_folder.rglob("*.png"))  # 24 files
    batches = list(decoded_batches(paths, 32, batch_size=5, workers=2, ahead=2))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    assert all(b.dtype == np.uint8 and b.shape[1:] == (32, 32, 3) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), np.stack([load_rgb(p, 32) for p in paths]))
    assert [len(b) for b in decoded_batches(paths[:3], 32, batch_size=5)] == [3]
    assert list(decoded_batches([], 32, batch_size=5)) == []
