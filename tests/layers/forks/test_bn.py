"""Tests of the fork type BN (netdef/layers/forks/bn.py): SegNet's and PSPNet's variants."""

import math

import numpy
import pytest

import netdef
from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks.bn import PSPNetBNLayer, SegNetBNLayer, bn_variant
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text
from netdef.testing import check_gpu_matches_cpu, check_gradient, forward_layer, make_layer, run_backward
from netdef.testing.parity import check_fork_case, check_fork_refusal, parametrize_fork_cases

X4 = [[[[1.0]]], [[[2.0]]], [[[3.0]]], [[[4.0]]]]  # N=4, C=1: mean 2.5, biased variance 1.25
X_HAT = numpy.array([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25)


def run(definition, bottoms, phase=pb.TRAIN, params=None, dy=None, num_top=1):
    """Set up one float64 layer, optionally set its blobs, run forward (and backward when dy is given)."""
    layer, bottom, top = forward_layer(definition, bottoms, params, num_top, phase=phase)
    if dy is not None:
        run_backward(layer, bottom, top, [dy] + [None] * (len(top) - 1))
    return layer, bottom, top


def layer_param(text):
    return parse_text(f'name: "bn" type: "BN" {text}', pb.LayerParameter(), "<test>")


# --- which fork's BN --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, variant",
    [
        ("", "PSPNet"),
        ("bn_param { }", "PSPNet"),
        ("bn_param { frozen: true momentum: 0.95 }", "PSPNet"),
        ('bn_param { slope_filler { type: "constant" value: 1 } }', "PSPNet"),
        ("bn_param { bn_mode: LEARN }", "SegNet"),
        ("bn_param { bn_mode: INFERENCE }", "SegNet"),
        ('bn_param { scale_filler { type: "constant" value: 1 } }', "SegNet"),
    ],
)
def test_variant_rule(text, variant):
    assert bn_variant(layer_param(text)) == variant
    layer = make_layer(f'type: "BN" {text}')
    assert layer.variant == variant
    assert isinstance(layer, SegNetBNLayer if variant == "SegNet" else PSPNetBNLayer)
    layer.layer_setup([netdef.Blob((2, 3, 2, 2))], [netdef.Blob(())])
    assert [b.shape for b in layer.blobs] == [(1, 3, 1, 1)] * (2 if variant == "SegNet" else 4)


def test_mixing_both_forks_fields_is_refused():
    with pytest.raises(InvalidParameterError, match=r"mixes SegNet's fields \(bn_mode\) with PSPNet's \(frozen\)"):
        make_layer('type: "BN" bn_param { bn_mode: LEARN frozen: true }')


def test_weights_of_either_fork_load_into_the_matching_variant(tmp_path):
    for text, count in (("bn_param { bn_mode: INFERENCE }", 2), ("bn_param { frozen: true }", 4)):
        definition = (
            f'name: "n" input: "x" input_shape {{ dim: 2 dim: 3 dim: 2 dim: 2 }} '
            f'layer {{ name: "bn" type: "BN" bottom: "x" top: "y" {text} }}'
        )
        path = tmp_path / "net.prototxt"
        path.write_text(definition)
        source = netdef.Net(str(path), netdef.TEST)
        assert len(source.params["bn"]) == count
        for k, blob in enumerate(source.params["bn"]):
            blob.data[...] = k + 1.5
        source.save(str(tmp_path / f"w{count}.caffemodel"))
        target = netdef.Net(str(path), netdef.TEST)
        target.copy_from(str(tmp_path / f"w{count}.caffemodel"))
        for k, blob in enumerate(target.params["bn"]):
            numpy.testing.assert_array_equal(blob.data, k + 1.5)
    # a 2-blob (SegNet) file cannot fill the 4-blob (PSPNet) layer the last definition builds: a named error
    with pytest.raises(netdef.errors.NetdefError, match="2 blobs"):
        netdef.Net(str(path), netdef.TEST).copy_from(str(tmp_path / "w2.caffemodel"))


# --- SegNet -----------------------------------------------------------------------------------
def test_segnet_learn_values_and_statistics_tops():
    layer, _, top = run('type: "BN" bn_param { bn_mode: LEARN }', [X4], params=[[[[[2.0]]]], [[[[1.0]]]]], num_top=3)
    numpy.testing.assert_allclose(top[0].data.ravel(), [-1.6832816, 0.1055728, 1.8944272, 3.6832816], rtol=1e-7)
    assert top[1].shape == top[2].shape == (1, 1, 1, 1)
    numpy.testing.assert_allclose(top[1].data.ravel(), [2.5])
    numpy.testing.assert_allclose(top[2].data.ravel(), [1.25])  # biased E[x^2] - E[x]^2, before eps


def test_segnet_learn_backward_values():
    layer, bottom, _ = run(
        'type: "BN" bn_param { bn_mode: LEARN }', [X4], params=[[[[[1.0]]]], [[[[0.0]]]]], dy=[1.0, 0.0, 0.0, 0.0]
    )
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [0.26832816, -0.35777088, -0.08944272, 0.17888544], rtol=1e-7)
    numpy.testing.assert_allclose(layer.blobs[0].diff.ravel(), [X_HAT[0]])  # sum(dy * x_hat)
    numpy.testing.assert_allclose(layer.blobs[1].diff.ravel(), [1.0])  # sum(dy)


def test_segnet_learn_uses_batch_statistics_in_test_phase_too():
    _, _, top = run('type: "BN" bn_param { bn_mode: LEARN }', [X4], phase=pb.TEST, params=[[[[[1.0]]]], [[[[0.0]]]]])
    numpy.testing.assert_allclose(top[0].data.ravel(), X_HAT, rtol=1e-7)


def test_segnet_inference_values_and_backward():
    x = [[[[1.0, 2.0]], [[3.0, -1.0]]]]  # N=1, C=2, H=1, W=2
    layer, bottom, top = run(
        'type: "BN" bn_param { bn_mode: INFERENCE }',
        [x],
        params=[[[[[2.0]], [[-1.0]]]], [[[[1.0]], [[0.5]]]]],
        dy=[[[[1.0, 1.0]], [[2.0, 0.0]]]],
    )
    numpy.testing.assert_allclose(top[0].data, [[[[3.0, 5.0]], [[-2.5, 1.5]]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[[[2.0, 2.0]], [[-2.0, 0.0]]]])  # scale * dy
    numpy.testing.assert_allclose(layer.blobs[0].diff.ravel(), [3.0, 6.0])  # sum(x * dy)
    numpy.testing.assert_allclose(layer.blobs[1].diff.ravel(), [2.0, 2.0])


def test_segnet_2d_bottom_gives_4d_top():
    _, _, top = run('type: "BN" bn_param { bn_mode: LEARN }', [numpy.arange(6.0).reshape(3, 2)])
    assert top[0].shape == (3, 2, 1, 1)


def test_segnet_constant_channel_is_shift():
    x = numpy.full((2, 1, 2, 2), 0.5)
    _, _, top = run('type: "BN" bn_param { bn_mode: LEARN }', [x], params=[[[[[3.0]]]], [[[[0.25]]]]])
    numpy.testing.assert_allclose(top[0].data, 0.25)


def test_segnet_fillers():
    layer, _, _ = run(
        'type: "BN" bn_param { scale_filler { type: "constant" value: 1 } '
        'shift_filler { type: "constant" value: 0.001 } }',
        [numpy.ones((1, 2, 1, 1))],
    )
    numpy.testing.assert_allclose(layer.blobs[0].data.ravel(), [1, 1])
    numpy.testing.assert_allclose(layer.blobs[1].data.ravel(), [0.001, 0.001])


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (4, 2)])
def test_segnet_gradient(mode, shape):
    rng = numpy.random.default_rng(0)
    layer = make_layer(
        f'type: "BN" bn_param {{ bn_mode: {mode} scale_filler {{ type: "uniform" min: 0.5 max: 2 }} '
        'shift_filler { type: "gaussian" std: 0.5 } }'
    )
    check_gradient(layer, [rng.normal(0, 1, shape)])


# --- PSPNet -----------------------------------------------------------------------------------
def test_pspnet_train_values_and_running_statistics():
    layer, bottom, top = run('type: "BN" bn_param { eps: 0 }', [X4], params=[[[[[2.0]]]], [[[[1.0]]]]])
    numpy.testing.assert_allclose(top[0].data.ravel(), 2 * X_HAT + 1, rtol=1e-7)
    numpy.testing.assert_allclose(layer.blobs[2].data.ravel(), [0.25], rtol=1e-6)  # (1 - 0.9) * 2.5 + 0.9 * 0
    numpy.testing.assert_allclose(layer.blobs[3].data.ravel(), [0.125], rtol=1e-6)  # biased variance 1.25
    layer.forward(bottom, top)
    numpy.testing.assert_allclose(layer.blobs[2].data.ravel(), [0.25 + 0.9 * 0.25], rtol=1e-6)


def test_pspnet_test_phase_and_frozen_use_running_statistics():
    params = [[[[[2.0]]]], [[[[1.0]]]], [[[[2.0]]]], [[[[4.0]]]]]  # running mean 2, variance 4
    for text, phase in (("bn_param { eps: 0 }", pb.TEST), ("bn_param { eps: 0 frozen: true }", pb.TRAIN)):
        layer, _, top = run(f'type: "BN" {text}', [X4], phase=phase, params=params)
        numpy.testing.assert_allclose(top[0].data.ravel(), 2 * (numpy.array([1, 2, 3, 4]) - 2) / 2 + 1)
        numpy.testing.assert_allclose(layer.blobs[2].data.ravel(), [2.0])  # not updated
        numpy.testing.assert_allclose(layer.blobs[3].data.ravel(), [4.0])


def test_pspnet_frozen_backward_has_no_parameter_gradients():
    params = [[[[[2.0]]]], [[[[1.0]]]], [[[[2.0]]]], [[[[4.0]]]]]
    layer, bottom, _ = run('type: "BN" bn_param { eps: 0 frozen: true }', [X4], params=params, dy=[1.0, 2.0, 3.0, 4.0])
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [1.0, 2.0, 3.0, 4.0])  # dy * slope / sqrt(var)
    for blob in layer.blobs:
        numpy.testing.assert_array_equal(blob.diff, 0)


def test_pspnet_train_backward_values_accumulate_parameter_gradients():
    layer, bottom, top = run(
        'type: "BN" bn_param { eps: 0 }', [X4], params=[[[[[1.0]]]], [[[[0.0]]]]], dy=[1.0, 0.0, 0.0, 0.0]
    )
    numpy.testing.assert_allclose(bottom[0].diff.ravel(), [0.26832816, -0.35777088, -0.08944272, 0.17888544], rtol=1e-6)
    layer.backward(top, [True], bottom)
    numpy.testing.assert_allclose(layer.blobs[0].diff.ravel(), [2 * X_HAT[0]], rtol=1e-6)
    numpy.testing.assert_allclose(layer.blobs[1].diff.ravel(), [2.0])


def test_pspnet_defaults_and_statistics_never_learned():
    layer = make_layer('type: "BN"')
    layer.layer_setup([netdef.Blob((2, 3, 2, 2))], [netdef.Blob(())])
    assert layer.momentum == pytest.approx(0.9) and layer.eps == pytest.approx(1e-5)
    for blob in layer.blobs:  # absent fillers are constant 0, running variance 0 when not frozen
        numpy.testing.assert_array_equal(blob.data, 0)
    assert [p.lr_mult for p in layer.param.param] == [1, 1, 0, 0]
    frozen = make_layer('type: "BN" bn_param { frozen: true }')
    frozen.layer_setup([netdef.Blob((2, 3, 2, 2))], [netdef.Blob(())])
    numpy.testing.assert_array_equal(frozen.blobs[3].data, 1)  # running variance starts at 1 when frozen
    assert [p.lr_mult for p in frozen.param.param] == [0, 0, 0, 0]


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (5, 2)])
def test_pspnet_gradient(shape):
    rng = numpy.random.default_rng(1)
    fillers = 'slope_filler { type: "uniform" min: 0.5 max: 2 } bias_filler { type: "gaussian" std: 0.5 }'
    check_gradient(make_layer(f'type: "BN" bn_param {{ {fillers} }}'), [rng.normal(0, 1, shape)])
    # frozen: an affine map of x; the fork writes no slope/bias gradients, so only the bottom is checked
    check_gradient(
        make_layer(f'type: "BN" bn_param {{ frozen: true {fillers} }}'), [rng.normal(0, 1, shape)], check_params=False
    )


# --- refusals -----------------------------------------------------------------------------------
def test_too_many_axes_refused():
    for text in ("", "bn_param { bn_mode: LEARN }"):
        with pytest.raises(ShapeMismatchError, match=r"at most 4 axes. Received shape \(2, 2, 2, 2, 2\)"):
            run(f'type: "BN" {text}', [numpy.ones((2, 2, 2, 2, 2))])


def test_channel_change_after_setup_refused():
    layer, bottom, top = run('type: "BN"', [numpy.ones((2, 3, 2, 2))])
    bottom[0].reshape((2, 4, 2, 2))
    with pytest.raises(ShapeMismatchError, match="set up for 3 channels"):
        layer.reshape(bottom, top)


def test_segnet_inference_takes_one_top():
    with pytest.raises(BlobCountError, match="INFERENCE produces exactly 1 top. Received: 3"):
        run('type: "BN" bn_param { bn_mode: INFERENCE }', [numpy.ones((2, 3, 2, 2))], num_top=3)


REFUSALS = {
    "bn_5d": (ShapeMismatchError, "at most 4 axes"),
    "bn_inference_3tops": (BlobCountError, "INFERENCE produces exactly 1 top. Received: 3"),
    "bn_two_bottoms": (BlobCountError, "exactly 1 bottom"),
}


@parametrize_fork_cases(["segnet", "pspnet"], {"BN"}, "refused")
def test_fork_refusals(case):
    check_fork_refusal(case, REFUSALS)


# --- parity with the forks --------------------------------------------------------------------
@parametrize_fork_cases("segnet", {"BN"})
def test_segnet_parity(case):
    check_fork_case(case)


@parametrize_fork_cases("pspnet", {"BN"})
def test_pspnet_parity(case):
    check_fork_case(case)


# --- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "text, phase",
    [
        ("bn_param { bn_mode: LEARN scale_filler { type: 'gaussian' } }", pb.TRAIN),
        ("bn_param { bn_mode: INFERENCE scale_filler { type: 'gaussian' } }", pb.TEST),
        ("bn_param { slope_filler { type: 'gaussian' } }", pb.TRAIN),
        ("bn_param { slope_filler { type: 'gaussian' } }", pb.TEST),
        ("bn_param { frozen: true slope_filler { type: 'gaussian' } }", pb.TRAIN),
    ],
)
def test_gpu_matches_cpu(text, phase):
    x = numpy.random.default_rng(2).normal(0, 1, (3, 4, 5, 6))
    check_gpu_matches_cpu(f'type: "BN" {text}', [x], phase=phase)
