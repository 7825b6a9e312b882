"""The error gallery (evaluate/gallery.py): what it picks and in which order, on tiny made-up probabilities;
the page itself, from real tiny images on disk, in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.evaluate.gallery import SNIPPET_CHARS, THUMB_SIDE, build_gallery, render_html, write_gallery

from browser import console_errors, serve_folder
from conftest import REPO, draw_example

# Every tag the page is made of (a text model's page has no img)
PAGE_TAGS = {"html", "head", "meta", "link", "title", "style", "body", "h1", "h2", "h3", "p", "section", "div",
             "figure", "figcaption", "b", "br", "span", "pre", "img"}
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "poster", "data", "background", "formaction"}


class PageParts(HTMLParser):
    """The tags, the attributes that can load something, and the text of a page."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in URL_ATTRIBUTES]

    def handle_data(self, data):
        self.text.append(data)


def probabilities(rows: list[tuple[int, dict[int, float]]], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, probs) from rows of (true class, {class: probability}); the rest of each row's mass is spread
    evenly over the other classes."""
    probs = np.zeros((len(rows), n_classes))
    for i, (_, given) in enumerate(rows):
        rest = [c for c in range(n_classes) if c not in given]
        probs[i, rest] = (1 - sum(given.values())) / len(rest) if rest else 0
        for c, p in given.items():
            probs[i, c] = p
    return np.array([t for t, _ in rows]), probs


def test_errors_are_grouped_by_pair_most_frequent_first_most_confident_first_within():
    y_true, probs = probabilities([
        (0, {0: 0.9}),  # right
        (1, {2: 0.6, 1: 0.3}),  # 1 -> 2, one of two
        (0, {1: 0.95, 2: 0.04}),  # 0 -> 1, the most confident error, but its pair has one error only
        (1, {2: 0.8, 0: 0.15}),  # 1 -> 2, more confident than the first
        (2, {0: 0.5, 1: 0.45}),  # 2 -> 0
        (2, {2: 0.7}),  # right
    ], n_classes=3)
    gallery = build_gallery(y_true, probs, size=10)
    assert (gallery.test_items, gallery.wrong, gallery.shown) == (6, 4, 4)
    assert [(g.true, g.predicted, g.wrong) for g in gallery.groups] == [(1, 2, 2), (0, 1, 1), (2, 0, 1)]
    first = gallery.groups[0].items
    assert [i.index for i in first] == [3, 1] and [i.probability for i in first] == [0.8, 0.6]
    assert (first[0].runner_up, first[0].runner_up_probability) == (0, 0.15)  # the runner-up, whichever class
    assert (first[1].runner_up, first[1].runner_up_probability) == (1, 0.3)  # the true class, here
    assert gallery.groups[1].items[0].probability == 0.95


def test_the_size_keeps_the_most_confident_errors_and_the_pair_counts_all_of_them():
    rows = [(0, {1: p}) for p in (0.6, 0.7, 0.8)] + [(2, {1: 0.99})]
    gallery = build_gallery(*probabilities(rows, n_classes=3), size=2)
    assert gallery.shown == 2 and gallery.wrong == 4
    # 0 -> 1 has 3 wrong test items (one shown): still the most frequent pair, first.
    assert [(g.true, g.predicted, g.wrong, [i.index for i in g.items]) for g in gallery.groups] == [
        (0, 1, 3, [2]), (2, 1, 1, [3])]
    assert build_gallery(*probabilities(rows, n_classes=3), size=0).groups == ()


def test_class_strips_lowest_recall_first_with_the_worst_items_and_bounded():
    rows = [
        (0, {0: 0.9}), (0, {0: 0.2, 1: 0.7}), (0, {0: 0.6}), (0, {0: 0.4}),  # recall 3/4; worst: 1, 3, 2
        (1, {1: 0.9}), (1, {1: 0.8}),  # recall 1
        (2, {0: 0.7}), (2, {2: 0.9}),  # recall 1/2
        (3, {3: 0.99}),  # recall 1, the 4th class: left out below
    ]
    y_true, probs = probabilities(rows, n_classes=5)  # class 4 has no test item
    gallery = build_gallery(y_true, probs, size=10, max_strips=3)
    assert [(s.label, s.correct, s.support) for s in gallery.strips] == [(2, 1, 2), (0, 3, 4), (1, 2, 2)]
    assert gallery.strips[0].recall == 0.5
    assert [i.index for i in gallery.strips[1].worst] == [1, 3, 2]  # lowest p(true) first, three at most
    assert [i.true_probability for i in gallery.strips[1].worst] == [0.2, 0.4, 0.6]
    assert (gallery.strips_left_out, gallery.classes_without_items) == (1, 1)
    page = render_html(gallery, ["a", "b", "c", "d", "e"], lambda index: f"<i>{index}</i>")
    assert "1 class with a higher recall left out; 1 class without a test image left out" in page


def test_many_classes_give_a_bounded_page():
    n = 200
    y_true = np.repeat(np.arange(n), 2)
    probs = np.full((2 * n, n), 0.1 / (n - 1))
    probs[np.arange(2 * n), (y_true + np.arange(2 * n) % 2) % n] = 0.9  # each class: one right, one wrong
    gallery = build_gallery(y_true, probs, size=48)
    assert gallery.shown == 48 and len(gallery.strips) == 30 and gallery.strips_left_out == 170
    page = render_html(gallery, [f"class {i}" for i in range(n)], lambda index: "<i>x</i>")
    assert page.count("<figure") == 48 + 30 * 2 and "170 classes with a higher recall left out" in page


def test_labels_and_texts_are_escaped(tmp_path):
    classes = ["<b>", 'quote" & amp', "<script>alert(1)</script>"]
    text = tmp_path / "mail"
    text.write_text("</pre><script>alert(2)</script><img src=x onerror=alert(3)> " + "x" * SNIPPET_CHARS,
                    encoding="utf-8")
    y_true, probs = probabilities([(0, {1: 0.7, 2: 0.2}), (2, {2: 0.9})], n_classes=3)
    out = tmp_path / "errors.html"
    write_gallery(out, [str(text), str(text)], y_true, probs, classes, "text", size=48)
    page = out.read_text(encoding="utf-8")
    parts = PageParts(page)
    assert set(parts.tags) <= PAGE_TAGS - {"img"}  # no tag from a label or the text: no script, no img
    shown = "".join(parts.text)
    assert "<b> → quote\" & amp" in shown and "<script>alert(1)</script>" in shown  # the labels, as text
    assert "</pre><script>alert(2)</script><img src=x onerror=alert(3)>" in shown  # the text, as text
    snippet = next(t for t in parts.text if t.startswith("</pre>"))
    assert len(snippet) == SNIPPET_CHARS + 1 and snippet.endswith("…")  # cut, and says so


def test_a_text_model_shows_snippets_not_thumbnails(tmp_path):
    (tmp_path / "short").write_text("cheap pills", encoding="utf-8")
    y_true, probs = probabilities([(0, {1: 0.8})], n_classes=2)
    out = tmp_path / "errors.html"
    write_gallery(out, [str(tmp_path / "short")], y_true, probs, ["ham", "spam"], "text", size=48)
    parts = PageParts(out.read_text(encoding="utf-8"))
    assert "img" not in parts.tags and parts.tags.count("pre") == 2  # the error and its class's strip
    assert "cheap pills" in parts.text


def image_files(folder: Path) -> list[Path]:
    """Real tiny images in the formats users have: PNG, JPEG, a grey PNG, an RGBA PNG, a tall photo."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, kind in enumerate(("circle", "square", "triangle", "circle", "square", "triangle")):
        image = draw_example(kind, 40, rng)
        path = folder / f"{kind}_{i}.{'jpg' if i % 2 else 'png'}"
        (image.convert("L") if i == 2 else image.convert("RGBA") if i == 4 else image).save(path)
        files.append(path)
    tall = folder / "tall.png"
    draw_example("square", 40, rng).resize((30, 90)).save(tall)
    return [*files, tall]


def gallery_of_images(folder: Path) -> tuple[Path, np.ndarray]:
    files = image_files(folder / "images")
    classes = ["circle", "<b>square</b>", "triangle & co"]
    y_true = np.array([0, 1, 2, 0, 1, 2, 1])
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=len(files))  # about two thirds wrong
    out = folder / "errors.html"
    # Relative paths, as the manifest has them (from the repo root: here the served folder).
    write_gallery(out, [str(f.relative_to(folder)) for f in files], y_true, probs, classes, "image", size=48)
    return out, probs


def test_thumbnails_are_small_jpegs_from_the_pipelines_decoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, probs = gallery_of_images(tmp_path)
    thumbnails = PageParts(out.read_text(encoding="utf-8")).urls[1:]  # after the empty icon
    assert thumbnails and all(url.startswith("data:image/jpeg;base64,") for url in thumbnails)
    for url in thumbnails:
        thumbnail = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert thumbnail.format == "JPEG" and thumbnail.size == (THUMB_SIDE, THUMB_SIDE) and thumbnail.mode == "RGB"
        assert len(url) < 8000  # a few KB each


def test_the_page_opens_in_chromium_every_thumbnail_decoded_nothing_external(chromium, tmp_path, monkeypatch):
    """The page from real image files, served over HTTP as any static server would (an MLflow artifact, say):
    every <img> decoded, nothing but the page itself loaded, nothing outside it referenced, no console error."""
    monkeypatch.chdir(tmp_path)
    out, probs = gallery_of_images(tmp_path)
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?):|url\(|@import|<script", page)
    assert all(url.startswith("data:") for url in PageParts(page).urls)
    with serve_folder(tmp_path) as base:
        chromium.get(base + "errors.html")
        images = chromium.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 11)]);")
        loaded = chromium.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".concat(performance.getEntriesByType('navigation').map(e => e.name));")
        title = chromium.title
        errors = console_errors(chromium)
        shot = REPO / "test-output" / "errors-html-tiny.png"
        shot.parent.mkdir(exist_ok=True)
        chromium.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    wrong = int((probs.argmax(axis=1) != np.array([0, 1, 2, 0, 1, 2, 1])).sum())
    assert len(images) == wrong + 7  # each error, and each image in its class's strip (3 classes, <= 3 each)
    assert all(complete and width == THUMB_SIDE and src == "data:image/" for complete, width, src in images), images
    assert [name for name in loaded if not name.startswith("data:")] == [base + "errors.html"]  # not even an icon
    assert title == "Test errors" and errors == []
