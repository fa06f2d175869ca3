"""netdef.draw / `netdef draw`: DOT text naming every layer; rendering through Graphviz when it is there."""

import shutil
from pathlib import Path

import pytest

import netdef
from netdef import draw
from netdef.cli import main
from netdef.errors import MissingDependencyError, NetdefError
from netdef.proto import load_net

MODELS = Path(__file__).resolve().parents[1] / "models"
LENET = str(MODELS / "lenet" / "train_val.prototxt")


def test_dot_names_every_layer_and_blob():
    param = load_net(LENET)
    dot = draw.to_dot(param)
    assert dot.startswith('digraph "LeNet" {') and dot.rstrip().endswith("}")
    for layer in param.layer:
        assert f'label="{layer.name}\\n({layer.type})' in dot
        for blob in (*layer.bottom, *layer.top):
            assert f'"blob:{blob}" [label="{blob}", shape=octagon' in dot
    assert 'fillcolor="#FF5050"' in dot  # convolutions are red, as in Caffe's drawings
    assert "kernel size: 5\\nstride: 1\\npad: 0" in dot
    assert '[label="20"]' in dot  # conv1's num_output on its top edge


def test_phase_keeps_that_phases_layers():
    param = load_net(LENET)
    everything = draw.to_dot(param)
    test_only = draw.to_dot(param, phase=netdef.TEST)
    assert "(Accuracy)" in test_only and "(Accuracy)" in everything
    train_only = draw.to_dot(param, phase=netdef.TRAIN)
    assert everything.count("(HDF5Data)") == 2 and train_only.count("(HDF5Data)") == 1
    assert "(Accuracy)" not in train_only


def test_without_blob_nodes_edges_carry_blob_names():
    dot = draw.to_dot(LENET, rankdir="TB", blobs=False, phase=netdef.TEST)
    assert "shape=octagon" not in dot and "rankdir=TB;" in dot
    assert '[label="conv1"]' in dot  # conv1 -> pool1, labelled with the blob between them
    assert "conv1 (Convolution) kernel size: 5" in dot  # TB puts the label on one line


def test_a_built_net_is_drawn_in_its_phase():
    net = netdef.Net(str(MODELS / "lenet" / "deploy.prototxt"), netdef.TEST)
    dot = draw.to_dot(net)
    assert all(f'label="{name}\\n' in dot for name in net.layer_names)


def test_dot_file_needs_no_graphviz(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "lenet.dot"
    assert main(["draw", LENET, str(out), "--phase", "TEST", "--rankdir", "BT"]) == 0
    assert "rankdir=BT;" in out.read_text()
    assert main(["draw", LENET, str(tmp_path / "lenet.png")]) == 1
    err = capsys.readouterr().err
    assert "needs Graphviz's `dot` program" in err and "write a .dot file instead" in err
    with pytest.raises(MissingDependencyError):
        draw.draw_net(load_net(LENET), "LR", ext="svg")


def test_bad_rankdir():
    with pytest.raises(NetdefError, match="rankdir must be one of LR, TB, BT, RL. Received: 'XY'"):
        draw.to_dot(LENET, rankdir="XY")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_png_through_graphviz(tmp_path):
    out = tmp_path / "lenet.png"
    draw.draw_net_to_file(load_net(LENET), str(out), phase=netdef.TEST)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
