"""`netdef plot` (netdef.tools.plot): several runs overlaid, from Caffe logs and run records."""

import struct
import sys

import pytest

from netdef.cli import main
from netdef.errors import MissingDependencyError, NetdefError
from netdef.logparse import RECORDS_FILE, read_history, record_line
from netdef.tools.plot import panels, plot_runs, run_label
from tests.test_logparse import LOG


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def runs(tmp_path):
    log = tmp_path / "sgd.log"
    log.write_text(LOG)
    folder = tmp_path / "adam"
    folder.mkdir()
    (folder / RECORDS_FILE).write_text(
        "\n".join(
            [
                record_line(0, 0.2, 0.001, "train", {"loss": 2.2}),
                record_line(10, 1.0, 0.001, "train", {"loss": 0.3}),
                record_line(20, 2.0, 0.001, "test", {"accuracy": 0.95, "loss": 0.2}),
            ]
        )
    )
    return [str(log), str(folder)]


def test_panels_put_losses_first_and_lr_last(runs):
    assert panels([read_history(p) for p in runs]) == [
        ("train", "loss"),
        ("test", "loss"),
        ("test", "accuracy"),
        ("train", "lr"),
    ]
    assert [run_label(p) for p in runs] == ["sgd", "adam"]


def test_two_runs_in_one_png(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "compare.png"
    assert main(["plot", *runs, "-o", str(out), "--x", "seconds"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    width, height = png_size(out.read_bytes())
    assert (width, height) == (1500, 720)  # 3 x 2 panels of 5 x 3.6 inches at 100 dpi


def test_svg_names_both_runs_in_the_legend(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "compare.svg"
    plot_runs(runs, str(out), labels=["SGD", "Adam"])
    text = out.read_text()
    assert text.count("SGD") >= 4 and text.count("Adam") >= 4


def test_missing_matplotlib_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="needs matplotlib.*'plot' extra"):
        plot_runs(runs, str(tmp_path / "x.png"))


def test_bad_arguments(runs, tmp_path):
    with pytest.raises(NetdefError, match="--label must be given once per run"):
        plot_runs(runs, str(tmp_path / "x.png"), labels=["one"])
    with pytest.raises(NetdefError, match='--x must be "iteration" or "seconds"'):
        plot_runs(runs, str(tmp_path / "x.png"), x="epoch")
