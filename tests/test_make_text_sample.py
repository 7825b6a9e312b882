"""scripts/make_text_sample.py on a small tarball laid out like the npm package's (the real one is not fetched
by the suite), and the committed sample it made."""

import importlib.util
import io
import re
import tarfile

from conftest import REPO

spec = importlib.util.spec_from_file_location("make_text_sample", REPO / "scripts" / "make_text_sample.py")
make_text_sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_text_sample)

GROUP_SIZES = {"easy-ham-1": 20, "easy-ham-2": 10, "hard-ham-1": 5, "spam-1": 6, "spam-2": 12}


def fake_tarball(path):
    with tarfile.open(path, "w:gz") as archive:
        for group, n in GROUP_SIZES.items():
            for i in range(n):
                text = (f"From: Jane <jane.doe+{i}@mail.{group}.org>\nTo: jm@localhost\n\n"
                        f"write to cpunks@[10.0.0.{i}] or whitelist_test\\@spamassassin.org, caf\xe9\n")
                data = text.encode("cp1252")
                info = tarfile.TarInfo(f"package/data/{group}/{i:05d}.{i:032x}.txt")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            archive.addfile(tarfile.TarInfo(f"package/data/{group}/{0:05d}.{0:032x}.json"), io.BytesIO(b""))
    return path


def test_sample_is_proportional_deterministic_and_masked(tmp_path):
    corpus = make_text_sample.read_corpus(fake_tarball(tmp_path / "pkg.tgz"))
    assert {g: len(c) for g, c in corpus.items()} == GROUP_SIZES  # the .json twins are not e-mails
    chosen = make_text_sample.choose(corpus, 7, seed=0)
    assert {g: len(s) for g, s in chosen.items()} == {"easy-ham-1": 4, "easy-ham-2": 2, "hard-ham-1": 1,
                                                       "spam-1": 2, "spam-2": 5}
    assert make_text_sample.choose(corpus, 7, seed=0) == chosen != make_text_sample.choose(corpus, 7, seed=1)
    counts = make_text_sample.write_set(corpus, chosen, tmp_path / "out")
    assert counts == {"ham": 7, "spam": 7}
    written = sorted((tmp_path / "out" / "ham").iterdir())
    assert written[0].name == "easy-ham-1_" + chosen["easy-ham-1"][0]  # group prefix, no .txt
    text = written[0].read_bytes()
    assert text.count(b"user@example.com") == 4 and b"jane" not in text and b"jm@" not in text
    assert text.endswith("caf\xe9\n".encode("cp1252"))  # bytes outside the addresses untouched
    everything = make_text_sample.choose(corpus, None, seed=0)
    assert {g: len(s) for g, s in everything.items()} == GROUP_SIZES


def test_committed_sample_is_masked_raw_mail_with_its_licence():
    root = REPO / "data" / "sample_text"
    files = sorted(p for p in root.glob("*/*"))
    assert {p.parent.name for p in files} == {"ham", "spam"} and len(files) == 300
    assert {p.name.split("_")[0] for p in files} == set(GROUP_SIZES)  # hard-ham is in ham
    assert not [p for p in files if p.name.endswith(".txt")]
    address = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
    unmasked = {m for p in files for m in address.findall(p.read_bytes())} - {b"user@example.com"}
    assert not unmasked, sorted(unmasked)[:5]
    assert "PDDL" in (root / "LICENSE").read_text() and "0.2.3" in (root / "README.md").read_text()
