"""Streams of decoded image files: parallel decode, batch, prefetch.

`decoded_batches` (numpy, a thread pool) feeds every batched prediction over
files: extract's backbone, and evaluate, `predict` and the export stage's
parity gate (deliver/inference.py). `image_dataset` is a tf.data pipeline for
training (finetune); TensorFlow is imported only when it is called, so the served
model, which has no TensorFlow, can import this module. Both decode through
`images.load_rgb` (Pillow, which releases the GIL while decoding) so every
stage sees the same pixels, and both keep order: row i of the output is file
i of the input.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from transferkit.data.images import load_rgb

if TYPE_CHECKING:
    import tensorflow as tf


def image_dataset(paths: Sequence[str], image_size: int, batch_size: int,
                  labels: Sequence[int] | None = None, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (N, size, size, 3) uint8 images, with int32 labels when given."""
    import tensorflow as tf

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


def decoded_batches(paths: Sequence[str], image_size: int, batch_size: int, workers: int | None = None,
                    ahead: int = 2) -> Iterator[np.ndarray]:
    """(N, size, size, 3) uint8 batches in input order, decoded by a thread pool `ahead` batches early.

    For inference, where the model is the only consumer and is the bottleneck.
    Pillow releases the GIL while it decodes, so the threads decode the next
    batches while the runtime runs the model on this one. At most
    `ahead + 1` batches of pixels exist at once, whatever the number of paths.

    Side by side on 2 cores this keeps up with the backbone to within the CPU
    the decoding itself takes; tf.data with a numpy_function decode fell
    10-15 points further behind (see benchmarks/README.md).
    """
    paths = [str(p) for p in paths]
    workers = workers or os.cpu_count() or 1
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    try:
        queue = deque([pool.submit(load_rgb, p, image_size) for p in batch] for batch in batches[:ahead])
        for following in batches[ahead:] + [None] * min(ahead, len(batches)):
            images = np.stack([future.result() for future in queue.popleft()])
            if following is not None:
                queue.append([pool.submit(load_rgb, p, image_size) for p in following])
            yield images
    finally:
        # Stop promptly on an error or an interrupt: queued decodes are dropped.
        pool.shutdown(wait=False, cancel_futures=True)

