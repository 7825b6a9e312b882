from transferkit.device import plan_for


def test_cpu_plan_keeps_float32_and_batch_size():
    plan = plan_for([], batch_size=32)
    assert (plan.device, plan.mixed_precision, plan.policy, plan.batch_size) == ("/CPU:0", False, "float32", 32)


def test_gpu_plan_uses_mixed_precision_and_larger_batches():
    plan = plan_for(["/physical_device:GPU:0"], batch_size=32)
    assert plan.device == "/GPU:0"
    assert plan.mixed_precision and plan.policy == "mixed_float16"
    assert plan.batch_size == 128
