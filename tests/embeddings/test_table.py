import numpy as np
import pytest

from transferkit.embeddings.table import read_table, write_table
from transferkit.errors import TransferkitError


def test_table_writer_is_deterministic_and_sorts_by_hash(tmp_path):
    hashes = ["b" * 64, "a" * 64]
    rows = np.array([[1, 2], [3, 4]], np.float32)
    write_table(tmp_path / "x.npz", hashes, rows, {"backbone": "x"})
    write_table(tmp_path / "y.npz", hashes[::-1], rows[::-1], {"backbone": "x"})
    assert (tmp_path / "x.npz").read_bytes() == (tmp_path / "y.npz").read_bytes()
    table = read_table(tmp_path / "x.npz")
    np.testing.assert_array_equal(table.rows(["b" * 64, "a" * 64, "b" * 64]), [[1, 2], [3, 4], [1, 2]])
    assert table.spec == {"backbone": "x"} and table.dim == 2


def test_non_finite_embeddings_are_refused(tmp_path):
    write_table(tmp_path / "x.npz", ["a" * 64], np.array([[np.nan, 1.0]], np.float32), {})
    with pytest.raises(TransferkitError, match="NaN or infinite"):
        read_table(tmp_path / "x.npz")
