"""Caffe-shaped logging: C++ number format, net output lines, glog's prefix."""

import logging
import re

import numpy as np
import pytest

from netdef.logs import GlogFormatter, format_g, output_line, setup_logging


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.9805555555, "0.980556"),
        (1e-05, "1e-05"),
        (123456789, "1.23457e+08"),
        (3.0, "3"),
        (np.float32(0.1), "0.1"),
        (-0.0, "-0"),
    ],
)
def test_format_g_prints_as_cpp_streams(value, text):
    assert format_g(value) == text


def test_output_line_adds_the_weighted_loss_only_for_loss_outputs():
    assert output_line("accuracy", 0.9805555) == "accuracy = 0.980556"
    assert output_line("loss", 13.5, 2.0) == "loss = 13.5 (* 2 = 27 loss)"
    assert output_line("prob[3]", np.float64(0.25), 0.0) == "prob[3] = 0.25"
    assert output_line("aux", np.float32(0.5), 0.3) == "aux = 0.5 (* 0.3 = 0.15 loss)"


def test_glog_prefix():
    record = logging.LogRecord("netdef", logging.WARNING, "/x/solver.py", 42, "Iteration %d", (7,), None)
    line = GlogFormatter().format(record)
    assert re.fullmatch(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ solver\.py:42\] Iteration 7", line)


def test_setup_logging_replaces_handlers_and_sets_the_level():
    log = logging.getLogger("netdef")
    saved = (log.handlers[:], log.level, log.propagate)
    try:
        setup_logging(quiet=True)
        setup_logging(quiet=True)
        assert len(log.handlers) == 1 and isinstance(log.handlers[0].formatter, GlogFormatter)
        assert log.level == logging.WARNING and log.propagate is False
        setup_logging()
        assert log.level == logging.INFO
    finally:
        log.handlers[:], log.level, log.propagate = saved
