"""Tests of Convolution, Deconvolution and Im2col (netdef/layers/conv.py); the kernels have test_im2col.py."""

import itertools

import numpy
import pytest

from netdef import backend
from netdef.errors import BlobCountError, InvalidParameterError, ShapeMismatchError
from netdef.layers import im2col
from netdef.testing import (
    check_empty_batch,
    check_gpu_matches_cpu,
    check_gradient,
    check_layer_error,
    forward_layer,
    make_layer,
    run_layer,
)
from netdef.testing.parity import check_layer_case, layer_cases, parametrize_layer_cases

TYPES = {"Convolution", "Deconvolution", "Im2col"}
RNG = numpy.random.default_rng(7)


def conv_layer(params: str, bottoms, weights=None, bias=None, kind="Convolution"):
    """Set up a float64 layer on ``bottoms``, load ``weights``/``bias``, run forward; return (layer, bottom, top)."""
    values = None if weights is None else [weights] + ([] if bias is None else [bias])
    return forward_layer(f'type: "{kind}" convolution_param {{ {params} }}', bottoms, values, num_top=len(bottoms))


def reference_conv(x, w, b, stride, pad, dilation, group):
    """Direct N-D cross-correlation, one output element at a time (independent of netdef)."""
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    xpad = numpy.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out_shape = [
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, p, d, k, st in zip(x.shape[2:], pad, dilation, kernel, stride, strict=True)
    ]
    y = numpy.zeros((n, o, *out_shape))
    og = o // group
    for ni, oi in itertools.product(range(n), range(o)):
        g = oi // og
        for pos in itertools.product(*(range(m) for m in out_shape)):
            acc = 0.0 if b is None else b[oi]
            for ci in range(cg):
                for k in itertools.product(*(range(kk) for kk in kernel)):
                    idx = tuple(p * st + kk * d for p, st, kk, d in zip(pos, stride, k, dilation, strict=True))
                    acc += w[(oi, ci, *k)] * xpad[(ni, g * cg + ci, *idx)]
            y[(ni, oi, *pos)] = acc
    return y


def reference_deconv(x, w, b, stride, pad, dilation, group):
    """Transposed convolution by scattering each input pixel (independent of netdef)."""
    n, cin = x.shape[:2]
    og = w.shape[1]
    kernel = w.shape[2:]
    cg = cin // group
    full = [st * (s - 1) + d * (k - 1) + 1 for s, st, d, k in zip(x.shape[2:], stride, dilation, kernel, strict=True)]
    y = numpy.zeros((n, og * group, *full))
    for ni, ci in itertools.product(range(n), range(cin)):
        g = ci // cg
        for pos in itertools.product(*(range(s) for s in x.shape[2:])):
            for k in itertools.product(*(range(kk) for kk in kernel)):
                idx = tuple(p * st + kk * d for p, st, kk, d in zip(pos, stride, k, dilation, strict=True))
                for oj in range(og):
                    y[(ni, g * og + oj, *idx)] += x[(ni, ci, *pos)] * w[(ci, oj, *k)]
    crop = tuple(slice(p, f - p) for p, f in zip(pad, full, strict=True))
    y = y[(slice(None), slice(None), *crop)]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * len(kernel))
    return y


# --- literal values ---------------------------------------------------------------------
def test_convolution_values_2x2_kernel():
    x = numpy.arange(9.0).reshape(1, 1, 3, 3)
    _, _, top = conv_layer("num_output: 1 kernel_size: 2", [x], numpy.ones((1, 1, 2, 2)), [0.5])
    # windows: 0+1+3+4, 1+2+4+5, 3+4+6+7, 4+5+7+8 (+0.5 bias)
    numpy.testing.assert_array_equal(top[0].data, [[[[8.5, 12.5], [20.5, 24.5]]]])


def test_convolution_values_pad_and_stride():
    x = numpy.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    _, _, top = conv_layer(
        "num_output: 1 kernel_size: 3 pad: 1 stride: 2 bias_term: false", [x], numpy.ones((1, 1, 3, 3))
    )
    # 3x3 neighbourhood sums at the corners of [[1,2,3],[4,5,6],[7,8,9]]
    numpy.testing.assert_array_equal(top[0].data, [[[[12, 16], [24, 28]]]])


def test_convolution_values_group_and_dilation():
    x = numpy.array([[[[1.0, 2, 3, 4, 5]], [[10, 20, 30, 40, 50]]]])  # 1 x 2 x 1 x 5
    w = numpy.array([[[[1.0, 1.0]]], [[[1.0, -1.0]]]])  # group 2: one 1x2 kernel per channel
    _, _, top = conv_layer("num_output: 2 group: 2 kernel_h: 1 kernel_w: 2 dilation: 2 bias_term: false", [x], w)
    numpy.testing.assert_array_equal(top[0].data, [[[[4, 6, 8]], [[-20, -20, -20]]]])
    # DeepLab v1 spells dilation "hole" (both axes) or "hole_h"/"hole_w"
    for holes in ("hole: 2", "hole_h: 1 hole_w: 2"):
        _, _, top = conv_layer(f"num_output: 2 group: 2 kernel_h: 1 kernel_w: 2 {holes} bias_term: false", [x], w)
        numpy.testing.assert_array_equal(top[0].data, [[[[4, 6, 8]], [[-20, -20, -20]]]])


@pytest.mark.parametrize(
    "params, needle",
    [
        ("dilation: 2 hole: 2", "either dilation or DeepLab's hole"),
        ("hole: 2 hole_w: 2", "either hole or hole_h/hole_w"),
    ],
)
def test_deeplab_holes_conflicts(params, needle):
    x = numpy.ones((1, 1, 4, 4))
    with pytest.raises(InvalidParameterError, match=needle):
        conv_layer(f"num_output: 1 kernel_size: 2 {params}", [x])


def test_convolution_values_3d_and_axis():
    x = numpy.arange(16.0).reshape(2, 1, 2, 2, 2)  # N-D: 3 spatial axes
    _, _, top = conv_layer("num_output: 1 kernel_size: 2 bias_term: false", [x], numpy.ones((1, 1, 2, 2, 2)))
    numpy.testing.assert_array_equal(top[0].data.ravel(), [28, 92])
    # axis 2: the first two axes are both "batch"
    x = numpy.arange(24.0).reshape(2, 3, 1, 4)
    _, _, top = conv_layer("num_output: 1 kernel_size: 3 axis: 2 bias_term: false", [x], numpy.ones((1, 1, 3)))
    assert top[0].shape == (2, 3, 1, 2)
    numpy.testing.assert_array_equal(top[0].data[1, 2, 0], [20 + 21 + 22, 21 + 22 + 23])


def test_convolution_several_bottoms_share_weights():
    a, b = RNG.standard_normal((2, 2, 2, 5, 5))
    layer, bottom, top = conv_layer("num_output: 3 kernel_size: 3 weight_filler { type: 'gaussian' }", [a, b])
    w = layer.blobs[0].data
    numpy.testing.assert_allclose(top[1].data, reference_conv(b, w, layer.blobs[1].data, (1, 1), (0, 0), (1, 1), 1))
    # the weight gradient sums over both bottoms
    for t in top:
        t.diff = numpy.ones(t.shape)
    layer.backward(top, [True, True], bottom)
    one = make_layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 }')
    bot1, top1 = run_layer(one, [numpy.concatenate([a, b])])
    one.blobs[0].data[...] = w
    top1[0].diff = numpy.ones(top1[0].shape)
    one.backward(top1, [True], bot1)
    numpy.testing.assert_allclose(layer.blobs[0].diff, one.blobs[0].diff)


@pytest.mark.parametrize(
    "shape,params",
    [
        ((2, 4, 6, 7), dict(kernel=(3, 2), stride=(2, 1), pad=(1, 0), dilation=(1, 2), group=2, out=4)),
        ((1, 3, 5, 20), dict(kernel=(3, 3), stride=(1, 1), pad=(1, 1), dilation=(1, 1), group=1, out=2)),  # long rows
        ((3, 2, 4, 5), dict(kernel=(1, 1), stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1, out=3)),  # 1x1
        ((2, 2, 4, 3, 5), dict(kernel=(2, 1, 3), stride=(1, 2, 2), pad=(1, 0, 1), dilation=(1, 1, 1), group=1, out=2)),
    ],
)
def test_convolution_matches_direct_reference(shape, params):
    x = RNG.standard_normal(shape)
    nd = len(shape) - 2
    p = params
    text = (
        f"num_output: {p['out']} group: {p['group']} "
        + " ".join(f"kernel_size: {k}" for k in p["kernel"])
        + " "
        + " ".join(f"stride: {s}" for s in p["stride"])
        + " "
        + " ".join(f"pad: {v}" for v in p["pad"])
        + " "
        + " ".join(f"dilation: {d}" for d in p["dilation"])
    )
    w = RNG.standard_normal((p["out"], shape[1] // p["group"], *p["kernel"]))
    bias = RNG.standard_normal(p["out"])
    _, _, top = conv_layer(text, [x], w, bias)
    want = reference_conv(x, w, bias, p["stride"], p["pad"], p["dilation"], p["group"])
    assert len(top[0].shape) == nd + 2
    numpy.testing.assert_allclose(top[0].data, want, rtol=1e-12, atol=1e-12)
    # Deconvolution with the same geometry against its own reference
    wd = RNG.standard_normal((shape[1], p["out"] // p["group"], *p["kernel"]))
    _, _, topd = conv_layer(text, [x], wd, bias, kind="Deconvolution")
    want = reference_deconv(x, wd, bias, p["stride"], p["pad"], p["dilation"], p["group"])
    numpy.testing.assert_allclose(topd[0].data, want, rtol=1e-12, atol=1e-12)


def test_convolution_in_chunks_matches_one_piece(monkeypatch):
    x = RNG.standard_normal((5, 3, 6, 6))
    params = "num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"
    results = []
    for chunk_bytes in (im2col.COL_CHUNK_BYTES, 1):  # 1 byte: one sample per chunk
        monkeypatch.setattr(im2col, "COL_CHUNK_BYTES", chunk_bytes)
        for kind in ("Convolution", "Deconvolution"):
            backend.set_random_seed(3)
            layer, bottom, top = conv_layer(params, [x], kind=kind)
            top[0].diff = numpy.cos(numpy.arange(top[0].count)).reshape(top[0].shape)
            layer.backward(top, [True], bottom)
            results.append([top[0].data, bottom[0].diff, layer.blobs[0].diff, layer.blobs[1].diff])
    for a, b in zip(results[:2], results[2:], strict=True):
        for u, v in zip(a, b, strict=True):
            numpy.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "shape,params",
    [
        ((6, 2, 5, 18), "num_output: 3 kernel_size: 3 pad: 1"),  # flat grid: stride 1, rows of 18
        ((6, 2, 7, 7), "num_output: 3 kernel_size: 3"),  # im2col, sample-last columns (short rows)
        ((6, 2, 20, 20), "num_output: 3 kernel_size: 3 stride: 2"),  # im2col, sample-major columns
    ],
)
def test_chunks_on_two_threads_match_one_piece(monkeypatch, shape, params):
    from netdef import threads

    x = RNG.standard_normal(shape)
    params += " weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"

    def run():
        backend.set_random_seed(3)
        layer, bottom, top = conv_layer(params, [x])
        top[0].diff = numpy.cos(numpy.arange(top[0].count)).reshape(top[0].shape)
        layer.backward(top, [True], bottom)
        return [top[0].data, bottom[0].diff, layer.blobs[0].diff, layer.blobs[1].diff]

    whole = run()
    monkeypatch.setattr(im2col, "COL_CHUNK_BYTES", 1)  # one sample per chunk
    monkeypatch.setattr(threads, "SPLIT_BYTES", 0)
    monkeypatch.setattr(threads._state, "current", 2)
    monkeypatch.setattr(threads._state, "fixed", True)
    shares = []
    real = threads.run_parts
    monkeypatch.setattr(threads, "run_parts", lambda fn, parts: shares.append(len(parts)) or real(fn, parts))
    for u, v in zip(run(), whole, strict=True):
        numpy.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    assert shares and all(n == shape[0] for n in shares)  # forward and backward both split the batch


def test_first_layer_weight_gradient():
    # a first layer's weight gradient is a long, skinny product (summed in K-blocks): compare with windows
    layer, bottom, top = conv_layer("num_output: 2 kernel_size: 3", [RNG.standard_normal((4, 1, 50, 50))])
    top[0].diff = RNG.standard_normal(top[0].shape)
    layer.backward(top, [False], bottom)
    windows = numpy.lib.stride_tricks.sliding_window_view(bottom[0].data[:, 0], (3, 3), axis=(1, 2))
    want = numpy.einsum("nohw,nhwij->oij", top[0].diff, windows)
    numpy.testing.assert_allclose(layer.blobs[0].diff[:, 0], want, rtol=1e-10)


def test_deconvolution_values():
    x = numpy.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    _, _, top = conv_layer(
        "num_output: 1 kernel_size: 2 bias_term: false", [x], numpy.ones((1, 1, 2, 2)), kind="Deconvolution"
    )
    numpy.testing.assert_array_equal(top[0].data, [[[[1, 3, 2], [4, 10, 6], [3, 7, 4]]]])
    w = numpy.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    _, _, top = conv_layer("num_output: 1 kernel_size: 2 stride: 2 pad: 1", [x], w, [1.0], kind="Deconvolution")
    # full 4x4 output tiles the kernel scaled by each pixel; pad 1 keeps its centre [[4, 6], [6, 4]]
    numpy.testing.assert_array_equal(top[0].data, [[[[5, 7], [7, 5]]]])


def test_deconvolution_weight_shape():
    layer, _, top = conv_layer(
        "num_output: 6 group: 2 kernel_size: 3 stride: 2", [numpy.zeros((1, 4, 3, 3))], kind="Deconvolution"
    )
    assert layer.blobs[0].shape == (4, 3, 3, 3)
    assert layer.blobs[1].shape == (6,)
    assert top[0].shape == (1, 6, 7, 7)


def test_im2col_values():
    x = numpy.arange(18.0).reshape(1, 2, 3, 3)
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 }')
    _, top = run_layer(layer, [x])
    assert top[0].shape == (1, 8, 2, 2)
    # row (c, kh, kw) holds x[c, oh + kh, ow + kw]
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[0, 1], [3, 4]])
    numpy.testing.assert_array_equal(top[0].data[0, 3], [[4, 5], [7, 8]])
    numpy.testing.assert_array_equal(top[0].data[0, 5], [[10, 11], [13, 14]])


def test_im2col_padding_and_batch():
    x = numpy.arange(8.0).reshape(2, 1, 2, 2)
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }')
    _, top = run_layer(layer, [x])
    assert top[0].shape == (2, 9, 1, 1)
    numpy.testing.assert_array_equal(top[0].data[1].ravel(), [0, 0, 0, 0, 4, 5, 0, 6, 7])


def test_fillers_fill_the_blobs():
    layer, _, _ = conv_layer(
        "num_output: 2 kernel_size: 3 weight_filler { type: 'constant' value: 0.25 } "
        "bias_filler { type: 'constant' value: -1 }",
        [numpy.zeros((1, 1, 4, 4))],
    )
    assert numpy.all(layer.blobs[0].data == 0.25) and numpy.all(layer.blobs[1].data == -1)
    assert layer.blobs[0].dtype == numpy.float64


def test_float32_stays_float32():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }', dtype=numpy.float32)
    bottom, top = run_layer(layer, [RNG.standard_normal((2, 1, 5, 5))])
    top[0].diff = numpy.ones(top[0].shape, numpy.float32)
    layer.backward(top, [True], bottom)
    assert top[0].data.dtype == bottom[0].diff.dtype == layer.blobs[0].diff.dtype == numpy.float32


@pytest.mark.parametrize(
    "definition",
    [
        'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
        'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 }',
        'type: "Im2col" convolution_param { kernel_size: 3 }',
    ],
)
def test_empty_batch(definition):
    check_empty_batch(definition, (0, 2, 5, 5))


# --- gradients --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,shape",
    [
        (
            'type: "Convolution" convolution_param { num_output: 4 group: 2 kernel_size: 3 stride: 2 pad: 1 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (2, 4, 5, 5),
        ),
        (
            'type: "Convolution" convolution_param { num_output: 2 kernel_h: 2 kernel_w: 3 dilation: 2 pad_w: 1 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (1, 2, 5, 17),
        ),
        (
            'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 kernel_size: 1 kernel_size: 2 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (2, 1, 3, 2, 3),
        ),
        (
            'type: "Deconvolution" convolution_param { num_output: 4 group: 2 kernel_size: 3 stride: 2 pad: 1 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (2, 2, 3, 3),
        ),
        (
            'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 2 dilation: 2 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (1, 2, 3, 17),
        ),
        ('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', (2, 2, 4, 5)),
        ('type: "Im2col" convolution_param { kernel_size: 2 dilation: 2 }', (1, 1, 4, 20)),
    ],
)
def test_gradients(definition, shape):
    result = check_gradient(make_layer(definition), [RNG.standard_normal(shape)])
    assert result["checked"] > 0


def test_gradients_several_bottoms():
    layer = make_layer(
        'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 weight_filler { type: "gaussian" } }'
    )
    result = check_gradient(layer, list(RNG.standard_normal((2, 2, 2, 3, 3))), num_top=2)
    assert result["checked"] > 0


def test_backward_respects_propagate_flags():
    layer, bottom, top = conv_layer(
        "num_output: 2 kernel_size: 2 weight_filler { type: 'gaussian' }", [RNG.standard_normal((2, 1, 3, 3))]
    )
    bottom[0].diff[...] = 7.0
    layer.blobs[0].diff[...] = 1.0
    layer.param_propagate_down = [False, True]
    top[0].diff = numpy.ones(top[0].shape)
    layer.backward(top, [False], bottom)
    assert numpy.all(bottom[0].diff == 7.0)
    assert numpy.all(layer.blobs[0].diff == 1.0)
    numpy.testing.assert_array_equal(layer.blobs[1].diff, [8.0, 8.0])  # ADDED: 2 samples x 4 positions
    layer.backward(top, [False], bottom)
    numpy.testing.assert_array_equal(layer.blobs[1].diff, [16.0, 16.0])


# --- parity with Caffe ---------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    check_layer_case(case)


# --- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "definition,shape,error,needle",
    [
        (
            'type: "Convolution" convolution_param { num_output: 2 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "kernel_size must be given",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 3 group: 2 kernel_size: 1 }',
            (1, 4, 4, 4),
            InvalidParameterError,
            "group=2",
        ),
        (
            'type: "Convolution" convolution_param { kernel_size: 1 }',
            (1, 4, 4, 4),
            InvalidParameterError,
            "num_output must be positive",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_h: 2 kernel_w: 2 }',
            (1, 1, 4, 4, 4),
            InvalidParameterError,
            "2-D convolution. Received: 3",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 2 kernel_h: 2 kernel_w: 2 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "not both",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_h: 2 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "together",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 2 stride: 0 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "stride must be positive",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 2 pad: 1 pad: 1 pad: 1 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "Received: 3 values",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 5 }',
            (1, 1, 4, 4),
            ShapeMismatchError,
            "larger than the padded input",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 axis: 4 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "Received: 4",
        ),
        (
            'type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 axis: 3 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "spatial axis",
        ),
        (
            'type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 1 pad: 1 }',
            (1, 1, 2, 2),
            ShapeMismatchError,
            "removes the whole output",
        ),
        (
            'type: "Im2col" convolution_param { kernel_size: 2 kernel_size: 2 kernel_size: 2 }',
            (1, 1, 4, 4),
            InvalidParameterError,
            "once per spatial axis (2)",
        ),
    ],
)
def test_invalid_parameters(definition, shape, error, needle):
    check_layer_error(definition, [numpy.zeros(shape)], error, needle)


def test_reshape_checks():
    layer, bottom, top = conv_layer("num_output: 1 kernel_size: 1", [numpy.zeros((1, 2, 3, 3))])
    bottom[0].reshape((1, 3, 3, 3))
    with pytest.raises(ShapeMismatchError, match="Received: 3. Valid: 2"):
        layer.reshape(bottom, top)
    with pytest.raises(ShapeMismatchError, match="same shape"):
        run_layer(
            make_layer('type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }'),
            [numpy.zeros((1, 1, 2, 2)), numpy.zeros((1, 1, 3, 3))],
            num_top=2,
        )
    with pytest.raises(BlobCountError):
        run_layer(
            make_layer('type: "Convolution" convolution_param { num_output: 1 kernel_size: 1 }'),
            [numpy.zeros((1, 1, 2, 2)), numpy.zeros((1, 1, 2, 2))],
            num_top=1,
        )


# --- GPU -----------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "definition,shape",
    [
        (
            'type: "Convolution" convolution_param { num_output: 4 group: 2 kernel_size: 3 stride: 2 pad: 1 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (3, 4, 9, 9),
        ),
        (
            'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
            'weight_filler { type: "gaussian" } }',
            (2, 3, 20, 20),
        ),
        (
            'type: "Deconvolution" convolution_param { num_output: 4 group: 2 kernel_size: 3 stride: 2 pad: 1 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
            (3, 2, 5, 5),
        ),
        ('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', (2, 2, 6, 7)),
    ],
)
def test_gpu_matches_cpu(definition, shape):
    check_gpu_matches_cpu(definition, [RNG.standard_normal(shape)])


def test_bottom_without_channels_is_refused():
    with pytest.raises(ShapeMismatchError, match=r"no channels on axis 1. Received: shape \(1, 0, 5, 5\)"):
        conv_layer("num_output: 2 kernel_size: 3", [numpy.ones((1, 0, 5, 5))])
