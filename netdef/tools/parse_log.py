"""``netdef parse_log``: Caffe's two CSV tables (train and test) from a training log.

Like Caffe's ``tools/extra/parse_log.py``: ``LOG.train`` and ``LOG.test`` in OUT_DIR,
columns ``NumIters, Seconds, LearningRate`` and one per net output. Also reads netdef's
JSON Lines run records (see :mod:`netdef.logparse`). As one Python call::

    from netdef.tools.parse_log import parse_log
    train_csv, test_csv = parse_log("train.log", "out/")
"""

from __future__ import annotations

import argparse
import logging

from ..logparse import read_history, write_csv_tables

log = logging.getLogger("netdef")


def parse_log(path: str, out_dir: str = ".", delimiter: str = ",") -> list[str]:
    """Write ``<log name>.train`` and ``<log name>.test`` for the log (or run records) at ``path``; their paths."""
    history = read_history(path)
    written = write_csv_tables(history, out_dir, delimiter=delimiter)
    log.info(
        "%d train and %d test rows written to %s",
        len(history.phase("train")),
        len(history.phase("test")),
        " and ".join(written),
    )
    return written


def cmd_parse_log(args: argparse.Namespace) -> int:
    """Run ``netdef parse_log`` from parsed arguments; prints the files written."""
    for path in parse_log(args.log, args.out_dir, args.delimiter):
        print(path)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef parse_log`` (also spelt ``parse-log``)."""
    p = subparsers.add_parser(
        "parse_log",
        aliases=["parse-log"],
        help="training log to Caffe's two CSV tables (LOG.train, LOG.test)",
        description="Read a Caffe-format training log (or netdef run records) and write two CSV tables, "
        "LOG.train and LOG.test, with the columns NumIters, Seconds, LearningRate and one per net output, "
        "as Caffe's tools/extra/parse_log.py does.",
        epilog="example: netdef train models/digits/solver.prototxt 2> digits.log && netdef parse_log digits.log out/",
    )
    p.add_argument("log", help="training log (or run-record .jsonl file, or run folder)")
    p.add_argument("out_dir", nargs="?", default=".", help="folder for the two tables (default: the current one)")
    p.add_argument("--delimiter", default=",", help="column delimiter (default ',')")
    p.set_defaults(func=cmd_parse_log)
    return p


__all__ = ["add_parser", "cmd_parse_log", "parse_log"]
