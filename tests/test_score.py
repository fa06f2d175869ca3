"""`netdef test` (netdef.tools.score): means of every output, logged and printed in Caffe's words."""

import logging

import pytest

from netdef.cli import main
from netdef.tools.score import score
from tests.solver_helpers import SCORED_NET


@pytest.fixture
def scored(tmp_path):
    path = tmp_path / "scored.prototxt"
    path.write_text(SCORED_NET)
    return str(path)


def test_score_returns_the_means_and_logs_each_batch(scored, caplog):
    with caplog.at_level(logging.INFO, logger="netdef"):
        caplog.clear()  # only what the call below logs
        means = score(scored, iterations=2)
    assert means == {**{f"half[{k}]": 0.5 for k in range(6)}, "loss": 13.5}
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["Use CPU.", "No --weights given: testing the net's initial (filler) weights"]
    assert messages[2:9] == [f"Batch 0, half[{k}] = 0.5" for k in range(6)] + ["Batch 0, loss = 13.5"]
    assert messages[16:] == ["Loss: 27"] + [f"half[{k}] = 0.5" for k in range(6)] + ["loss = 13.5 (* 2 = 27 loss)"]


def test_netdef_test_prints_name_equals_mean(scored, capsys):
    assert main(["test", "-model", scored, "-iterations", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"half[{k}] = 0.5" for k in range(6)] + ["loss = 13.5"]
    assert "] loss = 13.5 (* 2 = 27 loss)\n" in captured.err
    assert main(["test"]) == 1
    assert "test needs --model NET.prototxt" in capsys.readouterr().err
