"""Where the backbone runs, and in which precision.

On a GPU the backbone runs in mixed precision (float16 compute, float32
variables; about 2x faster on tensor cores) with a larger batch. On CPU
nothing changes: float32, the configured batch size. The choice is a pure
function of the visible devices so it is tested on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePlan:
    device: str  # TensorFlow device string
    mixed_precision: bool
    batch_size: int

    @property
    def policy(self) -> str:
        return "mixed_float16" if self.mixed_precision else "float32"


def plan_for(gpu_names: list[str], batch_size: int, gpu_batch_multiplier: int = 4) -> DevicePlan:
    """Choose the device plan from the list of visible GPU device names."""
    if gpu_names:
        return DevicePlan(device="/GPU:0", mixed_precision=True, batch_size=batch_size * gpu_batch_multiplier)
    return DevicePlan(device="/CPU:0", mixed_precision=False, batch_size=batch_size)


def detect(batch_size: int) -> DevicePlan:
    import tensorflow as tf

    return plan_for([d.name for d in tf.config.list_physical_devices("GPU")], batch_size)


def apply(plan: DevicePlan) -> None:
    """Set the global Keras dtype policy; call before building the model."""
    import keras

    keras.mixed_precision.set_global_policy(plan.policy)
