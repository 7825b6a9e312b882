"""Which cluster a process is in, from TF_CONFIG (the training itself: tests/e2e/test_faults.py, 2 real workers)."""

import json

import pytest

from transferkit.errors import TransferkitError
from transferkit.train.distributed import Cluster, cluster_from_env


def tf_config(workers: int, index: int, kind: str = "worker") -> dict:
    cluster = {"worker": [f"127.0.0.1:{2222 + i}" for i in range(workers)]}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_no_tf_config_is_one_worker_the_chief():
    assert cluster_from_env({}) == Cluster(1, 0) and Cluster(1, 0).chief


def test_worker_0_is_the_chief():
    assert cluster_from_env(tf_config(2, 0)) == Cluster(2, 0) and cluster_from_env(tf_config(2, 0)).chief
    assert not cluster_from_env(tf_config(3, 2)).chief


@pytest.mark.parametrize("environ, message", [
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG: not a worker cluster spec"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}})}, "TF_CONFIG: not a worker cluster spec"),
    (tf_config(2, 2), "TF_CONFIG: task index 2 is not one of the 2 workers"),
    (tf_config(2, 0, kind="chief"), "TF_CONFIG: only `worker` tasks are supported"),
])
def test_a_bad_tf_config_names_the_variable_and_what_is_wrong(environ, message):
    with pytest.raises(TransferkitError, match=message.replace("`", ".")):
        cluster_from_env(environ)
