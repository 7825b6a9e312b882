import importlib.util
import subprocess
import sys
from typing import get_args

from transferkit.backbones.registry import BACKBONES, Family, Modality


def test_every_entry_is_complete_and_consistent():
    for name, spec in BACKBONES.items():
        assert spec.name == name
        assert spec.embedding_dim > 0
        assert spec.family in get_args(Family) and spec.modality in get_args(Modality)
        if spec.modality == "image":
            assert spec.min_size <= spec.native_size
        else:  # sizes in pixels mean nothing to text
            assert spec.native_size is None and spec.min_size is None
        if spec.family == "bert":
            assert spec.modality == "text" and spec.preprocessing == "wordpiece"
            assert importlib.util.find_spec(spec.source) is not None, f"pip package of {name} not installed"
        elif spec.family == "efficientnet_lite":
            assert spec.source in ("0", "1", "2")
        else:
            import keras

            assert callable(getattr(keras.applications, spec.source))


def test_registry_and_config_do_not_import_tensorflow():
    code = ("import sys, transferkit.config, transferkit.backbones.registry; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
