"""The progress bar of long commands and conversions: drawn on a terminal, silent in logs.

A :class:`Progress` draws one self-overwriting line on stderr when stderr is a
terminal and the ``netdef`` logger shows INFO; otherwise it draws nothing, so
logs written to files or pipes (and tests) keep only the lines the tools log
themselves, line-for-line Caffe's.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("netdef")


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress bar for ``total`` steps: ``label [#####     ] 37/100 37% 0:04 left``.

    Use as a context manager, or call :meth:`close` to clear the bar's line.

    Args:
        total: the number of steps (None or 0: an open-ended count without percent).
        label: what is being done.
        enabled: force the bar on or off; by default on when ``stream`` is a terminal
            and the ``netdef`` logger shows INFO (``-q`` turns it off).
        stream: where to draw (default stderr).
    """

    width = 28

    def __init__(self, total: int | None, label: str, enabled: bool | None = None, stream=None):
        self.total = total or 0
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = on_terminal(self.stream) and log.isEnabledFor(logging.INFO)
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._drawn = 0.0

    def update(self, steps: int = 1) -> None:
        """Count ``steps`` more done and redraw (at most ten times a second, and at the end)."""
        self.done += steps
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._drawn < 0.1 and self.done < self.total:
            return
        self._drawn = now
        self.stream.write("\r" + self.line(now - self.start))
        self.stream.flush()

    def line(self, elapsed: float) -> str:
        """The bar's text after ``elapsed`` seconds."""
        if not self.total:
            return f"{self.label} {self.done} {_clock(elapsed)}"
        frac = min(self.done / self.total, 1.0)
        fill = int(frac * self.width)
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        return (
            f"{self.label} [{'#' * fill}{' ' * (self.width - fill)}] {self.done}/{self.total} "
            f"{frac * 100:3.0f}% {_clock(left)} left"
        )

    def close(self) -> None:
        """Clear the bar's line so that what follows starts clean."""
        if self.enabled and self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress", "on_terminal"]
