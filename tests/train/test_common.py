import pytest

from transferkit.errors import TransferkitError
from transferkit.train.common import nan_guard


def test_nan_guard_catches_a_nan_validation_loss_at_epoch_end():
    guard = nan_guard("finetune", "finetune.learning_rate")
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 0.7})  # finite: nothing happens
    with pytest.raises(TransferkitError, match=r"finetune: val_loss became nan at epoch 2, the end of the epoch"):
        guard.on_epoch_end(2, {"loss": 0.7, "val_loss": float("nan")})
    with pytest.raises(TransferkitError, match=r"loss became inf at epoch 2, batch 5"):
        guard.on_train_batch_end(5, {"loss": float("inf")})


def test_step_progress_says_where_a_real_fit_is_within_each_epoch_and_its_val_pass(capsys):
    import keras
    import numpy as np

    from transferkit.train.common import step_progress

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.zeros((12, 3), "float32"), np.zeros(12, "int32")
    callback = step_progress("finetune", epochs=2, steps=3, val_steps=2, interval=0.0)
    model.fit(x, y, batch_size=4, epochs=2, validation_data=(x[:8], y[:8]), callbacks=[callback], verbose=0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("finetune:")]
    assert [line.split("  ")[0] for line in lines] == [
        "finetune: epoch 1/2: 1/3 steps (33%)", "finetune: epoch 1/2: 2/3 steps (67%)",
        "finetune: epoch 1/2: val: 1/2 batches (50%)",
        "finetune: epoch 2/2: 1/3 steps (33%)", "finetune: epoch 2/2: 2/3 steps (67%)",
        "finetune: epoch 2/2: val: 1/2 batches (50%)",
    ]  # the last batch of each is left to the epoch line
    assert all("ETA" in line for line in lines)
