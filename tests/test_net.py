"""Net engine: DAG construction, splits, in-place, sharing, phases/stages, pruning, loss weights."""

import logging
from collections import OrderedDict

import numpy
import pytest

import netdef
from netdef.errors import (
    BlobCountError,
    DuplicateTopBlobError,
    InvalidParameterError,
    NetdefError,
    ShapeMismatchError,
    UnknownBottomBlobError,
    UnknownLayerTypeError,
    WeightsFileError,
)
from netdef.net import filter_net, insert_splits, state_meets_rule
from netdef.proto import net_from_text
from netdef.proto import netdef_pb2 as pb


def make_net(text, phase=netdef.TRAIN, **kw):
    return netdef.Net(net_from_text(text), phase, **kw)


MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def test_blobs_params_inputs_outputs():
    net = make_net(MLP)
    assert list(net.blobs) == ["data", "label", "ip1", "ip2", "loss"]
    assert list(net.params) == ["ip1", "ip2"]
    assert [p.shape for p in net.params["ip1"]] == [(5, 3), (5,)]
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["loss"]
    assert net.blobs["ip1"].shape == (4, 5)


def test_forward_matches_numpy_and_backward_gives_gradients():
    net = make_net(MLP)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(numpy.float32)
    y = rng.standard_normal((4, 2)).astype(numpy.float32)
    out = net.forward(data=x, label=y)
    w1, b1 = (p.data for p in net.params["ip1"])
    w2, b2 = (p.data for p in net.params["ip2"])
    h = numpy.maximum(x @ w1.T + b1, 0)
    pred = h @ w2.T + b2
    expected = ((pred - y) ** 2).sum() / (2 * 4)
    assert out["loss"] == pytest.approx(expected, rel=1e-5)
    net.backward()
    dpred = (pred - y) / 4
    numpy.testing.assert_allclose(net.params["ip2"][0].diff, dpred.T @ h, rtol=1e-4, atol=1e-6)
    dh = (dpred @ w2) * (h > 0)
    numpy.testing.assert_allclose(net.params["ip1"][0].diff, dh.T @ x, rtol=1e-4, atol=1e-6)


def test_in_place_layers_share_one_blob():
    net = make_net(MLP)
    relu = net.layer_dict["relu1"]
    rec = net.records[net.layers.index(relu)]
    assert rec.top[0] is rec.bottom[0] is net.blobs["ip1"]


SPLIT = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 2 } }
layer { name: "b" type: "InnerProduct" bottom: "data" top: "b" inner_product_param { num_output: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
"""


def test_split_insertion_names_follow_caffe():
    param = insert_splits(net_from_text(SPLIT))
    names = [l.name for l in param.layer]
    assert names == ["data", "data_data_0_split", "a", "b", "sum"]
    split = param.layer[1]
    assert split.type == "Split"
    assert list(split.top) == ["data_data_0_split_0", "data_data_0_split_1"]
    assert list(param.layer[2].bottom) == ["data_data_0_split_0"]
    assert list(param.layer[3].bottom) == ["data_data_0_split_1"]


def test_split_sums_gradients():
    pytest.importorskip("netdef.layers.common")
    if "Eltwise" not in netdef.layer_type_list():
        pytest.skip("Eltwise not registered")
    net = make_net(SPLIT.replace('layer { name: "data"', 'force_backward: true\nlayer { name: "data"'))
    net.blobs["data"].data[...] = 1.0
    net.forward()
    net.blobs["sum"].diff[...] = 1.0
    net.backward()
    wa = net.params["a"][0].data
    wb = net.params["b"][0].data
    numpy.testing.assert_allclose(net.blobs["data"].diff, numpy.ones((2, 2)) @ (wa + wb), rtol=1e-5)


def test_loss_weight_on_a_consumed_top_moves_to_split():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" loss_weight: 2
            inner_product_param { num_output: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "ip" top: "r" }
    """
    param = insert_splits(net_from_text(text))
    split = param.layer[2]
    assert split.type == "Split"
    assert list(split.loss_weight) == [2.0, 0.0]
    assert list(param.layer[1].loss_weight) == []
    assert list(param.layer[3].bottom) == ["ip_ip_0_split_1"]


PHASES = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "train_only" type: "ReLU" bottom: "data" top: "t" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "data" top: "t" include { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "data" top: "s" include { stage: "deploy" } }
layer { name: "not_staged" type: "ReLU" bottom: "data" top: "n" exclude { stage: "deploy" } }
layer { name: "leveled" type: "ReLU" bottom: "data" top: "l" include { min_level: 2 } }
"""


def test_phase_stage_level_filtering():
    train = make_net(PHASES, netdef.TRAIN)
    assert "train_only" in train.layer_dict and "test_only" not in train.layer_dict
    test = make_net(PHASES, netdef.TEST)
    assert "test_only" in test.layer_dict and "train_only" not in test.layer_dict
    assert "staged" not in train.layer_dict and "not_staged" in train.layer_dict
    deploy = make_net(PHASES, netdef.TEST, stages=["deploy"])
    assert "staged" in deploy.layer_dict and "not_staged" not in deploy.layer_dict
    assert "leveled" not in train.layer_dict
    assert "leveled" in make_net(PHASES, netdef.TRAIN, level=3).layer_dict


def test_state_meets_rule_literal_cases():
    state = pb.NetState(phase=pb.TEST, level=1, stage=["a", "b"])
    assert state_meets_rule(state, pb.NetStateRule(phase=pb.TEST, stage=["a"]))
    assert not state_meets_rule(state, pb.NetStateRule(phase=pb.TRAIN))
    assert not state_meets_rule(state, pb.NetStateRule(max_level=0))
    assert not state_meets_rule(state, pb.NetStateRule(not_stage=["b"]))
    assert not state_meets_rule(state, pb.NetStateRule(stage=["c"]))


def test_include_and_exclude_together_is_an_error():
    text = 'layer { name: "x" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(netdef.NetdefError, match="both include and exclude"):
        filter_net(net_from_text(text), pb.NetState(phase=pb.TRAIN))


SHARED = """
force_backward: true
layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "yb" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
"""


def test_parameter_sharing_by_name_accumulates_gradients():
    net = make_net(SHARED)
    assert net.params["ip_a"][0] is net.params["ip_b"][0]
    assert len(net.learnable_params) == 2
    net.blobs["a"].data[...] = 1.0
    net.blobs["b"].data[...] = 2.0
    net.forward()
    net.blobs["ya"].diff[...] = 1.0
    net.blobs["yb"].diff[...] = 1.0
    net.backward()
    # d/dW of sum(W a) + sum(W b) over a batch of 2: each row gets 2*1 + 2*2 = 6
    numpy.testing.assert_allclose(net.params["ip_a"][0].diff, numpy.full((4, 3), 6.0))


def test_sharing_shape_mismatch_is_named():
    text = SHARED.replace(
        'bottom: "b" top: "yb" param { name: "w" } param { name: "bias" }\n        inner_product_param { num_output: 4',
        'bottom: "b" top: "yb" param { name: "w" } param { name: "bias" }\n        inner_product_param { num_output: 5',
    )
    with pytest.raises(ShapeMismatchError, match='"ip_b".*"w"'):
        make_net(text)


def test_permissive_sharing_allows_same_count():
    text = """
    layer { name: "data" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 1 dim: 6 } shape { dim: 1 dim: 2 } } }
    layer { name: "p" type: "InnerProduct" bottom: "a" top: "x" param { name: "w" share_mode: PERMISSIVE }
            inner_product_param { num_output: 2 bias_term: false } }
    layer { name: "q" type: "InnerProduct" bottom: "b" top: "y" param { name: "w" share_mode: PERMISSIVE }
            inner_product_param { num_output: 6 bias_term: false } }
    """
    net = make_net(text)
    assert net.params["q"][0].shape == (6, 2)
    net.params["p"][0].data[...] = numpy.arange(12).reshape(2, 6)
    numpy.testing.assert_array_equal(net.params["q"][0].data.ravel(), numpy.arange(12))


def test_backward_pruning_and_lr_mult_zero():
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
    layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "f" param { lr_mult: 0 } param { lr_mult: 0 }
            inner_product_param { num_output: 2 } }
    layer { name: "ip" type: "InnerProduct" bottom: "f" top: "y" inner_product_param { num_output: 2 } }
    layer { name: "side" type: "InnerProduct" bottom: "data" top: "unused" inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "label" top: "loss" }
    """
    net = make_net(text)
    need = {rec.layer.name: rec.need_backward for rec in net.records}
    assert need["ip"] and need["loss"]
    assert not need["frozen"]  # nothing learnable and its input needs no gradient
    assert not need["side"]  # does not contribute to the loss
    assert net.outputs == ["loss", "unused"]


def test_propagate_down_false_and_force_backward():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" propagate_down: false
            inner_product_param { num_output: 2 } }
    """
    net = make_net(text)
    assert net.records[1].propagate_down == [False]
    forced = make_net("force_backward: true\n" + text)
    assert forced.records[1].propagate_down == [True]


def test_errors_name_layer_and_blob():
    with pytest.raises(UnknownBottomBlobError, match='"ip".*"nothere"'):
        make_net(
            'layer { name: "ip" type: "InnerProduct" bottom: "nothere" top: "y" inner_product_param { num_output: 2 } }'
        )
    with pytest.raises(DuplicateTopBlobError, match='"b".*"x"'):
        make_net(
            'layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
            'layer { name: "b" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
        )
    with pytest.raises(UnknownLayerTypeError, match='Did you mean "InnerProduct"'):
        make_net('layer { name: "c" type: "InnerProdcut" }')
    with pytest.raises(BlobCountError, match='"relu".*bottom'):
        make_net(
            'layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "x" bottom: "x" top: "y" }'
        )


def test_legacy_input_fields_become_an_input_layer():
    net = make_net(
        'input: "data" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5\n'
        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }'
    )
    assert net.layer_names[0] == "input"
    assert net.blobs["data"].shape == (2, 3, 4, 5)
    assert net.inputs == ["data"]
    net2 = make_net('input: "x" input_shape { dim: 7 dim: 1 }\nlayer { name: "r" type: "ReLU" bottom: "x" top: "r" }')
    assert net2.blobs["x"].shape == (7, 1)


def test_v1_layers_are_upgraded():
    text = """
    input: "data" input_dim: 1 input_dim: 4 input_dim: 1 input_dim: 1
    layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2
             weight_decay: 1 weight_decay: 0 inner_product_param { num_output: 3 } }
    layers { name: "relu" type: RELU bottom: "ip" top: "ip" }
    """
    param = net_from_text(text)
    assert [l.type for l in param.layer] == ["Input", "InnerProduct", "ReLU"]
    assert [(p.lr_mult, p.decay_mult) for p in param.layer[1].param] == [(1, 1), (2, 0)]
    net = netdef.Net(param, netdef.TEST)
    assert net.blobs["ip"].shape == (1, 3)


def test_forward_with_inputs_and_start_end():
    net = make_net(MLP)
    x = numpy.ones((4, 3), numpy.float32)
    out = net.forward(end="ip2", data=x)
    assert set(out) == {"ip2"}
    with pytest.raises(ShapeMismatchError):
        net.forward(data=numpy.ones((5, 3)))


def test_reshape_propagates_new_input_shape():
    net = make_net(MLP)
    net.blobs["data"].reshape((7, 3))
    net.blobs["label"].reshape((7, 2))
    net.reshape()
    assert net.blobs["ip2"].shape == (7, 2)


def test_save_and_copy_from_roundtrip(tmp_path):
    a = make_net(MLP)
    path = str(tmp_path / "w.caffemodel")
    a.save(path)
    b = make_net(MLP)
    b.copy_from(path)
    for name in a.params:
        for pa, pb_ in zip(a.params[name], b.params[name]):
            numpy.testing.assert_array_equal(pa.data, pb_.data)
    c = netdef.Net(net_from_text(MLP), netdef.TEST, weights=path)
    numpy.testing.assert_array_equal(c.params["ip1"][0].data, a.params["ip1"][0].data)


def test_forward_all_batches_pads_and_trims():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    """
    net = make_net(text, netdef.TEST)
    x = numpy.arange(30, dtype=numpy.float32).reshape(10, 3)
    out = net.forward_all(data=x)
    w = net.params["ip"][0].data
    assert out["ip"].shape == (10, 2)
    numpy.testing.assert_allclose(out["ip"], x @ w.T, rtol=1e-5)
    with pytest.raises(ShapeMismatchError, match="same number of samples"):
        net.forward_all(data=x, ip=numpy.zeros((3, 2)))


def test_loss_layer_without_a_top_gets_an_automatic_one():
    # Old LeNet/NIN files wrote loss layers without a top; Caffe adds "(automatic)", which is not a net output.
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" }
    """
    net = make_net(text)
    assert list(net.blobs) == ["data", "label", "ip", "(automatic)"]
    assert net.outputs == []
    net.blobs["label"].data[...] = [0, 2]
    net.blobs["data"].data[...] = 1
    net.forward()
    # zero weights: uniform softmax over 3 classes, loss log(3), counted in the net's loss with weight 1
    assert abs(float(net.blobs["(automatic)"].data) - numpy.log(3)) < 1e-6
    assert abs(net.loss - numpy.log(3)) < 1e-6
    assert net.loss_weights() == {"(automatic)": 1.0}
    net.backward()
    assert numpy.abs(net.params["ip"][0].diff).sum() > 0


def test_unknown_layer_type_names_file_line_layer_fork_and_the_python_layer_way(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(
        'name: "x"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n'
        'layer {\n  name: "ann"\n  type: "AnnotatedData"\n  top: "y"\n}\n'
        'layer { name: "c" type: "Convolutoin" bottom: "data" top: "c" }\n'
    )
    with pytest.raises(UnknownLayerTypeError) as info:
        netdef.Net(str(path), netdef.TEST)
    message = str(info.value)
    assert message.startswith(f'{path}:4: Layer "ann" (type AnnotatedData): unknown layer type.')
    assert "SSD fork (weiliu89/caffe)" in message
    assert 'type: "Python" python_param' in message
    fixed = path.read_text().replace('  type: "AnnotatedData"\n', '  type: "Input" input_param { shape { dim: 1 } }\n')
    path.write_text(fixed)
    with pytest.raises(UnknownLayerTypeError, match=r':8: Layer "c" \(type Convolutoin\).*Did you mean "Convolution"'):
        netdef.Net(str(path), netdef.TEST)


# --- pycaffe's call forms and names ---------------------------------------------------------
@pytest.fixture
def mlp_files(tmp_path):
    model = tmp_path / "mlp.prototxt"
    model.write_text(MLP)
    source = netdef.Net(str(model), netdef.TEST)
    weights = tmp_path / "mlp.caffemodel"
    source.save(str(weights))
    return model, weights, source.params["ip1"][0].data.copy()


def _loaded(net, expected):
    return numpy.array_equal(net.params["ip1"][0].data, expected)


def test_every_pycaffe_call_form_builds_the_net(mlp_files):
    model, weights, expected = mlp_files
    m, w = str(model), str(weights)
    assert _loaded(netdef.Net(m, w, netdef.TEST), expected)  # legacy: weights second
    assert _loaded(netdef.Net(m, netdef.TEST, weights=w), expected)
    assert _loaded(netdef.Net(m, phase=netdef.TEST, weights=w), expected)
    assert _loaded(netdef.Net(m, netdef.TEST, 0, None, w), expected)  # pycaffe's full positional order
    assert _loaded(netdef.Net(m, netdef.TEST, w), expected)  # netdef's own older order
    assert _loaded(netdef.Net(model, weights, netdef.TRAIN), expected)  # path objects too
    assert netdef.Net(m, w, netdef.TRAIN).phase == netdef.TRAIN
    assert netdef.Net(m, "test").phase == netdef.TEST
    assert not _loaded(netdef.Net(m, netdef.TEST), expected)


def test_level_and_stages_by_position_follow_pycaffe():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "deep" type: "ReLU" bottom: "data" top: "deep" include { min_level: 2 } }
    layer { name: "staged" type: "ReLU" bottom: "data" top: "staged" include { stage: "extra" } }
    """
    param = net_from_text(text)
    assert netdef.Net(param, netdef.TEST).layer_names == ["data"]
    assert netdef.Net(param, netdef.TEST, 2).layer_names == ["data", "deep"]
    assert netdef.Net(param, netdef.TEST, 0, ["extra"]).layer_names == ["data", "staged"]


def test_bad_call_forms_are_named(mlp_files):
    model, weights, _ = mlp_files
    with pytest.raises(InvalidParameterError, match=r"phase must be netdef.TRAIN \(0\) or netdef.TEST \(1\).*7"):
        netdef.Net(str(model), 7)
    with pytest.raises(InvalidParameterError, match="weights is given twice"):
        netdef.Net(str(model), str(weights), netdef.TEST, weights=str(weights))
    with pytest.raises(InvalidParameterError, match="phase is given twice"):
        netdef.Net(str(model), netdef.TEST, phase=netdef.TEST)
    with pytest.raises(InvalidParameterError, match=r"Received: 2\.5"):
        netdef.Net(str(model), netdef.TEST, 2.5)
    with pytest.raises(InvalidParameterError, match="at most the phase after the weights"):
        netdef.Net(str(model), str(weights), netdef.TEST, 0)


def test_pycaffe_names_of_layers_blobs_and_indices():
    net = make_net(MLP)
    assert [layer.type for layer in net.layers] == ["Input", "InnerProduct", "ReLU", "InnerProduct", "EuclideanLoss"]
    assert net._layer_names == ["data", "ip1", "relu1", "ip2", "loss"]
    assert net._blob_names == ["data", "label", "ip1", "ip2", "loss"]
    assert net._blobs[2] is net.blobs["ip1"]
    assert (net._inputs, net._outputs) == ([0, 1], [4])
    assert net._top_ids(2) == [2] and net._bottom_ids(4) == [3, 1]
    assert isinstance(net.top_names, OrderedDict) and list(net.top_names) == net._layer_names
    assert net.top_names["data"] == ["data", "label"] and net.bottom_names["loss"] == ["ip2", "label"]
    assert net.blob_loss_weights == OrderedDict(
        [("data", 0.0), ("label", 0.0), ("ip1", 0.0), ("ip2", 0.0), ("loss", 1.0)]
    )
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert net._forward(0, 4) == pytest.approx(float(net.blobs["loss"].data))


def test_blob_loss_weights_follow_the_split_of_a_read_loss():
    text = """
    layer { name: "data" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "a" top: "ip" loss_weight: 3 inner_product_param { num_output: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "ip" top: "r" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "r" bottom: "b" top: "loss" loss_weight: 2 }
    layer { name: "twice" type: "Power" bottom: "loss" top: "twice" power_param { scale: 2 } }
    """
    weights = make_net(text).blob_loss_weights
    assert weights["ip"] == 0.0 and weights["ip_ip_0_split_0"] == 3.0 and weights["ip_ip_0_split_1"] == 0.0
    # Caffe's quirk: the split takes the explicit weight, and the loss layer, left without one, falls back to 1
    assert weights["loss"] == 1.0
    assert weights["loss_loss_0_split_0"] == 2.0 and weights["loss_loss_0_split_1"] == 0.0
    assert weights["twice"] == 0.0


def test_blob_legacy_accessors():
    net = make_net(MLP)
    data = net.blobs["data"]
    assert (data.num, data.channels, data.height, data.width, data.count) == (4, 3, 1, 1, 12)
    loss = net.blobs["loss"]
    assert (loss.num, loss.channels, loss.count) == (1, 1, 1)
    four = netdef.Blob((2, 3, 4, 5))
    assert (four.num, four.channels, four.height, four.width) == (2, 3, 4, 5)
    with pytest.raises(ShapeMismatchError, match="at most 4 axes"):
        netdef.Blob((1, 1, 1, 1, 2)).num  # noqa: B018


def test_construction_logs_caffes_top_shape_lines():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("netdef")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        make_net(MLP)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [r.getMessage() for r in records]
    start = lines.index("Setting up data")
    assert lines[start : start + 4] == [
        "Setting up data",
        "Top shape: 4 3 (12)",
        "Top shape: 4 2 (8)",
        "Memory required for data: 80",
    ]
    loss = lines.index("Setting up loss")
    assert lines[loss : loss + 4] == [
        "Setting up loss",
        "Top shape: (1)",
        "    with loss weight 1",
        # data 12 + label 8 + ip1 20 + relu1 (in place, counted again) 20 + ip2 8 + loss 1 = 69 floats
        "Memory required for data: 276",
    ]
    assert lines[-1] == "Network initialization done."


def test_save_hdf5_and_load_hdf5_whatever_the_name(tmp_path):
    a = make_net(MLP)
    path = tmp_path / "weights.caffemodel.hdf"
    a.save_hdf5(str(path))
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89HDF"
    b = make_net(MLP)
    b.load_hdf5(path)
    numpy.testing.assert_array_equal(b.params["ip2"][0].data, a.params["ip2"][0].data)
    c = make_net(MLP)
    a.save_hdf5(str(tmp_path / "w.h5"))
    c.load_hdf5(str(tmp_path / "w.h5"))
    numpy.testing.assert_array_equal(c.params["ip1"][1].data, a.params["ip1"][1].data)
    a.save(str(tmp_path / "binary.caffemodel"))
    with pytest.raises(WeightsFileError, match="not an HDF5 file.*copy_from"):
        c.load_hdf5(str(tmp_path / "binary.caffemodel"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.caffemodel", "w.h5", "weights.caffemodel.hdf"]


def test_forward_takes_broadcastable_inputs_with_the_batch_size():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }
    """
    net = make_net(text, netdef.TEST)
    out = net.forward(data=numpy.array([[[1.0, -2.0], [3.0, -4.0]]]))  # (1, 2, 2) into (1, 1, 2, 2)
    assert out["out"].tolist() == [[[[1.0, 0.0], [3.0, 0.0]]]]
    with pytest.raises(ShapeMismatchError, match="net.reshape"):
        net.forward(data=numpy.zeros((2, 1, 2, 2)))


def test_forward_backward_all_batches_inputs_and_top_diffs():
    text = """
    force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    """
    net = make_net(text, netdef.TEST)
    x = numpy.arange(30, dtype=numpy.float32).reshape(10, 3)
    dy = numpy.ones((10, 2), dtype=numpy.float32)
    outs, diffs = net.forward_backward_all(data=x, ip=dy)
    w = net.params["ip"][0].data
    numpy.testing.assert_allclose(outs["ip"], x @ w.T, rtol=1e-5)
    numpy.testing.assert_allclose(diffs["data"], dy @ w, rtol=1e-5)
    assert diffs["data"].shape == (10, 3)
    with pytest.raises(NetdefError, match="Received: nope"):
        net.forward_backward_all(nope=x)


def test_layer_callbacks_see_every_index_in_order():
    net = make_net(MLP)
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net.forward(start="ip2")
    assert seen == [("bf", 3), ("af", 3), ("bf", 4), ("af", 4)]
    seen.clear()
    net.backward(end="ip2")
    assert seen == [("ab", 4), ("ab", 3)]


def test_forward_all_gives_a_scalar_output_once_per_batch():
    net = make_net(MLP, netdef.TEST)
    rng = numpy.random.default_rng(0)
    x, y = rng.random((10, 3), dtype=numpy.float32), rng.random((10, 2), dtype=numpy.float32)
    out = net.forward_all(data=x, label=y)
    assert out["loss"].shape == (3,)  # batches of 4, 4 and 2 (+2 zero rows)
    last = net.forward(
        data=numpy.concatenate([x[8:], numpy.zeros((2, 3))]), label=numpy.concatenate([y[8:], numpy.zeros((2, 2))])
    )
    assert out["loss"][2] == pytest.approx(float(last["loss"]))


def test_python_layers_need_consent_per_net(tmp_path, monkeypatch):
    (tmp_path / "consent_layer.py").write_text(
        "import netdef\n\n\nclass Twice(netdef.Layer):\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(bottom[0].shape)\n\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = 2 * bottom[0].data\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
    layer { name: "t" type: "Python" bottom: "x" top: "y" python_param { module: "consent_layer" layer: "Twice" } }
    """
    with pytest.raises(netdef.errors.PythonLayerNotAllowedError, match='Layer "t"'):
        make_net(text)
    net = make_net(text, allow_python_layers=True)
    assert net.forward(x=numpy.array([1.0, 2.0]))["y"].tolist() == [2.0, 4.0]
    with pytest.raises(netdef.errors.PythonLayerNotAllowedError):  # the consent was for that net only
        make_net(text)


def test_summary_counts_the_parameters():
    net = make_net(MLP)
    table = net.summary()
    assert table.learnable == sum(b.count for b in net.learnable_params) > 0
    assert "total" in str(table)


def test_pooling_rule_is_chosen_per_net():
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 13 dim: 13 } } }
    layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
    """
    assert make_net(text).blobs["y"].shape == (1, 1, 12, 12)  # BVLC's rule
    assert make_net(text, pooling_rule="caffe-yolov3").blobs["y"].shape == (1, 1, 13, 13)
    assert make_net(text).blobs["y"].shape == (1, 1, 12, 12)  # the choice was for that net only
