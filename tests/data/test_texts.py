"""The text decoder on real files written by the tests in every encoding a mailbox holds."""

import codecs

import pytest

from transferkit.data.texts import (
    TextRejected,
    check_text,
    decode_bytes,
    inspect_text,
    is_text_file_name,
    load_text,
    text_sha256,
    text_suffix,
)

WORDS = "Grüße aus Köln: “quoted” – 5 €\nsecond line\n"


@pytest.mark.parametrize("data, encoding", [
    (WORDS.encode("utf-8"), "utf-8"),
    (codecs.BOM_UTF8 + WORDS.encode("utf-8"), "utf-8-bom"),
    (codecs.BOM_UTF16_LE + WORDS.encode("utf-16-le"), "utf-16-le"),
    (codecs.BOM_UTF16_BE + WORDS.encode("utf-16-be"), "utf-16-be"),
    (WORDS.encode("cp1252"), "cp1252"),
    (WORDS.replace("\n", "\r\n").encode("utf-8"), "utf-8"),  # Windows newlines
])
def test_every_encoding_decodes_to_the_same_text(tmp_path, data, encoding):
    path = tmp_path / "mail"
    path.write_bytes(data)
    decoded = inspect_text(path, 10_000)
    assert decoded.text == WORDS and decoded.encoding == encoding
    assert load_text(path) == WORDS
    assert text_sha256(decoded.text) == text_sha256(WORDS)  # one text, one hash, whatever the encoding


def test_latin1_where_cp1252_leaves_a_byte_undefined():
    # 0x80 is the euro sign in cp1252; 0x81 is undefined there and stays U+0081 (Latin-1), not an error.
    assert decode_bytes(b"price \x80 5 \x81 caf\xe9").text == "price \u20ac 5 \x81 caf\u00e9"


def test_lone_carriage_returns_become_newlines():
    assert decode_bytes(b"old mac\rline two\r").text == "old mac\nline two\n"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty text"),
    (b" \n\t\r\n ", "empty text (nothing but whitespace)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file (NUL byte at offset 8)"),
    (bytes(range(1, 32)) * 20 + b"some words", "binary file"),  # control characters, no NUL
    (codecs.BOM_UTF16_LE + b"a\x00b", "cannot decode as utf-16-le"),  # odd length
    (codecs.BOM_UTF8 + b"ok \xff\xfe", "cannot decode as utf-8"),  # a mark, then no UTF-8
    (codecs.BOM_UTF16_LE + "a\x00b".encode("utf-16-le"), "NUL character"),
])
def test_bad_bytes_are_rejected_with_a_reason(data, reason):
    with pytest.raises(TextRejected, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_bytes(data)


def test_size_cap_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * 300)
    assert inspect_text(path, 1500).text.startswith("word")
    with pytest.raises(TextRejected, match="too large: 1500 bytes is over data.max_text_bytes=1499"):
        inspect_text(path, 1499)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(TextRejected, match=r"empty file \(0 bytes\)"):
        inspect_text(tmp_path / "empty.txt", 1000)


def test_inline_strings():
    assert check_text("line\r\nline", 100) == "line\nline"
    for value, reason in ((None, "not a string"), (3.5, "not a string"), ("", "empty"), ("  ", "whitespace"),
                          ("é" * 60, "too large: 120 bytes"), ("bad \ud800", "lone surrogate")):
        with pytest.raises(TextRejected, match=reason):
            check_text(value, 100)


@pytest.mark.parametrize("name, suffix, text", [
    ("notes.txt", ".txt", True),
    ("NOTES.TXT", ".txt", True),
    ("mail.eml", ".eml", True),
    ("00001.7c53336b37003a9286aba55d2945844c", "", True),  # SpamAssassin's names: a hash is no extension
    ("message", "", True),
    ("mail.2002", "", True),  # digits only: not an extension
    ("README.md", ".md", False),
    ("table.csv", ".csv", False),
    ("photo.png", ".png", False),
    ("archive.tar.gz", ".gz", False),
])
def test_which_names_are_offered_to_the_text_decoder(name, suffix, text):
    assert text_suffix(name) == suffix
    assert is_text_file_name(name) is text
