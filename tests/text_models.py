"""Tiny real text data and a tiny real published text model, for the delivery tests (export, serving, predict,
evaluate): the tiny encoder (conftest.build_tiny_text_encoder) + a Dense softmax head, as finetune publishes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import build_tiny_text_encoder

TEXT_CLASSES = ("billing", "sports", "weather")
WORDS = {
    "billing": "invoice payment refund account charge receipt balance overdue card",
    "sports": "match goal team score league coach player season final",
    "weather": "rain sunny forecast storm wind cloudy temperature snow humid",
}
# Small windows, so the long texts below need several (and more than max_windows: spread over the text).
TINY_WINDOWS = {"max_tokens": 16, "overlap": 4, "max_windows": 3}


def text_of(label: str, i: int, rng: np.random.Generator) -> str:
    """A distinct text of the label's words; every fourth is long (many windows), one has non-ASCII."""
    words = WORDS[label].split()
    n = 60 if i % 4 == 0 else 4 + i % 5
    body = " ".join(rng.choice(words, n))
    return f"Subject: {label} {i}\n\n{body} – “café” {i}\n"


def make_text_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """root/<class>/<class>_<i>.txt (UTF-8)."""
    rng = np.random.default_rng(seed)
    for label in TEXT_CLASSES:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / label / f"{label}_{i:03d}.txt").write_text(text_of(label, i, rng), encoding="utf-8")
    return root


def tiny_text_model(texts: list[str], labels: list[int], n_classes: int = len(TEXT_CLASSES), seed: int = 0):
    """token_ids, padding_mask -> tiny encoder -> Dense softmax: the published text model's shape. The head
    is a logistic regression fitted on the encoder's embeddings of `texts` (the random encoder still tells
    these word sets apart), so the model gives varied, mostly right answers."""
    import keras
    from sklearn.linear_model import LogisticRegression

    from transferkit.backbones.bert import WindowSettings, encode_texts, load_tokenizer
    from transferkit.deliver.published import assemble_text
    from transferkit.train.train_head import standardiser

    encoder = build_tiny_text_encoder(seed)
    token_ids, padding_mask = encode_texts(texts, load_tokenizer(), WindowSettings(**TINY_WINDOWS))
    embeddings = encoder.predict([token_ids, padding_mask], verbose=0)
    # The head standardises the embeddings first, as train_head's does: export must handle that layer too.
    standardise = standardiser(embeddings, embeddings.shape[1])
    fit = LogisticRegression(C=1000.0, max_iter=5000).fit(standardise(embeddings).numpy(), labels)
    inputs = keras.Input((embeddings.shape[1],))
    dense = keras.layers.Dense(n_classes, activation="softmax", name="head")
    head = keras.Model(inputs, dense(standardise(inputs)))
    dense.set_weights([fit.coef_.T.astype(np.float32), fit.intercept_.astype(np.float32)])
    return assemble_text(encoder, head)


def save_tiny_text_model(folder: Path, manifest_path: Path, classes=TEXT_CLASSES) -> tuple[Path, Path]:
    """(model.keras, model.json) of tiny_text_model fitted on the manifest's train texts, written as finetune
    writes the published model."""
    import pandas as pd

    from transferkit.backbones.bert import WindowSettings
    from transferkit.data.texts import load_text
    from transferkit.deliver.published import save_published, text_model_info

    train = pd.read_parquet(manifest_path).query("split == 'train'")
    model = tiny_text_model([load_text(p) for p in train["path"]], train["label_index"].tolist(), len(classes))
    folder.mkdir(parents=True, exist_ok=True)
    info = text_model_info(list(classes), "all_minilm_l6_v2", "0" * 64, WindowSettings(**TINY_WINDOWS))
    save_published(model, info, folder / "model.keras", folder / "model.json")
    return folder / "model.keras", folder / "model.json"


def text_project(root: Path) -> tuple[Path, Path, Path]:
    """A prepared text folder (8 texts a class, a quarter val, a quarter test) and a tiny model fitted on its
    train split: (manifest, model.keras, model.json)."""
    from conftest import prepare_into

    manifest = prepare_into(make_text_folder(root / "texts"), root / "prepared", val_fraction=0.25,
                            test_fraction=0.25)
    return (manifest, *save_tiny_text_model(root / "models", manifest))
