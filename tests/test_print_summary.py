"""scripts/print_summary.py: `make run`'s last lines name the published candidate and its gains."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "print_summary.py"


def load():
    spec = importlib.util.spec_from_file_location("print_summary", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lines_name_the_candidate_and_the_gains_over_head_and_baseline():
    lines = load().summary_lines({"accuracy": 0.875, "macro_f1": 0.86, "test_images": 160, "published": "ensemble",
                                  "head_only_accuracy": 0.85, "baseline": "svm_rbf_16px_grey",
                                  "baseline_accuracy": 0.9})
    assert lines[0] == "published model: ensemble, test accuracy 0.8750, macro-F1 0.8600 (160 test items)"
    assert lines[1].endswith("0.8500 (published gains +2.50 points)")
    assert "svm_rbf_16px_grey: 0.9000 (published gains -2.50 points)" in lines[2]


def test_without_head_or_baseline_only_the_published_line():
    assert len(load().summary_lines({"accuracy": 1.0, "macro_f1": 1.0, "test_images": 3})) == 1
