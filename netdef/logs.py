"""Logging in Caffe's shape: glog's line prefix, C++'s number format, and net output lines.

Everything netdef logs goes to the ``netdef`` logger. Tools that read Caffe logs
(plot scripts, log parsers) match on the wording and on numbers printed as a C++
stream prints a float; the helpers here keep both in one place.
"""

from __future__ import annotations

import logging
import sys
import time

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


__all__ = ["GLOG_LEVELS", "GlogFormatter", "format_g", "init_log", "log_info", "output_line", "setup_logging"]
