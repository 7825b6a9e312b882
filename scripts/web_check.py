"""`make web-check`: the browser page against `transferkit predict --runtime onnx` on the sample's test images.

    .venv/bin/python scripts/web_check.py [--web models/export/web] [--manifest data/prepared/manifest.parquet]
                                          [--model models/model.keras --model-info models/model.json]
                                          [--out web-check.json]

Both run the same ONNX graph (predict converts the Keras model exactly as the export stage did), so only
decoding differs: the page's canvas against Pillow (the page's header comment and the README's "In the
browser" say where). The page runs in headless Chromium (tests/browser.py), served from a temporary folder
that links the export's files and holds copies of the images (models/export/web, a DVC output, is never
written). The first image is classified with index.html?image=<url> on a fresh profile: the time to the
first answer includes downloading and compiling everything. All the images are then picked at once with the
page's file input, as a user would, and each card's answer is read.

Prints the figures and writes them to --out (not a DVC output: a check never makes `export` look changed).
Exit 0 when top-1 agrees on every image whose top-2 margin (in predict's probabilities) is above MARGIN.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARGIN = 0.05  # top-2 margin above which the page and predict must agree on top-1
ANSWER_TIMEOUT = 300  # seconds to wait for the page's answers (a slow, loaded machine)


def stage_images(web: Path, images: list[Path], folder: Path) -> list[str]:
    """Fill `folder` with links to the page's files and copies of `images` under check-images/ (numbered, so
    two files of one name stay apart); returns their URLs relative to the page."""
    for path in web.iterdir():
        (folder / path.name).symlink_to(path.resolve())
    (folder / "check-images").mkdir()
    names = [f"check-images/{i:04d}_{image.name}" for i, image in enumerate(images)]
    for name, image in zip(names, images, strict=True):
        shutil.copyfile(image, folder / name)
    return names


def predict_onnx(images: list[Path], model: Path, model_info: Path, classes: list[str]) -> list[dict[str, float]]:
    """`transferkit predict --runtime onnx` on the files: every class's probability, per image, in order."""
    command = [sys.executable, "-m", "transferkit.cli", "predict", *map(str, images), "--runtime", "onnx",
               "--format", "json", "--top-k", str(len(classes)), "--model", str(model), "--model-info",
               str(model_info)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"transferkit predict --runtime onnx failed:\n{done.stderr[-3000:]}")
    rows = json.loads(done.stdout)
    return [{p["label"]: p["probability"] for p in row["predictions"]} for row in rows]


def page_answer(driver, url: str, timeout: float = ANSWER_TIMEOUT) -> tuple[dict, float]:
    """Open `url` (index.html?image=...) and wait for <pre id="result">: (the answer, ms from navigation start)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    text = WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "result").get_attribute("textContent"))
    answer = json.loads(text)
    if "error" in answer:
        raise RuntimeError(f"{url}: the page answered {answer['error']}")
    return answer, float(driver.find_element(By.ID, "result").get_attribute("data-ms"))


def picked_answers(driver, files: list[Path], timeout: float = ANSWER_TIMEOUT) -> dict[str, dict]:
    """Pick `files` at once with the page's file input (already loaded and ready); {file name: answer}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, "status").text.startswith("Ready"))
    driver.find_element(By.ID, "files").send_keys("\n".join(str(f.resolve()) for f in files))
    script = "return [...document.querySelectorAll('.card[data-answer]')].map(c => [c.dataset.name, c.dataset.answer])"
    WebDriverWait(driver, timeout).until(lambda d: len(d.execute_script(script)) == len(files))
    answers = {name: json.loads(answer) for name, answer in driver.execute_script(script)}
    failed = {name: a["error"] for name, a in answers.items() if "error" in a}
    if failed:
        raise RuntimeError(f"the page could not classify {len(failed)} file(s), e.g. {next(iter(failed.items()))}")
    return answers


def compare(page: list[dict[str, float]], predicted: list[dict[str, float]], names: list[str],
            classes: list[str]) -> dict:
    """The page's probabilities against predict's, image by image (same order)."""
    import numpy as np

    a = np.array([[p[c] for c in classes] for p in page])
    b = np.array([[p.get(c, 0.0) for c in classes] for p in predicted])
    top2 = np.sort(b, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > MARGIN
    same = a.argmax(axis=1) == b.argmax(axis=1)
    delta = np.abs(a - b)
    worst = int(delta.max(axis=1).argmax())
    return {
        "images": len(names),
        "clear_margin": MARGIN,
        "clear_images": int(clear.sum()),
        "clear_top1_agreement": float(same[clear].mean()) if clear.any() else 1.0,
        "top1_agreement": float(same.mean()),
        "max_abs_diff": float(delta.max()),
        "mean_abs_diff": float(delta.mean()),
        "max_abs_diff_image": names[worst],
        "clear_disagreements": [names[i] for i in np.flatnonzero(clear & ~same)],
        "disagreements": [names[i] for i in np.flatnonzero(~same)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web", default="models/export/web")
    parser.add_argument("--manifest", default="data/prepared/manifest.parquet")
    parser.add_argument("--model", default="models/model.keras")
    parser.add_argument("--model-info", default="models/model.json")
    parser.add_argument("--out", default="web-check.json")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    args = parser.parse_args(argv)
    web = Path(args.web)
    from transferkit.deliver.web import folder_megabytes, missing_page

    if problem := missing_page(web):
        print(f"web-check: {problem}", file=sys.stderr)
        return 1
    sys.path.insert(0, str(REPO / "tests"))
    from transferkit.data.manifest import load_manifest, split_of

    from browser import CHROMEDRIVER, CHROMIUM, serve_folder, start_chromium

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        print("web-check: headless Chromium is not installed: run `make browser` (apt-get install chromium "
              "chromium-driver)", file=sys.stderr)
        return 1
    classes = json.loads((web / "model.onnx.json").read_text())["classes"]
    images = [Path(p) for p in split_of(load_manifest(args.manifest), "test")["path"]][:args.limit]
    started = time.perf_counter()
    predicted = predict_onnx(images, Path(args.model), Path(args.model_info), classes)
    predict_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="web-check-") as tmp:
        served, profile = Path(tmp) / "served", Path(tmp) / "profile"
        served.mkdir()
        names = stage_images(web, images, served)
        driver = start_chromium(profile)
        try:
            with serve_folder(served) as url:
                first, first_ms = page_answer(driver, f"{url}index.html?image={names[0]}")
                picked = picked_answers(driver, [served / name for name in names])
                threads = driver.execute_script("return self.crossOriginIsolated ? 'several' : 1")
        finally:
            driver.quit()
    page = [picked[Path(name).name] for name in names]
    figures = compare([answer["probabilities"] for answer in page], predicted, [str(p) for p in images], classes)
    figures.update({
        "first_answer_matches_picked": first == page[0],
        "page_megabytes": round(folder_megabytes(web), 2),
        "time_to_first_answer_ms": first_ms,
        "page_threads": threads,
        "predict_onnx_seconds": round(predict_seconds, 1),
    })
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    ok = not figures["clear_disagreements"] and figures["first_answer_matches_picked"]
    print(f"web-check: page vs `transferkit predict --runtime onnx` on {figures['images']} test images: top-1 agrees "
          f"on {figures['clear_top1_agreement']:.2%} of the {figures['clear_images']} with a top-2 margin > {MARGIN} "
          f"({figures['top1_agreement']:.2%} of all); max |Δp| {figures['max_abs_diff']:.3g} "
          f"(mean {figures['mean_abs_diff']:.2g}, worst {figures['max_abs_diff_image']})")
    print(f"web-check: page weight {figures['page_megabytes']:.1f} MB; first answer {first_ms / 1000:.1f} s after "
          f"navigation (fresh profile, headless Chromium, {threads} thread(s)); figures in {args.out}")
    for name in figures["clear_disagreements"]:
        print(f"web-check: top-1 differs on {name}", file=sys.stderr)
    if not figures["first_answer_matches_picked"]:
        print("web-check: ?image= and the file picker answered differently for the first image", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
