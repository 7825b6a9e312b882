import numpy as np
import pytest

from transferkit.errors import TransferkitError
from transferkit.embeddings.store import EmbeddingStore, ShardWriter, cache_key


def test_shard_writer_writes_exactly_shard_size_per_file_across_uneven_batches(tmp_path):
    cache = EmbeddingStore(tmp_path / "key")
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


def test_open_writes_the_spec_under_its_key_and_removes_dead_writers_temporaries(tmp_path):
    spec = {"backbone": "x", "image_size": 32}
    store, removed = EmbeddingStore.open(tmp_path, spec)
    assert store.key == cache_key(spec) and removed == []
    assert (store.folder / "spec.json").exists()
    (store.folder / ".tmp-999999999-shard-1.npz").write_bytes(b"half")  # pid 999999999 does not exist
    _, removed = EmbeddingStore.open(tmp_path, spec)
    assert [p.name for p in removed] == [".tmp-999999999-shard-1.npz"]
    assert cache_key({**spec, "image_size": 48}) != store.key


def test_lookup_names_what_is_missing(tmp_path):
    store = EmbeddingStore(tmp_path / "k")
    store.write_shard(["a" * 64], np.ones((1, 2), np.float32))
    store.write_shard(["c" * 64], np.zeros((1, 2), np.float32))
    np.testing.assert_array_equal(store.lookup(["c" * 64, "a" * 64]), [[0, 0], [1, 1]])
    with pytest.raises(TransferkitError, match="1 embeddings missing from the store"):
        store.lookup(["a" * 64, "b" * 64])
