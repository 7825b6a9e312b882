"""Fine-tuning on several devices or worker processes (tf.distribute), chosen from the environment.

- `TF_CONFIG` naming two or more workers: MultiWorkerMirroredStrategy. Every
  worker runs the finetune stage's command with its own `task.index`; worker 0
  is the chief, the only one that writes checkpoints (to a folder every worker
  reaches), the model, the metrics and the MLflow records. The others train
  and write nothing.
- Two or more local GPUs: MirroredStrategy, with Keras' `fit`.
- Otherwise no strategy: one device, as before.

`finetune.batch_size` is the global batch: each of N replicas computes
batch_size / N examples of every step, and the gradients are summed across
them, so the update is the one a single device would make on the whole batch,
but for one thing: Keras clips each replica's gradient (finetune.clip_norm)
before the sum, so with N replicas the summed gradient's norm can reach N
times the clip.

Keras 3.15's `fit` cannot train under MultiWorkerMirroredStrategy
(keras-team/keras#20585 is open; measured here: its first-batch build reduces
a tuple of tensors across workers and fails, and its train step reduces the
scalar loss along axis 0 and fails). So with several workers `train_epochs`
runs the training step under the strategy itself and calls the same Keras
callbacks `fit` would (NaN guard, checkpoints, MLflow).
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass

from transferkit.errors import TransferkitError

JOIN_TIMEOUT_SECONDS = 600  # a worker that never starts would keep the others waiting forever


@dataclass(frozen=True)
class Cluster:
    workers: int
    index: int

    @property
    def chief(self) -> bool:
        return self.index == 0


def cluster_from_env(environ=None) -> Cluster:
    """This process's place in the TF_CONFIG cluster (1 worker, index 0 without TF_CONFIG)."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return Cluster(1, 0)
    example = '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise TransferkitError(f"TF_CONFIG: not a worker cluster spec ({error!r}); expected e.g. {example}") from None
    if set(config["cluster"]) != {"worker"} or task.get("type") != "worker":
        raise TransferkitError(f"TF_CONFIG: only `worker` tasks are supported (worker 0 is the chief), got "
                               f"jobs {sorted(config['cluster'])} and task type {task.get('type')!r}")
    if not 0 <= index < len(workers):
        raise TransferkitError(f"TF_CONFIG: task index {index} is not one of the {len(workers)} workers")
    return Cluster(len(workers), index)


def make_strategy(cluster: Cluster, gpus: int):
    """The strategy for this cluster and these local GPUs, or None. Call before any other TensorFlow op."""
    import tensorflow as tf

    if cluster.workers > 1:
        implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus else
                          tf.distribute.experimental.CommunicationImplementation.RING)
        options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        timer = threading.Timer(JOIN_TIMEOUT_SECONDS, _never_joined, args=(cluster,))
        timer.daemon = True
        timer.start()
        try:  # blocks until every worker of TF_CONFIG has started
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        finally:
            timer.cancel()
    if gpus > 1:
        return tf.distribute.MirroredStrategy()
    return None


def _never_joined(cluster: Cluster) -> None:
    print(f"finetune: error: worker {cluster.index} of {cluster.workers}: not every worker of TF_CONFIG joined "
          f"within {JOIN_TIMEOUT_SECONDS} s; start the same command on each with its own task index",
          file=sys.stderr, flush=True)
    os._exit(1)


def scope(strategy):
    """Where the model and optimizer must be built."""
    return strategy.scope() if strategy is not None else nullcontext()


def uses_own_loop(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _summed(strategy, values: list[float], replica_0_only: bool) -> list[float]:
    """`values` summed over every replica of every worker (or global replica 0's alone), on every worker."""
    import tensorflow as tf

    local = tf.constant(values, tf.float64)

    @tf.function
    def reduce():
        def contribution():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return local * tf.cast(tf.logical_or(not replica_0_only, tf.equal(replica, 0)), tf.float64)

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)

    return [float(v) for v in reduce().numpy()]


def from_chief(strategy, values: list[float]) -> list[float]:
    """The chief's `values` on every worker (global replica 0 is on the chief). Decisions taken from numbers
    (early stopping, the best epoch) must be the same on every worker, or one of them leaves the loop while
    another waits in a collective; numbers computed apart can differ in the last bit."""
    return _summed(strategy, values, replica_0_only=True)


def barrier(strategy) -> None:
    """Returns on every worker once all have reached it."""
    _summed(strategy, [0.0], replica_0_only=False)


def check_same_run(strategy, run_fingerprint: str, first_epoch: int) -> None:
    """Stop every worker, with one line, unless all train the same inputs from the same epoch (one
    checkpoint folder that all reach): otherwise they would wait on each other's collectives forever."""
    mine = [float(int(run_fingerprint[:12], 16)), float(first_epoch)]
    chief = from_chief(strategy, mine)
    if _summed(strategy, [float(mine != chief)], replica_0_only=False)[0]:
        raise TransferkitError(
            f"the workers do not train the same run: this one has inputs {run_fingerprint[:12]} from epoch "
            f"{first_epoch}, the chief {int(chief[0]):012x} from epoch {int(chief[1])}. Give every worker the "
            f"same params.yaml and `.venv/bin/dvc pull`ed inputs, and one checkpoint folder they all reach")


def train_epochs(strategy, trainer, train_ds, val_ds, first: int, end: int, callbacks: list, global_batch: int,
                 label_smoothing: float) -> None:
    """Epochs first..end-1 of `trainer` (compiled, built in the strategy's scope), as `fit` would run them."""
    import keras
    import tensorflow as tf

    per_example = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    batches = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    optimizer = trainer.optimizer
    with strategy.scope():
        optimizer.build(trainer.trainable_variables)  # its slots are created here, not inside the step

    def counts(labels, probs):
        hits = tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(labels, -1)), tf.float32)
        return tf.reduce_sum(hits), tf.cast(tf.shape(labels)[0], tf.float32)

    @tf.function
    def train_step(images, labels):
        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                probs = trainer(images, training=True)
                loss = tf.nn.compute_average_loss(per_example(labels, probs), global_batch_size=global_batch)
            grads = tape.gradient(loss, trainer.trainable_variables)
            optimizer.apply_gradients(zip(grads, trainer.trainable_variables, strict=True))  # summed across replicas
            return (loss, *counts(labels, probs))

        results = strategy.run(replica_step, args=(images, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in results]

    @tf.function
    def val_step(images, labels):  # every worker scores the whole val split with its (identical) weights
        probs = trainer(images, training=False)
        return (tf.reduce_sum(per_example(labels, probs)), *counts(labels, probs))

    hooks = keras.callbacks.CallbackList(callbacks, model=trainer)
    trainer.stop_training = False
    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError)
    try:
        hooks.on_train_begin()
        _epochs(strategy, first, end, hooks, trainer, batches, val_ds, train_step, val_step)
        hooks.on_train_end()
    except lost as error:  # a worker died or hung: the collectives were aborted
        lines = [re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip() for line in str(error).splitlines()]  # no op names
        telling = [line for line in lines if re.search(r"abort|unhealthy|connect|deadline|timed out", line, re.I)]
        detail = (telling or [line for line in lines if line] or [""])[0][:300]
        kind = type(error).__name__
    else:
        return
    # Free now what the failed step held (a TF ThreadPool left open by the aborted all-reduce): freed at
    # interpreter exit instead, it prints a traceback after our one line.
    gc.collect()
    raise TransferkitError(f"the worker cluster lost a worker ({kind}: {detail}); the chief's "
                           f"checkpoints are kept: start every worker again and they resume")


def _epochs(strategy, first, end, hooks, trainer, batches, val_ds, train_step, val_step) -> None:
    for epoch in range(first, end):
        hooks.on_epoch_begin(epoch)
        loss_sum = hits = seen = 0.0
        steps = 0
        for step, (images, labels) in enumerate(batches):
            loss, batch_hits, batch_seen = (float(v) for v in train_step(images, labels))
            loss_sum, hits, seen, steps = loss_sum + loss, hits + batch_hits, seen + batch_seen, steps + 1
            hooks.on_train_batch_end(step, {"loss": loss_sum / steps})
        logs = {"loss": loss_sum / max(steps, 1), "accuracy": hits / max(seen, 1.0)}
        if val_ds is not None:
            totals = [0.0, 0.0, 0.0]
            for images, labels in val_ds:
                totals = [t + float(v) for t, v in zip(totals, val_step(images, labels), strict=True)]
            logs.update(val_loss=totals[0] / max(totals[2], 1.0), val_accuracy=totals[1] / max(totals[2], 1.0))
        # The chief's numbers, everywhere.
        logs = dict(zip(logs, from_chief(strategy, list(logs.values())), strict=True))
        print(f"Epoch {epoch + 1}/{end} - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        hooks.on_epoch_end(epoch, logs)  # the chief writes the epoch's checkpoint here
        barrier(strategy)  # so no worker reads a checkpoint (to resume, or the best epoch) not yet committed
        if trainer.stop_training:
            break
