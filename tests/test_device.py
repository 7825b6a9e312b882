from types import SimpleNamespace

import keras
import pytest
import tensorflow as tf

from transferkit import device
from transferkit.device import inference_batch_size, plan_for


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_cpu_plan_keeps_float32_and_batch_size():
    plan = plan_for([])
    assert (plan.device, plan.mixed_precision, plan.policy) == ("/CPU:0", False, "float32")
    assert inference_batch_size(plan, 32) == 32


def test_gpu_plan_uses_mixed_precision_and_larger_inference_batches_only():
    plan = plan_for(["/physical_device:GPU:0"])
    assert plan.device == "/GPU:0"
    assert plan.mixed_precision and plan.policy == "mixed_float16"
    assert inference_batch_size(plan, 32) == 32 * device.GPU_INFERENCE_BATCH_MULTIPLIER
    # Training batch sizes are hyperparameters: nothing in the plan touches them.
    assert not any("batch" in field for field in plan.__dataclass_fields__)


def test_detect_on_this_machine_is_the_cpu_plan():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    assert device.detect() == plan_for([])


def test_detect_picks_the_gpu_plan_when_tensorflow_lists_a_gpu(monkeypatch):
    seen = []

    def fake_list(kind):
        seen.append(kind)
        return [SimpleNamespace(name="/physical_device:GPU:0")] if kind == "GPU" else []

    monkeypatch.setattr(tf.config, "list_physical_devices", fake_list)
    assert device.detect() == plan_for(["/physical_device:GPU:0"])
    assert seen == ["GPU"]


def test_apply_sets_the_keras_policy_for_models_built_afterwards(restore_policy):
    device.apply(plan_for(["/physical_device:GPU:0"]))
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    layer = keras.layers.Dense(2)
    assert (layer.compute_dtype, layer.variable_dtype) == ("float16", "float32")  # float32 master weights

    device.apply(plan_for([]))  # the CPU plan puts everything back to float32
    assert keras.mixed_precision.global_policy().name == "float32"
    assert keras.layers.Dense(2).compute_dtype == "float32"
