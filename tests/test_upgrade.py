"""Legacy definitions: V0 nets, V0-era data transformation fields, and `netdef upgrade net|solver`."""

import logging

import numpy
import pytest

import netdef
from netdef.cli import main
from netdef.errors import NetdefError, UnknownBottomBlobError
from netdef.proto import load_net, load_solver, net_from_text, netdef_pb2, parse_text, read_message
from netdef.proto.upgrade_v0 import net_needs_v0_upgrade, upgrade_v0_net

V0_NET = """name: "tiny_v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data" top: "pad1"
}
layers {
  layer {
    name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1 biasterm: true
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 pad: 1 }
  bottom: "conv1" top: "pool1"
}
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1"
}
layers { layer { name: "drop1" type: "dropout" dropout_ratio: 0.3 } bottom: "norm1" top: "norm1" }
layers {
  layer { name: "fc" type: "innerproduct" num_output: 5 biasterm: false }
  bottom: "norm1" top: "fc"
}
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
"""

V0_EXPECTED = """name: "tiny_v0"
layer {
  name: "input" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 4 bias_term: true pad: 2 kernel_size: 3 group: 1 stride: 2
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }
}
layer {
  name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 k: 2 }
}
layer { name: "drop1" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.3 } }
layer {
  name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 5 bias_term: false }
}
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

V0_DATA = """name: "v0_data"
layers {
  layer {
    name: "data" type: "data" source: "train_leveldb" batchsize: 32 rand_skip: 5
    scale: 0.00390625 meanfile: "mean.binaryproto" cropsize: 227 mirror: true
  }
  top: "data" top: "label"
}
layers {
  layer { name: "images" type: "images" source: "list.txt" batchsize: 4 shuffle_images: true new_height: 8
          new_width: 9 }
  top: "img" top: "img_label"
}
layers {
  layer { name: "loss" type: "softmax_loss" }
  bottom: "data" bottom: "label"
}
"""

V0_DATA_EXPECTED = """name: "v0_data"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 mean_file: "mean.binaryproto" crop_size: 227 mirror: true }
  data_param { source: "train_leveldb" batch_size: 32 rand_skip: 5 }
}
layer {
  name: "images" type: "ImageData" top: "img" top: "img_label"
  image_data_param { source: "list.txt" batch_size: 4 shuffle: true new_height: 8 new_width: 9 }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" }
"""

V1_NET = """name: "tiny_v1"
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 scale: 0.5 mirror: true crop_size: 4 }
  include { phase: TRAIN }
}
layers {
  name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param { num_output: 3 }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }
"""

V1_EXPECTED = """name: "tiny_v1"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.5 mirror: true crop_size: 4 }
  data_param { source: "train_lmdb" backend: LMDB batch_size: 64 }
}
layer {
  name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 3 }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def expected(text):
    return parse_text(text, netdef_pb2.NetParameter())


def test_v0_net_with_padding_layer_becomes_the_modern_net(caplog):
    with caplog.at_level(logging.INFO, logger="netdef"):
        upgraded = net_from_text(V0_NET, "tiny_v0.prototxt")
    assert upgraded == expected(V0_EXPECTED)
    assert "tiny_v0.prototxt: upgraded V0 layer definitions" in caplog.text


def test_v0_upgrade_stops_at_v1_layers_as_caffe_does():
    param = parse_text(V0_NET, netdef_pb2.NetParameter())
    assert net_needs_v0_upgrade(param)
    assert upgrade_v0_net(param) == []
    assert not net_needs_v0_upgrade(param)
    assert [netdef_pb2.V1LayerParameter.LayerType.Name(v1.type) for v1 in param.layers] == [
        "CONVOLUTION",
        "RELU",
        "POOLING",
        "LRN",
        "DROPOUT",
        "INNER_PRODUCT",
        "SOFTMAX",
    ]
    conv = param.layers[0]
    assert list(conv.bottom) == ["data"] and list(conv.convolution_param.pad) == [2]
    assert list(conv.blobs_lr) == [1, 2] and list(conv.weight_decay) == [1, 0]


def test_v0_data_layers_get_transform_param():
    assert net_from_text(V0_DATA) == expected(V0_DATA_EXPECTED)


def test_v0_upgraded_net_runs(tmp_path):
    path = tmp_path / "v0.prototxt"
    path.write_text(V0_NET)
    net = netdef.Net(str(path), netdef.TEST)
    assert net.params["conv1"][0].shape == (4, 3, 3, 3)
    # pad 2 on 8x8, kernel 3, stride 2 -> 5x5; average pooling k3 s2 p1 rounds up -> 3x3
    assert net.blobs["conv1"].shape == (1, 4, 5, 5) and net.blobs["pool1"].shape == (1, 4, 3, 3)
    net.blobs["data"].data[...] = numpy.random.rand(1, 3, 8, 8)
    prob = net.forward()["prob"]
    assert prob.shape == (1, 5) and abs(float(prob.sum()) - 1) < 1e-5


def test_v0_settings_that_do_not_apply_are_dropped_and_reported(caplog):
    text = """layers { layer { name: "r" type: "relu" num_output: 3 kernelsize: 2 } bottom: "x" top: "x" }
              input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1"""
    param = parse_text(text, netdef_pb2.NetParameter())
    with caplog.at_level(logging.WARNING, logger="netdef"):
        problems = upgrade_v0_net(param, "r.prototxt")
    assert problems == [
        'r.prototxt: V0 layer "r" (type relu): setting num_output does not apply to this type; dropped '
        "(it applies to: conv, innerproduct)",
        'r.prototxt: V0 layer "r" (type relu): setting kernelsize does not apply to this type; dropped '
        "(it applies to: conv, pool)",
    ]
    assert "setting kernelsize does not apply" in caplog.text
    assert not param.layers[0].HasField("convolution_param")


def test_v0_errors():
    with pytest.raises(
        NetdefError, match='type "innerprodcut", which is not a V0 layer type. Did you mean "innerproduct"'
    ):
        net_from_text('input: "x" layers { layer { name: "c" type: "innerprodcut" } bottom: "x" top: "c" }')
    with pytest.raises(NetdefError, match='padding layer "p" feeds layer "r" of type relu'):
        net_from_text(
            'input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }'
            'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'
        )
    with pytest.raises(UnknownBottomBlobError, match='reads bottom blob "y".*Available: x'):
        net_from_text('input: "x" layers { layer { name: "r" type: "relu" } bottom: "y" top: "r" }')
    with pytest.raises(NetdefError, match=r"1 input\(s\) but 0 input_shape\(s\)"):
        net_from_text('input: "x" layers { layer { name: "r" type: "relu" } bottom: "x" top: "r" }')
    with pytest.raises(NetdefError, match="mixes V0 layers"):
        net_from_text(
            'input: "x" layers { layer { name: "r" type: "relu" } bottom: "x" top: "r" }'
            'layers { name: "s" type: RELU bottom: "r" top: "s" }'
        )


def test_v0_caffemodel_weights_load(tmp_path):
    # Caffe's V0 Net::ToProto wrote the input names without their shapes
    old = netdef_pb2.NetParameter(name="v0_weights", input=["data"])
    entry = old.layers.add()
    entry.layer.name = "fc"
    entry.layer.type = "innerproduct"
    entry.layer.num_output = 2
    blob = entry.layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    entry.layer.blobs.add(num=1, channels=1, height=1, width=2).data.extend([0.5, -0.5])
    entry.bottom.append("data")
    entry.top.append("fc")
    weights = tmp_path / "v0.caffemodel"
    weights.write_bytes(old.SerializeToString())
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        "inner_product_param { num_output: 2 } }"
    )
    net = netdef.Net(str(deploy), netdef.TEST, weights=str(weights))
    numpy.testing.assert_array_equal(net.params["fc"][0].data, [[1, 2, 3], [4, 5, 6]])
    net.blobs["data"].data[...] = [[1, 0, -1]]
    numpy.testing.assert_allclose(net.forward()["fc"], [[-2 + 0.5, -2 - 0.5]])


def test_v1_data_layer_transformation_fields_move_to_transform_param(caplog):
    with caplog.at_level(logging.INFO, logger="netdef"):
        assert net_from_text(V1_NET, "v1.prototxt") == expected(V1_EXPECTED)
    assert "moved the data layers' scale/mean_file/crop_size/mirror fields into transform_param" in caplog.text
    assert "netdef upgrade net IN OUT" in caplog.text


def test_cli_upgrades_a_v1_net(tmp_path, capsys):
    src, dst = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    src.write_text(V1_NET)
    assert main(["upgrade", "net", str(src), str(dst)]) == 0
    assert load_net(str(dst)) == expected(V1_EXPECTED)
    assert parse_text(dst.read_text(), netdef_pb2.NetParameter()) == expected(V1_EXPECTED)
    out = capsys.readouterr().out
    assert f"Upgraded {src} -> {dst}:" in out
    assert "  - data transformation fields moved into transform_param: layer(s) data" in out
    assert "  - V1 layer definitions (layers { type: ENUM }): 3 layer(s)" in out


def test_cli_upgrades_a_v0_net_and_binary_files(tmp_path, capsys):
    src = tmp_path / "old.caffemodel"
    src.write_bytes(parse_text(V0_NET, netdef_pb2.NetParameter()).SerializeToString())
    text_out, binary_out = tmp_path / "new.prototxt", tmp_path / "new.caffemodel"
    assert main(["upgrade", "net", str(src), str(text_out)]) == 0
    assert parse_text(text_out.read_text(), netdef_pb2.NetParameter()) == expected(V0_EXPECTED)
    out = capsys.readouterr().out
    assert "V0 layer definitions (layers { layer { ... } }): 8 entries, 1 padding layer(s) folded" in out
    assert "net input fields (input/input_shape/input_dim) -> an Input layer for data" in out
    assert main(["upgrade", "net", str(src), str(binary_out)]) == 0
    assert netdef_pb2.NetParameter.FromString(binary_out.read_bytes()) == expected(V0_EXPECTED)


def test_cli_reports_dropped_settings_and_exits_1(tmp_path, capsys):
    src, dst = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    src.write_text(
        'input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 '
        'layers { layer { name: "r" type: "relu" group: 2 } bottom: "x" top: "x" }'
    )
    assert main(["upgrade", "net", str(src), str(dst)]) == 1
    assert [layer.type for layer in load_net(str(dst)).layer] == ["Input", "ReLU"]
    out = capsys.readouterr().out
    assert "1 setting(s) could not be carried over:" in out and "setting group does not apply" in out


def test_cli_current_net_is_written_unchanged(tmp_path, capsys):
    src, dst = tmp_path / "cur.prototxt", tmp_path / "out.prototxt"
    src.write_text(V1_EXPECTED)
    assert main(["upgrade", "net", str(src), str(dst)]) == 0
    assert load_net(str(dst)) == expected(V1_EXPECTED)
    assert "is already in the current format; wrote it unchanged" in capsys.readouterr().out


def test_cli_upgrades_a_solver(tmp_path, capsys):
    src, dst = tmp_path / "solver.prototxt", tmp_path / "solver_new.prototxt"
    src.write_text(
        'net: "train_val.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nsolver_type: NESTEROV\n'
        'test_net_param { layers { name: "r" type: RELU bottom: "x" top: "x" } }\n'
    )
    assert main(["upgrade", "solver", str(src), str(dst)]) == 0
    new = read_message(str(dst), netdef_pb2.SolverParameter())
    assert new.type == "Nesterov" and not new.HasField("solver_type")
    assert new.base_lr == pytest.approx(0.01) and new.net == "train_val.prototxt"
    assert [(la.name, la.type) for la in new.test_net_param[0].layer] == [("r", "ReLU")]
    assert not new.test_net_param[0].layers
    out = capsys.readouterr().out
    assert 'solver_type: NESTEROV -> type: "Nesterov"' in out
    assert "test_net_param[0]: V1 layer definitions (layers { type: ENUM }): 1 layer(s)" in out
    assert load_solver(str(dst)).type == "Nesterov"


def test_cli_upgrade_errors(tmp_path, capsys):
    assert main(["upgrade", "net", str(tmp_path / "missing.prototxt"), str(tmp_path / "o.prototxt")]) == 1
    assert "File not found" in capsys.readouterr().err
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layers { layer { name: "c" type: "convolutoin" } }')
    assert main(["upgrade", "net", str(bad), str(tmp_path / "o.prototxt")]) == 1
    assert 'type "convolutoin", which is not a V0 layer type' in capsys.readouterr().err
    assert not (tmp_path / "o.prototxt").exists()


def test_deeplab_v1_layer_types_keep_their_fork_names(caplog):
    text = """
    input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2
    layers { name: "up" type: INTERP bottom: "x" top: "y" interp_param { zoom_factor: 2 } }
    layers { name: "pad" type: PADDING bottom: "y" top: "z" padding_param { pad_beg: 1 } }
    """
    param = net_from_text(text)
    assert [(layer.name, layer.type) for layer in param.layer] == [
        ("input", "Input"),
        ("up", "Interp"),
        ("pad", "Padding"),
    ]
    assert param.layer[1].interp_param.zoom_factor == 2
    assert param.layer[2].padding_param.pad_beg == 1
