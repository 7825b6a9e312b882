"""Read a legacy PyTorch ``torch.save`` state dict without importing torch.

The legacy (pre-1.6, non-zip) format is five pickles back to back, then raw
storage bytes:

1. magic number, 2. protocol version (1001), 3. sys info (endianness, sizes),
4. the state dict itself, whose tensors refer to storages by key,
5. the list of storage keys, in the order their bytes follow;
then, per storage: an int64 element count and that many elements.

Unpickling runs code, so every pickle is read by ``_RestrictedUnpickler``,
which admits only the few globals a state dict needs and maps each one to a
small local stand-in. Anything else raises ``UnsafePickleError``.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch storage class name -> little-endian numpy dtype of its elements.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a Python global that a state dict never needs."""


class PthFormatError(ValueError):
    """The file is not a well-formed legacy torch state dict."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a class such as ``torch.FloatStorage`` (never called)."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A flat buffer; ``data`` is filled once the raw bytes have been read."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    """A strided view into a storage, resolved after the bytes are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    # Stand-in for torch._utils._rebuild_tensor_v2; the ignored arguments are
    # requires_grad, backward hooks and (newer torch) metadata.
    if not isinstance(storage, _Storage):
        raise PthFormatError(f"tensor built from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_parameter(data: _TensorRef, *_ignored) -> _TensorRef:
    # Stand-in for torch._utils._rebuild_parameter: a Parameter is its tensor.
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, np.dtype(dt)) for name, dt in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and storage ids."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages  # shared across the pickles of one file

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a PyTorch state dict "
                "never needs it (the file is corrupt or malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # Legacy storage id: ("storage", storage_type, key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise PthFormatError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise PthFormatError(f"storage of unknown type {storage_type!r:.80}")
        if view_metadata is not None:
            raise PthFormatError("storage views (torch < 0.4 files) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _read_storage_bytes(f: IO[bytes], keys: list[str], storages: dict[str, _Storage]) -> None:
    """Fill each storage from the raw bytes that follow the pickles, in key order."""
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise PthFormatError(f"storage {key!r} is listed but no tensor uses it")
        header = f.read(8)
        if len(header) != 8:
            raise PthFormatError(f"file ends before storage {key!r}")
        (numel,) = struct.unpack("<q", header)  # element count, little-endian int64
        if numel != storage.numel:
            raise PthFormatError(f"storage {key!r}: {numel} elements on disk, {storage.numel} declared")
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise PthFormatError(f"file ends inside storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    missing = [k for k, s in storages.items() if s.data is None]
    if missing:
        raise PthFormatError(f"storages used by tensors but absent from the file: {missing[:5]}")


def _materialize(ref: _TensorRef) -> np.ndarray:
    """Copy a (possibly non-contiguous) strided view out of its storage."""
    data = ref.storage.data
    if ref.offset < 0 or any(s < 0 for s in ref.stride) or len(ref.stride) != len(ref.shape):
        raise PthFormatError(f"bad tensor geometry offset={ref.offset} stride={ref.stride}")
    if 0 not in ref.shape:
        # as_strided does no bounds checking, so check that the last element is inside.
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if last >= data.size:
            raise PthFormatError(f"tensor of shape {ref.shape} overruns its storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset:],
        shape=ref.shape,
        strides=tuple(s * data.itemsize for s in ref.stride),  # elements -> bytes
        writeable=False,
    )
    array = np.array(view, order="C")  # own the memory, torch (row-major) layout
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a legacy-format PyTorch state dict as numpy arrays.

    Floating tensors are returned as float32; integer ones (e.g. BatchNorm's
    ``num_batches_tracked`` counter) keep their integer dtype. Shapes and the
    memory order of each array are torch's (row-major over torch's axes).
    """
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise PthFormatError(f"{path}: zip-format torch file (torch >= 1.6); only the legacy format is supported")
        f.seek(0)

        def load() -> Any:  # the next pickle in the file; storages are shared between pickles
            return _RestrictedUnpickler(f, storages).load()

        if load() != _MAGIC:
            raise PthFormatError(f"{path}: not a legacy torch file (bad magic number)")
        if load() != _PROTOCOL_VERSION:
            raise PthFormatError(f"{path}: unsupported torch protocol version")
        sys_info = load()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
            raise PthFormatError(f"{path}: only little-endian files are supported")
        state = load()
        keys = load()
        _read_storage_bytes(f, keys, storages)
        if f.read(1):
            raise PthFormatError(f"{path}: unexpected bytes after the last storage")
    if not isinstance(state, dict):
        raise PthFormatError(f"{path}: top-level object is {type(state).__name__}, not a state dict")
    out = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise PthFormatError(f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = _materialize(ref)
    return out
