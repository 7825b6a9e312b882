"""Reading texts from disk: one decoder for every stage.

`prepare`, extraction, fine-tuning, evaluation, `predict` and the served model
all turn a file into a Python string through `load_text` (and a string given
inline through `check_text`), so a text is never decoded one way in training
and another way in serving. Tokenising is the backbone's business, not this
module's.

Which files are texts. A file is text by its content; its name only says
which decoder gets to look at it:
- `.txt`, `.text`, `.eml` (a saved e-mail) and files with no extension (raw
  e-mails, SpamAssassin's `00001.7c53...`) are offered to this decoder. An
  "extension" is a last dot-part of 1 to 8 letters and digits with a letter
  in it; anything else (a 32-digit hash, `mail.2002`) counts as no extension.
- Image suffixes (images.IMAGE_SUFFIXES) go to the image decoder, never here.
- Every other extension (`.md`, `.html`, `.csv`, `.json`, `.pdf`, ...) is
  not a text file type: markup and tables hold structure the encoder would
  read as words, and a `.csv` in a class folder is more likely a stray
  manifest than a document. Rename a file to `.txt` to have it read as text.

Decoding, in this order:
1. a byte-order mark decides: UTF-8 (EF BB BF), UTF-16 LE (FF FE) or BE
   (FE FF); the mark is dropped, and bytes that do not decode under the
   encoding the mark names are a rejection (no guessing past a mark);
2. no mark: a NUL byte means binary (rejected);
3. strict UTF-8;
4. else Windows-1252 where it defines the byte, Latin-1 for the five bytes
   it leaves undefined (0x81 0x8D 0x8F 0x90 0x9D), as browsers do. Every byte
   string decodes this way, so legacy mail in ISO-8859-1 or cp1252 is kept.
Then newlines are normalised: CRLF and lone CR become LF, so the same text
saved on Windows and on Unix is one text (one hash, one split, one
embedding). Nothing else changes (no Unicode normalisation, no stripping):
the tokenizer does its own normalisation.

Rejected, with a reason (TextRejected): binary files (a NUL byte, or more
than 5% control characters other than tab, newline, form feed and vertical
tab, which random bytes have and text does not), text that does not decode
under its byte-order mark, empty or whitespace-only texts, and files over
`data.max_text_bytes` (bytes on disk, checked before the file is read; for an
inline text, its size in UTF-8).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# Bumped whenever load_text's output for the same bytes could change; part of the
# embedding cache key so a change here never reuses stale embeddings.
TEXT_SPEC = "bom-utf8-cp1252latin1-lf-v1"

# Offered to this decoder ("" = no extension); see the module docstring for why others are not.
TEXT_SUFFIXES = {"", ".txt", ".text", ".eml"}

_EXTENSION = re.compile(r"\.(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{1,8}")

# Windows-1252 for the bytes it defines, Latin-1 (the same code point) for the five it does not.
_CP1252_OVER_LATIN1 = {}
for _byte in range(0x80, 0xA0):
    try:
        _CP1252_OVER_LATIN1[_byte] = bytes([_byte]).decode("cp1252")
    except UnicodeDecodeError:
        pass  # undefined in cp1252: stays the Latin-1 character chr(_byte)

_BOMS = (  # longest first does not matter here: no mark is a prefix of another
    (codecs.BOM_UTF8, "utf-8-sig", "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16-be"),
)
# C0 controls and DEL, less those plain text holds (tab, LF, VT, FF, CR).
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")
MAX_CONTROL_SHARE = 0.05  # binary data: about 10% of random bytes are such controls; text: almost none


class TextRejected(Exception):
    """The file or string is not a usable text; the message is the reason for the data report."""


@dataclass(frozen=True)
class Text:
    text: str  # decoded, newlines normalised to LF
    # utf-8 | utf-8-bom | utf-16-le | utf-16-be | cp1252 (the fallback: Latin-1 where cp1252 is undefined)
    encoding: str


def text_suffix(path: str | Path) -> str:
    """The file's extension by this module's rule, lower case ("" for none, e.g. `00001.7c53...`)."""
    name = Path(path).name
    dot = name.rfind(".")
    if dot <= 0:  # no dot, or a leading dot only
        return ""
    return name[dot:].lower() if _EXTENSION.fullmatch(name[dot:]) else ""


def is_text_file_name(path: str | Path) -> bool:
    return text_suffix(path) in TEXT_SUFFIXES


def text_sha256(text: str) -> str:
    """The content hash of a decoded text (its UTF-8 bytes): the same text in any encoding hashes the same."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decode_bytes(data: bytes) -> Text:
    """Bytes to text by the rules above; raises TextRejected for binary or undecodable data."""
    for mark, codec, name in _BOMS:
        if data.startswith(mark):
            try:
                text = data[len(mark):].decode(codec)
            except UnicodeDecodeError as exc:
                raise TextRejected(f"cannot decode as {name} (the file starts with a {name} byte-order mark): "
                                   f"{exc.reason} at byte {exc.start + len(mark)}") from None
            return Text(_check_content(_normalise_newlines(text)), "utf-8-bom" if name == "utf-8" else name)
    if b"\x00" in data:
        raise TextRejected(f"binary file (NUL byte at offset {data.index(0)})")
    try:
        return Text(_check_content(_normalise_newlines(data.decode("utf-8"))), "utf-8")
    except UnicodeDecodeError:
        pass
    text = data.decode("latin-1").translate(_CP1252_OVER_LATIN1)
    return Text(_check_content(_normalise_newlines(text)), "cp1252")


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _check_content(text: str) -> str:
    if "\x00" in text:  # after a BOM (UTF-16 text holds NUL bytes, but no NUL characters)
        raise TextRejected("binary file (NUL character after decoding)")
    if not text.strip():
        raise TextRejected("empty text (nothing but whitespace)" if text else "empty text")
    controls = len(_CONTROLS.findall(text))
    if controls > MAX_CONTROL_SHARE * len(text):
        raise TextRejected(f"binary file ({controls} of {len(text)} characters are control characters)")
    return text


def inspect_text(path: str | Path, max_bytes: int) -> Text:
    """Validate one file exactly as the later stages will read it; return the decoded text and its encoding.

    The size is checked from the file system before anything is read.
    """
    size = Path(path).stat().st_size
    if size == 0:
        raise TextRejected("empty file (0 bytes)")
    if size > max_bytes:
        raise TextRejected(f"too large: {size} bytes is over data.max_text_bytes={max_bytes}")
    return decode_bytes(Path(path).read_bytes())


def load_text(path: str | Path, max_bytes: int | None = None) -> str:
    """Decode a file into the text every stage uses.

    No size limit by default: the stages read only files that `prepare`
    validated with data.max_text_bytes; `predict` and serving pass a limit.
    """
    if max_bytes is not None:
        return inspect_text(path, max_bytes).text
    return decode_bytes(Path(path).read_bytes()).text


def check_text(text: object, max_bytes: int) -> str:
    """A text given as a string (a manifest's `text` cell, `predict --text`, a served request).

    Returns it with newlines normalised; raises TextRejected when it is not a
    string, empty, whitespace-only, binary-looking or over max_bytes in UTF-8.
    """
    if not isinstance(text, str):
        raise TextRejected(f"not a string ({type(text).__name__})")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise TextRejected("not valid Unicode (a lone surrogate)") from None
    if size > max_bytes:
        raise TextRejected(f"too large: {size} bytes (UTF-8) is over data.max_text_bytes={max_bytes}")
    return _check_content(_normalise_newlines(text))
