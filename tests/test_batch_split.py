"""A training step split by samples over threads gives the whole batch's loss, blobs and gradients."""

from __future__ import annotations

import numpy
import pytest

import netdef
from netdef import batch_split, threads
from netdef.blob import Blob
from netdef.proto import net_from_text, parse_text
from netdef.proto import netdef_pb2 as pb


@pytest.fixture(autouse=True)
def crowded_machine(fresh_thread_policy, monkeypatch):
    """Each test fixes its own thread count, on a machine whose cores others keep busy."""
    monkeypatch.setattr(batch_split, "MIN_SHARE_BYTES", 0)  # the nets here are small
    monkeypatch.setattr(threads, "crowded", lambda: True)


def _input(batch: int, *shapes) -> str:
    dims = "".join(f" shape {{ dim: {batch} {' '.join(f'dim: {d}' for d in shape)} }}" for shape in shapes)
    return f'layer {{ name: "data" type: "Input" top: "data" top: "label" input_param {{{dims} }} }}\n'


CLASSIFIER = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } bias_filler {
  type: "uniform" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2
  stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 } }
layer { name: "ip1" type: "InnerProduct" bottom: "norm1" top: "ip1"
  inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "tanh1" type: "TanH" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
"""

BRANCHES = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "uniform" } } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "a" type: "Convolution" bottom: "conv1" top: "a"
  param { name: "shared_w" } convolution_param { num_output: 4 kernel_size: 1 bias_term: false weight_filler
  { type: "gaussian" std: 0.3 } } }
layer { name: "b" type: "Convolution" bottom: "conv1" top: "b"
  param { name: "shared_w" } convolution_param { num_output: 4 kernel_size: 1 bias_term: false weight_filler
  { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { operation: PROD } }
layer { name: "up" type: "Deconvolution" bottom: "sum" top: "up"
  convolution_param { num_output: 2 kernel_size: 2 stride: 2 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "halves" type: "Slice" bottom: "up" top: "h1" top: "h2" slice_param { axis: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "h1" top: "h1s" }
layer { name: "cat" type: "Concat" bottom: "h1s" bottom: "h2" top: "cat" }
layer { name: "gap" type: "Pooling" bottom: "cat" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "gap" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "euclid" type: "EuclideanLoss" bottom: "fc" bottom: "label" top: "euclid" loss_weight: 0.5 }
layer { name: "ce" type: "SoftmaxWithLoss" bottom: "fc" bottom: "cls" top: "ce" loss_param { normalization: NONE } }
"""


def _net(body: str, head: str, classes: tuple = ("label",), seed: int = 3) -> netdef.Net:
    """The net with its inputs filled: ``classes`` with class indices 0..2, the others with normal values."""
    netdef.set_random_seed(seed)
    net = netdef.Net(net_from_text(head + body), netdef.TRAIN)
    rng = numpy.random.default_rng(seed)
    for name in net.inputs:
        blob = net.blobs[name]
        if name in classes:
            blob.data[...] = rng.integers(0, 3, blob.shape)
        else:
            blob.data[...] = rng.standard_normal(blob.shape)
    return net


def _step(net: netdef.Net, k: int) -> float:
    threads.apply_policy(k)
    net.clear_param_diffs()
    return net.forward_backward()


def _classifier(batch: int) -> netdef.Net:
    return _net(CLASSIFIER, _input(batch, (3, 8, 8), ()))


def _branches(batch: int) -> netdef.Net:
    head = _input(batch, (3, 6, 6), (3,)) + (
        f'layer {{ name: "cls" type: "Input" top: "cls" input_param {{ shape {{ dim: {batch} }} }} }}\n'
    )
    return _net(BRANCHES, head, classes=("cls",))


def _close(actual, desired, what: str) -> None:
    """Equal up to float32 rounding in sums of another order, relative to the array's largest value."""
    actual, desired = numpy.asarray(actual, numpy.float64), numpy.asarray(desired, numpy.float64)
    assert actual.shape == desired.shape, what
    scale = max(float(numpy.abs(desired).max(initial=0.0)), 1e-3)
    assert float(numpy.abs(actual - desired).max(initial=0.0)) <= 2e-5 * scale, what


def _assert_same(whole: netdef.Net, split: netdef.Net) -> None:
    for name, blob in whole.blobs.items():
        _close(split.blobs[name].data, blob.data, f"{name} data")
        _close(split.blobs[name].diff, blob.diff, f"{name} diff")
    for name, blobs in whole.params.items():
        for k, (mine, theirs) in enumerate(zip(split.params[name], blobs, strict=True)):
            _close(mine.diff, theirs.diff, f"{name} parameter {k} diff")


@pytest.mark.parametrize("make", [_classifier, _branches], ids=["classifier", "branches"])
@pytest.mark.parametrize("batch", [32, 33])
def test_split_step_equals_whole_batch(make, batch):
    whole, split = make(batch), make(batch)
    loss_whole = _step(whole, 1)
    loss_split = _step(split, 2)
    plan = batch_split.plan_of(split)
    assert plan.reason is None and len(plan.replicas) == 2
    assert [r.part for r in plan.replicas] == [slice(0, batch // 2), slice(batch // 2, batch)]
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    _assert_same(whole, split)


def test_split_steps_repeat_and_follow_new_weights(caplog):
    whole, split = _classifier(32), _classifier(32)
    caplog.clear()  # the nets' own set-up lines
    with caplog.at_level("INFO", logger="netdef"):
        for _ in range(2):
            _step(whole, 1)
            _step(split, 2)
    said = [r.getMessage() for r in caplog.records if "every core is busy" in r.getMessage()]
    assert said == [
        f"Net {split.name}: every core is busy, so each training step runs its layers after the data "
        "layers on 2 threads, one share of the 32 samples each"
    ]  # once, not per step
    assert not [r for r in caplog.records if r.getMessage().startswith("Setting up")]  # replicas build quietly
    replicas = batch_split.plan_of(split).replicas
    for net in (whole, split):  # the solver changes the weights in place; the replicas see it
        net.params["ip1"][0].data *= 0.5
    assert _step(split, 2) == pytest.approx(_step(whole, 1), rel=1e-5)
    assert batch_split.plan_of(split).replicas is replicas  # built once
    _assert_same(whole, split)


def test_dropout_masks_are_the_whole_batch_masks():
    """The net draws each Dropout layer's numbers for the whole batch, in layer order, as one thread would."""
    body = CLASSIFIER.replace('layer { name: "tanh1"', DROPOUT + '\nlayer { name: "tanh1"')
    extra = (
        'layer { name: "drop0" type: "Dropout" bottom: "norm1" top: "dropped" }\n'
        'layer { name: "use" type: "AbsVal" bottom: "dropped" top: "dropped_abs" }\n'
    )
    body = body.replace('layer { name: "ip1"', extra + 'layer { name: "ip1"')
    whole, split = _net(body, _input(33, (3, 8, 8), ())), _net(body, _input(33, (3, 8, 8), ()))
    for _ in range(2):  # the random stream moves on alike
        loss_whole, loss_split = _step(whole, 1), _step(split, 2)
        assert loss_split == pytest.approx(loss_whole, rel=1e-5)
        _assert_same(whole, split)
    plan = batch_split.plan_of(split)
    assert plan.replicas is not None and [split.layers[i].name for i in plan.drawing] == ["drop0", "drop"]
    dropped = split.blobs["dropped"].data
    assert 0.2 < float((dropped == 0).mean()) < 0.8  # masks were applied (ratio 0.5 by default)


def test_an_error_in_a_share_says_which_samples():
    net = _classifier(32)
    net.blobs["label"].data[20] = 7  # not a class of the five
    with pytest.raises(netdef.NetdefError, match=r"position 4\b.*samples 16\.\.31 of the batch"):
        _step(net, 2)


def test_accuracy_and_loss_blobs_are_batch_means():
    net = _classifier(33)
    _step(net, 2)
    replicas = batch_split.plan_of(net).replicas
    acc = [r.net.blobs["accuracy"].data for r in replicas]
    assert float(net.blobs["accuracy"].data) == pytest.approx((16 * acc[0] + 17 * acc[1]) / 33)
    loss = [float(r.net.blobs["loss"].data) for r in replicas]
    assert float(net.blobs["loss"].data) == pytest.approx((16 * loss[0] + 17 * loss[1]) / 33, rel=1e-6)


def test_blobs_are_gathered_only_when_read():
    net = _classifier(32)
    _step(net, 2)
    blob = net.blobs["conv1"]
    assert blob._gather is not None and blob.shape == (32, 6, 8, 8)  # the shape is known without gathering
    pieces = [r.net.blobs["conv1"].data for r in batch_split.plan_of(net).replicas]
    numpy.testing.assert_array_equal(blob.data, numpy.concatenate(pieces))
    assert blob._gather is None and blob.data.flags.writeable
    blob.data[...] = 1.0  # a gathered blob is the user's to write, as any other
    assert float(blob.data.sum()) == blob.count


def test_whole_path_after_split_steps_uses_gathered_blobs():
    """When the thread count drops to one, the next step runs the net's own layers on the same blobs."""
    whole, net = _classifier(32), _classifier(32)
    _step(net, 2)
    assert _step(net, 1) == pytest.approx(_step(whole, 1), rel=1e-5)
    _assert_same(whole, net)


def test_a_solver_trains_the_same_on_one_thread_and_two():
    solver_text = "base_lr: 0.1 momentum: 0.9 weight_decay: 0.001 lr_policy: 'fixed' max_iter: 4 display: 0"
    body = CLASSIFIER.replace('top: "accuracy"', 'top: "accuracy" include { phase: TEST }')
    head = (
        'layer { name: "data" type: "DummyData" top: "data" top: "label" dummy_data_param {'
        " shape { dim: 32 dim: 3 dim: 8 dim: 8 } shape { dim: 32 }"
        ' data_filler { type: "gaussian" } data_filler { type: "constant" value: 2 } } }\n'
    )
    weights = []
    for k in (1, 2):
        threads.apply_policy(k)
        netdef.set_random_seed(5)
        param = parse_text(solver_text, pb.SolverParameter())
        param.net_param.CopyFrom(net_from_text(head + body))
        param.snapshot_after_train = False
        solver = netdef.get_solver(param)
        solver.step(4)
        assert (batch_split.plan_of(solver.net).replicas is not None) == (k == 2)
        weights.append({name: [b.data.copy() for b in blobs] for name, blobs in solver.net.params.items()})
    for name, blobs in weights[0].items():
        for mine, theirs in zip(weights[1][name], blobs, strict=True):
            numpy.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6, err_msg=name)


DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }'
REDUCTION = 'layer { name: "sum" type: "Reduction" bottom: "ip2" top: "sum" }'
BATCH_NORM = 'layer { name: "bn" type: "BatchNorm" bottom: "pool1" top: "pool1" }'
ACROSS_BATCH = 'layer { name: "sm" type: "Softmax" bottom: "ip2" top: "sm" softmax_param { axis: 0 } }'
# a layer put in before another, or a text replaced, and the start of the reason given
MIXING = {
    "reduction": (('layer { name: "accuracy"', REDUCTION), 'layer "sum" (type Reduction)'),
    "batch_statistics": (('layer { name: "relu1"', BATCH_NORM), 'layer "bn" (type BatchNorm)'),
    "batch_axis": (('layer { name: "accuracy"', ACROSS_BATCH), 'layer "sm" (type Softmax)'),
    "ignore_label": (('top: "loss" }', None), 'layer "loss" (type SoftmaxWithLoss)'),
}


@pytest.mark.parametrize("case", sorted(MIXING))
def test_nets_that_mix_samples_keep_the_whole_batch(case):
    (anchor, layer), reason = MIXING[case]
    new = f"{layer}\n{anchor}" if layer else 'top: "loss" loss_param { ignore_label: 1 } }'
    body = CLASSIFIER.replace(anchor, new)
    assert body != CLASSIFIER
    net, whole = _net(body, _input(32, (3, 8, 8), ())), _net(body, _input(32, (3, 8, 8), ()))
    assert _step(net, 2) == pytest.approx(_step(whole, 1), rel=1e-5)
    plan = batch_split.plan_of(net)
    assert plan.replicas is None and plan.reason.startswith(reason)


def test_small_shares_callbacks_and_one_thread_are_not_split(monkeypatch):
    small = _classifier(14)  # 7 samples a thread: under MIN_SAMPLES
    _step(small, 2)
    assert batch_split.plan_of(small).replicas is None
    # floats per sample: conv1 384, pool1 and norm1 96 each, ip1 12, ip2 5 and its two Split copies
    # 10, the label's two Split copies 2
    share = 16 * (384 + 96 + 96 + 12 + 5 + 10 + 2) * 4
    monkeypatch.setattr(batch_split, "MIN_SHARE_BYTES", share + 1)
    net = _classifier(32)
    _step(net, 2)
    assert batch_split.plan_of(net).replicas is None
    monkeypatch.setattr(batch_split, "MIN_SHARE_BYTES", share)
    net = _classifier(32)  # (a net decides once per batch shape and thread count)
    _step(net, 2)
    assert batch_split.plan_of(net).replicas is not None
    net = _classifier(32)
    _step(net, 1)
    assert batch_split.plan_of(net).replicas is None
    with monkeypatch.context() as quiet:  # a core free: the per-layer split
        quiet.setattr(threads, "crowded", lambda: False)
        _step(net, 2)
    assert batch_split.plan_of(net).replicas is None
    seen = []
    net.after_forward(seen.append)
    _step(net, 2)
    assert batch_split.plan_of(net).replicas is None and seen == list(range(len(net.layers)))


def test_a_new_thread_count_rebuilds_the_replicas():
    net = _classifier(64)
    _step(net, 2)
    assert len(batch_split.plan_of(net).replicas) == 2
    _step(net, 4)
    parts = [r.part for r in batch_split.plan_of(net).replicas]
    assert parts == [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)]


def test_blob_defer_holds_the_shape_and_gathers_once():
    blob = Blob((2, 3))
    calls = []

    def gather():
        calls.append(1)
        return numpy.ones((2, 3), numpy.float32), numpy.full((2, 3), 2, numpy.float32)

    blob.defer(gather)
    assert blob.shape == (2, 3) and blob.count == 6 and not calls
    assert float(blob.diff.sum()) == 12 and float(blob.data.sum()) == 6 and len(calls) == 1
    blob.defer(gather)
    blob.data = numpy.zeros((2, 3), numpy.float32)  # setting one array settles the other first
    assert len(calls) == 2 and float(blob.diff.sum()) == 12
    blob.defer(gather)
    blob.reshape(4, 3)  # a new shape drops the pending values
    assert blob.shape == (4, 3) and len(calls) == 2 and float(abs(blob.data).sum()) == 0
