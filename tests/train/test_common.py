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
