"""What the benchmarks share: quiet start-up, generated photos, timing, the ratio line.

Benchmarks are not tests: they print figures, and the ratio they are about on
their last line, as `RATIO <name> = <value>  (target ...)`. Timings on a
shared machine are noisy, so every ratio is measured side by side in one run,
the two sides interleaved and repeated, and the medians compared.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Before TensorFlow, MLflow or DVC are imported by anything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def machine() -> str:
    """One line: CPU model, cores, memory, Python and TensorFlow versions."""
    import psutil

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import tensorflow as tf

    return (f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}")


def photo(rng: np.random.Generator, width: int, height: int, tint: tuple[int, int, int]) -> Image.Image:
    """A photo-like RGB image: smooth random shapes of light and colour plus sensor-like noise.

    JPEG-compressed at quality 90 these are 0.4-0.5 bytes per pixel, about what
    camera photos scaled to a few hundred pixels take (ImageNet's average is
    about 0.7), so decoding them costs what decoding a user's photos costs.
    """
    coarse = rng.integers(0, 256, size=(height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
    coarse = 0.6 * coarse + 0.4 * np.asarray(tint, np.float32)  # the class colour cast
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
    noisy = smooth.astype(np.int16) + rng.integers(-12, 13, size=smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


CLASS_TINTS = {"red": (200, 60, 50), "green": (60, 180, 70), "blue": (50, 80, 200), "grey": (128, 128, 128)}


def make_photos(root: Path, count: int, seed: int = 0, sizes: tuple[int, int] = (320, 520),
                prefix: str = "img") -> Path:
    """`count` JPEG photos, `sizes` pixels per side (random, not square), in one folder per class."""
    rng = np.random.default_rng(seed)
    classes = list(CLASS_TINTS)
    for i in range(count):
        label = classes[i % len(classes)]
        width, height = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        photo(rng, width, height, CLASS_TINTS[label]).save(folder / f"{prefix}-{seed}-{i:06d}.jpg", quality=90)
    return root


def prepare(source: Path, out: Path, **data_params) -> Path:
    """Run the real `prepare` step (validate, hash, split); returns the manifest path."""
    from transferkit.config import DataParams
    from transferkit.data.prepare import prepare as prepare_data

    prepare_data(source, out / "manifest.parquet", out / "report.json", DataParams(**data_params))
    return out / "manifest.parquet"


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each candidate in turn, `repeats` rounds; each returns its own figure (e.g. images/s).

    Interleaving puts every side through the same bursts of load from other
    processes, so the ratio of the medians is much steadier than either figure.
    """
    figures: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats):
        for name, fn in candidates.items():
            figures[name].append(fn())
        print("  round", round_ + 1, "  ".join(f"{n}={v[-1]:.1f}" for n, v in figures.items()), flush=True)
    return figures


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def read_params(path: Path, overrides: list[str]) -> dict:
    """params.yaml as a dict, with each `SECTION.KEY=VALUE` of `overrides` set (VALUE read as YAML), as
    `dvc exp run -S` sets them."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.safe_load(value)
    return raw


def header(title: str) -> None:
    print(f"== {title}", flush=True)
    print(f"machine: {machine()}", flush=True)
    # Other processes on the same cores move every figure: say how busy the machine was.
    print("load average before the run (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()), flush=True)


def ratio_line(name: str, value: float, target: str, met: bool | None) -> None:
    """The last line of every benchmark."""
    verdict = "" if met is None else ("met" if met else "NOT met")
    sys.stdout.flush()
    print(f"RATIO {name} = {value:.3f}  (target {target}{': ' + verdict if verdict else ''})", flush=True)


def evaluate_outputs(out: Path, name: str):
    """evaluate's output files, every one of them, as `<out>/<name>-<field>.<csv|png|html>`."""
    from dataclasses import fields

    from transferkit.evaluate.evaluate import EvaluateOutputs

    suffix = {"confusion_png": "png", "calibration_png": "png", "curves_png": "png", "errors_html": "html"}
    return EvaluateOutputs(**{f.name: out / f"{name}-{f.name}.{suffix.get(f.name, 'csv')}"
                              for f in fields(EvaluateOutputs)})
