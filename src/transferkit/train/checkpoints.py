"""Per-epoch checkpoints of a training run, with early stopping, that survive a kill.

Each run keeps them in a sub-folder of the checkpoint root named after its
inputs' fingerprint, so runs with other inputs (experiments in the same
workspace, one after another or queued) never overwrite or wipe each other's.
A rerun with the same inputs resumes after the last completed epoch; the
sub-folder goes once the run has published its model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from transferkit.files import atomic_path, read_json, write_json

FOLDER_DIGITS = 16  # of the fingerprint, naming a run's folder (64 bits: no collision among a team's runs)


def run_fingerprint(parts: dict) -> str:
    """Identifies the inputs of a fine-tune run; a checkpoint is resumed only by the same run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Checkpointer:
    """Per-epoch checkpoint + early stopping whose state survives a kill.

    After each epoch: the weights (model and optimizer state) go to
    `epoch-<n>.weights.h5`, then `state.json` is rewritten. state.json is the
    commit point: it names the last completed epoch's file and the best
    epoch's file, and a file is deleted only once state.json no longer names
    it. A kill at any moment leaves state.json describing files that exist
    and match it.
    """

    def __init__(self, root: Path, fingerprint: str, monitor: str, patience: int, writer: bool = True):
        """Checkpoints go to root/<first 16 hex digits of fingerprint>.

        monitor: "val" ranks epochs by val accuracy, then lower val loss; "loss" by training loss.
        writer: False on the workers of a multi-worker run other than the chief: they keep the same
        state (so they stop at the same epoch) and read the chief's files, but write none."""
        self.folder = Path(root) / fingerprint[:FOLDER_DIGITS]
        self.fingerprint, self.monitor, self.patience, self.writer = fingerprint, monitor, patience, writer
        self.state = {"fingerprint": fingerprint, "epoch": -1, "best": None, "best_epoch": None,
                      "wait": 0, "stopped": False, "history": []}

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def weights_path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch}.weights.h5"

    def rank(self, logs: dict) -> list[float]:
        """Larger is better: [val accuracy, -val loss], or [-loss] without a val split."""
        if self.monitor == "val":
            return [float(logs["val_accuracy"]), -float(logs["val_loss"])]
        return [-float(logs["loss"])]

    def last_epoch(self) -> int:
        """The last completed epoch of a matching checkpoint, or -1 (a checkpoint of other inputs is deleted)."""
        if not self.state_path.exists():
            return -1
        state = read_json(self.state_path)
        if state.get("fingerprint") != self.fingerprint:  # a 64-bit prefix collision, or a hand-made folder
            print(f"finetune: {self.folder} holds a checkpoint of other inputs; starting over", flush=True)
            self.clear()
            return -1
        return int(state["epoch"])

    def resume(self, model) -> int:
        """Load a matching checkpoint into `model` (compiled as it was when the checkpoint was written);
        returns the first epoch still to run."""
        if self.last_epoch() < 0:
            return 0
        state = read_json(self.state_path)
        _build_optimizer(model)
        model.load_weights(self.weights_path(state["epoch"]))
        self.state = state
        print(f"finetune: resuming after epoch {state['epoch']} from {self.folder}", flush=True)
        return state["epoch"] + 1

    def callback(self):
        import keras

        ckpt = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                ckpt.on_epoch_end(self.model, epoch, logs or {})

        return _Callback()

    def on_epoch_end(self, model, epoch: int, logs: dict) -> None:
        state = self.state
        state["history"].append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        value = self.rank(logs)
        if state["best"] is None or value > state["best"]:
            state.update(best=value, best_epoch=epoch, wait=0)
        else:
            state["wait"] += 1
        if state["wait"] >= self.patience:
            state["stopped"] = True
            model.stop_training = True
        state["epoch"] = epoch
        if not self.writer:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.weights_path(epoch)) as tmp:
            model.save_weights(tmp)
        write_json(self.state_path, state)  # the commit point
        keep = {self.weights_path(epoch).name, self.weights_path(state["best_epoch"]).name}
        for old in self.folder.glob("epoch-*.weights.h5"):
            if old.name not in keep:
                old.unlink()

    def restore_best(self, model) -> None:
        """Load the best epoch's weights; `model` must be compiled as it was in that epoch."""
        if self.state["best_epoch"] is not None:
            _build_optimizer(model)
            model.load_weights(self.weights_path(self.state["best_epoch"]))

    def clear(self) -> None:
        """This run's folder; the root too once no other run's is left in it."""
        if not self.writer:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:  # other runs' checkpoints (or the root never existed)
            pass


def _build_optimizer(model) -> None:
    """So the saved optimizer state has a place to go."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
