"""Logging in Caffe's shape: glog's line prefix, C++'s number format, and net output lines.

Everything netdef logs goes to the ``netdef`` logger. Tools that read Caffe logs
(plot scripts, log parsers) match on the wording and on numbers printed as a C++
stream prints a float; the helpers here keep both in one place.

In Python the logger is on at INFO from the start, as pycaffe's glog is: while the
application has configured no logging of its own (the root logger has no handler), its
lines go to stderr in glog's format; once it has, they go to the application's handlers
instead. ``netdef.logs.quiet()`` (or ``set_log_level("WARNING")``) silences the INFO
lines; ``init_log`` (pycaffe's) and the command line's ``-q`` work as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

from .errors import InvalidParameterError

log = logging.getLogger("netdef")


def format_g(value) -> str:
    """A number as C++ streams print it by default (6 significant digits): ``0.980556``, ``1e-05``."""
    return f"{float(value):.6g}"


def output_line(label: str, value, loss_weight: float = 0.0) -> str:
    """One net output value as Caffe logs it: ``loss = 0.25 (* 2 = 0.5 loss)``.

    The ``(* w = w*value loss)`` part is added only for a loss output (a non-zero
    ``loss_weight``).
    """
    line = f"{label} = {format_g(value)}"
    if loss_weight:
        line += f" (* {format_g(loss_weight)} = {format_g(loss_weight * value)} loss)"
    return line


class GlogFormatter(logging.Formatter):
    """Caffe's (glog's) line prefix, so tools that parse Caffe logs read ours too.

    ``I1130 12:11:03.782791 3908 solver.py:377] message``: level letter, month and
    day, time with microseconds, process id, and the source file and line.
    """

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micro = int((record.created % 1) * 1e6)
        prefix = (
            f"{record.levelname[0]}{time.strftime('%m%d %H:%M:%S', t)}.{micro:06d} {record.process} "
            f"{record.module}.py:{record.lineno}]"
        )
        return f"{prefix} {record.getMessage()}"


class _DefaultHandler(logging.Handler):
    """stderr in glog's format, only while the application has configured no logging (no root handler)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(GlogFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            stream = sys.stderr  # looked up each time: the stream may be replaced (capture, redirection)
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _install_default() -> None:
    """INFO to stderr unless the logger was configured before netdef was imported."""
    if not log.handlers and log.level == logging.NOTSET:
        log.addHandler(_DefaultHandler())
        log.setLevel(logging.INFO)


def set_log_level(level: int | str) -> None:
    """Show the ``netdef`` logger's records from ``level`` up: ``"INFO"`` (the default), ``"WARNING"``, or a number."""
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise InvalidParameterError(
                f"set_log_level: unknown level {level!r}. Valid: DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
            )
        level = number
    log.setLevel(level)


def quiet() -> None:
    """Silence netdef's INFO lines (warnings and errors still show): ``set_log_level("WARNING")``."""
    set_log_level(logging.WARNING)


@contextlib.contextmanager
def copy_log(handler: logging.Handler) -> Iterator[logging.Handler]:
    """Add ``handler`` (glog's format, INFO and up) to the ``netdef`` logger while inside.

    The copy gets INFO and up even when the console shows less (``-q``), as glog's log
    files do: the console handlers are raised to the level the logger had, for as long
    as the copy lasts. (When the logger hands its records to the application's handlers
    instead, its level is left alone and the copy holds what that level lets through.)
    """
    handler.setFormatter(GlogFormatter())
    handler.setLevel(logging.INFO)
    saved_level = log.level
    saved_handlers = [(h, h.level) for h in log.handlers]
    effective = log.getEffectiveLevel()
    lowered = effective > logging.INFO and not log.propagate
    if lowered:
        for h, level in saved_handlers:
            h.setLevel(max(level, effective))
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        handler.close()
        if lowered:
            for h, level in saved_handlers:
                h.setLevel(level)
            log.setLevel(saved_level)


@contextlib.contextmanager
def log_to_file(path: str | os.PathLike, mode: str = "a") -> Iterator[logging.Handler]:
    """Copy the ``netdef`` log into the file ``path`` while inside (see :func:`copy_log`)."""
    with copy_log(logging.FileHandler(os.fspath(path), mode, encoding="utf-8")) as handler:
        yield handler


class _LineCollector(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def log_lines() -> Iterator[list[str]]:
    """Collect the ``netdef`` log's lines (glog's format) in a list while inside (see :func:`copy_log`)."""
    lines: list[str] = []
    with copy_log(_LineCollector(lines)):
        yield lines


def setup_logging(quiet: bool = False) -> None:
    """Send the ``netdef`` logger's records to stderr in glog's format (INFO and up; WARNING up when quiet)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(GlogFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


#: glog's minimum levels as pycaffe's ``init_log`` takes them
GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level: int = 0, stderr: bool = True) -> None:
    """pycaffe's ``caffe.init_log``: start logging at glog's minimum ``level`` (0 INFO ... 3 FATAL).

    With ``stderr`` (the default, where glog would log to files unless told
    otherwise) the ``netdef`` logger writes glog-formatted lines to stderr; with
    ``stderr=False`` it writes nothing itself and hands its records to the
    application's logging configuration (the root logger).
    """
    if level not in GLOG_LEVELS:
        raise InvalidParameterError(
            "init_log: level is glog's minimum level 0 (INFO), 1 (WARNING), 2 (ERROR) or 3 (FATAL). "
            f"Received: {level!r}"
        )
    if stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(GlogFormatter())
        log.handlers[:] = [handler]
        log.propagate = False
    else:
        log.handlers[:] = []
        log.propagate = True
    log.setLevel(GLOG_LEVELS[level])


def log_info(message: str) -> None:
    """Log ``message`` at INFO on the ``netdef`` logger (pycaffe's ``caffe.log``)."""
    log.info("%s", message)


_install_default()


__all__ = [
    "GLOG_LEVELS",
    "GlogFormatter",
    "copy_log",
    "format_g",
    "init_log",
    "log_info",
    "log_lines",
    "log_to_file",
    "output_line",
    "quiet",
    "set_log_level",
    "setup_logging",
]
