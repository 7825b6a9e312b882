from transferkit.published import ModelInfo
from transferkit.serving import model_signature, pip_requirements


def test_signature_takes_raw_pixels_and_returns_one_probability_per_class():
    signature = model_signature(ModelInfo(["a", "b", "c"], 64, "efficientnet_lite0", "0" * 64))
    (image,), (probs,) = signature.inputs.inputs, signature.outputs.inputs
    assert (image.name, image.shape, str(image.type)) == ("image", (-1, 64, 64, 3), "float32")
    assert probs.shape == (-1, 3)


def test_requirements_pin_the_cpu_wheel_not_the_full_tensorflow():
    requirements = pip_requirements()
    assert any(r.startswith("tensorflow-cpu==") for r in requirements)
    assert not any(r.startswith("tensorflow==") for r in requirements)
    assert any(r.startswith("keras==") for r in requirements)
