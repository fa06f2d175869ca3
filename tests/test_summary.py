"""netdef.summary / `netdef summary`: parameter totals, multiply-adds and activation memory per layer."""

from pathlib import Path

import pytest

import netdef
from netdef.cli import main
from netdef.errors import NetdefError
from netdef.summary import human_bytes, summarize
from netdef.tools.summary import parse_input_shape, summary

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_lenet_totals_match_the_model_zoo():
    s = summarize(netdef.Net(str(MODELS / "lenet" / "deploy.prototxt"), netdef.TEST))
    assert (s.learnable, s.fixed) == (431_080, 0)
    rows = {r.name: r for r in s.rows}
    # conv1: 20 maps of 24x24, 25 weights each, for 64 images
    assert rows["conv1"].mult_adds == 64 * 20 * 24 * 24 * 25
    assert rows["conv1"].learnable == 20 * 25 + 20
    assert rows["ip1"].mult_adds == 64 * 800 * 500
    assert rows["relu1"].activation_bytes == 0  # in place
    assert rows["prob"].top_shapes == [(64, 10)]
    assert s.batch == 64


def test_batchnorm_statistics_are_fixed_not_learnable():
    s = summarize(netdef.Net(str(MODELS / "resnet_mini" / "deploy.prototxt"), netdef.TEST))
    assert (s.learnable, s.fixed) == (82_714, 83_461 - 82_714)
    bn = [r for r in s.rows if r.type == "BatchNorm"]
    assert bn and all(r.learnable == 0 and r.fixed > 0 for r in bn)


def test_input_shape_changes_the_batch_and_totals():
    s = summary(str(MODELS / "lenet" / "deploy.prototxt"), input_shapes={"data": (1, 1, 28, 28)})
    assert s.batch == 1 and s.learnable == 431_080
    assert s.mult_adds == 20 * 24 * 24 * 25 + 50 * 8 * 8 * 500 + 800 * 500 + 500 * 10
    assert str(s).splitlines()[-1].startswith("Parameters: 431,080 (431,080 learnable, 0 fixed)")


def test_table_has_a_line_per_layer_and_totals(capsys):
    assert main(["summary", str(MODELS / "cifar10_quick" / "deploy.prototxt"), "--input-shape", "data=2,3,32,32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == 'Net "CIFAR10_quick" (13 layers, batch 2)'
    assert out[1].split()[:3] == ["layer", "type", "top"]
    total = next(line for line in out if line.startswith("total"))
    assert "145,578" in total


def test_bad_input_shapes_are_named():
    assert parse_input_shape("data=1,3,32,32") == ("data", (1, 3, 32, 32))
    with pytest.raises(NetdefError, match="NAME=D0,D1"):
        parse_input_shape("data:1,3")
    with pytest.raises(NetdefError, match='names blob "image"'):
        summary(str(MODELS / "lenet" / "deploy.prototxt"), input_shapes={"image": (1, 1, 28, 28)})


def test_human_bytes():
    assert [human_bytes(n) for n in (12, 1536, 3 * 1024**2)] == ["12 B", "1.5 KiB", "3.0 MiB"]
