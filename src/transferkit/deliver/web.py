"""The browser export: a static folder that classifies images in a web page, the model never leaving the machine.

`write_web_folder` fills `<export>/web/` (the export stage calls it for an
image model; a text model gets none) with:

    index.html                   the page (web_page.html beside this module)
    model.onnx, model.onnx.json  the ONNX file that passed the parity gate and its description (classes,
                                 image_size, input and output names): the page's classes file
    ort.wasm.bundle.min.mjs      onnxruntime-web (npm, pinned in package-lock.json; `make install` runs
    ort-wasm-simd-threaded.wasm  `npm ci`), its WebAssembly backend: the only two of its files the page loads

The page refers to nothing outside its folder, so any static file server
serves it (`make web`). It decodes an image as close to the pipeline's
decoder as a canvas allows (the page's header comment lists where it cannot
match) and runs model.onnx on raw RGB 0..255 pixels, as every exported file
takes them. `scripts/web_check.py` (`make web-check`) and tests/deliver/
test_web.py run it in headless Chromium against `transferkit predict
--runtime onnx` on the same image files, so only decoding differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transferkit.errors import TransferkitError

WEB_FOLDER = "web"  # inside the export folder
PAGE = Path(__file__).with_name("web_page.html")
# onnxruntime-web's files the page loads: the WASM-only ES module with its loader inside, and its one
# WebAssembly binary (SIMD; threads only on a cross-origin isolated page).
ORT_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
SOURCE_MAP_PREFIX = b"//# sourceMappingURL="  # the module's last line names a .map file the folder does not hold


def missing_page(folder: str | Path) -> str | None:
    """Why `folder` holds no exported page, in one line, or None when it holds one."""
    page = Path(folder) / "index.html"
    if page.is_file():
        return None
    return (f"{page} not found: the export stage writes it for an image model only: run `make run` (or, after a "
            f"text run, `git checkout params.yaml && .venv/bin/dvc repro`)")


def find_runtime(runtime: str | Path) -> Path:
    """onnxruntime-web's dist folder: `runtime` itself or, when relative and missing, the same path in the
    nearest parent folder that has it, as Node resolves node_modules. An experiment that `dvc exp run --queue`
    runs in a copy of the repository under .dvc/tmp/exps/ (git-ignored node_modules is not copied) so finds
    the repository's own. Raises TransferkitError naming the first of ORT_FILES missing."""
    runtime = Path(runtime)
    candidates = [runtime] if runtime.is_absolute() else [folder / runtime for folder in (Path.cwd(),
                                                                                           *Path.cwd().parents)]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in ORT_FILES):
            return candidate
    raise TransferkitError(f"{runtime / ORT_FILES[0]}: not found; the browser export copies onnxruntime-web from "
                           f"there: run `make install` (npm ci)")


def write_web_folder(folder: str | Path, onnx_file: str | Path, runtime: str | Path) -> Path:
    """Write the page into `folder` (created) beside a copy of `onnx_file` and its `<file>.json`; `runtime` is
    onnxruntime-web's dist folder (node_modules/onnxruntime-web/dist). Returns `folder`."""
    folder, onnx_file, runtime = Path(folder), Path(onnx_file), find_runtime(runtime)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PAGE, folder / "index.html")
    shutil.copyfile(onnx_file, folder / "model.onnx")
    shutil.copyfile(onnx_file.with_name(f"{onnx_file.name}.json"), folder / "model.onnx.json")
    for name in ORT_FILES:
        data = (runtime / name).read_bytes()
        if name.endswith(".mjs"):
            data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(SOURCE_MAP_PREFIX))
        (folder / name).write_bytes(data)
    return folder


def folder_megabytes(folder: str | Path) -> float:
    """What the page downloads, in MB (10^6 bytes): every file of the folder."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()) / 1e6
