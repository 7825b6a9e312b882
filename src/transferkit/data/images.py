"""Reading images from disk: one decoder for every stage.

Extraction, fine-tuning, evaluation and `predict` all turn a file into pixels
through `load_rgb`, so an image is never preprocessed one way in training and
another way in serving. What the backbone does to pixels (scaling, mean
subtraction) lives inside the Keras model, not here: this module only decodes,
applies the EXIF orientation, converts to RGB and resizes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bumped whenever load_rgb's output for the same file could change; part of the
# embedding cache key so a change here never reuses stale embeddings.
RESIZE_SPEC = "pil-exif-rgb-bilinear-squash-v1"

# transferkit checks the pixel count itself (in _open, from the header) against
# data.max_image_pixels (config.DEFAULT_MAX_IMAGE_PIXELS where no params apply); Pillow's global
# check would apply a second limit of its own, so it is off. Set here once: decoder threads share
# Pillow's globals.
Image.MAX_IMAGE_PIXELS = None

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageRejected(Exception):
    """The file is not a usable image; the message is the reason for the data report."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _open(path: str | Path, max_pixels: int | None, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode, turning every failure into ImageRejected.

    max_pixels: None = no limit, for files `prepare` has already accepted
    under data.max_image_pixels (whatever the user set it to). The pixel count
    comes from the header, so an oversized file is never decoded.

    draft_size: for JPEG, let libjpeg downscale by 2/4/8 while decoding when
    the image is much larger than needed (much faster for big photos).
    """
    try:
        image = Image.open(path)  # reads the header only
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"cannot decode: {exc}") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageRejected(f"too large: {width * height} pixels is over data.max_image_pixels={max_pixels} "
                            f"(decompression-bomb guard)")
    return _decode(image, draft_size)


def _decode(image: Image.Image, draft_size: int | None) -> Image.Image:
    try:
        image.seek(0)  # animated GIF/WebP: the first frame
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # decode now, so truncated files fail here, not later
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"cannot decode: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB: applies the EXIF orientation; alpha is composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: the same fixed scale for every image (65535 -> 255),
        # so a pixel value means the same brightness in every file.
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def inspect_image(path: str | Path, min_side: int, max_pixels: int) -> tuple[int, int]:
    """Validate one file exactly as the later stages will read it; return upright (width, height).

    The full conversion to RGB runs here too, so an image that `prepare`
    accepts can never fail later in extract, finetune or evaluate.
    """
    if Path(path).stat().st_size == 0:
        raise ImageRejected("empty file (0 bytes)")
    image = _open(path, max_pixels)
    try:
        width, height = to_rgb(image).size
    except (OSError, SyntaxError, ValueError, TypeError) as exc:  # odd modes, corrupt EXIF
        raise ImageRejected(f"cannot convert to RGB ({image.mode}): {exc}") from None
    if min(width, height) < min_side:
        raise ImageRejected(f"too small: {width}x{height} pixels (data.min_image_side is {min_side})")
    return width, height


def load_rgb(path: str | Path, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Decode a file into a (size, size, 3) uint8 RGB array (the whole image, squashed to a square).

    No size limit by default: the stages read only files that `prepare`
    validated with data.max_image_pixels, and `predict` validates first.
    """
    image = to_rgb(_open(path, max_pixels, draft_size=size))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
