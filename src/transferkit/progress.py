"""Progress lines for long jobs: done/total, images per second, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints at most every `interval` seconds (and at the end, unless `final` is False: where another line
    follows, such as Keras' epoch line) to stderr."""

    def __init__(self, total: int, label: str, unit: str = "images", interval: float = 2.0, stream=None,
                 final: bool = True):
        self.total, self.label, self.unit, self.interval, self.final = total, label, unit, interval, final
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last_print = time.perf_counter()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        at_end = self.done >= self.total
        if (self.final and at_end) or (not at_end and now - self.last_print >= self.interval):
            self.last_print = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return (f"{self.label}: {self.done}/{self.total} {self.unit} "
                f"({100.0 * self.done / max(self.total, 1):.0f}%)  {rate:.1f} {self.unit}/s  ETA {eta_text}")
