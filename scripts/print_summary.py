"""The last lines of `make run`: the published candidate, the head-only model and the baseline, from
metrics/evaluate.json, each with the published model's gain over it on the same test items.

    .venv/bin/python scripts/print_summary.py [metrics/evaluate.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary_lines(metrics: dict) -> list[str]:
    accuracy = metrics["accuracy"]
    lines = [f"published model: {metrics.get('published', 'unknown')}, test accuracy {accuracy:.4f}, "
             f"macro-F1 {metrics['macro_f1']:.4f} ({metrics['test_images']} test items)"]
    if "head_only_accuracy" in metrics:
        head = metrics["head_only_accuracy"]
        lines.append(f"  head on the frozen backbone: {head:.4f} "
                     f"(published gains {(accuracy - head) * 100:+.2f} points)")
    if "baseline" in metrics:
        base = metrics["baseline_accuracy"]
        lines.append(f"  cheap baseline {metrics['baseline']}: {base:.4f} "
                     f"(published gains {(accuracy - base) * 100:+.2f} points)")
    return lines


def main(argv: list[str]) -> None:
    path = Path(argv[0] if argv else "metrics/evaluate.json")
    print("\n".join(summary_lines(json.loads(path.read_text()))))


if __name__ == "__main__":
    main(sys.argv[1:])
