"""Safety rules that hold for the whole code base, checked on its source.

(The restricted .pth unpickler is tested against a real malicious pickle in
test_pth.py; here: nothing else may unpickle, every Keras load is safe_mode,
and every server we start binds to loopback.)
"""

import re
from pathlib import Path

from conftest import REPO

SOURCES = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").rglob("*.py"))


def calls(pattern: str) -> list[tuple[Path, str]]:
    """(file, call text) for every match of `pattern`, calls spanning lines included."""
    found = []
    for path in SOURCES:
        for match in re.finditer(pattern, path.read_text(encoding="utf-8"), flags=re.S):
            found.append((path.relative_to(REPO), match.group(0)))
    return found


def test_sources_are_found():
    assert any(p.name == "store.py" for p in SOURCES)


def test_numpy_never_unpickles():
    loads = calls(r"np\.load\((?:[^()]|\([^()]*\))*\)")
    assert loads, "expected np.load calls (the embedding cache)"
    for path, call in loads:
        assert "allow_pickle=False" in call, f"{path}: {call}"
    assert not calls(r"allow_pickle\s*=\s*True")
    assert not calls(r"\bpickle\.loads?\(") and not calls(r"\btorch\.load\(")


def test_keras_models_load_in_safe_mode():
    loads = calls(r"load_model\((?:[^()]|\([^()]*\))*\)")
    assert loads
    for path, call in loads:
        assert "safe_mode=True" in call, f"{path}: {call}"


def test_servers_bind_to_loopback():
    commands = [line for doc in ("Makefile", "README.md") for line in (REPO / doc).read_text().splitlines()
                if re.search(r"mlflow (ui|server)", line) and not line.lstrip().startswith("#")]
    assert commands, "expected the MLflow UI command in the Makefile"
    for line in commands:
        assert "--host 127.0.0.1" in line, line
