import numpy as np
import pandas as pd

from transferkit.config import HeadParams
from transferkit.embeddings.table import write_table
from transferkit.train.common import class_weights
from transferkit.train.train_head import best_head_epochs, build_head, refit_head, standardiser, train_head


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    assert weights == {0: 4 / 6, 1: 2.0}
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_head_shapes():
    model = build_head(16, 3, HeadParams(hidden_units=8))
    assert model.input_shape == (None, 16) and model.output_shape == (None, 3)


def write_fake_features(tmp_path, n_per_class=20, dim=16, seed=0, scale=1.0):
    """Separable embeddings in a real embedding table, with a manifest pointing at them."""
    rng = np.random.default_rng(seed)
    rows, hashes, vectors = [], [], []
    centres = rng.normal(size=(3, dim)) * 3
    for label in range(3):
        for i in range(n_per_class):
            h = f"{label:02d}{i:062d}"
            split = "train" if i < 12 else "val" if i < 16 else "test"
            rows.append({"path": f"x/{h}.png", "label": f"c{label}", "label_index": label, "split": split,
                         "sha256": h, "width": 8, "height": 8})
            hashes.append(h)
            vectors.append(np.clip((centres[label] + rng.normal(size=dim)) * scale, -3e38, 3e38))  # float32 max 3.4e38
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    write_table(tmp_path / "embeddings.npz", hashes, np.array(vectors, dtype=np.float32), {"key": "k"})
    return manifest


def test_dimensions_constant_in_train_keep_unit_scale():
    """Most ReLU units can be dead on the train images; one that wakes later must not be divided by ~0."""
    features = np.zeros((40, 10), np.float32)
    features[:, :3] = np.random.default_rng(0).normal(1.0, 0.5, (40, 3))  # 3 live units, 7 dead
    features[0, 3] = 1e-4  # nearly constant
    layer = standardiser(features, 10)
    woken = np.ones((1, 10), np.float32)
    out = np.asarray(layer(woken))[0]
    assert np.allclose(out[3:], 1.0, atol=1e-3)  # (1 - ~0) / 1: unit scale, not (1 - 0) / tiny
    assert np.allclose(out[:3], (1.0 - features[:, :3].mean(0)) / features[:, :3].std(0), rtol=1e-4)
    assert np.allclose(np.asarray(standardiser(np.zeros((5, 4)), 4)(np.ones((1, 4))))[0], 1.0)  # all constant


def test_train_head_learns_and_writes_outputs(tmp_path):
    manifest = write_fake_features(tmp_path)
    result = train_head(manifest, tmp_path / "embeddings.npz", tmp_path / "head.keras", tmp_path / "history.csv",
                        HeadParams(epochs=40, patience=5, learning_rate=0.01), seed=0)
    assert result.val_accuracy >= 0.9
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns[:5]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert len(history) == result.epochs_run
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    import keras

    assert keras.saving.load_model(tmp_path / "head.keras", safe_mode=True).output_shape == (None, 3)


def test_same_inputs_same_head(tmp_path):
    manifest = write_fake_features(tmp_path)
    params = HeadParams(epochs=5)
    a = train_head(manifest, tmp_path / "embeddings.npz", tmp_path / "a.keras", tmp_path / "a.csv", params, seed=3)
    b = train_head(manifest, tmp_path / "embeddings.npz", tmp_path / "b.keras", tmp_path / "b.csv", params, seed=3)
    assert a == b
    assert pd.read_csv(tmp_path / "a.csv").equals(pd.read_csv(tmp_path / "b.csv"))


def test_nan_loss_stops_training_and_publishes_nothing(tmp_path):
    import pytest

    from transferkit.errors import TransferkitError

    # Finite but enormous embeddings: the logits overflow to inf, the loss to NaN.
    manifest = write_fake_features(tmp_path, scale=1e38)
    with pytest.raises(TransferkitError,
                       match=r"loss became nan at epoch 0, batch \d+.*no model was written. Lower head.learning_rate"):
        train_head(manifest, tmp_path / "embeddings.npz", tmp_path / "head.keras", tmp_path / "history.csv",
                   HeadParams(epochs=3), seed=0)
    assert not (tmp_path / "head.keras").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_non_finite_embeddings_are_refused(tmp_path):
    import pytest

    from transferkit.errors import TransferkitError

    manifest = write_fake_features(tmp_path, scale=float("nan"))
    with pytest.raises(TransferkitError, match="NaN or infinite"):
        train_head(manifest, tmp_path / "embeddings.npz", tmp_path / "head.keras", tmp_path / "history.csv",
                   HeadParams(epochs=3), seed=0)


def test_best_head_epochs_counts_up_to_the_first_lowest_val_loss(tmp_path):
    pd.DataFrame({"epoch": range(5), "loss": [5, 4, 3, 2, 1], "accuracy": [0.5] * 5,
                  "val_loss": [3.0, 2.0, 1.0, 1.5, 1.0], "val_accuracy": [0.5] * 5}).to_csv(tmp_path / "h.csv")
    assert best_head_epochs(tmp_path / "h.csv") == 3


def test_refit_head_learns_what_only_the_added_items_show_and_is_deterministic():
    """Class 2 appears only among the added (val) items: a head refitted on train + val predicts it."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat([0, 1, 2], 12)
    x = (centres[labels] + rng.normal(size=(36, 16))).astype(np.float32)
    params = HeadParams(learning_rate=0.01)
    added = labels == 2  # train holds classes 0 and 1 only; val adds class 2
    refitted, steps = refit_head(x, labels, 3, params, seed=0, epochs=30)
    assert steps == 30 * 2  # 36 items in batches of 32: 2 steps an epoch
    assert (refitted.predict(x[added], verbose=0).argmax(1) == 2).mean() > 0.9
    again, _ = refit_head(x, labels, 3, params, seed=0, epochs=30)
    for a, b in zip(refitted.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
