"""Tests of ROIPooling (Fast/Faster R-CNN) and PSROIPooling (R-FCN) (netdef/layers/forks/rcnn.py).

Reference cases from the real Faster R-CNN fork live in ``shared/parity/forks/frcnn`` (forward only:
the fork's CPU backward is not implemented); the tests skip them cleanly when that folder is absent.
The backward and PSROIPooling are checked against hand computations and loop versions written from
the forks' rules, and numerically.
"""

import math
import re

import numpy
import pytest

from netdef.errors import DataSourceError, InvalidParameterError, ShapeMismatchError
from netdef.layers.forks import fork_layer_types
from netdef.testing import check_gpu_matches_cpu, check_gradient, make_layer, run_layer
from netdef.testing.parity import check_fork_case, check_fork_refusal, fork_case_net, parametrize_fork_cases

ROI = 'type: "ROIPooling" roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} spatial_scale: {scale} }}'
PSROI = 'type: "PSROIPooling" psroi_pooling_param {{ output_dim: {d} group_size: {g} spatial_scale: {scale} }}'
GRID = numpy.arange(16.0).reshape(1, 1, 4, 4)


def roi(ph=2, pw=2, scale=1.0):
    return ROI.format(ph=ph, pw=pw, scale=scale)


def psroi(d=1, g=2, scale=1.0):
    return PSROI.format(d=d, g=g, scale=scale)


def run(definition, bottoms, dy=None, propagate=None):
    """Set up one float64 layer, run forward, and backward with top diff ``dy`` when given."""
    layer = make_layer(definition)
    bottom, top = run_layer(layer, bottoms)
    if dy is not None:
        top[0].diff = numpy.asarray(dy, dtype=numpy.float64).reshape(top[0].shape)
        layer.backward(top, propagate or [True, False], bottom)
    return layer, bottom, top


def test_registered_as_fork_types():
    origins = fork_layer_types()
    assert "Faster R-CNN" in origins["ROIPooling"]
    assert origins["PSROIPooling"] == ("R-FCN",)


# --- ROIPooling: literal values ----------------------------------------------------------------
def test_roi_whole_map_2x2_bins():
    _, _, top = run(roi(), [GRID, [[0, 0, 0, 3, 3]]])
    assert top[0].shape == (1, 1, 2, 2)
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[5, 7], [13, 15]])


def test_roi_one_cell_bins_copy_the_box():
    _, _, top = run(roi(), [GRID, [[0, 1, 1, 2, 2]]])
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[5, 6], [9, 10]])


def test_roi_coordinates_round_half_away_from_zero():
    # 5 * 0.5 = 2.5 -> 3 (round half to even would give 2): box rows/cols 1..3, bins [0,2) and [1,3) of 1.5
    _, _, top = run(roi(scale=0.5), [GRID, [[0, 1, 1, 5, 5]]])
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[10, 11], [14, 15]])
    # -0.5 -> -1 and 0.5 -> 1: a 3x3 box from -1 whose first row and column of bins are off the map
    _, _, top = run(roi(ph=3, pw=3), [GRID, [[0, -0.5, -0.5, 0.5, 0.5]]])
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[0, 0, 0], [0, 0, 1], [0, 4, 5]])


def test_roi_batch_index_truncates_and_picks_the_image():
    x = numpy.stack([GRID[0], GRID[0] + 100])
    _, _, top = run(roi(ph=1, pw=1), [x, [[1.9, 0, 0, 1, 1], [0.7, 0, 0, 1, 1]]])
    numpy.testing.assert_array_equal(top[0].data.reshape(-1), [105, 5])


def test_roi_inverted_box_is_one_cell_and_outside_box_is_zero():
    _, _, top = run(roi(), [GRID, [[0, 2, 1, 0, 0], [0, 10, 10, 12, 12]]])
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[6, 6], [6, 6]])
    numpy.testing.assert_array_equal(top[0].data[1, 0], [[0, 0], [0, 0]])


def test_roi_rows_of_shape_r511_and_channels():
    x = numpy.concatenate([GRID, -GRID], axis=1)
    _, _, top = run(roi(ph=1, pw=2), [x, numpy.array([[0, 0, 0, 3, 1]]).reshape(1, 5, 1, 1)])
    assert top[0].shape == (1, 2, 1, 2)
    numpy.testing.assert_array_equal(top[0].data[0], [[[5, 7]], [[0, -2]]])


def test_roi_backward_adds_to_each_bins_argmax():
    rois = [[0, 0, 0, 3, 3], [0, 0, 0, 1, 1]]
    dy = [[1, 2, 3, 4], [10, 20, 30, 40]]
    _, bottom, _ = run(roi(), [GRID, rois], dy=dy, propagate=[True, True])
    want = numpy.zeros(16)
    want[[0, 1, 4, 5, 7, 13, 15]] = [10, 20, 30, 1 + 40, 2, 3, 4]
    numpy.testing.assert_array_equal(bottom[0].diff.reshape(-1), want)
    numpy.testing.assert_array_equal(bottom[1].diff, numpy.zeros((2, 5)))


def test_roi_backward_ties_go_to_the_first_maximum_and_empty_bins_give_nothing():
    ones = numpy.ones((1, 1, 4, 4))
    _, bottom, _ = run(roi(), [ones, [[0, 0, 0, 3, 3], [0, 9, 9, 12, 12]]], dy=numpy.ones((2, 4)))
    want = numpy.zeros(16)
    want[[0, 2, 8, 10]] = 1
    numpy.testing.assert_array_equal(bottom[0].diff.reshape(-1), want)


# --- ROIPooling: an independent loop version of the fork's rules --------------------------------
def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def roi_reference(x, rois, ph_n, pw_n, scale):
    """Loops written from the fork's rules, in the dtype of ``x`` (the fork's Dtype); returns (top, argmax)."""
    f = x.dtype.type
    n, c, h, w = x.shape
    rois = numpy.asarray(rois, dtype=f).reshape(len(rois), -1)
    top = numpy.zeros((len(rois), c, ph_n, pw_n), dtype=f)
    arg = -numpy.ones(top.shape, dtype=int)
    for r, row in enumerate(rois):
        b = int(row[0])
        x1, y1, x2, y2 = (c_round(float(f(v) * f(scale))) for v in row[1:5])
        bh = f(max(y2 - y1 + 1, 1)) / f(ph_n)
        bw = f(max(x2 - x1 + 1, 1)) / f(pw_n)
        for ph in range(ph_n):
            for pw in range(pw_n):
                hs = min(max(math.floor(f(ph) * bh) + y1, 0), h)
                he = min(max(math.ceil(f(ph + 1) * bh) + y1, 0), h)
                ws = min(max(math.floor(f(pw) * bw) + x1, 0), w)
                we = min(max(math.ceil(f(pw + 1) * bw) + x1, 0), w)
                for ch in range(c):
                    best, at = -numpy.inf, -1
                    for i in range(hs, he):
                        for j in range(ws, we):
                            if x[b, ch, i, j] > best:
                                best, at = x[b, ch, i, j], i * w + j
                    top[r, ch, ph, pw] = best if at >= 0 else 0
                    arg[r, ch, ph, pw] = at
    return top, arg


def random_rois(rng, num, n, size, scale):
    """Integer image boxes, some partly outside the map and some inverted."""
    span = size / scale
    xy = rng.integers(int(-0.2 * span), int(1.1 * span), size=(num, 4)).astype(float)
    return numpy.concatenate([rng.integers(0, n, size=(num, 1)), xy], axis=1)


@pytest.mark.parametrize(
    "pooled,scale,ties",
    [((7, 7), 1 / 16, False), ((3, 2), 0.125, False), ((2, 5), 1.0, False), ((3, 3), 0.25, True), ((1, 1), 1.0, True)],
)
def test_roi_matches_loop_version(pooled, scale, ties):
    rng = numpy.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 11)).astype(numpy.float32)
    if ties:  # few distinct values: the argmax must be the first maximum in row-major order
        x = numpy.floor(x).clip(-1, 1)
    rois = random_rois(rng, 12, 2, 11, scale)
    layer = make_layer(roi(*pooled, scale), dtype=numpy.float32)
    _, top = run_layer(layer, [x, rois])
    want, want_arg = roi_reference(x, rois, *pooled, scale)
    numpy.testing.assert_array_equal(top[0].data, want)
    numpy.testing.assert_array_equal(layer._arg, want_arg)


def test_roi_backward_matches_loop_version():
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((2, 2, 8, 8))
    rois = random_rois(rng, 9, 2, 8, 1.0)
    dy = rng.standard_normal((9, 2, 3, 3))
    _, bottom, _ = run(roi(3, 3), [x, rois], dy=dy)
    _, arg = roi_reference(x, rois, 3, 3, 1.0)
    want = numpy.zeros(x.shape)
    for (r, ch, i, j), at in numpy.ndenumerate(arg):
        if at >= 0:
            want[int(rois[r, 0]), ch].reshape(-1)[at] += dy[r, ch, i, j]
    numpy.testing.assert_allclose(bottom[0].diff, want, rtol=1e-12, atol=1e-12)


def test_roi_gradient():
    rng = numpy.random.default_rng(7)
    x = rng.permutation(2 * 2 * 7 * 9).reshape(2, 2, 7, 9) * 0.01  # distinct values: no ties
    rois = [[0, 0, 0, 8, 6], [1, 2, 1, 5, 5], [1, -3, -2, 3, 2], [0, 4, 3, 4, 3], [0, 20, 20, 30, 30]]
    result = check_gradient(make_layer(roi(3, 2)), [x, rois], check_bottoms=[0])
    assert result["checked"] == x.size


def test_roi_gradient_with_spatial_scale():
    rng = numpy.random.default_rng(8)
    x = rng.standard_normal((1, 3, 6, 6))
    rois = [[0, 0, 0, 95, 95], [0, 30, 17, 70, 60]]
    check_gradient(make_layer(roi(2, 2, 1 / 16)), [x, rois], check_bottoms=[0])


def test_roi_tables_built_a_channel_at_a_time_give_the_same_result(monkeypatch):
    from netdef.layers.forks import rcnn

    monkeypatch.setattr(rcnn, "_TABLE_BUDGET", 1)
    rng = numpy.random.default_rng(9)
    x = rng.standard_normal((1, 2, 6, 7)).astype(numpy.float32)
    rois = random_rois(rng, 5, 1, 7, 1.0)
    _, top = run_layer(make_layer(roi(2, 3), dtype=numpy.float32), [x, rois])
    numpy.testing.assert_array_equal(top[0].data, roi_reference(x, rois, 2, 3, 1.0)[0])


def test_roi_no_boxes():
    _, _, top = run(roi(), [GRID, numpy.zeros((0, 5))])
    assert top[0].shape == (0, 1, 2, 2)


# --- ROIPooling: refusals -----------------------------------------------------------------------
def test_roi_missing_param_is_refused():
    with pytest.raises(InvalidParameterError, match=r"pooled_h must be > 0. Received: 0"):
        run('type: "ROIPooling"', [GRID, [[0, 0, 0, 1, 1]]])


@pytest.mark.parametrize("index,shown", [(1, "1"), (-1, "-1"), (5.5, "5")])
def test_roi_batch_index_outside_the_batch_is_refused(index, shown):
    with pytest.raises(DataSourceError, match=rf"box 1 .* Received: batch index {shown}\. Valid: 0 \.\. 0"):
        run(roi(), [GRID, [[0, 0, 0, 1, 1], [index, 0, 0, 1, 1]]])


@pytest.mark.parametrize(
    "x,rois,message",
    [
        (GRID[0], [[0, 0, 0, 1, 1]], "4-D feature map"),
        (GRID, [[0, 0, 0, 1]], r"boxes of shape \(R, 5\)"),
        (GRID, [0, 0, 0, 1, 1], r"Received: shape \(5,\)"),
    ],
)
def test_roi_bad_shapes_are_refused(x, rois, message):
    with pytest.raises(ShapeMismatchError, match=message):
        run(roi(), [x, rois])


# --- PSROIPooling -------------------------------------------------------------------------------
def ps_grid(d=1, g=2, h=4, w=4):
    """Channel k holds 100 * k + (row * w + column)."""
    c = d * g * g
    return (100.0 * numpy.arange(c)[:, None, None] + numpy.arange(h * w).reshape(h, w))[None]


def test_psroi_whole_box_means_of_position_channels():
    _, _, top = run(psroi(), [ps_grid(), [[0, 0, 0, 3, 3]]])
    assert top[0].shape == (1, 1, 2, 2)
    numpy.testing.assert_allclose(top[0].data[0, 0], [[2.5, 104.5], [210.5, 312.5]])


def test_psroi_scaled_box_has_overlapping_bins():
    # start round(1) * 0.5 = 0.5, end (4 + 1) * 0.5 = 2.5: bins [floor(0.5), ceil(1.5)) = [0, 2) and [1, 3)
    _, _, top = run(psroi(scale=0.5), [ps_grid(), [[0, 1, 1, 4, 4]]])
    numpy.testing.assert_allclose(top[0].data[0, 0], [[2.5, 103.5], [206.5, 307.5]])


def test_psroi_coordinates_round_half_away_before_scaling():
    _, _, top = run(psroi(), [ps_grid(), [[0, 0.5, 0.5, 2.4, 2.4]]])
    numpy.testing.assert_allclose(top[0].data[0, 0], [[5, 106], [209, 310]])


def test_psroi_tiny_box_is_at_least_a_tenth_and_outside_is_zero():
    # inverted box: width max(2 - 2, 0.1): every bin is [2, 3) on both axes
    _, _, top = run(psroi(), [ps_grid(), [[0, 2, 2, 1, 1], [0, 10, 10, 12, 12]]])
    numpy.testing.assert_allclose(top[0].data[0, 0], [[10, 110], [210, 310]])
    numpy.testing.assert_array_equal(top[0].data[1], numpy.zeros((1, 2, 2)))


def test_psroi_output_dims_and_batch():
    x = numpy.concatenate([ps_grid(d=2), ps_grid(d=2) + 1000])
    _, _, top = run(psroi(d=2), [x, [[1, 0, 0, 3, 3]]])
    assert top[0].shape == (1, 2, 2, 2)
    numpy.testing.assert_allclose(top[0].data[0, 1], [[1402.5, 1504.5], [1610.5, 1712.5]])


def test_psroi_backward_spreads_evenly():
    _, bottom, _ = run(psroi(), [ps_grid(), [[0, 0, 0, 3, 3]]], dy=[1, 2, 3, 4], propagate=[True, True])
    want = numpy.zeros((4, 4, 4))
    want[0, :2, :2], want[1, :2, 2:], want[2, 2:, :2], want[3, 2:, 2:] = 0.25, 0.5, 0.75, 1.0
    numpy.testing.assert_allclose(bottom[0].diff[0], want, atol=1e-15)
    numpy.testing.assert_array_equal(bottom[1].diff, numpy.zeros((1, 5)))


def psroi_reference(x, rois, d, g, scale):
    """Loops written from R-FCN's forward rules, in float32; returns the top and each bin's cells."""
    f = numpy.float32
    _, _, h, w = x.shape
    top = numpy.zeros((len(rois), d, g, g), dtype=f)
    cells = {}
    for r, row in enumerate(numpy.asarray(rois, dtype=f)):
        b = int(row[0])
        sw, sh = f(c_round(row[1])) * f(scale), f(c_round(row[2])) * f(scale)
        ew, eh = f(c_round(row[3]) + 1.0) * f(scale), f(c_round(row[4]) + 1.0) * f(scale)
        bh, bw = max(eh - sh, f(0.1)) / f(g), max(ew - sw, f(0.1)) / f(g)
        for ct in range(d):
            for i in range(g):
                for j in range(g):
                    hs = min(max(math.floor(f(i) * bh + sh), 0), h)
                    he = min(max(math.ceil(f(i + 1) * bh + sh), 0), h)
                    ws = min(max(math.floor(f(j) * bw + sw), 0), w)
                    we = min(max(math.ceil(f(j + 1) * bw + sw), 0), w)
                    ch = (ct * g + i) * g + j
                    cells[r, ct, i, j] = (b, ch, hs, he, ws, we)
                    if he > hs and we > ws:
                        top[r, ct, i, j] = x[b, ch, hs:he, ws:we].astype(numpy.float64).mean()
    return top, cells


def test_psroi_matches_loop_version_forward_and_backward():
    rng = numpy.random.default_rng(11)
    d, g, scale = 2, 3, 0.25
    x = rng.standard_normal((2, d * g * g, 7, 8)).astype(numpy.float32)
    rois = numpy.concatenate([rng.integers(0, 2, (10, 1)), rng.uniform(-6, 36, (10, 4))], axis=1)
    layer = make_layer(psroi(d, g, scale), dtype=numpy.float32)
    bottom, top = run_layer(layer, [x, rois])
    want, cells = psroi_reference(x, rois, d, g, scale)
    numpy.testing.assert_allclose(top[0].data, want, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(top[0].shape).astype(numpy.float32)
    top[0].diff = dy
    layer.backward(top, [True, False], bottom)
    dx = numpy.zeros(x.shape)
    for key, (b, ch, hs, he, ws, we) in cells.items():
        if he > hs and we > ws:
            dx[b, ch, hs:he, ws:we] += dy[key] / ((he - hs) * (we - ws))
    numpy.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-5, atol=1e-6)


def test_psroi_gradient():
    rng = numpy.random.default_rng(12)
    x = rng.standard_normal((2, 2 * 2 * 2, 5, 6))
    rois = [[0, 0, 0, 5, 4], [1, 1.2, 0.7, 3.6, 4.1], [1, -2, -1, 2, 2], [0, 3, 3, 2, 2], [0, 40, 40, 50, 50]]
    result = check_gradient(make_layer(psroi(2, 2)), [x, rois], check_bottoms=[0])
    assert result["checked"] == x.size


def test_psroi_missing_params_are_refused():
    with pytest.raises(InvalidParameterError, match="spatial_scale is required"):
        run('type: "PSROIPooling" psroi_pooling_param { output_dim: 1 group_size: 2 }', [ps_grid(), [[0] * 5]])
    with pytest.raises(InvalidParameterError, match="group_size must be > 0. Received: 0"):
        run('type: "PSROIPooling" psroi_pooling_param { output_dim: 1 spatial_scale: 1 }', [ps_grid(), [[0] * 5]])


def test_psroi_channel_count_must_fit():
    with pytest.raises(ShapeMismatchError, match=r"2 \* 2\^2 = 8 channels .* Received: 4 channels"):
        run(psroi(d=2), [ps_grid(), [[0, 0, 0, 1, 1]]])


def test_psroi_batch_index_outside_the_batch_is_refused():
    with pytest.raises(DataSourceError, match="Received: batch index 3"):
        run(psroi(), [ps_grid(), [[3, 0, 0, 1, 1]]])


# --- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_roi_gpu_matches_cpu():
    rng = numpy.random.default_rng(13)
    x = rng.standard_normal((2, 3, 9, 10))
    check_gpu_matches_cpu(roi(3, 3, 0.5), [x, random_rois(rng, 7, 2, 10, 0.5)])


@pytest.mark.gpu
def test_psroi_gpu_matches_cpu():
    rng = numpy.random.default_rng(14)
    x = rng.standard_normal((2, 2 * 3 * 3, 9, 10))
    rois = numpy.concatenate([rng.integers(0, 2, (6, 1)), rng.uniform(-4, 24, (6, 4))], axis=1)
    check_gpu_matches_cpu(psroi(2, 3, 0.5), [x, rois])


# --- parity with the Faster R-CNN fork -----------------------------------------------------------
@parametrize_fork_cases("frcnn", {"ROIPooling"})
def test_roi_parity_with_faster_rcnn_fork(case):
    assert "top_0" in check_fork_case(case, rtol=1e-6, atol=1e-6)


#: what each refusal case needs in its inputs, and the error netdef gives
REFUSAL_ROIS = {
    "roi_batch_index_oob": [[0, 0, 0, 1, 1], [2, 0, 0, 1, 1]],
    "roi_batch_index_neg": [[-1, 0, 0, 1, 1]],
}
REFUSALS = {
    "roi_batch_index_oob": (DataSourceError, re.escape("Valid: 0 .. 1")),
    "roi_batch_index_neg": (DataSourceError, re.escape("batch index -1")),
    "roi_no_param": (InvalidParameterError, re.escape("pooled_h must be > 0")),
}


def feed_rois(net, case):
    net.blobs["b1"].data[...] = REFUSAL_ROIS[case["case"]]


@parametrize_fork_cases("frcnn", {"ROIPooling"}, "refused")
def test_roi_fork_refusals_are_refused(case):
    check_fork_refusal(case, REFUSALS, feed=feed_rois)


@parametrize_fork_cases("frcnn", {"ROIPooling"}, "cuda")
def test_roi_backward_case_runs_like_the_cuda_kernel(case):
    net = fork_case_net(case)
    rng = numpy.random.default_rng(int.from_bytes(case["case"].encode(), "little") % 2**32)
    x = rng.permutation(net.blobs["b0"].count).reshape(net.blobs["b0"].shape).astype(numpy.float32)
    rois = random_rois(rng, net.blobs["b1"].shape[0], 1, 8, 1.0)
    net.blobs["b0"].data[...] = x
    net.blobs["b1"].data[...] = rois
    net.forward()
    dy = rng.standard_normal(net.blobs["t0"].shape).astype(numpy.float32)
    net.blobs["t0"].diff[...] = dy
    net.backward()
    top, arg = roi_reference(x, rois, 2, 2, 1.0)
    numpy.testing.assert_array_equal(net.blobs["t0"].data, top)
    want = numpy.zeros(x.shape)
    for (r, ch, i, j), at in numpy.ndenumerate(arg):
        if at >= 0:
            want[0, ch].reshape(-1)[at] += dy[r, ch, i, j]
    numpy.testing.assert_allclose(net.blobs["b0"].diff, want, rtol=1e-6, atol=1e-6)
