"""`netdef test` (netdef.tools.score): means of every output in Caffe's words, one exact pass, per-class metrics."""

import logging
import struct
import sys
from pathlib import Path

import pytest

from netdef.cli import main
from netdef.errors import NetdefError
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
    messages = [r.getMessage() for r in caplog.records if r.module != "net"]  # not the net's set-up lines
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


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def digits(tmp_path, monkeypatch):
    """The digits net with test batch 100 (so the 360 test images end in a partial batch), run from the repo root."""
    monkeypatch.chdir(ROOT)
    path = tmp_path / "digits.prototxt"
    text = (ROOT / "models" / "digits" / "train_val.prototxt").read_text()
    path.write_text(text.replace("batch_size: 120", "batch_size: 100"))
    return str(path)


def test_netdef_test_makes_one_exact_pass_with_a_per_class_table(digits, tmp_path, capsys):
    predictions = tmp_path / "pred.csv"
    assert main(["test", "--model", digits, "--save-predictions", str(predictions)]) == 0
    out, err = capsys.readouterr()
    assert "One pass over 360 test samples: 4 batches of 100, the last of 60" in err
    assert "360 samples (one exact pass); per-class numbers pooled over all samples" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in ([str(k)] for k in range(10))]
    per_class = [r for r in rows if len(r) == 5]
    assert [int(r[4]) for r in per_class] == [36] * 10
    confusion = [r for r in rows if len(r) == 11]
    assert sum(int(v) for r in confusion for v in r[1:]) == 360
    lines = predictions.read_text().splitlines()
    assert len(lines) == 361 and lines[0].startswith("index,label,predicted,score_0,")


def test_netdef_test_iterations_keeps_caffes_batches(digits, capsys):
    assert main(["test", "--model", digits, "--iterations", "5", "-q"]) == 0
    out, err = capsys.readouterr()
    assert "500 samples (5 batches, Caffe's way)" in out
    assert out.splitlines()[0].startswith("accuracy = ")
    assert "INFO" not in err and "] Batch" not in err  # -q after the command silences the log


def test_netdef_test_iterations_zero_is_a_clear_error(scored, capsys):
    assert main(["test", "--model", scored, "--iterations", "0"]) == 1
    assert "--iterations must be at least 1. Received: 0" in capsys.readouterr().err
    with pytest.raises(NetdefError):
        score(scored, iterations=0)


def test_classification_options_need_a_classifier(scored, tmp_path, capsys):
    assert main(["test", "--model", scored, "--iterations", "1", "--save-predictions", str(tmp_path / "p.csv")]) == 1
    assert "need a classification net" in capsys.readouterr().err


def test_plot_confusion_draws_a_png(digits, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "confusion.png"
    assert main(["test", "--model", digits, "--plot-confusion", str(out)]) == 0
    assert png_size(out.read_bytes())[0] > 100


def test_plot_confusion_without_matplotlib_names_the_extra(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["test", "--model", digits, "--plot-confusion", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "'plot' extra" in err
    assert "One pass" not in err  # reported before the pass, not after it


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
