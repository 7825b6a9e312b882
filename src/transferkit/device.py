"""Where the backbone runs, and in which precision.

On a GPU the backbone runs in mixed precision (float16 compute, float32
variables; about 2x faster on tensor cores), and inference (extract,
evaluate) uses larger batches there. Training batch sizes are never changed:
they are hyperparameters and come from params.yaml as written. On CPU
nothing changes: float32, the configured batch sizes. The choice is a pure
function of the visible devices so it is tested on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_INFERENCE_BATCH_MULTIPLIER = 4  # a GPU idles on CPU-sized batches; results do not depend on it


@dataclass(frozen=True)
class DevicePlan:
    device: str  # TensorFlow device string
    mixed_precision: bool

    @property
    def policy(self) -> str:
        return "mixed_float16" if self.mixed_precision else "float32"

    @property
    def gpu(self) -> bool:
        return self.device.startswith("/GPU")


def plan_for(gpu_names: list[str]) -> DevicePlan:
    """Choose the device plan from the list of visible GPU device names."""
    if gpu_names:
        return DevicePlan(device="/GPU:0", mixed_precision=True)
    return DevicePlan(device="/CPU:0", mixed_precision=False)


def inference_batch_size(plan: DevicePlan, batch_size: int) -> int:
    """The batch for a forward pass only (no training): larger on a GPU."""
    return batch_size * GPU_INFERENCE_BATCH_MULTIPLIER if plan.gpu else batch_size


def detect() -> DevicePlan:
    import tensorflow as tf

    return plan_for([d.name for d in tf.config.list_physical_devices("GPU")])


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def apply(plan: DevicePlan) -> None:
    """Set the global Keras dtype policy; call before building the model."""
    import keras

    keras.mixed_precision.set_global_policy(plan.policy)
