"""A one-line progress bar for long conversions: drawn on a terminal, silent when output is logged."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Count items done and, when ``stream`` is a terminal, redraw ``label: done/total [####  ] pct rate``.

    Nothing is written when ``stream`` is not a terminal (a log file, a pipe, a test),
    so logs keep only the summary lines the tools write themselves. Use as a context
    manager, or call :meth:`close` to end the line.
    """

    def __init__(self, total: int | None, label: str, stream: TextIO | None = None, width: int = 30):
        self.total = int(total) if total else None
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def update(self, count: int = 1) -> None:
        """``count`` more items are done."""
        self.done += int(count)
        if self.enabled:
            now = time.monotonic()
            if now - self.last_draw >= 0.1 or (self.total and self.done >= self.total):
                self.last_draw = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = f"{self.done / elapsed:.0f}/s"
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * self.width)
            bar = "#" * filled + " " * (self.width - filled)
            line = f"\r{self.label}: {self.done}/{self.total} [{bar}] {frac:4.0%} {rate}"
        else:
            line = f"\r{self.label}: {self.done} {rate}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final count and end the line (terminal only)."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress"]
