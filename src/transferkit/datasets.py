"""tf.data pipelines that stream image files: parallel decode, batch, prefetch.

Decoding goes through `images.load_rgb` (Pillow, which releases the GIL while
decoding) so every stage sees the same pixels. Order is deterministic: row i
of the output is file i of the input.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from transferkit.images import load_rgb


def image_dataset(paths: Sequence[str], image_size: int, batch_size: int,
                  labels: Sequence[int] | None = None, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (N, size, size, 3) uint8 images, with int32 labels when given."""
    paths = [str(p) for p in paths]

    def decode(path: bytes) -> np.ndarray:
        return load_rgb(path.decode("utf-8"), image_size)

    def load(path):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image

    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(paths)
        if shuffle_seed is not None:
            ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, dtype=np.int32)))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (load(p), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
