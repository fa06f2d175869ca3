"""Tests of netdef/layers/common.py: literal values, gradients, Caffe parity and errors per layer type."""
from __future__ import annotations

import numpy
import pytest

from netdef import backend
from netdef.blob import Blob
from netdef.errors import BlobCountError, InvalidParameterError, NetdefError, ShapeMismatchError
from netdef.testing import check_gradient, make_layer
from netdef.testing.parity import check_layer_case, layer_cases, parametrize_layer_cases, parity_root

TYPES = {
    "Split", "InnerProduct", "Softmax", "Flatten", "Parameter", "Silence", "Concat", "Slice", "Reshape", "Tile",
    "Eltwise", "Reduction", "ArgMax", "Embed", "Filter", "BatchReindex",
}


def arr(x) -> numpy.ndarray:
    return numpy.asarray(x, dtype=numpy.float64)


def setup_layer(text: str, bottoms, params=None, num_top: int | None = None, dtype=numpy.float64):
    """Build a layer on ``bottoms``, set its parameter blobs to ``params``, run forward."""
    layer = make_layer(text, dtype=dtype)
    bottom = []
    for i, x in enumerate(bottoms):
        b = Blob(numpy.shape(x), dtype=dtype, xp=numpy, name=f"b{i}")
        b.data = numpy.array(x, dtype=dtype)
        bottom.append(b)
    n = num_top if num_top is not None else max(len(layer.param.top), 1)
    top = [Blob((), dtype=dtype, xp=numpy, name=f"t{k}") for k in range(n)]
    layer.layer_setup(bottom, top)
    for blob, value in zip(layer.blobs, params or [], strict=False):
        blob.data[...] = value
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def run_backward(layer, bottom, top, top_diffs, propagate=None):
    for t, d in zip(top, top_diffs, strict=True):
        t.diff = arr(d).reshape(t.shape)
    for p in layer.blobs:
        p.diff = numpy.zeros_like(p.data)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.backward(top, propagate if propagate is not None else [True] * len(bottom), bottom)


def rand(*shape, seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape)


# --- parity with Caffe -------------------------------------------------------------------
CASES = layer_cases(TYPES)


@parametrize_layer_cases(TYPES)
def test_parity(case):
    if case is not None and case["type"] == "Silence" and parity_root() is not None:
        # Silence has no tops, so the shared runner compares nothing: check its backward here.
        assert silence_backward_case(case["case"])
    else:
        check_layer_case(case)


def silence_backward_case(case: str) -> dict:
    """Silence has no tops, so the shared runner skips backward; Caffe's bottom diffs are zeros after one."""
    import netdef

    root = parity_root() / "layers"
    ref = numpy.load(root / f"{case}.npz")
    net = netdef.Net(str(root / f"{case}.prototxt"), netdef.TRAIN)
    keys = [k for k in ref if k.startswith("bottom_diff_")]
    for key in keys:
        net.blobs[f"b{key.rsplit('_', 1)[1]}"].diff[...] = 1
    net.forward()
    net.backward()
    for key in keys:
        numpy.testing.assert_array_equal(net.blobs[f"b{key.rsplit('_', 1)[1]}"].diff, ref[key])
    return dict.fromkeys(keys, 0.0)


def test_parity_covers_every_type():
    if parity_root() is None:
        pytest.skip("shared/parity not available")
    missing = TYPES - {c["type"] for c in CASES}
    assert not missing, f"no parity case for {sorted(missing)}"


# --- Split -------------------------------------------------------------------------------
SPLIT = 'type: "Split" top: "a" top: "b" top: "c"'


def test_split_values_share_memory_and_sum_diffs():
    x = arr([[1, 2], [3, 4]])
    layer, bottom, top = setup_layer(SPLIT, [x])
    for t in top:
        numpy.testing.assert_array_equal(t.data, x)
        assert numpy.shares_memory(t.data, bottom[0].data)
    run_backward(layer, bottom, top, [[[1, 0], [0, 1]], [[2, 2], [2, 2]], [[0, 0], [5, 0]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[3, 2], [7, 3]])


def test_split_gradient():
    check_gradient(make_layer(SPLIT), [rand(2, 3)])


def test_split_rejects_in_place():
    layer = make_layer('type: "Split" top: "x"')
    b = Blob((2,), dtype=numpy.float64, xp=numpy, name="x")
    with pytest.raises(InvalidParameterError, match='Layer "L" \\(type Split\\).*in place'):
        layer.layer_setup([b], [b])


# --- InnerProduct ------------------------------------------------------------------------
IP = 'type: "InnerProduct" inner_product_param { num_output: 2 %s }'
W = arr([[1, 0, -1], [2, 1, 0]])


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_values(transpose):
    w = W.T if transpose else W
    layer, bottom, top = setup_layer(IP % f"transpose: {str(transpose).lower()}", [[[1, 2, 3]]], [w, [0.5, -1]])
    assert layer.blobs[0].shape == ((3, 2) if transpose else (2, 3))
    numpy.testing.assert_allclose(top[0].data, [[-1.5, 3]])
    run_backward(layer, bottom, top, [[[1, 2]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[5, 2, -1]])
    dw = arr([[1, 2, 3], [2, 4, 6]])
    numpy.testing.assert_allclose(layer.blobs[0].diff, dw.T if transpose else dw)
    numpy.testing.assert_allclose(layer.blobs[1].diff, [1, 2])


def test_inner_product_axis_and_no_bias():
    x = rand(2, 3, 2, 2)
    layer, bottom, top = setup_layer(IP % "axis: 2 bias_term: false", [x], [rand(2, 4, seed=1)])
    assert len(layer.blobs) == 1 and top[0].shape == (2, 3, 2)
    want = numpy.einsum("abk,nk->abn", x.reshape(2, 3, 4), layer.blobs[0].data)
    numpy.testing.assert_allclose(top[0].data, want)


@pytest.mark.parametrize("extra", ["", "transpose: true", "axis: 2"])
def test_inner_product_gradient(extra):
    fill = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'
    check_gradient(make_layer(IP % f"{extra} {fill}"), [rand(2, 3, 2)])


def test_inner_product_errors():
    with pytest.raises(InvalidParameterError, match='"L" \\(type InnerProduct\\).*num_output.*Received'):
        setup_layer('type: "InnerProduct"', [rand(2, 3)])
    layer, bottom, top = setup_layer(IP % "", [rand(2, 3)])
    bottom[0].reshape((2, 4))
    with pytest.raises(ShapeMismatchError, match="input size 4.*expect 3"):
        layer.reshape(bottom, top)


# --- Softmax -----------------------------------------------------------------------------
def test_softmax_values_and_backward():
    layer, bottom, top = setup_layer('type: "Softmax"', [[[0, numpy.log(3)], [1000, 1000]]])
    numpy.testing.assert_allclose(top[0].data, [[0.25, 0.75], [0.5, 0.5]])
    run_backward(layer, bottom, top, [[[1, 0], [0, 0]]])
    numpy.testing.assert_allclose(bottom[0].diff, [[3 / 16, -3 / 16], [0, 0]])


def test_softmax_in_place():
    layer = make_layer('type: "Softmax" softmax_param { axis: 0 }')
    b = Blob((2,), dtype=numpy.float64, xp=numpy, name="x")
    b.data = arr([0, numpy.log(3)])
    layer.layer_setup([b], [b])
    layer.forward([b], [b])
    numpy.testing.assert_allclose(b.data, [0.25, 0.75])
    b.diff = arr([1, 0])
    layer.backward([b], [True], [b])
    numpy.testing.assert_allclose(b.diff, [3 / 16, -3 / 16])


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_softmax_gradient(axis):
    check_gradient(make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}'), [rand(2, 3, 2)])


def test_softmax_axis_error():
    with pytest.raises(InvalidParameterError, match=r"\(type Softmax\): axis 3 .*Received: 3"):
        setup_layer('type: "Softmax" softmax_param { axis: 3 }', [rand(2, 3)])


# --- Flatten -----------------------------------------------------------------------------
@pytest.mark.parametrize("params, shape", [("", (2, 12)), ("axis: 0", (24,)), ("axis: 1 end_axis: 1", (2, 3, 4)),
                                           ("axis: -2", (2, 12)), ("axis: 0 end_axis: 1", (6, 4))])
def test_flatten_shapes_views(params, shape):
    x = numpy.arange(24.0).reshape(2, 3, 4)
    layer, bottom, top = setup_layer(f'type: "Flatten" flatten_param {{ {params} }}', [x])
    assert top[0].shape == shape
    numpy.testing.assert_array_equal(top[0].data.reshape(-1), numpy.arange(24.0))
    assert numpy.shares_memory(top[0].data, bottom[0].data)
    run_backward(layer, bottom, top, [numpy.arange(24.0)])
    numpy.testing.assert_array_equal(bottom[0].diff, x)


def test_flatten_gradient():
    check_gradient(make_layer('type: "Flatten"'), [rand(2, 2, 3)])


def test_flatten_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type Flatten\): end_axis must not come before.*axis 2"):
        setup_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', [rand(2, 3, 4)])
    with pytest.raises(InvalidParameterError, match="end_axis 5 is out of range"):
        setup_layer('type: "Flatten" flatten_param { end_axis: 5 }', [rand(2, 3, 4)])


# --- Parameter ---------------------------------------------------------------------------
PARAM = 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }'


def test_parameter_top_is_blob_and_diffs_add():
    layer, bottom, top = setup_layer(PARAM, [], [numpy.arange(6.0).reshape(2, 3)])
    assert top[0].shape == (2, 3)
    numpy.testing.assert_array_equal(top[0].data, [[0, 1, 2], [3, 4, 5]])
    run_backward(layer, bottom, top, [numpy.ones((2, 3))])
    layer.backward(top, [], bottom)
    numpy.testing.assert_array_equal(layer.blobs[0].diff, numpy.full((2, 3), 2.0))


def test_parameter_gradient():
    check_gradient(make_layer(PARAM), [])


def test_parameter_negative_shape_error():
    with pytest.raises(InvalidParameterError, match=r"\(type Parameter\).*Received: \(2, -1\)"):
        setup_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: -1 } }', [])


# --- Silence -----------------------------------------------------------------------------
def test_silence_zeros_requested_diffs():
    layer, bottom, top = setup_layer('type: "Silence"', [rand(2, 2), rand(3)], num_top=0)
    assert top == []
    for b in bottom:
        b.diff = numpy.ones(b.shape)
    layer.backward(top, [True, False], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.zeros((2, 2)))
    numpy.testing.assert_array_equal(bottom[1].diff, numpy.ones(3))


def test_silence_gradient():
    result = check_gradient(make_layer('type: "Silence"'), [rand(2, 2)], num_top=0)
    assert result["checked"] == 4


def test_silence_takes_no_tops():
    with pytest.raises(BlobCountError, match=r"\(type Silence\).*exactly 0 top.*Received: 1"):
        setup_layer('type: "Silence"', [rand(2)], num_top=1)


# --- Concat ------------------------------------------------------------------------------
def test_concat_values_and_backward():
    layer, bottom, top = setup_layer('type: "Concat"', [[[1, 2]], [[3]], [[4, 5]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2, 3, 4, 5]])
    run_backward(layer, bottom, top, [[[6, 7, 8, 9, 10]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[6, 7]])
    numpy.testing.assert_array_equal(bottom[1].diff, [[8]])
    numpy.testing.assert_array_equal(bottom[2].diff, [[9, 10]])
    assert all(b.diff.flags.c_contiguous for b in bottom)


def test_concat_legacy_concat_dim():
    layer, bottom, top = setup_layer('type: "Concat" concat_param { concat_dim: 0 }', [[[1, 2]], [[3, 4]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2], [3, 4]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_gradient(axis):
    text = f'type: "Concat" concat_param {{ axis: {axis} }}'
    check_gradient(make_layer(text), [rand(2, 3, 2), rand(2, 3, 2, seed=1)])


def test_concat_errors():
    with pytest.raises(ShapeMismatchError, match=r"\(type Concat\).*bottom 0 \(2, 3\), bottom 1 \(3, 3\)"):
        setup_layer('type: "Concat"', [rand(2, 3), rand(3, 3)])
    with pytest.raises(InvalidParameterError, match="either axis or concat_dim.*axis 1, concat_dim 1"):
        setup_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [rand(2, 3), rand(2, 3)])
    with pytest.raises(InvalidParameterError, match="concat_dim is out of range.*Received: 2"):
        setup_layer('type: "Concat" concat_param { concat_dim: 2 }', [rand(2, 3), rand(2, 3)])


# --- Slice -------------------------------------------------------------------------------
def test_slice_points_values_and_backward():
    text = 'type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 4 }'
    layer, bottom, top = setup_layer(text, [[[0, 1, 2, 3, 4, 5]]])
    assert [t.data.tolist() for t in top] == [[[0]], [[1, 2, 3]], [[4, 5]]]
    run_backward(layer, bottom, top, [[[9]], [[8, 7, 6]], [[5, 4]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[9, 8, 7, 6, 5, 4]])


def test_slice_equal_parts_legacy_slice_dim():
    text = 'type: "Slice" top: "a" top: "b" slice_param { slice_dim: 0 }'
    layer, bottom, top = setup_layer(text, [[[1], [2], [3], [4]]])
    assert [t.data.tolist() for t in top] == [[[1], [2]], [[3], [4]]]


@pytest.mark.parametrize("params", ["axis: 1 slice_point: 2", "axis: 2", "axis: 0"])
def test_slice_gradient(params):
    text = f'type: "Slice" top: "a" top: "b" slice_param {{ {params} }}'
    check_gradient(make_layer(text), [rand(2, 3, 2)])


@pytest.mark.parametrize("params, message", [
    ("slice_point: 3", r"inside \(0, 3\).*Received: \[3\]"),
    ("slice_point: 0", r"strictly increasing.*Received: \[0\]"),
    ("slice_point: 1 slice_point: 2", "one slice_point fewer than tops.*Received: 2 points"),
    ("", "divide evenly.*3 % 2"),
    ("axis: 1 slice_dim: 1", "either axis or slice_dim"),
])
def test_slice_errors(params, message):
    text = f'type: "Slice" top: "a" top: "b" slice_param {{ {params} }}'
    with pytest.raises(InvalidParameterError, match=r"\(type Slice\).*" + message):
        setup_layer(text, [rand(2, 3)])


# --- Reshape -----------------------------------------------------------------------------
@pytest.mark.parametrize("params, shape", [
    ("shape { dim: 0 dim: -1 }", (2, 12)),
    ("shape { dim: -1 dim: 0 dim: 2 }", (4, 3, 2)),
    ("axis: 1 num_axes: 1 shape { dim: 3 dim: 1 }", (2, 3, 1, 4)),
    ("axis: -1 num_axes: 0 shape { dim: 1 }", (2, 3, 4, 1)),
    ("axis: 0 num_axes: 2 shape { dim: -1 }", (6, 4)),
    ("shape { dim: 24 }", (24,)),
])
def test_reshape_shapes_views(params, shape):
    x = numpy.arange(24.0).reshape(2, 3, 4)
    layer, bottom, top = setup_layer(f'type: "Reshape" reshape_param {{ {params} }}', [x])
    assert top[0].shape == shape
    assert numpy.shares_memory(top[0].data, bottom[0].data)
    numpy.testing.assert_array_equal(top[0].data.reshape(-1), numpy.arange(24.0))
    run_backward(layer, bottom, top, [numpy.arange(24.0)])
    numpy.testing.assert_array_equal(bottom[0].diff, x)


def test_reshape_gradient():
    check_gradient(make_layer('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } }'), [rand(2, 3, 2)])


@pytest.mark.parametrize("params, message, cls", [
    ("shape { dim: -1 dim: -1 }", "at most one -1.*Received: \\[-1, -1\\]", InvalidParameterError),
    ("shape { dim: 5 dim: -1 }", "count 24.*not divisible by.*5", ShapeMismatchError),
    ("shape { dim: 5 dim: 5 }", "holds 25 values but the bottom \\(2, 3, 4\\) holds 24", ShapeMismatchError),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "no axis 3 to copy", InvalidParameterError),
    ("axis: 4 shape { dim: 1 }", "axis is out of range.*Received: 4", InvalidParameterError),
    ("axis: 2 num_axes: 2 shape { dim: 1 }", "past the last axis.*axis 2, num_axes 2", InvalidParameterError),
])
def test_reshape_errors(params, message, cls):
    with pytest.raises(cls, match=r"\(type Reshape\).*" + message):
        setup_layer(f'type: "Reshape" reshape_param {{ {params} }}', [rand(2, 3, 4)])


# --- Tile --------------------------------------------------------------------------------
def test_tile_values_and_backward():
    layer, bottom, top = setup_layer('type: "Tile" tile_param { tiles: 2 }', [[[1, 2], [3, 4]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2, 1, 2], [3, 4, 3, 4]])
    run_backward(layer, bottom, top, [[[1, 2, 3, 4], [5, 6, 7, 8]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[4, 6], [12, 14]])
    layer, bottom, top = setup_layer('type: "Tile" tile_param { axis: 0 tiles: 2 }', [[[1, 2], [3, 4]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2], [3, 4], [1, 2], [3, 4]])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_tile_gradient(axis):
    check_gradient(make_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: 3 }}'), [rand(2, 2, 2)])


def test_tile_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type Tile\): tile_param.tiles.*Received: \(not set\)"):
        setup_layer('type: "Tile"', [rand(2, 2)])
    with pytest.raises(InvalidParameterError, match="tiles must be a positive.*Received: 0"):
        setup_layer('type: "Tile" tile_param { tiles: 0 }', [rand(2, 2)])


# --- Eltwise -----------------------------------------------------------------------------
A, B, C = arr([1, 5, 3]), arr([4, 5, 2]), arr([0, 6, 3])


def test_eltwise_sum_with_coeff():
    text = 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 coeff: 2 }'
    layer, bottom, top = setup_layer(text, [A, B, C])
    numpy.testing.assert_array_equal(top[0].data, [-3, 12, 7])
    run_backward(layer, bottom, top, [[1, 2, 3]])
    numpy.testing.assert_array_equal(bottom[1].diff, [-1, -2, -3])
    numpy.testing.assert_array_equal(bottom[2].diff, [2, 4, 6])
    bottom[0].diff[0] = 99  # each bottom owns its diff: no aliasing with the top's or another bottom's
    assert top[0].diff[0] == 1


def test_eltwise_prod_values_and_in_place():
    layer, bottom, top = setup_layer('type: "Eltwise" eltwise_param { operation: PROD }', [A, B, C])
    numpy.testing.assert_array_equal(top[0].data, [0, 150, 18])
    run_backward(layer, bottom, top, [[1, 1, 1]])
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 30, 6])
    numpy.testing.assert_array_equal(bottom[2].diff, [4, 25, 6])
    layer = make_layer('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }')
    bs = [Blob((3,), dtype=numpy.float64, xp=numpy) for _ in range(2)]
    bs[0].data, bs[1].data = A.copy(), B.copy()
    layer.layer_setup(bs, [bs[0]])
    layer.forward(bs, [bs[0]])
    numpy.testing.assert_array_equal(bs[0].data, [4, 25, 6])
    bs[0].diff = arr([1, 1, 1])
    layer.backward([bs[0]], [True, True], bs)
    numpy.testing.assert_array_equal(bs[1].diff, A)
    numpy.testing.assert_array_equal(bs[0].diff, B)


def test_eltwise_max_routes_like_caffe():
    layer, bottom, top = setup_layer('type: "Eltwise" eltwise_param { operation: MAX }', [A, B, C])
    numpy.testing.assert_array_equal(top[0].data, [4, 6, 3])
    run_backward(layer, bottom, top, [[1, 2, 3]])
    # A tie between bottoms 0 and 1 goes to 1; a later bottom must be strictly larger to win.
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 3])
    numpy.testing.assert_array_equal(bottom[1].diff, [1, 0, 0])
    numpy.testing.assert_array_equal(bottom[2].diff, [0, 2, 0])


@pytest.mark.parametrize("params", ["operation: SUM coeff: 0.5 coeff: -2 coeff: 1", "operation: PROD",
                                    "operation: PROD stable_prod_grad: false", "operation: MAX"])
def test_eltwise_gradient(params):
    xs = [rand(2, 3, seed=s) for s in range(3)]
    check_gradient(make_layer(f'type: "Eltwise" eltwise_param {{ {params} }}'), xs)


def test_eltwise_errors():
    with pytest.raises(ShapeMismatchError, match=r"\(type Eltwise\).*bottom 0 \(2, 3\), bottom 1 \(3, 2\)"):
        setup_layer('type: "Eltwise"', [rand(2, 3), rand(3, 2)])
    with pytest.raises(InvalidParameterError, match="one coeff per bottom \\(2\\). Received: 3 values"):
        setup_layer('type: "Eltwise" eltwise_param { coeff: 1 coeff: 2 coeff: 3 }', [rand(2), rand(2)])
    with pytest.raises(InvalidParameterError, match="SUM only.*operation PROD"):
        setup_layer('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [rand(2), rand(2)])


# --- Reduction ---------------------------------------------------------------------------
X = arr([[1, -2, 3], [-4, 5, -6]])


@pytest.mark.parametrize("op, want, dx", [
    ("SUM", [2, -5], [[1, 1, 1], [2, 2, 2]]),
    ("ASUM", [6, 15], [[1, -1, 1], [-2, 2, -2]]),
    ("SUMSQ", [14, 77], [[2, -4, 6], [-16, 20, -24]]),
    ("MEAN", [2 / 3, -5 / 3], [[1 / 3] * 3, [2 / 3] * 3]),
])
def test_reduction_values_and_backward(op, want, dx):
    layer, bottom, top = setup_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 }}', [X])
    numpy.testing.assert_allclose(top[0].data, want)
    run_backward(layer, bottom, top, [[1, 2]])
    numpy.testing.assert_allclose(bottom[0].diff, dx)


def test_reduction_all_axes_with_coeff_is_scalar():
    layer, bottom, top = setup_layer('type: "Reduction" reduction_param { coeff: 2 }', [X])
    assert top[0].shape == ()
    assert float(top[0].data) == -6
    run_backward(layer, bottom, top, [0.5])
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.ones((2, 3)))


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
def test_reduction_gradient(op):
    text = f'type: "Reduction" reduction_param {{ operation: {op} axis: -2 coeff: 0.7 }}'
    check_gradient(make_layer(text), [rand(2, 3, 2)], kink=0.0 if op == "ASUM" else None)


def test_reduction_axis_error():
    with pytest.raises(InvalidParameterError, match=r"\(type Reduction\): axis 2 .*Received: 2"):
        setup_layer('type: "Reduction" reduction_param { axis: 2 }', [X])


# --- ArgMax ------------------------------------------------------------------------------
def test_argmax_default_and_tie_order():
    layer, bottom, top = setup_layer('type: "ArgMax"', [[[1, 3, 3, 0]]])
    assert top[0].shape == (1, 1, 1)
    assert top[0].data.item() == 2  # ties rank the larger index first
    layer, bottom, top = setup_layer('type: "ArgMax"', [rand(2, 3, 2, 2)])
    assert top[0].shape == (2, 1, 1, 1)


def test_argmax_out_max_val_layout():
    text = 'type: "ArgMax" argmax_param { out_max_val: true top_k: 2 }'
    layer, bottom, top = setup_layer(text, [[[1, 3, 3, 0], [5, 4, 6, 0]]])
    assert top[0].shape == (2, 2, 2)
    numpy.testing.assert_array_equal(top[0].data, [[[2, 1], [3, 3]], [[2, 0], [6, 5]]])


@pytest.mark.parametrize("out_max_val, want", [("false", [[2, 1], [2, 0]]), ("true", [[3, 3], [6, 5]])])
def test_argmax_axis(out_max_val, want):
    text = f'type: "ArgMax" argmax_param {{ axis: 1 top_k: 2 out_max_val: {out_max_val} }}'
    layer, bottom, top = setup_layer(text, [[[1, 3, 3, 0], [5, 4, 6, 0]]])
    numpy.testing.assert_array_equal(top[0].data, want)
    x = rand(2, 4, 3)
    layer, bottom, top = setup_layer(text.replace("axis: 1", "axis: -2"), [x])
    assert top[0].shape == (2, 2, 3)
    order = numpy.argsort(-x, axis=1)[:, :2]
    expect = numpy.take_along_axis(x, order, 1) if out_max_val == "true" else order
    numpy.testing.assert_array_equal(top[0].data, expect)


def test_argmax_has_no_gradient():
    layer, bottom, top = setup_layer('type: "ArgMax"', [rand(2, 3)])
    bottom[0].diff = numpy.full((2, 3), 7.0)
    run_backward(layer, bottom, top, [[[[1]], [[1]]]])
    numpy.testing.assert_array_equal(bottom[0].diff, numpy.full((2, 3), 7.0))


def test_argmax_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type ArgMax\): top_k must not exceed.*\(3,.*top_k 4"):
        setup_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [rand(2, 3)])
    with pytest.raises(InvalidParameterError, match="top_k must be at least 1. Received: 0"):
        setup_layer('type: "ArgMax" argmax_param { top_k: 0 }', [rand(2, 3)])


# --- Embed -------------------------------------------------------------------------------
EMBED = 'type: "Embed" embed_param { input_dim: 3 num_output: 2 %s }'


def test_embed_values_and_backward():
    w = arr([[1, 2], [3, 4], [5, 6]])
    layer, bottom, top = setup_layer(EMBED % "", [[2, 0, 2]], [w, [10, 20]])
    assert layer.blobs[0].shape == (3, 2)
    numpy.testing.assert_array_equal(top[0].data, [[15, 26], [11, 22], [15, 26]])
    run_backward(layer, bottom, top, [[[1, 1], [2, 2], [3, 3]]])
    numpy.testing.assert_array_equal(layer.blobs[0].diff, [[2, 2], [0, 0], [4, 4]])  # row 2 twice: adds
    numpy.testing.assert_array_equal(layer.blobs[1].diff, [6, 6])
    numpy.testing.assert_array_equal(bottom[0].diff, [0, 0, 0])
    assert not layer.allow_force_backward(0)


def test_embed_gradient():
    fill = 'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" }'
    result = check_gradient(make_layer(EMBED % fill), [arr([[2, 0], [1, 2]])], check_bottoms=[])
    assert result["checked"] == 3 * 2 + 2


def test_embed_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type Embed\): embed_param.input_dim.*Received: 0"):
        setup_layer('type: "Embed" embed_param { num_output: 2 }', [[0]])
    with pytest.raises(NetdefError, match=r"\(type Embed\): embedding indices must lie in \[0, 3\).*to 3"):
        setup_layer(EMBED % "", [[0, 3]])


# --- Filter ------------------------------------------------------------------------------
FILTER = 'type: "Filter" top: "a" top: "b"'


def test_filter_values_and_backward():
    data, other, selector = [[1, 2], [3, 4], [5, 6]], [10, 20, 30], [1, 0, 2]
    layer, bottom, top = setup_layer(FILTER, [data, other, selector])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2], [5, 6]])
    numpy.testing.assert_array_equal(top[1].data, [10, 30])
    run_backward(layer, bottom, top, [[[7, 8], [9, 10]], [1, 2]], propagate=[True, True, False])
    numpy.testing.assert_array_equal(bottom[0].diff, [[7, 8], [0, 0], [9, 10]])
    numpy.testing.assert_array_equal(bottom[1].diff, [1, 0, 2])


def test_filter_first_reshape_keeps_all_rows():
    layer = make_layer('type: "Filter"')
    bottom = [Blob((3, 2), dtype=numpy.float64, xp=numpy), Blob((3, 1), dtype=numpy.float64, xp=numpy)]
    top = [Blob((), dtype=numpy.float64, xp=numpy)]
    layer.layer_setup(bottom, top)
    assert top[0].shape == (3, 2)  # Caffe sizes the top by the whole batch at set-up
    layer.reshape(bottom, top)
    assert top[0].shape == (0, 2)


def test_filter_gradient():
    check_gradient(make_layer('type: "Filter"'), [rand(4, 2, 2), arr([1, 0, 0, 1])], check_bottoms=[0])


def test_filter_errors():
    with pytest.raises(ShapeMismatchError, match=r"\(type Filter\): the selector.*Received: \(3, 2\)"):
        setup_layer('type: "Filter"', [rand(3, 2), rand(3, 2)])
    with pytest.raises(ShapeMismatchError, match="first dimension 3. Received: bottom 0 shape \\(2, 2\\)"):
        setup_layer('type: "Filter"', [rand(2, 2), rand(3)])
    with pytest.raises(InvalidParameterError, match="one top per data bottom.*Received: 2 tops"):
        setup_layer(FILTER, [rand(3, 2), rand(3)])


# --- BatchReindex ------------------------------------------------------------------------
def test_batch_reindex_values_and_backward():
    layer, bottom, top = setup_layer('type: "BatchReindex"', [[[1], [2], [3]], [2, 0, 2]])
    numpy.testing.assert_array_equal(top[0].data, [[3], [1], [3]])
    run_backward(layer, bottom, top, [[[1], [2], [4]]], propagate=[True, False])
    numpy.testing.assert_array_equal(bottom[0].diff, [[2], [0], [5]])
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_batch_reindex_gradient():
    check_gradient(make_layer('type: "BatchReindex"'), [rand(3, 2, 2), arr([2, 0, 2, 1, 2])], check_bottoms=[0])


def test_batch_reindex_errors():
    with pytest.raises(NetdefError, match=r"\(type BatchReindex\): reindex indices must lie in \[0, 3\).*to 3"):
        setup_layer('type: "BatchReindex"', [rand(3, 2), [0, 3]])
    with pytest.raises(ShapeMismatchError, match="index bottom must be 1-D. Received: shape \\(2, 1\\)"):
        setup_layer('type: "BatchReindex"', [rand(3, 2), [[0], [1]]])


# --- GPU: the same bodies on CuPy ---------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("text, shapes", [
    (IP % 'weight_filler { type: "gaussian" }', [(2, 3)]),
    ('type: "Softmax"', [(2, 3)]),
    ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3), (2, 3), (2, 3)]),
    ('type: "Slice" top: "a" top: "b" slice_param { slice_point: 1 }', [(2, 3)]),
    ('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [(2, 3)]),
    ('type: "Tile" tile_param { tiles: 2 }', [(2, 3)]),
])
def test_gpu_matches_cpu(text, shapes):
    if not backend.gpu_available():
        pytest.skip("CuPy or a CUDA device is not available")
    import cupy

    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    results = []
    for xp in (numpy, cupy):
        backend.set_random_seed(5)
        layer = make_layer(text, dtype=numpy.float32, xp=xp)
        bottom = []
        for x in xs:
            b = Blob(x.shape, dtype=numpy.float32, xp=xp)
            b.data = xp.asarray(x, dtype=numpy.float32)
            bottom.append(b)
        top = [Blob((), dtype=numpy.float32, xp=xp) for _ in range(max(len(layer.param.top), 1))]
        layer.layer_setup(bottom, top)
        for p in layer.blobs:
            p.data = xp.asarray(rand(*p.shape, seed=9), dtype=numpy.float32)
        layer.forward(bottom, top)
        if text.startswith('type: "ArgMax"'):
            results.append([backend.to_numpy(t.data) for t in top])
            continue
        for k, t in enumerate(top):
            t.diff = xp.asarray(rand(*t.shape, seed=20 + k), dtype=numpy.float32)
        layer.param_propagate_down = [True] * len(layer.blobs)
        layer.backward(top, [True] * len(bottom), bottom)
        results.append([backend.to_numpy(a) for a in [t.data for t in top] + [b.diff for b in bottom]])
    for cpu, gpu in zip(*results, strict=True):
        numpy.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
