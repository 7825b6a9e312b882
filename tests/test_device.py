from types import SimpleNamespace

import keras
import pytest
import tensorflow as tf

from transferkit import device
from transferkit.device import plan_for


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_cpu_plan_keeps_float32_and_batch_size():
    plan = plan_for([], batch_size=32)
    assert (plan.device, plan.mixed_precision, plan.policy, plan.batch_size) == ("/CPU:0", False, "float32", 32)


def test_gpu_plan_uses_mixed_precision_and_larger_batches():
    plan = plan_for(["/physical_device:GPU:0"], batch_size=32)
    assert plan.device == "/GPU:0"
    assert plan.mixed_precision and plan.policy == "mixed_float16"
    assert plan.batch_size == 128


def test_gpu_batch_multiplier_is_a_parameter():
    assert plan_for(["/physical_device:GPU:0"], batch_size=8, gpu_batch_multiplier=2).batch_size == 16


def test_detect_on_this_machine_is_the_cpu_plan():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible")
    assert device.detect(24) == plan_for([], 24)


def test_detect_picks_the_gpu_plan_when_tensorflow_lists_a_gpu(monkeypatch):
    seen = []

    def fake_list(kind):
        seen.append(kind)
        return [SimpleNamespace(name="/physical_device:GPU:0")] if kind == "GPU" else []

    monkeypatch.setattr(tf.config, "list_physical_devices", fake_list)
    assert device.detect(32) == plan_for(["/physical_device:GPU:0"], 32)
    assert seen == ["GPU"]


def test_apply_sets_the_keras_policy_for_models_built_afterwards(restore_policy):
    device.apply(plan_for(["/physical_device:GPU:0"], 32))
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    layer = keras.layers.Dense(2)
    assert (layer.compute_dtype, layer.variable_dtype) == ("float16", "float32")  # float32 master weights

    device.apply(plan_for([], 32))  # the CPU plan puts everything back to float32
    assert keras.mixed_precision.global_policy().name == "float32"
    assert keras.layers.Dense(2).compute_dtype == "float32"
