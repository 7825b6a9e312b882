"""Shared fixtures: tiny, real image files made on disk by the tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO = Path(__file__).resolve().parents[1]

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
