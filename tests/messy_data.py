"""A messy image folder, made for real on disk: every kind of file people's data holds.

`add_messy_files(root)` adds files to an existing class folder tree (one made
by conftest.make_image_folder) and returns what `prepare` must do with each:
"ok" (kept) or a fragment of the rejection reason. Valid-but-unusual images
are drawings of their class, so a pipeline trained on the folder still learns.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import draw_example

OK = "ok"
UNICODE_CLASS = "gelbe Raute ü"  # German: yellow diamond


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_bomb(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit PNG of side x side pixels (0.4 gigapixels, 4.5x the default limit), ~50 kB on disk.

    Built chunk by chunk so the test itself never holds the pixels in memory:
    each row is a filter byte plus side/8 zero bytes, streamed through zlib."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body)
                     + png_chunk(b"IEND", b""))


def exif_rotated_jpeg(path: Path, image: Image.Image) -> None:
    """Store the image rotated 90 degrees with EXIF orientation 6 ("rotate 90 CW to display"):
    a reader that applies the tag gets `image` back, upright."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; the tag undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())


def add_messy_files(root: Path, seed: int = 123, broken_symlink: bool = True) -> dict[str, str]:
    """Add the messy files under root/<class>/...; returns {path relative to root: expected outcome}.

    broken_symlink=False leaves out the dangling link: DVC cannot hash a folder
    holding one, so `dvc repro` stops before prepare runs (tested on its own)."""
    rng = np.random.default_rng(seed)
    expected: dict[str, str] = {}

    def example(kind: str, size: int = 40) -> Image.Image:
        return draw_example(kind, size, rng)

    def put(relative: str, outcome: str, image: Image.Image | None = None, data: bytes | None = None, **save):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if image is not None:
            image.save(path, **save)
        elif data is not None:
            path.write_bytes(data)
        expected[relative] = outcome
        return path

    jpeg = io.BytesIO()
    example("circle").save(jpeg, "JPEG", quality=90)
    png = io.BytesIO()
    example("square").save(png, "PNG")

    # Broken files: reported with a reason, never a crash.
    put("circle/corrupt.jpg", "not an image", data=jpeg.getvalue()[:20] + bytes(rng.integers(0, 256, 2000, np.uint8)))
    put("circle/truncated.jpg", "cannot decode", data=jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    put("square/truncated.png", "cannot decode", data=png.getvalue()[: len(png.getvalue()) // 2])
    put("square/empty.png", "empty file", data=b"")
    put("square/notes.jpg", "not an image", data=b"this is text, not a JPEG\n" * 20)
    put("square/readme.txt", "not an image file type", data=b"hello")
    put("triangle/Thumbs.db", "hidden or system entry", data=b"\xd0\xcf\x11\xe0" + bytes(60))
    put("triangle/.DS_Store", "hidden or system entry", data=b"\x00\x00\x00\x01Bud1")
    put("circle/.hidden.png", "hidden or system entry", image=example("circle"))
    put("circle/tiny.png", "too small", image=Image.new("RGB", (1, 1), (200, 30, 30)))
    bomb = root / "square" / "bomb.png"
    write_png_bomb(bomb)
    expected["square/bomb.png"] = "too large: 400000000 pixels is over data.max_image_pixels"

    # Unusual but valid images: kept, decoded to upright RGB.
    rgba = example("circle").convert("RGBA")
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[:4, :4] = 0  # a transparent corner: composited on white
    rgba.putalpha(Image.fromarray(alpha))
    put("circle/alpha.png", OK, image=rgba)
    put("circle/palette.png", OK, image=example("circle").convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    put("circle/grey.png", OK, image=example("circle").convert("L"))
    sixteen = (np.asarray(example("square").convert("L"), np.uint16) * 257).astype(np.uint16)
    put("square/sixteen-bit.png", OK, image=Image.fromarray(sixteen))  # mode I;16
    put("square/cmyk.jpg", OK, image=example("square").convert("CMYK"), format="JPEG", quality=95)
    expected["square/rotated-exif.jpg"] = OK
    exif_rotated_jpeg(root / "square" / "rotated-exif.jpg", example("square", 48).crop((0, 0, 48, 32)))
    first, second = example("triangle"), example("circle")
    put("triangle/animated.gif", OK, image=first, save_all=True, append_images=[second], duration=100, loop=0)
    put("triangle/photo.webp", OK, image=example("triangle"), format="WEBP", quality=90)
    put("triangle/bitmap.bmp", OK, image=example("triangle"))
    put("triangle/Fotó 01 ☀ copy.png", OK, image=example("triangle"))
    # A class whose folder name has a space and non-ASCII letters.
    for i in range(6):
        put(f"{UNICODE_CLASS}/Raute Nr. {i} ü.png", OK, image=example("diamond"))

    # Symlinks: a link to a file is followed (same bytes: a duplicate, not a new image);
    # a broken link is reported; a linked folder inside a class is not entered (loops).
    target = sorted((root / "circle").glob("circle_*.png"))[0]
    os.symlink(target, root / "circle" / "link.png")
    expected["circle/link.png"] = OK
    if broken_symlink:
        os.symlink(root / "circle" / "gone.png", root / "circle" / "broken-link.png")
        expected["circle/broken-link.png"] = "broken symlink"
    os.symlink(root / "circle", root / "square" / "linked-folder")
    expected["square/linked-folder"] = "symlinked folder"
    return expected
