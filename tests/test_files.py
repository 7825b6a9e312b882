import subprocess
import sys

import pytest

from transferkit.files import atomic_path, read_json, remove_stale_temporaries, write_json


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"accura')  # half written, then the writer fails
            raise RuntimeError("disk full")
    assert read_json(target) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".tmp-{dead_pid}-shard-1.npz").write_bytes(b"half")
        (tmp_path / f".tmp-{live.pid}-shard-2.npz").write_bytes(b"in progress")
        (tmp_path / "shard-3.npz").write_bytes(b"complete")
        removed = remove_stale_temporaries(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert [p.name for p in removed] == [f".tmp-{dead_pid}-shard-1.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-{live.pid}-shard-2.npz", "shard-3.npz"]
