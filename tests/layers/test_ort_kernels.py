"""Tests of ONNX Runtime's kernels in netdef (netdef/layers/ort_kernels.py) and the layers on them.

Skipped where ONNX Runtime is not installed or turned off (``NETDEF_ONNXRUNTIME=0``); the
NumPy paths they replace are tested by the rest of the suite, and CI runs the layer tests
once more with the variable set. The tests marked ``numpy_products`` (NumPy's products split
over netdef's threads) run either way.
"""

import logging
import multiprocessing
import os

import numpy
import pytest

from netdef import TRAIN, backend, threads
from netdef.layers import ort_kernels
from netdef.layers.ort_kernels import NchwcConv, input_gradient_plan
from netdef.testing import forward_layer
from tests.layers.test_conv import reference_conv


@pytest.fixture(autouse=True)
def needs_onnxruntime(request):
    if "numpy_products" not in request.keywords and not ort_kernels.active():
        pytest.skip("ONNX Runtime is not installed or turned off")


RNG = numpy.random.default_rng(31)


@pytest.fixture(autouse=True)
def any_waste(request, monkeypatch):
    """The tests below check the kernels on small layers, which the waste limit would send to NumPy."""
    if "real_policy" not in request.keywords:
        monkeypatch.setattr(ort_kernels, "MAX_WASTE", float("inf"))


def block():
    b = ort_kernels.block_size()
    if b is None:
        pytest.skip("this ONNX Runtime has no usable NCHWc kernels")
    return b


def direct(x, w, stride, pad, dilation):
    return ort_kernels._direct(x.astype(numpy.float64), w.astype(numpy.float64), stride, pad, dilation)


def test_the_probes_direct_sum_matches_the_loop_reference():
    # the oracle of the probe and of the tests below, checked against test_conv's element-by-element loop
    x = RNG.standard_normal((2, 3, 7, 6))
    w = RNG.standard_normal((4, 3, 3, 2))
    want = reference_conv(x, w, None, (2, 1), (1, 1), (1, 2), 1)
    numpy.testing.assert_allclose(ort_kernels._direct(x, w, (2, 1), (1, 1), (1, 2)), want, rtol=1e-12, atol=1e-12)


def test_block_size_is_one_the_kernels_use():
    assert block() in ort_kernels.BLOCKS


# n, C (in multiples of the block when negative), O, H, W, kernel, stride, pad, dilation
GEOMETRIES = [
    (2, 3, 5, 9, 8, (3, 3), (1, 1), (1, 1), (1, 1)),  # fewer channels than a block: NCHW input
    (2, -2, 7, 8, 9, (3, 3), (1, 1), (1, 1), (1, 1)),  # blocked input, outputs padded to a block
    (3, -1, 20, 11, 11, (3, 3), (2, 2), (1, 1), (1, 1)),  # stride 2
    (1, 4, 3, 10, 7, (3, 2), (1, 2), (2, 0), (2, 1)),  # non-square kernel, mixed stride and dilation
    (2, 1, 4, 12, 12, (5, 5), (1, 1), (0, 0), (1, 1)),  # LeNet's first layer, no padding
    (2, 18, 50, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1)),  # 18 and 50 channels: widened to multiples of 4
]


def _geometry(case):
    n, c, o, h, w, kernel, stride, pad, dilation = case
    return n, (c if c > 0 else -c * block()), o, h, w, kernel, stride, pad, dilation


@pytest.mark.parametrize("case", GEOMETRIES)
def test_convolution_matches_the_direct_sum(case):
    n, c, o, h, w, kernel, stride, pad, dilation = _geometry(case)
    x = RNG.standard_normal((n, c, h, w)).astype(numpy.float32)
    k = RNG.standard_normal((o, c, *kernel)).astype(numpy.float32)
    bias = RNG.standard_normal(o).astype(numpy.float32)
    plan = NchwcConv(x.shape, o, kernel, stride, pad, dilation, True, block())
    got = plan(x, plan.weights(k), bias)
    want = direct(x, k, stride, pad, dilation) + bias[:, None, None]
    assert got.shape == want.shape == (n, o, *plan.out) and got.dtype == numpy.float32
    numpy.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * numpy.abs(want).max())
    # the batch size is not part of the geometry: one plan serves any
    numpy.testing.assert_allclose(plan(x[:1], plan.weights(k), bias), got[:1], rtol=1e-6, atol=1e-6)


def test_a_batch_runs_in_chunks_of_samples(monkeypatch):
    b = block()
    x = RNG.standard_normal((5, b, 6, 6)).astype(numpy.float32)
    k = RNG.standard_normal((3, b, 3, 3)).astype(numpy.float32)
    plan = NchwcConv(x.shape, 3, (3, 3), (1, 1), (1, 1), (1, 1), False, b)
    whole = plan(x, plan.weights(k))
    monkeypatch.setattr(ort_kernels, "CHUNK_BYTES", 2 * 4 * b * 36 * 2)  # two samples per call
    assert plan.samples_per_chunk() == 2
    numpy.testing.assert_array_equal(plan(x, plan.weights(k)), whole)
    numpy.testing.assert_allclose(whole, direct(x, k, (1, 1), (1, 1), (1, 1)), rtol=1e-4, atol=1e-3)


def test_chunks_on_two_threads_run_one_thread_sessions_and_match_one_thread(monkeypatch):
    import threading

    b = block()
    x = RNG.standard_normal((6, b, 6, 6)).astype(numpy.float32)
    k = RNG.standard_normal((3, b, 3, 3)).astype(numpy.float32)
    plan = NchwcConv(x.shape, 3, (3, 3), (1, 1), (1, 1), (1, 1), False, b)
    monkeypatch.setattr(threads._state, "fixed", True)
    monkeypatch.setattr(threads._state, "current", 1)
    one = plan(x, plan.weights(k))
    monkeypatch.setattr(threads._state, "current", 2)
    monkeypatch.setattr(threads, "SPLIT_BYTES", 0)
    monkeypatch.setattr(ort_kernels, "CHUNK_BYTES", plan.sample_bytes())  # one sample per chunk
    runs = []
    real = ort_kernels._session

    def session(spec, n):
        made = real(spec, n)
        run = made.run_with_iobinding
        made_run = lambda binding: runs.append((threading.get_ident(), n)) or run(binding)  # noqa: E731
        return type("S", (), {"io_binding": made.io_binding, "run_with_iobinding": staticmethod(made_run)})()

    monkeypatch.setattr(ort_kernels, "_session", session)
    monkeypatch.setattr(ort_kernels, "_cached", lambda key, make: make())
    numpy.testing.assert_array_equal(plan(x, plan.weights(k)), one)
    assert len(runs) == 6 and {n for _, n in runs} == {1}  # a call per sample, each with a one-thread session


@pytest.mark.parametrize("case", [g for g in GEOMETRIES if g[6] == (1, 1)])
def test_input_gradient_is_the_adjoint_of_the_convolution(case):
    # <conv(x), dy> == <x, dx(dy)> for every x and dy: the defining property of the input gradient
    n, c, o, h, w, kernel, stride, pad, dilation = _geometry(case)
    plan = NchwcConv((n, c, h, w), o, kernel, stride, pad, dilation, False, block())
    grad = input_gradient_plan(plan)
    x = RNG.standard_normal((n, c, h, w)).astype(numpy.float32)
    k = RNG.standard_normal((o, c, *kernel)).astype(numpy.float32)
    dy = RNG.standard_normal((n, o, *plan.out)).astype(numpy.float32)
    flipped = numpy.ascontiguousarray(k[:, :, ::-1, ::-1].swapaxes(0, 1))
    dx = grad(dy, grad.weights(flipped))
    assert dx.shape == x.shape
    lhs = float((plan(x, plan.weights(k)).astype(numpy.float64) * dy).sum())
    rhs = float((x.astype(numpy.float64) * dx).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_input_gradient_plans_only_for_stride_1():
    b = block()
    assert input_gradient_plan(NchwcConv((1, 8, 9, 9), 8, (3, 3), (2, 2), (1, 1), (1, 1), False, b)) is None
    assert input_gradient_plan(NchwcConv((1, 8, 9, 9), 8, (3, 3), (1, 1), (1, 1), (1, 1), False, b)) is not None
    # padding wider than the kernel's reach would need a negative padding for the gradient
    assert input_gradient_plan(NchwcConv((1, 8, 9, 9), 8, (3, 3), (1, 1), (3, 3), (1, 1), False, b)) is None


@pytest.mark.real_policy
def test_layers_whose_channels_fill_few_of_the_blocks_stay_with_numpy():
    b = block()
    wide = NchwcConv((2, 2 * b, 9, 9), 2 * b, (3, 3), (1, 1), (1, 1), (1, 1), False, b)
    assert wide.waste == 1 and input_gradient_plan(wide) is not None
    first = NchwcConv((2, 3, 9, 9), 2 * b, (3, 3), (1, 1), (1, 1), (1, 1), False, b)
    assert first.waste == 1  # fewer channels than a block go in unblocked
    assert input_gradient_plan(first) is None  # its gradient would have 3 channels in blocks of b
    fill = "weight_filler { type: 'gaussian' }"
    for outputs, used in ((2 * b, True), (b // 2 + 1, False)):
        x = [RNG.standard_normal((2, 3, 6, 6)).astype(numpy.float32)]
        layer, _, _ = forward_layer(
            f'type: "Convolution" convolution_param {{ num_output: {outputs} kernel_size: 3 {fill} }}',
            x,
            dtype=numpy.float32,
        )
        assert (layer.nchwc is not None) == used, outputs


def test_applies_only_to_single_group_2d_float32():
    b = block()
    assert ort_kernels.applies(3, 8, 2, 1, numpy.float32)
    assert ort_kernels.applies(4 * b, 8, 2, 1, numpy.float32)
    assert ort_kernels.applies(b + 2, 8, 2, 1, numpy.float32)  # widened to a multiple of 4 for ReorderInput
    assert not ort_kernels.applies(8, 8, 2, 2, numpy.float32)  # groups
    assert not ort_kernels.applies(8, 8, 3, 1, numpy.float32)  # 3-D
    assert not ort_kernels.applies(8, 8, 2, 1, numpy.float64)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_matmul_matches_numpy_with_transposed_and_batched_operands(dtype):
    a = RNG.standard_normal((130, 120)).astype(dtype)
    b = RNG.standard_normal((90, 120)).astype(dtype)
    tol = 1e-5 if dtype == numpy.float32 else 1e-12
    numpy.testing.assert_allclose(ort_kernels.matmul(a, b.T), a @ b.T, rtol=tol, atol=tol * 120)
    numpy.testing.assert_allclose(ort_kernels.matmul(b, a.T), b @ a.T, rtol=tol, atol=tol * 120)
    a3 = RNG.standard_normal((3, 110, 100)).astype(dtype)
    b3 = RNG.standard_normal((3, 120, 100)).astype(dtype)
    got = ort_kernels.matmul(a3, b3.swapaxes(1, 2))
    assert got.dtype == dtype
    numpy.testing.assert_allclose(got, a3 @ b3.swapaxes(1, 2), rtol=tol, atol=tol * 100)
    strided = RNG.standard_normal((110, 240)).astype(dtype)[:, ::2]  # neither layout: copied first
    numpy.testing.assert_allclose(ort_kernels.matmul(strided, b.T), strided @ b.T, rtol=tol, atol=tol * 120)


def test_small_and_mixed_products_stay_with_numpy(monkeypatch):
    def refuse(*args):
        raise AssertionError("sent to ONNX Runtime")

    monkeypatch.setattr(ort_kernels, "_ort_gemm", refuse)
    a = RNG.standard_normal((20, 30)).astype(numpy.float32)
    numpy.testing.assert_allclose(ort_kernels.matmul(a, a.T), a @ a.T, rtol=1e-6)  # below MIN_GEMM_WORK
    big = RNG.standard_normal((200, 200))
    numpy.testing.assert_array_equal(
        ort_kernels.matmul(big, big.astype(numpy.float32)), big @ big.astype(numpy.float32)
    )


def test_blas_runs_one_thread_beside_onnx_runtime():
    threads.refresh()
    assert threads.count() >= 1
    if threads.current() is not None:  # netdef manages the threads (no BLAS variable set)
        assert "capped at 1" in threads.describe()


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ort_kernels.ENV_VAR, "0")
    ort_kernels.active.cache_clear()
    ort_kernels.block_size.cache_clear()
    try:
        assert not ort_kernels.active() and ort_kernels.block_size() is None
    finally:
        monkeypatch.delenv(ort_kernels.ENV_VAR)
        ort_kernels.active.cache_clear()
        ort_kernels.block_size.cache_clear()
    assert ort_kernels.active()


def _in_child(queue, x, k, a):
    plan = NchwcConv(x.shape, k.shape[0], (3, 3), (1, 1), (1, 1), (1, 1), False, ort_kernels.block_size())
    queue.put((plan(x, plan.weights(k)), ort_kernels.matmul(a, a.T), len(ort_kernels._SESSIONS)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_a_forked_child_computes_with_sessions_of_its_own():
    b = block()
    x = RNG.standard_normal((3, b, 9, 9)).astype(numpy.float32)
    k = RNG.standard_normal((b, b, 3, 3)).astype(numpy.float32)
    a = RNG.standard_normal((200, 150)).astype(numpy.float32)
    plan = NchwcConv(x.shape, b, (3, 3), (1, 1), (1, 1), (1, 1), False, b)
    want = plan(x, plan.weights(k)), ort_kernels.matmul(a, a.T)  # the parent's sessions exist now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(queue, x, k, a))
    child.start()
    y, product, sessions = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert sessions == 2  # the child made its own convolution and GEMM sessions instead of using the parent's
    numpy.testing.assert_array_equal(y, want[0])
    numpy.testing.assert_array_equal(product, want[1])


# --- the Convolution layer on these kernels ------------------------------------------------------
FILL = "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }"


def _run(params: str, x, on: bool, monkeypatch):
    monkeypatch.setattr(ort_kernels, "applies", lambda *args: on and ort_kernels.block_size() is not None)
    backend.set_random_seed(7)
    layer, bottom, top = forward_layer(
        f'type: "Convolution" convolution_param {{ {params} {FILL} }}', x, phase=TRAIN, dtype=numpy.float32
    )
    for t in top:
        t.diff = numpy.cos(numpy.arange(t.count)).reshape(t.shape).astype(numpy.float32)
    layer.backward(top, [True] * len(x), bottom)
    return layer, [t.data for t in top] + [b.diff for b in bottom] + [blob.diff for blob in layer.blobs]


@pytest.mark.parametrize(
    "params, shape",
    [
        ("num_output: 5 kernel_size: 3 pad: 1", (2, 3, 8, 9)),
        ("num_output: 20 kernel_size: 5", (2, 16, 12, 12)),
        ("num_output: 6 kernel_size: 3 stride: 2 pad: 1", (3, 8, 11, 10)),  # input gradient through NumPy
        ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", (2, 4, 9, 9)),
    ],
)
def test_layer_on_onnx_runtime_matches_numpy(params, shape, monkeypatch):
    block()
    x = [RNG.standard_normal(shape).astype(numpy.float32)]
    _, want = _run(params, x, False, monkeypatch)
    layer, got = _run(params, x, True, monkeypatch)
    assert layer.nchwc is not None and (layer.nchwc_grad is None) == ("stride: 2" in params)
    for g, w in zip(got, want, strict=True):
        numpy.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * numpy.abs(w).max())


def test_a_failing_session_falls_back_to_numpy_with_a_warning(monkeypatch, caplog):
    block()
    x = [RNG.standard_normal((2, 4, 7, 7)).astype(numpy.float32)]
    _, want = _run("num_output: 4 kernel_size: 3 pad: 1", x, False, monkeypatch)

    def fail(self, *args, **kwargs):
        raise RuntimeError("session broke")

    monkeypatch.setattr(NchwcConv, "__call__", fail)
    with caplog.at_level(logging.WARNING, logger="netdef"):
        layer, got = _run("num_output: 4 kernel_size: 3 pad: 1", x, True, monkeypatch)
    assert "ONNX Runtime's convolution failed (session broke); using NumPy's from now on" in caplog.text
    assert layer.nchwc is None and layer.nchwc_grad is None
    for g, w in zip(got, want, strict=True):
        numpy.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * numpy.abs(w).max())


@pytest.mark.numpy_products
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((300, 40), (40, 20)), ((20, 40), (40, 300)), ((3, 90, 40), (3, 40, 70))],
    ids=["row-blocks", "column-blocks", "batched"],
)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_numpy_products_split_over_the_threads(monkeypatch, a_shape, b_shape, dtype):
    a = RNG.standard_normal(a_shape).astype(dtype)
    b = RNG.standard_normal(b_shape).astype(dtype)
    monkeypatch.setattr(ort_kernels, "_ort_worthy", lambda *args: False)  # NumPy's product, as without ONNX Runtime
    monkeypatch.setattr(ort_kernels, "MIN_SPLIT_WORK", 0)
    monkeypatch.setattr(threads._state, "current", 2)
    monkeypatch.setattr(threads._state, "fixed", True)
    cuts = []
    real = threads.run_parts
    monkeypatch.setattr(threads, "run_parts", lambda fn, parts: cuts.append(parts) or real(fn, parts))
    got = ort_kernels.matmul(a, b)
    assert got.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-4} if dtype == numpy.float32 else {"rtol": 1e-12, "atol": 1e-12}
    numpy.testing.assert_allclose(got, a @ b, **tol)
    # one part per thread along the longer of the result's axes
    (parts,) = cuts
    longer = max(a_shape[-2], b_shape[-1])
    assert len(parts) == 2 and parts[0].start == 0 and parts[-1].stop == longer


@pytest.mark.numpy_products
def test_numpy_products_stay_whole_when_small_inside_a_share_or_not_float(monkeypatch):
    monkeypatch.setattr(ort_kernels, "_ort_worthy", lambda *args: False)
    monkeypatch.setattr(threads._state, "current", 2)
    monkeypatch.setattr(threads._state, "fixed", True)
    calls = []
    monkeypatch.setattr(threads, "run_parts", lambda fn, parts: calls.append(parts) or list(fn(parts)))
    small = numpy.ones((8, 8), numpy.float32)
    ints = numpy.ones((300, 300), numpy.int64)
    assert ort_kernels.matmul(small, small)[0, 0] == 8  # under MIN_SPLIT_WORK
    monkeypatch.setattr(ort_kernels, "MIN_SPLIT_WORK", 0)
    assert ort_kernels.matmul(ints, ints)[0, 0] == 300  # integers: NumPy's own loop, no BLAS
    monkeypatch.setattr(threads._local, "sharing", True, raising=False)  # inside a share count() is 1
    assert ort_kernels.matmul(small, small)[0, 0] == 8
    assert calls == []
