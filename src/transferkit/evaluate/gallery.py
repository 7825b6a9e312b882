"""The error gallery (plots/errors.html): the test mistakes, to look at rather than read.

People judge a classifier by what it gets wrong; a CSV of paths and a confusion matrix do not show the
images. The gallery is one HTML file, plain HTML and inline CSS, no script, and no URL outside itself:
every thumbnail is a small JPEG in a data: URI, so the file opens anywhere (from disk, as an MLflow
artifact, sent by mail). Thumbnails come from the pipeline's one decoder (data.images.load_rgb: the whole
image squashed to a THUMB_SIDE square, EXIF orientation and alpha on white as the model sees them). Every
label, path and text is escaped: labels are users' folder names, and `<b>` is a valid one.

It shows:
- the `size` most confidently wrong test items (evaluate.gallery_size), grouped by confused pair
  (true -> predicted), the pair with the most wrong test items first; each with its true label, the
  predicted label and probability, and the runner-up (the second most probable class) and its probability;
- a strip per class: its recall and its STRIP_ITEMS worst test items (lowest probability of their true
  class, right or wrong), for the MAX_STRIPS classes with the lowest recall (the page says how many
  classes were left out, so a 1,000-class model gives a page of bounded size).

A text model gets the same page with the first SNIPPET_CHARS characters of each text instead of a thumbnail.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.data.images import load_rgb
from transferkit.data.texts import load_text
from transferkit.files import atomic_path

THUMB_SIDE = 96  # pixels, square: big enough to tell a shirt from a coat, about 3 KB as JPEG
JPEG_QUALITY = 85  # thumbnails only: no visible artefacts at this size, a third of a PNG's bytes
STRIP_ITEMS = 3  # worst test items shown per class
MAX_STRIPS = 30  # classes with a strip at most (those with the lowest recall): bounds the page for many classes
SNIPPET_CHARS = 300  # characters of a wrong text shown in place of a thumbnail


@dataclass(frozen=True)
class Item:
    """One test item as the gallery shows it; class fields are indices into the class list."""
    index: int  # row in the test split (and in `paths`)
    true: int
    predicted: int
    probability: float  # of the predicted class
    runner_up: int  # the second most probable class
    runner_up_probability: float
    true_probability: float


@dataclass(frozen=True)
class PairGroup:
    true: int
    predicted: int
    wrong: int  # test items with this confusion, shown or not
    items: tuple[Item, ...]  # the shown ones, most confident first


@dataclass(frozen=True)
class ClassStrip:
    label: int
    correct: int
    support: int  # test items of this class
    worst: tuple[Item, ...]  # lowest probability of the true class first

    @property
    def recall(self) -> float:
        return self.correct / self.support


@dataclass(frozen=True)
class Gallery:
    test_items: int
    wrong: int  # wrong test items in all
    groups: tuple[PairGroup, ...]  # most frequent pair first
    strips: tuple[ClassStrip, ...]  # lowest recall first
    strip_items: int  # worst test items per strip at most
    strips_left_out: int  # classes with test items but no strip (beyond max_strips)
    classes_without_items: int  # classes with no test item: no recall to show

    @property
    def shown(self) -> int:
        return sum(len(g.items) for g in self.groups)


def _item(index: int, y_true: np.ndarray, probs: np.ndarray) -> Item:
    row = probs[index]
    first, second = np.argsort(-row, kind="stable")[:2] if len(row) > 1 else (int(np.argmax(row)), -1)
    return Item(index=int(index), true=int(y_true[index]), predicted=int(first), probability=float(row[first]),
                runner_up=int(second), runner_up_probability=float(row[second]) if second >= 0 else 0.0,
                true_probability=float(row[y_true[index]]))


def build_gallery(y_true: np.ndarray, probs: np.ndarray, size: int, max_strips: int = MAX_STRIPS,
                  strip_items: int = STRIP_ITEMS) -> Gallery:
    """What the page shows, from the test labels (N,) and probabilities (N, classes); ties keep test order."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probs[wrong, y_pred[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")][:size]
    pair_counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(pair_counts, (y_true[wrong], y_pred[wrong]), 1)

    by_pair: dict[tuple[int, int], list[Item]] = {}
    for index in shown:  # most confident first, so each group's items are too
        item = _item(index, y_true, probs)
        by_pair.setdefault((item.true, item.predicted), []).append(item)
    # The most frequent confusion first (counted over every wrong test item); then its most confident item.
    order = sorted(by_pair, key=lambda pair: (-pair_counts[pair], -by_pair[pair][0].probability, pair))
    groups = tuple(PairGroup(t, p, int(pair_counts[t, p]), tuple(by_pair[(t, p)])) for t, p in order)

    support = np.bincount(y_true, minlength=n_classes)
    correct = np.bincount(y_true[y_pred == y_true], minlength=n_classes)
    present = [c for c in range(n_classes) if support[c] > 0]
    present.sort(key=lambda c: (correct[c] / support[c], c))
    strips = []
    for c in present[:max_strips]:
        members = np.flatnonzero(y_true == c)
        worst = members[np.argsort(probs[members, c], kind="stable")][:strip_items]
        strips.append(ClassStrip(c, int(correct[c]), int(support[c]), tuple(_item(i, y_true, probs) for i in worst)))
    return Gallery(test_items=len(y_true), wrong=len(wrong), groups=tuple(groups), strips=tuple(strips),
                   strip_items=strip_items, strips_left_out=max(0, len(present) - max_strips),
                   classes_without_items=n_classes - len(present))


def thumbnail_uri(path: str | Path, side: int = THUMB_SIDE) -> str:
    """The image as the model sees it (the pipeline's decoder), side x side, as a JPEG data: URI."""
    buffer = io.BytesIO()
    Image.fromarray(load_rgb(path, side)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_media(path: str | Path) -> str:
    name = html.escape(str(path), quote=True)
    return (f'<img src="{thumbnail_uri(path)}" width="{THUMB_SIDE}" height="{THUMB_SIDE}" alt="{name}" '
            f'title="{name}">')


def text_media(path: str | Path) -> str:
    text = load_text(path)
    snippet = text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")
    return f'<pre title="{html.escape(str(path), quote=True)}">{html.escape(snippet)}</pre>'


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 1.4em 0 .4em; }
h3 { font-size: 1em; margin: .8em 0 .3em; } h3 span, .note { color: #666; font-weight: normal; }
.groups { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: flex-start; }
.groups section { max-width: 100%; } .cards { display: flex; flex-wrap: wrap; gap: 8px; }
.card { margin: 0; padding: 6px; border: 1px solid #ddd; border-radius: 4px; width: 150px; }
.card img { display: block; margin: 0 auto 4px; background: #eee; }
.card pre { white-space: pre-wrap; word-break: break-word; font-size: 11px; max-height: 12em; overflow: hidden;
            margin: 0 0 4px; padding: 4px; background: #f6f6f6; }
.card figcaption { font-size: 12px; overflow-wrap: anywhere; }
.card .wrong { color: #b00; } .card .right { color: #070; }
.text .card { width: 300px; }
"""


def _label(classes: list[str], index: int) -> str:
    return html.escape(classes[index], quote=True)


def _error_card(item: Item, classes: list[str], media: str) -> str:
    runner_up = (f"<br>runner-up {_label(classes, item.runner_up)} {item.runner_up_probability:.2f}"
                 if item.runner_up >= 0 else "")
    return (f'<figure class="card">{media}<figcaption>true <b>{_label(classes, item.true)}</b><br>'
            f'predicted <b class="wrong">{_label(classes, item.predicted)}</b> {item.probability:.2f}'
            f'{runner_up}</figcaption></figure>')


def _strip_card(item: Item, classes: list[str], media: str) -> str:
    verdict = ('<span class="right">right</span>' if item.predicted == item.true else
               f'predicted <b class="wrong">{_label(classes, item.predicted)}</b> {item.probability:.2f}')
    return (f'<figure class="card">{media}<figcaption>p(true) {item.true_probability:.2f}<br>{verdict}'
            f'</figcaption></figure>')


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}{'es' if word.endswith('s') else 's'}"


def render_html(gallery: Gallery, classes: list[str], media: Callable[[int], str], modality: str = "image") -> str:
    """The page; media(index) gives a test item's escaped thumbnail or snippet HTML (called once per item)."""
    cache: dict[int, str] = {}

    def media_of(item: Item) -> str:
        if item.index not in cache:
            cache[item.index] = media(item.index)
        return cache[item.index]

    noun = "text" if modality == "text" else "image"
    accuracy = 1 - gallery.wrong / gallery.test_items if gallery.test_items else 0.0
    parts = [f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Test errors</title>'
             # An empty icon of its own: otherwise the browser asks the server for /favicon.ico.
             f'<link rel="icon" href="data:,">'
             f'<style>{CSS}</style></head><body class="{noun}">',
             "<h1>Test errors</h1>",
             f'<p>{gallery.wrong} of {_plural(gallery.test_items, "test " + noun)} wrong '
             f'(accuracy {accuracy:.3f}).</p>',
             "<h2>Confused pairs</h2>"]
    if gallery.groups:
        parts.append(f'<p class="note">The {_plural(gallery.shown, "most confidently wrong " + noun)}, grouped '
                     f'by confused pair (true &rarr; predicted, and how many test {noun}s were confused so), the most '
                     f'frequent pair first; each with the predicted probability and the runner-up.</p>')
    else:
        parts.append(f'<p class="note">No wrong test {noun} to show.</p>')
    parts.append('<div class="groups">')  # small groups side by side: a one-item pair takes no whole row
    for group in gallery.groups:
        shown = "" if len(group.items) == group.wrong else f", {len(group.items)} shown"
        parts.append(f'<section class="pair"><h3>{_label(classes, group.true)} &rarr; '
                     f'{_label(classes, group.predicted)} <span>{group.wrong} wrong{shown}</span></h3>'
                     '<div class="cards">')
        parts += [_error_card(item, classes, media_of(item)) for item in group.items]
        parts.append("</div></section>")
    parts.append("</div>")

    parts.append("<h2>Per class</h2>")
    left_out = []
    if gallery.strips_left_out:
        left_out.append(f"{_plural(gallery.strips_left_out, 'class')} with a higher recall left out")
    if gallery.classes_without_items:
        left_out.append(f"{_plural(gallery.classes_without_items, 'class')} without a test {noun} left out")
    parts.append(f'<p class="note">Each class\'s recall and its {gallery.strip_items} worst test {noun}s '
                 f'(lowest probability of the true class), lowest recall first'
                 f'{"; " + "; ".join(left_out) if left_out else ""}.</p>')
    parts.append('<div class="groups">')
    for strip in gallery.strips:
        parts.append(f'<section class="strip"><h3>{_label(classes, strip.label)} <span>recall {strip.recall:.3f} '
                     f'({strip.correct}/{strip.support})</span></h3><div class="cards">')
        parts += [_strip_card(item, classes, media_of(item)) for item in strip.worst]
        parts.append("</div></section>")
    parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_gallery(path: str | Path, paths: list[str], y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                  modality: str, size: int) -> Gallery:
    """Build the gallery of the test split (paths, labels, probabilities in test order) and write it to `path`."""
    gallery = build_gallery(y_true, probs, size)
    media = text_media if modality == "text" else image_media
    page = render_html(gallery, classes, lambda index: media(paths[index]), modality)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return gallery
