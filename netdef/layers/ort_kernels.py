"""ONNX Runtime's CPU kernels for netdef's convolutions and large matrix products, where it is installed.

NumPy can only run a convolution as copies plus a matrix product (im2col, the flat grid,
Winograd), at the speed of NumPy's BLAS. ONNX Runtime's CPU library has direct convolution
kernels that keep a block of channels in vector registers (block 16 with AVX-512, 8 with
AVX2): 2-3x faster than im2col + GEMM on CIFAR- and ImageNet-sized layers and on a par with
PyTorch's (docs/performance.md). When the optional ``onnxruntime`` and ``onnx`` packages
are installed (the ``fast`` extra: ``pip install ".[fast]"``), netdef uses them for

- the forward pass of 2-D float32 convolutions with one group (:class:`NchwcConv`);
- their input gradient for stride 1: a convolution of the output gradient with the
  flipped kernel, channels swapped, padding ``dilation*(k-1) - pad``
  (:func:`input_gradient_plan`);
- the matrix products of Convolution (weight gradients and the paths above do not cover),
  InnerProduct and Winograd, float32 and float64, through ONNX Runtime's ``Gemm``
  (:func:`matmul`).

Why the products too: OpenBLAS's idle threads spin for a while after each product, and
spinning beside ONNX Runtime's threads slows them down (cifar10_quick's first convolution:
7.8 ms forward with BLAS at two threads, 2.4 ms with BLAS at one). So BLAS runs one thread
(:func:`netdef.threads.cap_blas`, netdef's policy with or without these kernels) and ONNX
Runtime's pools take netdef's thread count (:func:`netdef.threads.pool_threads`: one while
others keep every core busy); their threads sleep instead of spinning when idle. Blocked
convolutions run their chunks of samples on netdef's own threads instead, one-thread
sessions each.

Each convolution is a tiny ONNX graph of three operators of the ``com.microsoft.nchwc``
domain -- ``ReorderInput`` (NCHW to blocked), ``Conv``, ``ReorderOutput`` (blocked to NCHW,
dropping the padding channels) -- with the weights as a graph input in the kernel's blocked
order, so that new weights after every solver step need no new session. An input with
fewer channels than a block goes to ``Conv`` as it is (the kernel's NCHW-input form, with
weights blocked on the output side only). These operators are ONNX Runtime's own
(what its graph optimiser makes of a plain ``Conv``), so :func:`block_size` checks them
once per process against a direct sum and finds the block size; netdef falls back to its
NumPy paths where they are missing, disagree or fail. ``NETDEF_ONNXRUNTIME=0`` turns all
of this off.

Sessions are made once per geometry (the batch size may vary) and thread count and shared
by layers of the same geometry; they share one memory arena (:func:`_shared_arena`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence

import numpy

from .. import backend, threads

log = logging.getLogger("netdef")

#: The environment variable that turns ONNX Runtime's kernels off ("0").
ENV_VAR = "NETDEF_ONNXRUNTIME"
#: Convolutions whose blocks pad the channels by more than this factor (:attr:`NchwcConv.waste`)
#: stay with NumPy. Measured (ms, NCHWc vs NumPy): LeNet's conv1 forward, 20 outputs in blocks
#: of 16, 1.6: 0.24 vs 0.67; its conv2 forward, 20 -> 50 channels, 2.05: 1.03 vs 1.09, and
#: input gradient: 2.29 vs 1.53; cifar10_quick's conv1 input gradient, 3 channels, 5.3:
#: 10.3 vs 6.0.
MAX_WASTE = 1.6
#: Bytes of blocked input and output per convolution call: a batch runs in chunks of samples,
#: so that ONNX Runtime's temporaries stay in cache and its arena small.
CHUNK_BYTES = 4 * 2**20
#: Products with fewer multiply-adds than this stay with NumPy: a session call costs some 20-40 us.
MIN_GEMM_WORK = 1 << 20
#: NumPy products (ONNX Runtime not in use) with at least this many multiply-adds are split over
#: netdef's threads, BLAS running one thread per part (:func:`netdef.threads.run_parts`); a
#: smaller one takes less time than waking a second thread (about 50 us).
MIN_SPLIT_WORK = 1 << 23
#: Block sizes ONNX Runtime's kernels use (AVX-512, AVX2/NEON, ...), tried in this order.
BLOCKS = (16, 8, 4)
#: ``ReorderInput`` takes a channel count that is a multiple of this; other inputs are copied
#: into one with zero channels added.
CHANNEL_ALIGN = 4
DOMAIN = "com.microsoft.nchwc"


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


@functools.cache
def active() -> bool:
    """Whether netdef computes with ONNX Runtime's kernels: installed, not turned off, and its GEMM checks out.

    Decided once per process. From then on BLAS runs one thread (:func:`netdef.threads.cap_blas`)
    and ONNX Runtime's pools take netdef's thread count: BLAS threads spin for a while after
    each product, and spinning beside ONNX Runtime's threads slows them down (module docstring).
    """
    if os.environ.get(ENV_VAR, "").strip() == "0":
        return False
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    rng = numpy.random.default_rng(0)
    a, b = rng.standard_normal((2, 5, 7)).astype(numpy.float32)
    try:
        ok = numpy.allclose(_ort_gemm(a, b.T, numpy.empty((5, 5), numpy.float32)), a @ b.T, rtol=1e-5, atol=1e-5)
    except Exception as err:  # a broken or incompatible installation: NumPy does everything
        log.debug("ONNX Runtime unusable: %s", err)
        return False
    if ok:
        threads.cap_blas(1)
    return ok


@functools.cache
def block_size() -> int | None:
    """The channel block of the installed ONNX Runtime's NCHWc kernels, or None where they are unusable.

    Probed once per process: a small convolution in both input forms must match a direct
    sum in float64 (to float32 rounding) for one of :data:`BLOCKS`.
    """
    if not active():
        return None
    rng = numpy.random.default_rng(0)
    for block in BLOCKS:
        try:
            if all(_probe(block, channels, rng) for channels in (2 * block, 3)):
                return block
        except Exception as err:  # an ONNX Runtime without these operators, or one that rejects the layout
            log.debug("NCHWc kernels with block %d unusable: %s", block, err)
    log.debug("ONNX Runtime's NCHWc kernels are not usable here; convolutions use NumPy")
    return None


def _probe(block: int, channels: int, rng) -> bool:
    x = rng.standard_normal((2, channels, 7, 6)).astype(numpy.float32)
    w = rng.standard_normal((block + 3, channels, 3, 2)).astype(numpy.float32)
    b = rng.standard_normal(block + 3).astype(numpy.float32)
    conv = NchwcConv(x.shape, w.shape[0], (3, 2), (2, 1), (1, 1), (1, 2), True, block, threads=1)
    got = conv(x, conv.weights(w), b)
    want = _direct(x.astype(numpy.float64), w.astype(numpy.float64), (2, 1), (1, 1), (1, 2)) + b[:, None, None]
    return got.shape == want.shape and bool(numpy.allclose(got, want, rtol=1e-4, atol=1e-4))


def _direct(x, w, stride, pad, dilation):
    """The defining sum of a 2-D correlation (for the probe; small inputs only)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = numpy.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = numpy.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dilation[0], i * dilation[0] + stride[0] * (oh - 1) + 1, stride[0])
            cols = slice(j * dilation[1], j * dilation[1] + stride[1] * (ow - 1) + 1, stride[1])
            y += numpy.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, rows, cols])
    return y


def applies(channels: int, num_outputs: int, num_spatial: int, group: int, dtype) -> bool:
    """Whether a convolution of this kind can run on the NCHWc kernels here (they are probed on first use)."""
    if num_spatial != 2 or group != 1 or numpy.dtype(dtype) != numpy.float32 or min(channels, num_outputs) < 1:
        return False
    return block_size() is not None


class NchwcConv:
    """One 2-D convolution of fixed geometry: ``(n, C, H, W)`` -> ``(n, O, H', W')``, Caffe's output size.

    The batch size ``n`` may change from call to call.

    Args:
        shape: the input's shape ``(n, C, H, W)`` (``n`` is not part of the geometry).
        num_output: ``O``.
        kernel, stride, pad, dilation: per spatial axis (symmetric padding, as in Caffe).
        bias: whether a bias is added.
        block: the kernels' channel block (:func:`block_size`).
        threads: intra-op threads; None follows :func:`netdef.threads.count` at each call.
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_output: int,
        kernel: Sequence[int],
        stride: Sequence[int],
        pad: Sequence[int],
        dilation: Sequence[int],
        bias: bool,
        block: int,
        threads: int | None = None,
    ):
        self.shape = tuple(int(s) for s in shape)
        self.num_output = int(num_output)
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.pad, self.dilation = tuple(pad), tuple(dilation)
        self.bias = bool(bias)
        self.block = block
        self.threads = threads
        channels = self.shape[1]
        #: the input goes to Conv unblocked (fewer channels than a block)
        self.plain_input = channels < block
        self.out = tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, k, st, p, d in zip(self.shape[2:], self.kernel, self.stride, self.pad, self.dilation, strict=True)
        )
        self.padded_outputs = _round_up(self.num_output, block)
        self.padded_channels = channels if self.plain_input else _round_up(channels, block)
        #: channels of the graph's input: a multiple of CHANNEL_ALIGN for ReorderInput
        self.input_channels = channels if self.plain_input else _round_up(channels, CHANNEL_ALIGN)

    @property
    def waste(self) -> float:
        """Multiply-adds the kernels do per useful one: both channel counts rounded up to blocks."""
        return self.padded_outputs / self.num_output * self.padded_channels / self.shape[1]

    def weights(self, w) -> numpy.ndarray:
        """``(O, C, kh, kw)`` weights in the kernels' blocked order (zero rows for the padding channels)."""
        o, c, kh, kw = w.shape
        b, op, cp = self.block, self.padded_outputs, self.padded_channels
        padded = numpy.zeros((op, cp, kh, kw), dtype=numpy.float32)
        padded[:o, :c] = w
        if self.plain_input:  # [O/b][C][kh][kw][b]
            order = padded.reshape(op // b, b, cp, kh, kw).transpose(0, 2, 3, 4, 1)
        else:  # [O/b][C/b][kh][kw][b (input)][b (output)]
            order = padded.reshape(op // b, b, cp // b, b, kh, kw).transpose(0, 2, 4, 5, 3, 1)
        return numpy.ascontiguousarray(order).reshape(op, cp, kh, kw)

    def padded_bias(self, bias) -> numpy.ndarray:
        out = numpy.zeros(self.padded_outputs, dtype=numpy.float32)
        out[: self.num_output] = bias
        return out

    def __call__(self, x, weights, bias=None, out=None) -> numpy.ndarray:
        """The convolution of ``x`` (float32) with :meth:`weights`, plus ``bias`` when the plan has one.

        Runs in chunks of samples whose blocked copies stay under :data:`CHUNK_BYTES`. Without a
        fixed ``threads`` the chunks are shared out over netdef's threads
        (:func:`netdef.threads.run_parts`), each running them with a one-thread session.
        """
        if out is None:
            out = numpy.empty((x.shape[0], self.num_output, *self.out), dtype=numpy.float32)
        if x.shape[1] != self.input_channels:
            widened = numpy.zeros((x.shape[0], self.input_channels, *x.shape[2:]), dtype=numpy.float32)
            widened[:, : x.shape[1]] = x
            x = widened
        x = numpy.ascontiguousarray(x, dtype=numpy.float32)
        padded_bias = self.padded_bias(bias) if self.bias else None

        def share(cuts):
            n = self.threads if self.threads is not None else threads.pool_threads()
            session = _cached(("conv", self._spec(), n), lambda: _session(self._spec(), n))
            for sl in cuts:
                binding = session.io_binding()
                binding.bind_cpu_input("x", x[sl])
                binding.bind_cpu_input("w", weights)
                if padded_bias is not None:
                    binding.bind_cpu_input("b", padded_bias)
                part = out[sl]
                binding.bind_output("y", "cpu", 0, numpy.float32, part.shape, part.ctypes.data)
                session.run_with_iobinding(binding)

        total = x.shape[0]
        if self.threads is not None:
            step = self.samples_per_chunk()
            share(slice(a, a + step) for a in range(0, total, step))
        else:
            k = threads.chunk_count(total, self.sample_bytes(), CHUNK_BYTES)
            threads.run_parts(share, threads.even_slices(total, k))
        return out

    def sample_bytes(self) -> int:
        """Bytes of one sample's blocked input and output (ONNX Runtime's temporaries)."""
        spatial_in, spatial_out = math.prod(self.shape[2:]), math.prod(self.out)
        return 4 * (self.padded_channels * spatial_in + self.padded_outputs * spatial_out)

    def samples_per_chunk(self) -> int:
        """Samples per call: the blocked input and output of a chunk (ONNX Runtime's temporaries) stay small."""
        return max(1, CHUNK_BYTES // self.sample_bytes())

    def _spec(self) -> tuple:
        return (
            (self.input_channels, *self.shape[2:]),
            self.num_output,
            self.kernel,
            self.stride,
            self.pad,
            self.dilation,
            self.bias,
            self.block,
            self.plain_input,
            (self.padded_outputs, self.padded_channels, *self.kernel),
        )


def _session(spec: tuple, num_threads: int):
    """An ONNX Runtime session for one :class:`NchwcConv` geometry (``spec``) and thread count."""
    from onnx import TensorProto, helper

    shape, num_output, kernel, stride, pad, dilation, bias, _block, plain_input, weight_shape = spec
    conv_inputs = ["x" if plain_input else "xb", "w", *(["b"] if bias else [])]
    conv = helper.make_node(
        "Conv",
        conv_inputs,
        ["yb"],
        domain=DOMAIN,
        kernel_shape=list(kernel),
        strides=list(stride),
        pads=[*pad, *pad],
        dilations=list(dilation),
    )
    nodes = [] if plain_input else [helper.make_node("ReorderInput", ["x"], ["xb"], domain=DOMAIN)]
    nodes += [conv, helper.make_node("ReorderOutput", ["yb"], ["y"], domain=DOMAIN, channels=num_output)]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight_shape)),
    ]
    if bias:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [weight_shape[0]]))
    return _make_session(nodes, inputs, num_threads)


# --- matrix products ------------------------------------------------------------------------
def matmul(a, b):
    """``a @ b`` (2 or more axes, the same batch axes first), through ONNX Runtime's GEMM where it is active.

    Float32 and float64 products of at least :data:`MIN_GEMM_WORK` multiply-adds go to ONNX Runtime
    (a transposed view is passed as its base with the transpose flag, not copied); the rest,
    and every product where it is not active, go to ``matmul`` of the arrays' module (NumPy,
    or CuPy on the GPU). NumPy's BLAS runs one thread (:mod:`netdef.threads`), so NumPy products
    of at least :data:`MIN_SPLIT_WORK` are cut into one part per thread along the longer of
    the result's two axes.
    """
    if not _ort_worthy(a, b):
        if _split_worthy(a, b):
            return _split_matmul(a, b)
        return backend.array_module(a).matmul(a, b)
    out = numpy.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype)
    if a.ndim == 2:
        return _ort_gemm(a, b, out)
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    out3 = out.reshape(-1, *out.shape[-2:])
    for i in range(a3.shape[0]):
        _ort_gemm(a3[i], b3[i], out3[i])
    return out


#: ONNX element types of the dtypes whose products go to ONNX Runtime
_GEMM_TYPES = {numpy.dtype(numpy.float32): 1, numpy.dtype(numpy.float64): 11}


def _numpy_pair(a, b) -> bool:
    """NumPy matrices (or stacks of them, the same batch axes) of one dtype."""
    if not (isinstance(a, numpy.ndarray) and isinstance(b, numpy.ndarray)):
        return False
    return a.dtype == b.dtype and a.ndim == b.ndim and a.ndim >= 2 and a.shape[:-2] == b.shape[:-2]


def _split_worthy(a, b) -> bool:
    if not _numpy_pair(a, b):
        return False
    work = math.prod(a.shape[:-1]) * a.shape[-1] * b.shape[-1]
    return a.dtype.kind in "fc" and work >= MIN_SPLIT_WORK and threads.count() > 1


def _split_matmul(a, b):
    """``a @ b`` in one part per thread: row blocks of ``a`` or column blocks of ``b``, whichever axis is longer."""
    out = numpy.empty((*a.shape[:-1], b.shape[-1]), dtype=a.dtype)
    rows = a.shape[-2] >= b.shape[-1]
    length = a.shape[-2] if rows else b.shape[-1]
    cuts = threads.even_slices(length, min(threads.count(), length))

    def share(parts):
        for sl in parts:
            if rows:
                numpy.matmul(a[..., sl, :], b, out=out[..., sl, :])
            else:
                numpy.matmul(a, b[..., sl], out=out[..., sl])
        return None

    threads.run_parts(share, cuts)
    return out


def _ort_worthy(a, b) -> bool:
    if not _numpy_pair(a, b) or a.dtype not in _GEMM_TYPES:
        return False
    return a.shape[-2] * a.shape[-1] * b.shape[-1] >= MIN_GEMM_WORK and active()


def _operand(m) -> tuple[numpy.ndarray, int]:
    """A C-contiguous array and transpose flag that give the 2-D matrix ``m``."""
    if m.flags.c_contiguous:
        return m, 0
    if m.T.flags.c_contiguous:
        return m.T, 1
    return numpy.ascontiguousarray(m), 0


def _ort_gemm(a, b, out):
    a, trans_a = _operand(a)
    b, trans_b = _operand(b)
    key = (trans_a, trans_b, _GEMM_TYPES[a.dtype], threads.pool_threads())
    session = _cached(("gemm", *key), lambda: _gemm_session(*key))
    binding = session.io_binding()
    binding.bind_cpu_input("a", a)
    binding.bind_cpu_input("b", b)
    binding.bind_output("y", "cpu", 0, a.dtype.type, out.shape, out.ctypes.data)
    session.run_with_iobinding(binding)
    return out


def _gemm_session(trans_a: int, trans_b: int, elem_type: int, num_threads: int):
    from onnx import helper

    node = helper.make_node("Gemm", ["a", "b"], ["y"], transA=trans_a, transB=trans_b)
    inputs = [
        helper.make_tensor_value_info("a", elem_type, ["a0", "a1"]),
        helper.make_tensor_value_info("b", elem_type, ["b0", "b1"]),
    ]
    return _make_session([node], inputs, num_threads, opsets=(), elem_type=elem_type)


def _make_session(nodes, inputs, num_threads: int, opsets=((DOMAIN, 1),), elem_type: int = 1):
    """A CPU session of the graph ``nodes`` (one output, ``y``): threads that sleep when idle, the shared arena."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "netdef", inputs, [helper.make_tensor_value_info("y", elem_type, None)])
    imports = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, v) for d, v in opsets)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(num_threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    _shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 4  # failures reach netdef as exceptions
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@functools.cache
def _shared_arena() -> None:
    """One memory arena for all of netdef's sessions, registered once per process.

    Without an arena ONNX Runtime's temporaries go back to the system after every call and
    fault in again (cifar10_quick's first convolution: 1,600 page faults and 3.3 ms per call,
    1.7 ms with the arena); an arena per session would keep every session's peak (a
    cifar10_quick step: 130 MiB), a shared one keeps the largest, which the chunks of
    :meth:`NchwcConv.__call__` keep small (89 MiB).
    """
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # no size limit, growing by what is asked for rather than doubling
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))


# Sessions by geometry and thread count. A forked child must neither use nor destroy its parent's
# sessions (their threads did not come along; destroying one waits for them forever): it moves
# them to _INHERITED, which keeps them alive and unused, and makes its own.
_SESSIONS: dict[tuple, object] = {}
_INHERITED: list[dict] = []


def _cached(key: tuple, make):
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = make()
    return session


def _after_fork_in_child() -> None:
    _INHERITED.append(dict(_SESSIONS))
    _SESSIONS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def input_gradient_plan(conv: NchwcConv) -> NchwcConv | None:
    """The convolution that gives ``conv``'s input gradient from its output gradient, or None.

    None for strides above 1 and where its blocks would waste more than :data:`MAX_WASTE`.

    ``dx = dy * flip(W)^T`` with padding ``dilation*(k-1) - pad``, same dilation; its weights
    are :func:`netdef.layers.im2col.flipped_kernel` of the forward weights.
    """
    if any(s != 1 for s in conv.stride):
        return None
    pad = tuple(d * (k - 1) - p for k, p, d in zip(conv.kernel, conv.pad, conv.dilation, strict=True))
    outputs, channels = conv.shape[1], conv.num_output
    if min(pad) < 0:
        return None
    shape = (conv.shape[0], channels, *conv.out)
    plan = NchwcConv(shape, outputs, conv.kernel, conv.stride, pad, conv.dilation, False, conv.block)
    return plan if plan.out == conv.shape[2:] and plan.waste <= MAX_WASTE else None


__all__ = ["ENV_VAR", "NchwcConv", "active", "applies", "block_size", "input_gradient_plan", "matmul"]
