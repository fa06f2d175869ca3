"""Tests of the NumPy phase-layout pooling kernels (netdef/layers/pool_kernels.py).

The kernels are checked against a per-window loop written from Caffe's pooling rules, and against
the strided-view code that CuPy arrays still take (the same operations, another layout).
"""

import itertools

import numpy
import pytest

from netdef.layers import pool_kernels
from netdef.layers.pool_kernels import AxisPhases, PhasePlan
from netdef.layers.pooling import PoolWindows

RNG = numpy.random.default_rng(17)

# (in_hw, kernel, stride, pad): overlap, gaps, ceil borders, padding, one-axis global, a 1x1 kernel
GEOMETRIES = [
    ((32, 32), (3, 3), (2, 2), (0, 0)),
    ((7, 9), (3, 3), (2, 2), (1, 1)),
    ((6, 5), (3, 2), (1, 2), (1, 0)),
    ((7, 7), (2, 2), (3, 3), (0, 0)),
    ((5, 8), (5, 3), (1, 1), (0, 1)),
    ((4, 6), (2, 3), (2, 3), (0, 1)),
    ((9, 4), (4, 1), (3, 1), (2, 0)),
    ((3, 3), (1, 1), (2, 2), (0, 0)),
    ((1, 5), (1, 2), (1, 2), (0, 0)),
]


def reference(x, dy, kernel, stride, pad, out_hw):
    """Caffe's pooling, one window at a time: MAX (first strict maximum, row-major), its mask, and AVE."""
    n, c, height, width = x.shape
    y = numpy.full((n, c, *out_hw), numpy.finfo(x.dtype).min, dtype=x.dtype)
    mask = numpy.full(y.shape, -1.0)
    ave = numpy.zeros(y.shape, dtype=x.dtype)
    dx_max, dx_ave = numpy.zeros_like(x), numpy.zeros_like(x)
    for i, j in itertools.product(range(out_hw[0]), range(out_hw[1])):
        h0, w0 = i * stride[0] - pad[0], j * stride[1] - pad[1]
        h1, w1 = min(h0 + kernel[0], height + pad[0]), min(w0 + kernel[1], width + pad[1])
        size = (h1 - h0) * (w1 - w0)
        h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, height), min(w1, width)
        ave[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / size
        dx_ave[:, :, h0:h1, w0:w1] += (dy[:, :, i, j] / size)[:, :, None, None]
        for a, b in itertools.product(range(n), range(c)):
            for h, w in itertools.product(range(h0, h1), range(w0, w1)):
                if x[a, b, h, w] > y[a, b, i, j]:
                    y[a, b, i, j], mask[a, b, i, j] = x[a, b, h, w], h * width + w
            if mask[a, b, i, j] >= 0:
                h, w = divmod(int(mask[a, b, i, j]), width)
                dx_max[a, b, h, w] += dy[a, b, i, j]
    return y, mask, dx_max, ave, dx_ave


def split_over_two_threads(monkeypatch):
    """Make every pooling call split its chunks over two threads (netdef.threads.run_parts)."""
    monkeypatch.setattr(pool_kernels.threads, "SPLIT_BYTES", 0)
    monkeypatch.setattr(pool_kernels.threads._state, "current", 2)
    monkeypatch.setattr(pool_kernels.threads._state, "fixed", True)


@pytest.fixture(
    params=[1, 300, 1 << 19, "two-threads"],
    ids=["chunk-of-1-plane", "chunks-of-few-planes", "one-chunk", "chunks-on-two-threads"],
)
def chunk_bytes(request, monkeypatch):
    if request.param == "two-threads":
        split_over_two_threads(monkeypatch)
        monkeypatch.setattr(pool_kernels, "CHUNK_BYTES", 300)
        return 300
    monkeypatch.setattr(pool_kernels, "CHUNK_BYTES", request.param)
    return request.param


def test_axis_phases_geometry():
    # 32 wide, k3 s2: 16 windows; offsets 0,1,2 read block 0, 1, 0 shifted by 0, 0, 1; 17 per block
    axis = AxisPhases(32, 3, 2, 0, 16)
    assert [axis.offset(j) for j in range(3)] == [(0, 0), (1, 0), (0, 1)]
    assert (axis.shift, axis.length, axis.phases, axis.overlap) == (1, 17, 2, True)
    # block 0 holds columns 0, 2, .., 30 (index 16, column 32, is the ceil border's padding)
    assert axis.image(0) == (0, 16, 0) and axis.image(1) == (0, 16, 1)
    assert axis.covers_image()
    # pad 1: block 0 starts in the padding, so its image positions start at index 1 (column 1)
    padded = AxisPhases(7, 3, 2, 1, 4)
    assert padded.image(0) == (1, 4, 1) and padded.image(1) == (0, 4, 0)
    # stride 3 > kernel 2 leaves every third column out of all windows
    gaps = AxisPhases(7, 2, 3, 0, 3)
    assert gaps.phases == 2 and not gaps.overlap and not gaps.covers_image()


@pytest.mark.parametrize("in_hw,kernel,stride,pad", GEOMETRIES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_kernels_match_caffes_rules(in_hw, kernel, stride, pad, dtype, chunk_bytes):
    win = PoolWindows(in_hw, kernel, stride, pad)
    plan = PhasePlan(win)
    # small integers: many ties, so the first-maximum rule decides often
    x = RNG.integers(-3, 4, (2, 3, *in_hw)).astype(dtype)
    # integer gradients: their sums are exact in any order, so the routing is checked exactly
    dy = RNG.integers(-9, 10, (2, 3, *win.out_hw)).astype(dtype)
    y, mask, dx_max, ave, dx_ave = reference(x, dy, kernel, stride, pad, win.out_hw)
    got, state = plan.max_forward(x)
    numpy.testing.assert_array_equal(got, y)
    numpy.testing.assert_array_equal(plan.max_mask(state, x.shape, dtype), mask)
    numpy.testing.assert_array_equal(plan.max_backward(dy, state, x.shape), dx_max)
    divisors = win.divisors(numpy, dtype)
    # sums in another order: float32 rounding (a few units in the last place of values about 1)
    tol = {"rtol": 1e-6, "atol": 1e-6 if dtype == numpy.float32 else 1e-12}
    numpy.testing.assert_allclose(plan.ave_forward(x, divisors), ave, **tol)
    numpy.testing.assert_allclose(plan.ave_backward(dy, x.shape, divisors), dx_ave, **tol)


def _strided(monkeypatch, method, *args):
    """The same PoolWindows call through the strided-view code (the one CuPy arrays take)."""
    with monkeypatch.context() as m:
        m.setattr(PoolWindows, "plan", lambda self, x: None)
        return getattr(method.__self__, method.__name__)(*args)


@pytest.mark.parametrize("in_hw,kernel,stride,pad", GEOMETRIES)
def test_bit_for_bit_the_strided_code(in_hw, kernel, stride, pad, chunk_bytes, monkeypatch):
    win = PoolWindows(in_hw, kernel, stride, pad)
    x = RNG.standard_normal((2, 3, *in_hw)).astype(numpy.float32)
    x[RNG.random(x.shape) < 0.2] = numpy.nan
    x[RNG.random(x.shape) < 0.1] = -numpy.inf
    x[RNG.random(x.shape) < 0.2] = 0.0
    dy = RNG.standard_normal((2, 3, *win.out_hw)).astype(numpy.float32)
    dy[RNG.random(dy.shape) < 0.3] = -0.0

    def same(a, b):
        # a zero maximum may be +0 or -0 (NumPy's SIMD and scalar fmax loops differ there); all else bitwise
        assert a.shape == b.shape and a.dtype == b.dtype
        numpy.testing.assert_array_equal(a, b)
        differ = a.view(numpy.uint32) != b.view(numpy.uint32)
        assert numpy.all(a[differ] == 0)

    y, state = win.max_forward(x)
    y0, state0 = _strided(monkeypatch, win.max_forward, x)
    assert state[0] == "phase" and state0[0] != "phase"
    same(y, y0)
    same(win.max_mask(state, numpy.float32), win.max_mask(state0, numpy.float32))
    bits = numpy.testing.assert_array_equal
    bits(win.max_backward(dy, state, x.shape).view(numpy.uint32), win.max_backward(dy, state0, x.shape).view("u4"))
    finite = numpy.nan_to_num(x, nan=1.0, neginf=-2.0)
    bits(win.ave_forward(finite).view("u4"), _strided(monkeypatch, win.ave_forward, finite).view("u4"))
    bits(win.ave_backward(dy, x.shape).view("u4"), _strided(monkeypatch, win.ave_backward, dy, x.shape).view("u4"))


def test_calls_keep_no_buffers_and_do_not_depend_on_earlier_calls(monkeypatch):
    monkeypatch.setattr(pool_kernels, "CHUNK_BYTES", 64 * 8)  # several chunks and a partial one
    win = PoolWindows((8, 8), (3, 3), (2, 2), (0, 0))
    plan = win.plan(numpy.zeros((1, 1, 8, 8)))
    x = RNG.standard_normal((3, 5, 8, 8))
    first = plan.max_forward(x)[0]
    kept = [v for v in vars(plan).values() if isinstance(v, (dict, list, numpy.ndarray)) and len(v)]
    assert not kept
    for n in (1, 2, 7):  # other batch sizes and passes in between
        plan.ave_backward(RNG.standard_normal((n, 1, 4, 4)), (n, 1, 8, 8), win.divisors(numpy, numpy.float64))
        plan.ave_forward(RNG.standard_normal((n, 2, 8, 8)), win.divisors(numpy, numpy.float64))
    numpy.testing.assert_array_equal(plan.max_forward(x)[0], first)


def test_global_windows_and_cupy_arrays_keep_the_strided_code():
    assert PoolWindows((4, 5), (4, 5), (1, 1), (0, 0)).plan(numpy.zeros((1, 1, 4, 5))) is None
    assert PoolWindows((4, 5), (3, 3), (2, 2), (0, 0)).plan(numpy.zeros((1, 1, 4, 5))) is not None


def test_two_threads_share_the_chunks_and_give_the_same_bits(monkeypatch):
    win = PoolWindows((24, 24), (2, 2), (2, 2), (0, 0))
    plan = PhasePlan(win)
    x = RNG.standard_normal((4, 5, 24, 24)).astype(numpy.float32)
    dy = RNG.standard_normal((4, 5, 12, 12)).astype(numpy.float32)
    y1, state1 = plan.max_forward(x)
    dx1 = plan.max_backward(dy, state1, x.shape)
    split_over_two_threads(monkeypatch)
    shares = []
    real = pool_kernels.threads.run_parts
    monkeypatch.setattr(
        pool_kernels.threads, "run_parts", lambda fn, parts: shares.append(len(parts)) or real(fn, parts)
    )
    y2, state2 = plan.max_forward(x)
    assert shares == [2]  # under CHUNK_BYTES it is one chunk alone; split it is two, one per thread
    numpy.testing.assert_array_equal(y2, y1)
    numpy.testing.assert_array_equal(plan.max_backward(dy, state2, x.shape), dx1)
    masks = [plan.max_mask(state, x.shape, numpy.float32) for state in (state1, state2)]
    numpy.testing.assert_array_equal(*masks)
