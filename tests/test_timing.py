"""`netdef time` (netdef.tools.timing): per-layer forward/backward times in Caffe's report."""

import io
import logging

import numpy as np
import pytest

from netdef.cli import main
from netdef.errors import NetdefError
from netdef.progress import Progress
from netdef.tools.timing import TimingReport, time_net
from tests.solver_helpers import SCORED_NET


def test_report_lines_are_milliseconds_per_iteration():
    report = TimingReport(["data", "loss"], np.array([0.002, 0.004]), np.array([0.0, 0.006]), np.array([0.005, 0.007]))
    assert report.lines() == [
        "data\tforward: 1.0000 ms.",
        "data\tbackward: 0.0000 ms.",
        "loss\tforward: 2.0000 ms.",
        "loss\tbackward: 3.0000 ms.",
        "Average Forward pass: 3.0000 ms.",
        "Average Backward pass: 3.0000 ms.",
        "Average Forward-Backward: 6.0000 ms.",
        "Total Time: 12.0000 ms.",
    ]
    assert TimingReport(["a", "conv1"], np.zeros(2), np.zeros(2), np.ones(1)).lines()[0] == "    a\tforward: 0.0000 ms."


def test_time_net_times_every_layer(tmp_path, caplog):
    path = tmp_path / "scored.prototxt"
    path.write_text(SCORED_NET)
    with caplog.at_level(logging.INFO, logger="netdef"):
        caplog.clear()  # only what the call below logs
        report = time_net(str(path), iterations=3, phase="TEST")
    assert report.layer_names == ["data", "data_data_0_split", "triple", "loss", "half"]
    assert report.iterations.shape == (3,) and (report.iterations > 0).all()
    assert (report.forward > 0).all()
    messages = [r.getMessage() for r in caplog.records if r.module != "net"]  # not the net's set-up lines
    assert messages[:5] == [
        "Use CPU.",
        "Performing Forward",
        "Performing Backward",
        "*** Benchmark begins ***",
        "Testing for 3 iterations.",
    ]
    assert messages[-1] == "*** Benchmark ends ***"
    assert sum(m.startswith("Iteration: ") and m.endswith(" ms.") for m in messages) == 3


def test_netdef_time_needs_a_model(capsys):
    assert main(["time"]) == 1
    assert "time needs --model NET.prototxt" in capsys.readouterr().err


@pytest.fixture
def scored(tmp_path):
    path = tmp_path / "scored.prototxt"
    path.write_text(SCORED_NET)
    return str(path)


def test_iterations_zero_is_a_clear_error(scored, capsys):
    with pytest.raises(NetdefError, match="--iterations must be at least 1. Received: 0"):
        time_net(scored, iterations=0)
    assert main(["time", "--model", scored, "--iterations", "0"]) == 1
    assert "Received: 0" in capsys.readouterr().err


def test_report_printed_once_and_quiet_after_the_command(scored, capsys):
    assert main(["time", "--model", scored, "--iterations", "2", "--phase", "TEST", "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.count("Total Time:") == 1 and err == ""
    assert main(["time", "--model", scored, "--iterations", "2", "--phase", "TEST"]) == 0
    out, err = capsys.readouterr()
    # stdout is not a terminal here: the results go there once, and the log keeps Caffe's lines
    assert out.count("Total Time:") == 1 and err.count("Total Time:") == 1


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    bar = Progress(4, "Timing", stream=quiet)
    bar.update()
    bar.close()
    assert not bar.enabled and quiet.getvalue() == ""
    tty = FakeTerminal()
    bar = Progress(4, "Timing", enabled=True, stream=tty)
    for _ in range(4):
        bar.update()
    assert tty.getvalue().startswith("\rTiming [")
    assert "4/4 100% 0:00 left" in tty.getvalue()
    bar.close()
    assert tty.getvalue().endswith("\r\033[K")
    assert bar.line(10.0).startswith("Timing [" + "#" * Progress.width + "]")
