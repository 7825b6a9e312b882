"""AdamW with a rate per block (layer decay), and the warmup + cosine schedule."""

import keras
import numpy as np

from transferkit.train.optimizers import LayerwiseAdamW, Shifted, layer_multipliers, warmup_cosine


def test_each_variable_moves_at_its_own_rate():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="top")(keras.layers.Dense(3, name="low")(inputs)))
    model.compile(LayerwiseAdamW(multipliers={"low/kernel": 0.0, "low/bias": 0.5}, learning_rate=0.1,
                                 weight_decay=0.0), "mse")
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.fit(np.ones((8, 4)), np.ones((8, 2)), batch_size=8, epochs=1, verbose=0)
    moved = {v.path: float(np.abs(v.numpy() - before[v.path]).max()) for v in model.trainable_variables}
    assert moved["low/kernel"] == 0.0
    # Adam's first step moves every weight by about the rate: 0.1, and half that at multiplier 0.5.
    np.testing.assert_allclose([moved["top/kernel"], moved["low/bias"]], [0.1, 0.05], rtol=1e-3)


def test_layer_multipliers_decay_with_depth():
    assert layer_multipliers({"a": 0, "b": 1, "c": 3}, 0.5) == {"a": 1.0, "b": 0.5, "c": 0.125}


def test_warmup_then_cosine_to_zero():
    schedule = warmup_cosine(1e-3, total_steps=100, warmup=0.1)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    np.testing.assert_allclose(rates, [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    shifted = Shifted(schedule, 55)
    assert abs(float(shifted(0)) - 5e-4) < 1e-9
