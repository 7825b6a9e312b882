import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from transferkit.embeddings.store import EmbeddingStore, ShardWriter, cache_key
from transferkit.errors import TransferkitError

SPEC = {"backbone": "x", "image_size": 32}
HASHES = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(23))
ROWS = np.arange(23 * 3, dtype=np.float32).reshape(23, 3) / 7  # row i belongs to HASHES[i]


def write(root, batch: int, hashes=HASHES) -> EmbeddingStore:
    """What extract does: open the key, write what it lacks in sorted order, `batch` embeddings at a time."""
    store, _ = EmbeddingStore.open(root, SPEC)
    todo = store.missing(hashes)
    rows = ROWS[[HASHES.index(h) for h in todo]]
    writer = ShardWriter(store, todo, shard_size=5, dim=3)
    for start in range(0, len(todo), batch):
        writer.add(rows[start:start + batch])
    writer.close()
    return store


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shard_writer_writes_exactly_shard_size_per_file_across_uneven_batches(tmp_path):
    cache = EmbeddingStore(tmp_path / "key")
    hashes = [f"{i:064x}" for i in range(23)]
    writer = ShardWriter(cache, hashes, shard_size=5, dim=3)
    rows = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    for start in range(0, 23, 7):  # batches of 7 straddle the shard boundaries
        writer.add(rows[start:start + 7])
    writer.close()
    held = []
    for shard in cache.shards():
        with np.load(shard, allow_pickle=False) as data:
            held.append(data["sha256"].tolist())
    held.sort()  # names are digests, not creation order: put the shards in hash order
    assert [len(h) for h in held] == [5, 5, 5, 5, 3] and sum(held, []) == hashes  # consecutive runs of the list
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


def test_two_fresh_writes_of_the_same_embeddings_give_byte_identical_folders(tmp_path, monkeypatch):
    first = write(tmp_path / "a", batch=7)
    clock = time.time
    monkeypatch.setattr(time, "time", lambda: clock() + 86_400)  # a day later: nothing may stamp the time
    second = write(tmp_path / "b", batch=4)
    assert contents(first.folder) == contents(second.folder)
    assert len(first.shards()) == 5 and all(len(p.stem) == len("shard-") + 32 for p in first.shards())
    assert json.loads((first.folder / "spec.json").read_text()) == SPEC


def test_adding_images_appends_shards_and_never_rewrites_old_ones(tmp_path):
    store = write(tmp_path, batch=7, hashes=HASHES[::2])
    before = contents(store.folder)
    write(tmp_path, batch=7)
    after = contents(store.folder)
    assert before.items() <= after.items() and len(after) == len(before) + 3  # 12 then 11 more: 5 + 5 + 2, 5 + 5 + 1
    np.testing.assert_array_equal(store.lookup(HASHES), ROWS)


# A writer that is killed (SIGKILL) as it renames its third shard: two whole shards, one complete temporary.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import test_store

rename = os.replace

def replace(src, dst):
    if Path(dst).name.startswith("shard-") and len(list(Path(dst).parent.glob("shard-*"))) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst)

os.replace = replace
test_store.write(sys.argv[2], batch=7)
"""


def test_a_killed_and_resumed_write_ends_with_the_shards_of_an_uninterrupted_one(tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(Path(__file__).parent), str(tmp_path / "a")],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = tmp_path / "a" / cache_key(SPEC)
    assert len(list(folder.glob("shard-*"))) == 2 and len(list(folder.glob(".tmp-*"))) == 1

    _, removed = EmbeddingStore.open(tmp_path / "a", SPEC)
    assert len(removed) == 1
    resumed = write(tmp_path / "a", batch=3)  # another batch size: shards split by count, not by batch
    uninterrupted = write(tmp_path / "b", batch=7)
    assert contents(resumed.folder) == contents(uninterrupted.folder)
    np.testing.assert_array_equal(resumed.lookup(HASHES), ROWS)


def test_stores_written_by_the_old_time_and_pid_named_shards_still_read(tmp_path):
    folder = tmp_path / cache_key(SPEC)
    folder.mkdir()
    old = folder / "shard-01796566008705613793-15840.npz"
    np.savez(old, sha256=np.asarray(HASHES[:5], dtype="U64"), embeddings=ROWS[:5])  # as the old code wrote them
    old_bytes = old.read_bytes()
    store = write(tmp_path, batch=7)
    assert store.known_hashes() == set(HASHES) and old.read_bytes() == old_bytes
    assert len(store.shards()) == 1 + 4  # the old shard plus the 18 others: 5 + 5 + 5 + 3
    np.testing.assert_array_equal(store.lookup(HASHES[3:8]), ROWS[3:8])
