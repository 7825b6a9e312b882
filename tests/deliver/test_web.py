"""The browser export (deliver/web.py): its folder, and the page in headless Chromium against
`transferkit predict --runtime onnx` (scripts/web_check.py's comparison) and against Pillow's decoding."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.deliver.web import ORT_FILES, WEB_FOLDER
from transferkit.errors import TransferkitError

from browser import console_errors, serve_folder
from conftest import REPO

# The one address in the copied files: a link in onnxruntime-web's console warning about threads, never fetched
# (the browser test checks what is fetched).
KNOWN_LINKS = {"https://web.dev/cross-origin-isolation-guide/"}


def web_check():
    spec = importlib.util.spec_from_file_location("web_check", REPO / "scripts" / "web_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_folder_holds_the_page_the_model_its_classes_and_the_runtime(web_exported):
    root, _, _, _, result = web_exported
    web = root / "export" / WEB_FOLDER
    assert result.web_folder == web
    assert sorted(p.name for p in web.iterdir()) == sorted(["index.html", "model.onnx", "model.onnx.json", *ORT_FILES])
    assert (web / "model.onnx").read_bytes() == (root / "export" / "model.onnx").read_bytes()
    assert json.loads((web / "model.onnx.json").read_text())["classes"] == ["circle", "square", "triangle"]
    assert (web / "ort-wasm-simd-threaded.wasm").read_bytes()[:4] == b"\0asm"
    assert any(line.startswith("browser page: ") and "MB" in line for line in result.lines())


def test_nothing_in_the_folder_refers_outside_it(web_exported):
    web = web_exported[0] / "export" / WEB_FOLDER
    page = (web / "index.html").read_text()
    assert not re.findall(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page, flags=re.I)  # no URL, no protocol-relative one
    # Every file the page names is in the folder.
    named = set(re.findall(r"""["']\.?/?([\w.-]+\.(?:mjs|js|wasm|onnx|json))["']""", page))
    assert named and named <= {p.name for p in web.iterdir()}, named
    for path in web.iterdir():
        if path.suffix in (".mjs", ".html", ".json"):
            links = set(re.findall(r"https?://[^\s\"'`)]+", path.read_text(errors="replace")))
            assert links <= KNOWN_LINKS, (path.name, links - KNOWN_LINKS)
            assert "sourceMappingURL" not in path.read_text(errors="replace"), path.name  # no .map is copied


def test_a_missing_browser_runtime_names_make_install_before_any_conversion(tmp_path):
    from transferkit.config import ExportParams
    from transferkit.deliver.export import export

    from conftest import make_image_folder, prepare_into, save_colour_model

    manifest = prepare_into(make_image_folder(tmp_path / "images", per_class=4), tmp_path / "prepared")
    with pytest.raises(TransferkitError, match=r"empty/ort\.wasm\.bundle\.min\.mjs: not found.*make install"):
        export(manifest, *save_colour_model(tmp_path), tmp_path / "export", ExportParams(), "transferkit",
               web_runtime=tmp_path / "empty")
    assert not (tmp_path / "export").exists()


def test_the_runtime_is_found_in_a_parent_folder_as_node_finds_node_modules(tmp_path, monkeypatch):
    """A queued experiment runs in a copy of the repo under .dvc/tmp/exps/, without the git-ignored
    node_modules: the relative runtime path resolves in the nearest parent folder that has it."""
    from transferkit.deliver.web import find_runtime

    runtime = tmp_path / "node_modules" / "onnxruntime-web" / "dist"
    runtime.mkdir(parents=True)
    for name in ORT_FILES:
        (runtime / name).write_bytes(b"x")
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert find_runtime("node_modules/onnxruntime-web/dist") == runtime
    (runtime / ORT_FILES[1]).unlink()  # incomplete: not a runtime
    with pytest.raises(TransferkitError, match=r"node_modules/onnxruntime-web/dist/ort\.wasm.*make install"):
        find_runtime("node_modules/onnxruntime-web/dist")


def probe_images(folder: Path) -> dict[str, int]:
    """Files whose decoding has a catch, each with the size the page resizes it to: a 28 px grey PNG enlarged
    (the sample's case), a photo shrunk, an EXIF-rotated JPEG, alpha over hidden colour, 16-bit grey."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    sample = next((REPO / "data" / "sample" / "bag").glob("*.png"))
    shutil.copyfile(sample, folder / "sample_grey28.png")
    Image.fromarray(skimage.data.astronaut()).save(folder / "photo512.png")
    left_red_right_blue = np.zeros((40, 80, 3), np.uint8)
    left_red_right_blue[:, :40] = (255, 0, 0)
    left_red_right_blue[:, 40:] = (0, 0, 255)
    image = Image.fromarray(left_red_right_blue)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: red on top
    image.save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[..., 0] = 255  # pure red hidden under full transparency: white once composited
    rgba[15:45, 15:45] = (30, 200, 30, 255)
    rgba[10:50, 5:10] = (0, 0, 255, 128)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(folder / "grey16.png")
    return {"sample_grey28.png": 160, "photo512.png": 160, "exif_rotated.jpg": 32, "alpha.png": 32, "grey16.png": 64}


def page_pixels(driver, url: str, size: int) -> np.ndarray:
    """The page's own decoder (window.transferkitDecode) on the file at `url`: (size, size, 3) 0..255."""
    driver.set_script_timeout(120)
    pixels = driver.execute_async_script("""const [url, size, done] = arguments;
        fetch(url).then(r => r.blob()).then(b => window.transferkitDecode(b, size)).then(p => done(Array.from(p)))
          .catch(e => done(String(e)));""", url, size)
    assert not isinstance(pixels, str), pixels
    return np.asarray(pixels, np.float64).reshape(size, size, 3)


def test_the_page_decodes_as_pillow_does_where_a_canvas_can(web_exported, chromium, tmp_path):
    """Pixel by pixel against the pipeline's decoder (images.load_rgb), with the bounds measured in Chromium:
    the sample's enlargement within one level; a shrunk photo within a mean of 2 levels (the canvas' "low"
    quality: 2.8); orientation, alpha on white and 16-bit grey as Pillow (a wrong one: ~100 levels)."""
    from transferkit.data.images import load_rgb

    served = tmp_path / "served"
    shutil.copytree(web_exported[0] / "export" / WEB_FOLDER, served)
    sizes = probe_images(served / "probe")
    with serve_folder(served) as url:
        chromium.get(url + "index.html")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(chromium, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("Ready"))
        diffs = {name: np.abs(page_pixels(chromium, f"probe/{name}", size) - load_rgb(served / "probe" / name, size))
                 for name, size in sizes.items()}
        assert console_errors(chromium) == []
    assert diffs["sample_grey28.png"].max() <= 1
    assert diffs["photo512.png"].mean() < 2.0
    for name in ("exif_rotated.jpg", "alpha.png"):
        assert diffs[name].mean() < 3.0, (name, diffs[name].mean())
    assert diffs["grey16.png"].max() <= 1


def test_the_page_agrees_with_predict_on_onnx(web_exported, chromium, tmp_path, capsys):
    """Every test image and the decoding probes, through the page (index.html?image=..., then all at once with
    the file picker) and through `transferkit predict --runtime onnx`: the same top-1 wherever the top-2 margin
    is clear, and the page fetches nothing from another origin."""
    from transferkit.cli import main
    from transferkit.data.manifest import load_manifest, split_of

    root, manifest, model_path, info_path, _ = web_exported
    check = web_check()
    images = [Path(p) for p in split_of(load_manifest(manifest), "test")["path"]]
    probes = probe_images(tmp_path / "probes")
    images += [tmp_path / "probes" / name for name in probes]
    classes = json.loads((root / "export" / WEB_FOLDER / "model.onnx.json").read_text())["classes"]

    assert main(["predict", *map(str, images), "--runtime", "onnx", "--format", "json", "--top-k", str(len(classes)),
                 "--model", str(model_path), "--model-info", str(info_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    predicted = [{p["label"]: p["probability"] for p in row["predictions"]} for row in rows]

    served = tmp_path / "served"
    served.mkdir()
    names = check.stage_images(root / "export" / WEB_FOLDER, images, served)
    with serve_folder(served) as url:
        answers = [check.page_answer(chromium, f"{url}index.html?image={name}", timeout=120)[0] for name in names]
        assert all(set(a) == {"label", "probability", "probabilities"} for a in answers)  # the served model's fields
        assert console_errors(chromium) == []
        fetched = chromium.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched and all(f.startswith(url) for f in fetched), fetched
        picked = check.picked_answers(chromium, [served / name for name in names], timeout=120)
    assert [picked[Path(name).name] for name in names] == answers  # picking files decodes as fetching them

    figures = check.compare([a["probabilities"] for a in answers], predicted, [p.name for p in images], classes)
    print(f"page vs predict --runtime onnx on {len(images)} images: max |dp| {figures['max_abs_diff']:.3g}")
    assert figures["clear_images"] >= len(images) // 2
    assert figures["clear_disagreements"] == [], figures
    assert figures["max_abs_diff"] < 0.05, figures  # measured: 2e-4 on the shapes; decoding, not the model


def test_make_web_serves_the_folder_as_a_module_page_needs(web_exported, capsys):
    """scripts/serve_web.py: JavaScript and WebAssembly MIME types from itself (not the machine's mime.types),
    the isolation headers with --isolated, and one line naming `make run` when there is no page."""
    import functools
    import http.server
    import threading
    import urllib.request

    spec = importlib.util.spec_from_file_location("serve_web", REPO / "scripts" / "serve_web.py")
    serve_web = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_web)
    web = web_exported[0] / "export" / WEB_FOLDER
    handler = type("Page", (serve_web.Handler,), {"isolated": True, "log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(web)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        for name, mime in (("ort.wasm.bundle.min.mjs", "text/javascript"), ("ort-wasm-simd-threaded.wasm",
                                                                           "application/wasm")):
            with urllib.request.urlopen(base + name) as response:
                assert response.headers["Content-Type"] == mime
                assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.shutdown()
        server.server_close()
    assert serve_web.main([str(web.parent / "nowhere")]) == 1
    assert "index.html not found: the export stage writes it for an image model only" in capsys.readouterr().err
