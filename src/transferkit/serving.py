"""How the published model is described to MLflow: signature and requirements."""

from __future__ import annotations

from importlib import metadata

import numpy as np

from transferkit.published import ModelInfo


def model_signature(info: ModelInfo):
    """Input: (N, size, size, 3) float32 RGB 0..255; output: (N, n_classes) probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = info.image_size
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(info.classes)), "probabilities")]),
    )


def pip_requirements() -> list[str]:
    """Explicit, so MLflow does not infer the 500 MB `tensorflow` wheel next to `tensorflow-cpu`."""
    requirements = []
    for candidates in (("tensorflow-cpu", "tensorflow"), ("keras",), ("numpy",)):
        for name in candidates:
            try:
                requirements.append(f"{name}=={metadata.version(name)}")
                break
            except metadata.PackageNotFoundError:
                continue
    return requirements
