"""Per-run checkpoint folders: runs with other inputs never overwrite or wipe each other's epochs."""

import numpy as np

from transferkit.train.checkpoints import Checkpointer, run_fingerprint


def small_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def train(ckpt: Checkpointer, epochs: int) -> None:
    x = np.array([[0, 1], [1, 0], [0, 2], [2, 0]], np.float32)
    y = np.array([0, 1, 0, 1])
    model = small_model()
    start = ckpt.resume(model)
    model.fit(x, y, validation_data=(x, y), initial_epoch=start, epochs=epochs, verbose=0,
              callbacks=[ckpt.callback()])


def test_runs_with_other_inputs_keep_their_own_folders(tmp_path):
    root = tmp_path / "checkpoints"
    first = Checkpointer(root, run_fingerprint({"lr": 0.1}), "val", patience=5)
    second = Checkpointer(root, run_fingerprint({"lr": 0.2}), "val", patience=5)
    assert first.folder.parent == second.folder.parent == root and first.folder != second.folder
    train(first, epochs=2)
    train(second, epochs=1)  # another experiment in the same workspace, before the first one reruns
    assert first.last_epoch() == 1 and second.last_epoch() == 0

    rerun = Checkpointer(root, run_fingerprint({"lr": 0.1}), "val", patience=5)
    assert rerun.resume(small_model()) == 2  # resumes the first run's epochs, untouched by the second
    assert [h["epoch"] for h in rerun.state["history"]] == [0, 1]

    rerun.clear()
    assert not first.folder.exists() and second.last_epoch() == 0 and root.exists()
    second.clear()
    assert not root.exists()  # the last run's folder gone: no empty root left behind


def test_a_folder_of_other_inputs_is_not_resumed(tmp_path):
    run = Checkpointer(tmp_path, run_fingerprint({"lr": 0.1}), "val", patience=5)
    train(run, epochs=1)
    state = run.state_path.read_text().replace(run.fingerprint, "f" * 64)
    run.state_path.write_text(state)  # as if another run's fingerprint shared the folder's prefix
    assert Checkpointer(tmp_path, run.fingerprint, "val", patience=5).resume(small_model()) == 0
    assert not run.folder.exists()
