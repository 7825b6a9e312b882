"""Same inputs, same model: one seed for Python, NumPy and TensorFlow, and deterministic TF ops."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python's random, NumPy and TensorFlow
    tf.config.experimental.enable_op_determinism()
