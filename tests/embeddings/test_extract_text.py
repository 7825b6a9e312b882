"""extract on texts: the tiny text encoder (a .weights.h5 via backbone.weights), real tokenizer, real files."""

import numpy as np
import pandas as pd
import pytest

from transferkit.backbones import bert
from transferkit.backbones.build import build_backbone
from transferkit.config import BackboneParams, ExtractParams, TextParams
from transferkit.data.texts import load_text
from transferkit.embeddings.extract import extract, text_batches
from transferkit.embeddings.table import read_table
from transferkit.errors import TransferkitError

from conftest import make_image_folder, make_text_folder, prepare_into

# Windows of 24 tokens: the long test e-mails need several.
TEXT = TextParams(max_tokens=24, overlap=4, max_windows=3)
SPLITS = {"val_fraction": 0.25, "test_fraction": 0.25}


@pytest.fixture
def text_prepared(tmp_path):
    folder = make_text_folder(tmp_path / "texts", per_class=6)
    return prepare_into(folder, tmp_path / "prepared", **SPLITS), folder


def run(manifest, tmp_path, weights, text=TEXT, table="embeddings.npz", **extract_params):
    backbone = BackboneParams(name="all_minilm_l6_v2", weights=str(weights))
    return extract(manifest, tmp_path / "store", tmp_path / table, backbone,
                   ExtractParams(**{"batch_size": 4, **extract_params}), seed=0, text_params=text)


def test_text_embeddings_are_the_encoders_and_only_new_documents_are_computed(text_prepared, tmp_path,
                                                                               tiny_text_weights, capsys):
    manifest_path, folder = text_prepared
    first = run(manifest_path, tmp_path, tiny_text_weights, shard_size=5)
    assert (first.computed, first.reused, first.embedding_dim, first.unit) == (12, 0, 32, "documents")
    assert first.windows > 12  # the long e-mails took several windows
    assert "documents/s" in capsys.readouterr().err
    table = read_table(tmp_path / "embeddings.npz")
    assert table.spec["text"] == bert.WindowSettings(**TEXT.model_dump()).key()
    assert table.spec["tokenizer_sha256"] == bert.tokenizer_fingerprint() and table.spec["runtime"] == "tensorflow"

    # Batched by length and put back in order: row i is document i through the encoder on its own.
    manifest = pd.read_parquet(manifest_path)
    texts = [load_text(p) for p in manifest["path"]]
    encoder = build_backbone("all_minilm_l6_v2", str(tiny_text_weights))
    ids, mask = bert.encode_texts(texts, bert.load_tokenizer(), bert.WindowSettings(**TEXT.model_dump()))
    np.testing.assert_allclose(table.rows(manifest["sha256"].tolist()), encoder.predict([ids, mask], verbose=0),
                               atol=1e-5)

    make_text_folder(folder, per_class=2, seed=1)  # new documents: only they are computed
    prepare_into(folder, manifest_path.parent, **SPLITS)
    second = run(manifest_path, tmp_path, tiny_text_weights, shard_size=5)
    assert (second.computed, second.reused) == (4, 12)
    # Other window settings are another key: everything is computed again, the old embeddings stay.
    other = run(manifest_path, tmp_path, tiny_text_weights, text=TextParams(max_tokens=32, overlap=0, max_windows=2))
    assert other.key != second.key and (other.computed, other.reused) == (16, 0)
    again = run(manifest_path, tmp_path, tiny_text_weights, shard_size=5)
    assert (again.key, again.computed) == (second.key, 0)


def test_a_backbone_of_the_other_modality_stops_with_what_to_set(text_prepared, tmp_path, tiny_text_weights):
    manifest_path, _ = text_prepared
    with pytest.raises(TransferkitError) as error:
        extract(manifest_path, tmp_path / "store", tmp_path / "e.npz",
                BackboneParams(name="efficientnet_lite0", image_size=32), ExtractParams(), seed=0)
    assert str(error.value) == (f"{manifest_path} holds texts but backbone.name is efficientnet_lite0, an image "
                                f"backbone: set backbone.name: all_minilm_l6_v2 and backbone.weights: pretrained")
    images = prepare_into(make_image_folder(tmp_path / "images", per_class=4), tmp_path / "img", **SPLITS)
    with pytest.raises(TransferkitError, match=r"holds images but backbone.name is all_minilm_l6_v2, a text "
                                               r"backbone: set backbone.name: efficientnet_lite0$"):
        run(images, tmp_path, tiny_text_weights)
    with pytest.raises(TransferkitError, match="extract.runtime: litert does not run text backbones"):
        run(manifest_path, tmp_path, tiny_text_weights, runtime="litert")


def test_text_batches_group_similar_lengths_within_the_window_budget():
    rng = np.random.default_rng(0)
    documents = [[[1] * int(rng.integers(3, 20))] * int(rng.integers(1, 5)) for _ in range(40)]
    batches = text_batches(documents, max_windows=8)
    assert sorted(i for batch in batches for i in batch) == list(range(40))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(len(documents[i]) for i in batch) <= 8
    counts = [len(documents[i]) for batch in batches for i in batch]
    assert counts == sorted(counts)  # by window count: a batch pads few absent windows
