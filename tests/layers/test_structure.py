"""Tests of netdef/layers/structure.py: literal values, gradients, Caffe parity and errors per layer type."""

from __future__ import annotations

import numpy
import pytest

import netdef
from netdef.blob import Blob
from netdef.errors import BlobCountError, InvalidParameterError, NetdefError, ShapeMismatchError
from netdef.testing import (
    check_gpu_matches_cpu,
    check_gradient,
    check_layer_error,
    forward_layer,
    make_layer,
    rand,
    run_backward,
    run_layer,
)
from netdef.testing.parity import (
    check_layer_case,
    check_parity_covers,
    layer_cases,
    parametrize_layer_cases,
    parity_root,
)

TYPES = {
    "Split",
    "Flatten",
    "Silence",
    "Concat",
    "Slice",
    "Reshape",
    "Tile",
    "Crop",
    "Filter",
    "BatchReindex",
}
RNG = numpy.random.default_rng(5)


def arr(x) -> numpy.ndarray:
    return numpy.asarray(x, dtype=numpy.float64)


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
    check_parity_covers(TYPES)


# --- Split -------------------------------------------------------------------------------
SPLIT = 'type: "Split" top: "a" top: "b" top: "c"'


def test_split_values_share_memory_and_sum_diffs():
    x = arr([[1, 2], [3, 4]])
    layer, bottom, top = forward_layer(SPLIT, [x])
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


# --- Flatten -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, shape",
    [
        ("", (2, 12)),
        ("axis: 0", (24,)),
        ("axis: 1 end_axis: 1", (2, 3, 4)),
        ("axis: -2", (2, 12)),
        ("axis: 0 end_axis: 1", (6, 4)),
    ],
)
def test_flatten_shapes_views(params, shape):
    x = numpy.arange(24.0).reshape(2, 3, 4)
    layer, bottom, top = forward_layer(f'type: "Flatten" flatten_param {{ {params} }}', [x])
    assert top[0].shape == shape
    numpy.testing.assert_array_equal(top[0].data.reshape(-1), numpy.arange(24.0))
    assert numpy.shares_memory(top[0].data, bottom[0].data)
    run_backward(layer, bottom, top, [numpy.arange(24.0)])
    numpy.testing.assert_array_equal(bottom[0].diff, x)


def test_flatten_gradient():
    check_gradient(make_layer('type: "Flatten"'), [rand(2, 2, 3)])


def test_flatten_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type Flatten\): end_axis must not come before.*axis 2"):
        forward_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', [rand(2, 3, 4)])
    with pytest.raises(InvalidParameterError, match="end_axis 5 is out of range"):
        forward_layer('type: "Flatten" flatten_param { end_axis: 5 }', [rand(2, 3, 4)])


# --- Silence -----------------------------------------------------------------------------
def test_silence_zeros_requested_diffs():
    layer, bottom, top = forward_layer('type: "Silence"', [rand(2, 2), rand(3)], num_top=0)
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
        forward_layer('type: "Silence"', [rand(2)], num_top=1)


# --- Concat ------------------------------------------------------------------------------
def test_concat_values_and_backward():
    layer, bottom, top = forward_layer('type: "Concat"', [[[1, 2]], [[3]], [[4, 5]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2, 3, 4, 5]])
    run_backward(layer, bottom, top, [[[6, 7, 8, 9, 10]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[6, 7]])
    numpy.testing.assert_array_equal(bottom[1].diff, [[8]])
    numpy.testing.assert_array_equal(bottom[2].diff, [[9, 10]])
    assert all(b.diff.flags.c_contiguous for b in bottom)


def test_concat_legacy_concat_dim():
    layer, bottom, top = forward_layer('type: "Concat" concat_param { concat_dim: 0 }', [[[1, 2]], [[3, 4]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2], [3, 4]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_gradient(axis):
    text = f'type: "Concat" concat_param {{ axis: {axis} }}'
    check_gradient(make_layer(text), [rand(2, 3, 2), rand(2, 3, 2, seed=1)])


def test_concat_errors():
    with pytest.raises(ShapeMismatchError, match=r"\(type Concat\).*bottom 0 \(2, 3\), bottom 1 \(3, 3\)"):
        forward_layer('type: "Concat"', [rand(2, 3), rand(3, 3)])
    with pytest.raises(InvalidParameterError, match="either axis or concat_dim.*axis 1, concat_dim 1"):
        forward_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [rand(2, 3), rand(2, 3)])
    with pytest.raises(InvalidParameterError, match="concat_dim is out of range.*Received: 2"):
        forward_layer('type: "Concat" concat_param { concat_dim: 2 }', [rand(2, 3), rand(2, 3)])


# --- Slice -------------------------------------------------------------------------------
def test_slice_points_values_and_backward():
    text = 'type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 4 }'
    layer, bottom, top = forward_layer(text, [[[0, 1, 2, 3, 4, 5]]])
    assert [t.data.tolist() for t in top] == [[[0]], [[1, 2, 3]], [[4, 5]]]
    run_backward(layer, bottom, top, [[[9]], [[8, 7, 6]], [[5, 4]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[9, 8, 7, 6, 5, 4]])


def test_slice_equal_parts_legacy_slice_dim():
    text = 'type: "Slice" top: "a" top: "b" slice_param { slice_dim: 0 }'
    layer, bottom, top = forward_layer(text, [[[1], [2], [3], [4]]])
    assert [t.data.tolist() for t in top] == [[[1], [2]], [[3], [4]]]


@pytest.mark.parametrize("params", ["axis: 1 slice_point: 2", "axis: 2", "axis: 0"])
def test_slice_gradient(params):
    text = f'type: "Slice" top: "a" top: "b" slice_param {{ {params} }}'
    check_gradient(make_layer(text), [rand(2, 3, 2)])


@pytest.mark.parametrize(
    "params, message",
    [
        ("slice_point: 3", r"inside \(0, 3\).*Received: \[3\]"),
        ("slice_point: 0", r"strictly increasing.*Received: \[0\]"),
        ("slice_point: 1 slice_point: 2", "one slice_point fewer than tops.*Received: 2 points"),
        ("", "divide evenly.*3 % 2"),
        ("axis: 1 slice_dim: 1", "either axis or slice_dim"),
    ],
)
def test_slice_errors(params, message):
    text = f'type: "Slice" top: "a" top: "b" slice_param {{ {params} }}'
    with pytest.raises(InvalidParameterError, match=r"\(type Slice\).*" + message):
        forward_layer(text, [rand(2, 3)])


# --- Reshape -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, shape",
    [
        ("shape { dim: 0 dim: -1 }", (2, 12)),
        ("shape { dim: -1 dim: 0 dim: 2 }", (4, 3, 2)),
        ("axis: 1 num_axes: 1 shape { dim: 3 dim: 1 }", (2, 3, 1, 4)),
        ("axis: -1 num_axes: 0 shape { dim: 1 }", (2, 3, 4, 1)),
        ("axis: 0 num_axes: 2 shape { dim: -1 }", (6, 4)),
        ("shape { dim: 24 }", (24,)),
    ],
)
def test_reshape_shapes_views(params, shape):
    x = numpy.arange(24.0).reshape(2, 3, 4)
    layer, bottom, top = forward_layer(f'type: "Reshape" reshape_param {{ {params} }}', [x])
    assert top[0].shape == shape
    assert numpy.shares_memory(top[0].data, bottom[0].data)
    numpy.testing.assert_array_equal(top[0].data.reshape(-1), numpy.arange(24.0))
    run_backward(layer, bottom, top, [numpy.arange(24.0)])
    numpy.testing.assert_array_equal(bottom[0].diff, x)


def test_reshape_gradient():
    check_gradient(make_layer('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } }'), [rand(2, 3, 2)])


@pytest.mark.parametrize(
    "params, message, cls",
    [
        ("shape { dim: -1 dim: -1 }", "at most one -1.*Received: \\[-1, -1\\]", InvalidParameterError),
        ("shape { dim: 5 dim: -1 }", "count 24.*not divisible by.*5", ShapeMismatchError),
        ("shape { dim: 5 dim: 5 }", "holds 25 values but the bottom \\(2, 3, 4\\) holds 24", ShapeMismatchError),
        ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "no axis 3 to copy", InvalidParameterError),
        ("axis: 4 shape { dim: 1 }", "axis is out of range.*Received: 4", InvalidParameterError),
        ("axis: 2 num_axes: 2 shape { dim: 1 }", "past the last axis.*axis 2, num_axes 2", InvalidParameterError),
    ],
)
def test_reshape_errors(params, message, cls):
    with pytest.raises(cls, match=r"\(type Reshape\).*" + message):
        forward_layer(f'type: "Reshape" reshape_param {{ {params} }}', [rand(2, 3, 4)])


# --- Tile --------------------------------------------------------------------------------
def test_tile_values_and_backward():
    layer, bottom, top = forward_layer('type: "Tile" tile_param { tiles: 2 }', [[[1, 2], [3, 4]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2, 1, 2], [3, 4, 3, 4]])
    run_backward(layer, bottom, top, [[[1, 2, 3, 4], [5, 6, 7, 8]]])
    numpy.testing.assert_array_equal(bottom[0].diff, [[4, 6], [12, 14]])
    layer, bottom, top = forward_layer('type: "Tile" tile_param { axis: 0 tiles: 2 }', [[[1, 2], [3, 4]]])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2], [3, 4], [1, 2], [3, 4]])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_tile_gradient(axis):
    check_gradient(make_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: 3 }}'), [rand(2, 2, 2)])


def test_tile_errors():
    with pytest.raises(InvalidParameterError, match=r"\(type Tile\): tile_param.tiles.*Received: \(not set\)"):
        forward_layer('type: "Tile"', [rand(2, 2)])
    with pytest.raises(InvalidParameterError, match="tiles must be a positive.*Received: 0"):
        forward_layer('type: "Tile" tile_param { tiles: 0 }', [rand(2, 2)])


# --- Filter ------------------------------------------------------------------------------
FILTER = 'type: "Filter" top: "a" top: "b"'


def test_filter_values_and_backward():
    data, other, selector = [[1, 2], [3, 4], [5, 6]], [10, 20, 30], [1, 0, 2]
    layer, bottom, top = forward_layer(FILTER, [data, other, selector])
    numpy.testing.assert_array_equal(top[0].data, [[1, 2], [5, 6]])
    numpy.testing.assert_array_equal(top[1].data, [10, 30])
    run_backward(layer, bottom, top, [[[7, 8], [9, 10]], [1, 2]], propagate_down=[True, True, False])
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
        forward_layer('type: "Filter"', [rand(3, 2), rand(3, 2)])
    with pytest.raises(ShapeMismatchError, match="first dimension 3. Received: bottom 0 shape \\(2, 2\\)"):
        forward_layer('type: "Filter"', [rand(2, 2), rand(3)])
    with pytest.raises(InvalidParameterError, match="one top per data bottom.*Received: 2 tops"):
        forward_layer(FILTER, [rand(3, 2), rand(3)])


# --- BatchReindex ------------------------------------------------------------------------
def test_batch_reindex_values_and_backward():
    layer, bottom, top = forward_layer('type: "BatchReindex"', [[[1], [2], [3]], [2, 0, 2]])
    numpy.testing.assert_array_equal(top[0].data, [[3], [1], [3]])
    run_backward(layer, bottom, top, [[[1], [2], [4]]], propagate_down=[True, False])
    numpy.testing.assert_array_equal(bottom[0].diff, [[2], [0], [5]])
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


def test_batch_reindex_gradient():
    check_gradient(make_layer('type: "BatchReindex"'), [rand(3, 2, 2), arr([2, 0, 2, 1, 2])], check_bottoms=[0])


def test_batch_reindex_errors():
    with pytest.raises(NetdefError, match=r"\(type BatchReindex\): reindex indices must lie in \[0, 3\).*to 3"):
        forward_layer('type: "BatchReindex"', [rand(3, 2), [0, 3]])
    with pytest.raises(ShapeMismatchError, match="index bottom must be 1-D. Received: shape \\(2, 1\\)"):
        forward_layer('type: "BatchReindex"', [rand(3, 2), [[0], [1]]])


# --- Crop --------------------------------------------------------------------------------
def test_crop_values():
    x = numpy.arange(40.0).reshape(1, 2, 4, 5)
    ref = numpy.zeros((1, 2, 2, 3))
    _, top = run_layer(make_layer('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }'), [x, ref])
    numpy.testing.assert_array_equal(top[0].data, x[:, :, 1:3, 2:5])
    _, top = run_layer(make_layer('type: "Crop" crop_param { offset: 1 }'), [x, ref])
    numpy.testing.assert_array_equal(top[0].data[0, 1], [[26, 27, 28], [31, 32, 33]])
    # axis 1 crops channels too; the reference's batch size is ignored
    _, top = run_layer(make_layer('type: "Crop" crop_param { axis: 1 }'), [x, numpy.zeros((3, 1, 3, 3))])
    numpy.testing.assert_array_equal(top[0].data, x[:, :1, :3, :3])


def test_crop_backward():
    x = numpy.arange(12.0).reshape(1, 1, 3, 4)
    layer = make_layer('type: "Crop" crop_param { axis: 2 offset: 1 }')
    bottom, top = run_layer(layer, [x, numpy.zeros((1, 1, 2, 2))])
    top[0].diff = numpy.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    bottom[1].diff[...] = 9.0
    layer.backward(top, [True, True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff[0, 0], [[0, 0, 0, 0], [0, 1, 2, 0], [0, 3, 4, 0]])
    assert numpy.all(bottom[1].diff == 0)
    assert not layer.allow_force_backward(1)


def test_crop_gradient():
    layer = make_layer('type: "Crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }')
    result = check_gradient(layer, [RNG.standard_normal((2, 3, 3, 5)), numpy.zeros((2, 2, 2, 2))], check_bottoms=[0])
    assert result["checked"] == 2 * 3 * 3 * 5


@pytest.mark.parametrize(
    "definition,shapes,error,needle",
    [
        (
            'type: "Crop" crop_param { axis: 2 offset: 1 offset: 1 offset: 1 }',
            [(1, 1, 4, 4), (1, 1, 2, 2)],
            InvalidParameterError,
            "Received: 3 offsets",
        ),
        (
            'type: "Crop" crop_param { axis: 2 offset: 3 }',
            [(1, 1, 4, 4), (1, 1, 2, 2)],
            ShapeMismatchError,
            "offset 3 + size 2 > input size 4",
        ),
        ('type: "Crop" crop_param { axis: 4 }', [(1, 1, 4, 4), (1, 1, 2, 2)], InvalidParameterError, "Received: 4"),
        ('type: "Crop"', [(1, 1, 4, 4), (1, 2, 2)], ShapeMismatchError, "at least as many axes"),
    ],
)
def test_crop_invalid_parameters(definition, shapes, error, needle):
    check_layer_error(definition, [numpy.zeros(s) for s in shapes], error, needle)


# --- GPU: the same bodies on CuPy ---------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize(
    "text, shapes",
    [
        ('type: "Slice" top: "a" top: "b" slice_param { slice_point: 1 }', [(2, 3)]),
        ('type: "Tile" tile_param { tiles: 2 }', [(2, 3)]),
    ],
)
def test_gpu_matches_cpu(text, shapes):
    check_gpu_matches_cpu(text, [rand(*s, seed=i) for i, s in enumerate(shapes)])
