"""NetSpec, ``netdef.layers as L`` and ``netdef.params as P`` (pycaffe's caffe.net_spec)."""

import re
from pathlib import Path

import numpy
import pytest

import netdef
from netdef import layers as L
from netdef import params as P
from netdef.errors import InvalidParameterError, UnknownFieldError
from netdef.netspec import Function, Top, to_proto
from netdef.proto import netdef_pb2, parse_text, to_text

LENET = """
layer {
  name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" } }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 5 stride: 1 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" } }
}
layer {
  name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } }
}
layer {
  name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" loss_weight: 1 }
"""


def lenet_spec(batch=64):
    lr = [dict(lr_mult=1), dict(lr_mult=2)]
    fill = dict(weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))
    n = netdef.NetSpec()
    n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[batch, 1, 28, 28]), dict(dim=[batch])]))
    n.conv1 = L.Convolution(n.data, kernel_size=5, stride=1, num_output=20, param=lr, **fill)
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, stride=1, num_output=50, param=lr, **fill)
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, param=lr, **fill)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, param=lr, **fill)
    n.accuracy = L.Accuracy(n.ip2, n.label, include=dict(phase=netdef.TEST))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label, loss_weight=1)
    return n


def test_lenet_equals_hand_written_prototxt():
    expected = parse_text(LENET, netdef_pb2.NetParameter())
    assert lenet_spec().to_proto() == expected


def test_text_round_trip_gives_the_same_message():
    proto = lenet_spec().to_proto()
    text = to_text(proto)
    assert 'name: "relu1"' in text and "pool: MAX" in text
    assert parse_text(text, netdef_pb2.NetParameter()) == proto
    assert parse_text(str(proto), netdef_pb2.NetParameter()) == proto


def test_lenet_spec_builds_a_net_that_runs():
    net = netdef.Net(lenet_spec(batch=2).to_proto(), netdef.TRAIN)
    assert net.layer_names == ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    assert net.blobs["ip2"].shape == (2, 10)
    net.blobs["data"].data[...] = numpy.random.rand(2, 1, 28, 28)
    net.blobs["label"].data[...] = [3, 7]
    net.forward()
    assert numpy.isfinite(net.blobs["loss"].data).all()
    assert net.blobs["loss"].data.item() > 0


def test_in_place_layer_writes_its_bottom_and_takes_its_attribute_name():
    n = netdef.NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 4])))
    n.act = L.ReLU(n.data, in_place=True)
    n.out = L.TanH(L.Sigmoid(n.act, in_place=True))
    layers = n.to_proto().layer
    assert [(la.name, list(la.bottom), list(la.top)) for la in layers] == [
        ("data", [], ["data"]),
        ("act", ["data"], ["data"]),
        ("Sigmoid1", ["data"], ["data"]),
        ("out", ["data"], ["out"]),
    ]


def test_in_place_with_more_bottoms_than_tops_writes_the_first():
    n = netdef.NetSpec()
    n.x, n.s = L.Input(ntop=2, input_param=dict(shape=dict(dim=[2, 3])))
    n.scaled = L.Scale(n.x, n.s, in_place=True, axis=0)
    layer = n.to_proto().layer[1]
    assert list(layer.bottom) == ["x", "s"] and list(layer.top) == ["x"] and layer.scale_param.axis == 0
    with pytest.raises(InvalidParameterError, match="at least as many bottoms as tops"):
        L.Slice(n.x, ntop=2, in_place=True)


def test_unnamed_intermediate_tops_get_type_and_counter_names():
    n = netdef.NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 4])))
    n.out = L.ReLU(L.ReLU(L.TanH(n.data)))
    layers = n.to_proto().layer
    assert [la.name for la in layers] == ["data", "TanH1", "ReLU1", "out"]
    assert [list(la.top) for la in layers] == [["data"], ["TanH1"], ["ReLU1"], ["out"]]
    assert list(layers[3].bottom) == ["ReLU1"]


def test_module_to_proto_names_everything_automatically():
    data = L.Input(input_param=dict(shape=dict(dim=[1, 4])))
    top = L.ReLU(L.ReLU(data))
    proto = to_proto(top)
    assert [(la.name, list(la.top)) for la in proto.layer] == [
        ("Input1", ["Input1"]),
        ("ReLU1", ["ReLU1"]),
        ("ReLU2", ["ReLU2"]),
    ]
    assert top.to_proto() == proto


def test_ntop_returns_a_tuple_and_ntop_zero_the_layer():
    n = netdef.NetSpec()
    tops = L.Input(ntop=3, input_param=dict(shape=dict(dim=[2])))
    assert isinstance(tops, tuple) and len(tops) == 3 and all(isinstance(t, Top) for t in tops)
    n.a, n.b, n.c = tops
    silence = L.Silence(n.a, n.b, ntop=0)
    assert isinstance(silence, Function)
    n.quiet = silence
    L.Silence(n.c, ntop=0)
    layers = n.to_proto().layer
    assert [(la.name, list(la.bottom), list(la.top)) for la in layers] == [
        ("a", [], ["a", "b", "c"]),
        ("quiet", ["a", "b"], []),
    ]
    unnamed = L.Silence(n.c, ntop=0)
    assert [(la.name, list(la.top)) for la in to_proto(unnamed).layer] == [
        ("Input1", ["Input1", "Input2", "Input3"]),
        ("Silence1", []),
    ]


def test_only_the_second_top_named_gives_an_auto_name_to_the_first():
    n = netdef.NetSpec()
    first, n.second = L.Input(ntop=2, input_param=dict(shape=dict(dim=[2])))
    n.out = L.Eltwise(first, n.second, operation=P.Eltwise.SUM)
    layers = n.to_proto().layer
    assert (layers[0].name, list(layers[0].top)) == ("Input1", ["Input1", "second"])
    assert layers[1].eltwise_param.operation == 1


def test_keyword_mapping_to_layer_and_type_parameter_fields():
    n = netdef.NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 3, 8, 8])))
    n.conv = L.Convolution(
        n.data,
        kernel_size=[3, 3],
        pad=1,
        num_output=4,
        bias_term=False,
        engine="CAFFE",
        weight_filler=netdef_pb2.FillerParameter(type="gaussian", std=0.5),
        param=dict(lr_mult=0.5, decay_mult=0),
        exclude=[dict(phase="TRAIN"), dict(stage="deploy")],
        propagate_down=[False],
        name="my_conv",
    )
    n.loss = L.EuclideanLoss(n.conv, n.conv, loss_weight=[0.5], normalization=P.Loss.BATCH_SIZE)
    n.d = L.Deconvolution(n.conv, num_output=2, kernel_size=2)
    n.h = L.LSTM(n.d, n.d, num_output=3)
    conv, loss = n.to_proto().layer[1:3]
    assert conv.name == "my_conv" and list(conv.top) == ["conv"]
    assert list(conv.convolution_param.kernel_size) == [3, 3]
    assert list(conv.convolution_param.pad) == [1]
    assert conv.convolution_param.num_output == 4 and conv.convolution_param.bias_term is False
    assert conv.convolution_param.engine == netdef_pb2.ConvolutionParameter.CAFFE
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.5)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(0.5, 0.0)]
    assert [r.phase for r in conv.exclude[:1]] == [netdef.TRAIN] and list(conv.exclude[1].stage) == ["deploy"]
    assert list(conv.propagate_down) == [False]
    assert list(loss.loss_weight) == [0.5] and loss.loss_param.normalization == 2
    deconv, lstm = n.to_proto().layer[3:]
    assert deconv.convolution_param.num_output == 2 and lstm.recurrent_param.num_output == 3


def test_types_netdef_does_not_run_can_still_be_written():
    n = netdef.NetSpec()
    n.data, n.label = L.Data(
        source="train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2, transform_param=dict(scale=1.0 / 256)
    )
    layer = n.to_proto().layer[0]
    assert layer.type == "Data" and layer.data_param.backend == 1 and layer.data_param.batch_size == 64
    assert layer.transform_param.scale == pytest.approx(0.00390625)


def test_params_give_enum_numbers():
    assert (P.Pooling.MAX, P.Pooling.AVE, P.Pooling.STOCHASTIC) == (0, 1, 2)
    assert (P.Eltwise.PROD, P.Eltwise.SUM, P.Eltwise.MAX) == (0, 1, 2)
    assert (P.Loss.FULL, P.Loss.VALID, P.Loss.BATCH_SIZE, P.Loss.NONE) == (0, 1, 2, 3)
    assert (P.Data.LEVELDB, P.Data.LMDB) == (0, 1)
    assert P.Convolution.CUDNN == 2 and P.Reduction.MEAN == 4 and P.LRN.WITHIN_CHANNEL == 1
    assert "MAX" in dir(P.Pooling) and "Pooling" in dir(P)
    with pytest.raises(AttributeError, match='no enum value "MAXX". Did you mean "MAX"'):
        _ = P.Pooling.MAXX
    with pytest.raises(AttributeError, match='no PoolingParam.*Did you mean "Pooling"'):
        _ = P.PoolingParam


def test_keyword_errors_name_the_layer_and_the_valid_fields():
    with pytest.raises(
        UnknownFieldError, match='L.Convolution: unknown argument "kernel_sise". Did you mean "kernel_size"'
    ):
        L.Convolution(kernel_sise=3)
    with pytest.raises(UnknownFieldError, match="fields of relu_param: negative_slope"):
        L.ReLU(slope=0.1)
    with pytest.raises(InvalidParameterError, match='"MEAN" is not a value of PoolMethod.*Valid: MAX, AVE'):
        L.Pooling(pool="MEAN")
    with pytest.raises(InvalidParameterError, match=r"kernel_size needs a value of type integer.*Received: 'x'"):
        L.Pooling(kernel_size="x")
    with pytest.raises(InvalidParameterError, match="weight_filler is a FillerParameter message"):
        L.InnerProduct(weight_filler="xavier")
    with pytest.raises(UnknownFieldError, match='FillerParameter has no field "kind"'):
        L.InnerProduct(weight_filler=dict(kind="xavier"))
    with pytest.raises(InvalidParameterError, match='"top" is set by the call itself'):
        L.ReLU(top="x")
    with pytest.raises(TypeError, match="bottom 0 must be a top"):
        L.ReLU("data")
    with pytest.raises(InvalidParameterError, match="ntop must be an integer >= 0"):
        L.Input(ntop=-1)


def test_layers_module_keeps_its_contents_and_rejects_lowercase_names():
    assert L.Layer is netdef.Layer and callable(L.layer_type_list)
    assert L.Convolution.__name__ == "Convolution"
    with pytest.raises(AttributeError, match="has no attribute 'convolution'"):
        _ = L.convolution


def test_netspec_attribute_errors():
    n = netdef.NetSpec()
    n["data"] = L.Input(input_param=dict(shape=dict(dim=[1])))
    assert n["data"] is n.data and "data" in n and "data" in dir(n)
    with pytest.raises(AttributeError, match='no top "dat". Did you mean "data"'):
        _ = n.dat
    with pytest.raises(KeyError):
        n["nope"]
    with pytest.raises(TypeError, match="assign a top made by L"):
        n.x = 3


def readme_python_block(marker: str) -> str:
    """The README's python code block containing ``marker``: the documentation itself is what runs."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if marker in b)


README_EXAMPLE = readme_python_block("netdef.NetSpec()")


def test_readme_example_runs(capsys):
    namespace = {}
    exec(compile(README_EXAMPLE, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert 'name: "conv1"' in out and 'top: "conv1"' in out and "(1, 10)" in out
    prob = namespace["prob"]
    assert prob.shape == (1, 10) and abs(float(prob.sum()) - 1) < 1e-5
    assert namespace["net"].layer_names == ["data", "conv1", "relu1", "pool1", "score", "prob"]
