"""Same inputs, same model: one seed for Python, NumPy and TensorFlow, deterministic TF ops, fixed thread count."""

from __future__ import annotations

import os
import warnings

# TensorFlow splits a large sum (a reduction, a convolution's weight gradient in oneDNN) into one part
# per intra-op thread, so the thread count sets the order of the float additions. Left to TensorFlow it
# is the machine's core count: one fine-tune epoch on the sample gave three different models on 1, 2 and
# 4 threads (max weight difference 1.5e-3). Work is split by the configured count, not by the cores that
# run it, so a constant gives the same bits on any core count (4 threads on 1 core = 4 threads on 2).
# 4: fine-tuning on 2 cores is as fast as with 2 threads (8 was 10-20% slower there); a bigger machine
# trades the cores above 4 for reproducible results unless TF_NUM_INTRAOP_THREADS says otherwise.
INTRA_OP_THREADS = 4


def intra_op_threads() -> int:
    """TensorFlow's intra-op thread count for transferkit: TF_NUM_INTRAOP_THREADS (TensorFlow's own variable)
    when set, 0 meaning every core (results then depend on the core count); INTRA_OP_THREADS otherwise."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()
    return int(value) if value.isdigit() else INTRA_OP_THREADS


def pin_threads_at_start() -> None:
    """The same count for a process that has not started TensorFlow yet, through TensorFlow's own variable
    (read when it starts), so every op runs on it, evaluation and export included, not only those after
    pin_threads(). A count the user set is kept."""
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(INTRA_OP_THREADS))


def pin_threads() -> int:
    """Fix TensorFlow's intra-op thread count for this process; returns it.

    TensorFlow fixes it when it first runs an op, so call this before: a stage does. Called later (a
    notebook, a test session), it cannot change it and warns, unless TensorFlow started with that count
    already (TF_NUM_INTRAOP_THREADS). The inter-op count is left alone: it changes only which independent
    ops run side by side, never a result (train_head and finetune measured identical with 1 and 4).
    """
    import tensorflow as tf

    threads = intra_op_threads()
    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already runs: its thread pool is made
        if os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip() != str(threads):
            warnings.warn(f"TensorFlow already runs with its own intra-op thread count, not {threads}: results "
                          f"may differ in the last bits from a stage's (call transferkit.seeding.pin_threads() "
                          f"before TensorFlow runs anything)", RuntimeWarning, stacklevel=2)
    return threads


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    pin_threads()  # first: seeding runs TensorFlow ops
    keras.utils.set_random_seed(seed)  # Python's random, NumPy and TensorFlow
    tf.config.experimental.enable_op_determinism()
