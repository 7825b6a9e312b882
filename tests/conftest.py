"""Shared fixtures: tiny, real image files made on disk by the tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from transferkit.seeding import pin_threads_at_start

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# TensorFlow in the test processes on the thread count the stages pin (seeding.py): the same bits as a
# stage, and no warning from seed_everything when a test ran TensorFlow before it.
pin_threads_at_start()

REPO = Path(__file__).resolve().parents[1]
# onnxruntime-web's files, as `make install` (npm ci) leaves them: the export's browser page copies them.
WEB_RUNTIME = REPO / "node_modules" / "onnxruntime-web" / "dist"
# The local MLflow store arguments every stage script takes (dvc.yaml passes the same).
LOCAL_STORE = ("--mlflow-db", "mlflow.db", "--mlflow-artifacts", "mlruns")

# Each class is a shape of its own colour: easy to tell apart, so a tiny model learns it.
CLASS_STYLES = {
    "circle": ((220, 40, 40), "ellipse"),
    "square": ((40, 40, 220), "rectangle"),
    "triangle": ((40, 180, 40), "polygon"),
    "diamond": ((200, 200, 40), "diamond"),  # not in the default folder; used by the messy-data fixture
}
DEFAULT_CLASSES = ("circle", "square", "triangle")


def draw_example(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    colour, shape = CLASS_STYLES[kind]
    background = tuple(int(v) for v in rng.integers(0, 60, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    lo, hi = size * 0.15 + rng.uniform(-2, 2), size * 0.85 + rng.uniform(-2, 2)
    jitter = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in colour)
    if shape == "ellipse":
        draw.ellipse([lo, lo, hi, hi], fill=jitter)
    elif shape == "rectangle":
        draw.rectangle([lo, lo, hi, hi], fill=jitter)
    elif shape == "diamond":
        draw.polygon([(size / 2, lo), (hi, size / 2), (size / 2, hi), (lo, size / 2)], fill=jitter)
    else:
        draw.polygon([(size / 2, lo), (lo, hi), (hi, hi)], fill=jitter)
    return image


def make_image_folder(root: Path, per_class: int = 8, size: int = 40, seed: int = 0,
                      classes: tuple[str, ...] = DEFAULT_CLASSES) -> Path:
    """root/<class>/<class>_<i>.png, distinct bytes for every file."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_example(kind, size, rng).save(folder / f"{kind}_{seed}_{i:03d}.png")
    return root


def free_port() -> int:
    """A loopback TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url() -> str:
    """An MLflow tracking URL where no server answers."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from tmp_path, with the default MLflow store inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def prepare_into(source: Path, folder: Path, **data_params) -> Path:
    """Run prepare on `source`, writing folder/manifest.parquet and folder/report.json; returns the manifest."""
    from transferkit.config import DataParams
    from transferkit.data.prepare import prepare

    prepare(source, folder / "manifest.parquet", folder / "report.json", DataParams(**data_params))
    return folder / "manifest.parquet"


# Channel that dominates each default class's colour (see CLASS_STYLES).
COLOUR_CHANNEL = {"circle": 0, "square": 2, "triangle": 1}


def colour_model(classes=DEFAULT_CLASSES, image_size: int = 32):
    """A real published model, small and exact: mean colour -> class, for the CLASS_STYLES images.

    Raw RGB 0..255 in, probabilities out, like the pipeline's model (no backbone: milliseconds)."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="colour")(x)
    model = keras.Model(inputs, outputs, name="classifier")
    kernel = np.zeros((3, len(classes)), np.float32)
    for i, name in enumerate(classes):
        kernel[COLOUR_CHANNEL[name], i] = 40.0
    model.get_layer("colour").set_weights([kernel, np.zeros(len(classes), np.float32)])
    return model


def save_colour_model(folder: Path, classes=DEFAULT_CLASSES, image_size: int = 32) -> tuple[Path, Path]:
    """(model.keras, model.json) of colour_model, written as finetune writes the published model."""
    from transferkit.deliver.published import ModelInfo, save_published

    info = ModelInfo(classes=list(classes), image_size=image_size, backbone="colour", backbone_weights_sha256="0" * 64)
    save_published(colour_model(classes, image_size), info, folder / "model.keras", folder / "model.json")
    return folder / "model.keras", folder / "model.json"


# The tiny text encoder's architecture: all-MiniLM-L6-v2's structure (embeddings, post-LayerNorm layers, mean
# pooling, windows) and vocabulary (the real tokenizer), 2 layers of width 32: builds and runs in milliseconds.
TINY_TEXT_LAYERS, TINY_TEXT_HIDDEN = 2, 32


def build_tiny_text_encoder(seed: int = 0):
    """A fresh tiny random-init text encoder named all_minilm_l6_v2, so that backbones.build.family_of and
    train/blocks.py find its family (bert) by its name, as for the real one; its weights fingerprint differs.
    Takes token_ids and padding_mask (batch, windows, tokens) int32 -> (batch, 32), like the real encoder."""
    import keras

    from transferkit.backbones import bert

    keras.utils.set_random_seed(seed)
    config = bert.BertConfig(hidden=TINY_TEXT_HIDDEN, layers=TINY_TEXT_LAYERS, heads=2, intermediate=64)
    return bert.build_encoder(config, name="all_minilm_l6_v2")


@pytest.fixture(scope="session")
def tiny_text_encoder():
    """One tiny text encoder per test process, for tests that only run it (build_tiny_text_encoder to change one)."""
    return build_tiny_text_encoder()


@pytest.fixture(scope="session")
def text_tokenizer():
    """The packaged all-MiniLM-L6-v2 tokenizer (tokenizer.json), loaded once per test process."""
    from transferkit.backbones import bert

    return bert.load_tokenizer()


def pytest_collection_modifyitems(items):
    """The end-to-end modules first: they take longest, and pytest-xdist hands out whole files in this order."""
    items.sort(key=lambda item: "e2e" not in item.path.parts)


TEXT_TOPICS = {"ham": "meeting notes about the build server and the release plan",
               "spam": "cheap pills, you won a prize, click now to claim"}


def make_text_folder(root: Path, per_class: int = 8, seed: int = 0, long_every: int = 3) -> Path:
    """root/<class>/mail_<seed>_<i>: distinct short e-mails, every `long_every`-th one long enough for several
    windows of a few dozen tokens (headers first, the topic in the body)."""
    for label, topic in TEXT_TOPICS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            headers = "".join(f"Received: from relay{j}.example.org by mx{i} ({seed})\n" for j in range(12))
            body = f"Subject: {label} {seed}.{i}\n{headers if i % long_every == 0 else ''}\n{topic} ({seed}.{i})\n"
            (root / label / f"mail_{seed}_{i:03d}").write_text(body, encoding="utf-8")
    return root


def save_tiny_text_weights(path: Path, seed: int = 0) -> Path:
    """The tiny text encoder's weights as a .weights.h5 file: `backbone.weights: <path>` builds the tiny
    encoder (bert.build_for_weights_file), so a text project runs every stage in seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_text_encoder(seed).save_weights(path)
    return path


@pytest.fixture(scope="session")
def tiny_text_weights(tmp_path_factory) -> Path:
    return save_tiny_text_weights(tmp_path_factory.mktemp("tiny-text") / "tiny_text.weights.h5")


@pytest.fixture(scope="session")
def text_exported(tmp_path_factory):
    """A tiny text project (tests/text_models.py) exported once per test process, for the text export and
    serving tests: (root, manifest, model.keras, model.json, ExportResult), the parity gate run."""
    from transferkit.config import ExportParams
    from transferkit.deliver.export import export

    from text_models import text_project

    root = tmp_path_factory.mktemp("text-export")
    manifest, model_path, info_path = text_project(root)
    result = export(manifest, model_path, info_path, root / "export", ExportParams(batch_size=4),
                    registered_model="transferkit-text", web_runtime=WEB_RUNTIME)  # a text model: no web folder
    return root, manifest, model_path, info_path, result


@pytest.fixture(scope="session")
def web_exported(tmp_path_factory):
    """The colour model exported once per test process with its browser page, for the web tests:
    (root, manifest, model.keras, model.json, ExportResult); the test images are root/images' test split."""
    from transferkit.config import ExportParams
    from transferkit.deliver.export import export

    root = tmp_path_factory.mktemp("web-export")
    manifest = prepare_into(make_image_folder(root / "images"), root / "prepared", val_fraction=0.25,
                            test_fraction=0.25)
    model_path, info_path = save_colour_model(root)
    result = export(manifest, model_path, info_path, root / "export", ExportParams(batch_size=4),
                    registered_model="transferkit", web_runtime=WEB_RUNTIME)
    return root, manifest, model_path, info_path, result


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """One headless Chromium per test process (tests/browser.py); each test opens its own pages in it."""
    from browser import start_chromium

    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()
