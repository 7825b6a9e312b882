"""The thread pin that makes a run's bits independent of the machine's core count."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from transferkit import seeding


def test_thread_count_is_a_constant_unless_tensorflows_own_variable_says_otherwise(monkeypatch):
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    assert seeding.intra_op_threads() == seeding.INTRA_OP_THREADS == 4  # not the core count: the same everywhere
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "0")
    assert seeding.intra_op_threads() == 0  # every core, TensorFlow's default
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "8")
    assert seeding.intra_op_threads() == 8
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "many")
    assert seeding.intra_op_threads() == 4


SEEDED_PROCESS = ("from transferkit.seeding import seed_everything; seed_everything(0); import tensorflow as tf; "
                  "print(tf.config.threading.get_intra_op_parallelism_threads(), float(tf.reduce_sum(tf.ones(3))))")


def test_a_seeded_process_runs_tensorflow_on_the_pinned_thread_count():
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    out = subprocess.run([sys.executable, "-c", SEEDED_PROCESS], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "3.0"]  # pinned before seeding's own ops, and TensorFlow ran with it


def test_pinning_once_tensorflow_runs_warns(monkeypatch):
    tf.constant(1.0) + 1  # TensorFlow runs: its thread pool is made
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setattr(seeding, "INTRA_OP_THREADS", tf.config.threading.get_intra_op_parallelism_threads() + 1)
    with pytest.warns(RuntimeWarning, match="already runs with its own intra-op thread count"):
        seeding.pin_threads()
