"""The benchmark networks: Caffe's example nets fed by Input layers, and their PyTorch twins.

Each net is read from ``models/<name>/train_val.prototxt`` (TRAIN phase); its data layers
are replaced by one Input layer giving ``data`` and ``label`` of the benchmark's batch
size, so that only the network itself is timed. The PyTorch twin is not a hand-written
copy: :class:`TorchTwin` walks the same layer list and applies the matching ``torch``
operation to named tensors, starting from the netdef net's own initial weights, so both
frameworks compute the same function (:func:`check_losses` prints the loss of both on the
benchmark batch, without Dropout, whose masks differ, as a check).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy

import netdef
from netdef.net import filter_net
from netdef.proto import load_net
from netdef.proto import netdef_pb2 as pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "Input", "DummyData", "MemoryData", "WindowData"}


@dataclass(frozen=True)
class Case:
    """One comparison: a model directory, a batch size and a sample shape."""

    name: str
    model: str
    batch: int
    sample: tuple[int, ...]
    classes: int

    @property
    def label(self) -> str:
        return f"{self.name} b{self.batch}"


CASES = {
    "lenet": Case("lenet", "lenet", 64, (1, 28, 28), 10),
    "cifar10_quick": Case("cifar10_quick", "cifar10_quick", 100, (3, 32, 32), 10),
    "cifar10_full": Case("cifar10_full", "cifar10_full", 100, (3, 32, 32), 10),
    "caffenet": Case("caffenet", "caffenet", 32, (3, 227, 227), 1000),
}


def net_param(case: Case, dropout: bool = True) -> pb.NetParameter:
    """The case's TRAIN net with an Input layer in place of its data layers (and without Dropout if asked)."""
    src = load_net(os.path.join(ROOT, "models", case.model, "train_val.prototxt"))
    state = pb.NetState(phase=pb.TRAIN)
    param = filter_net(src, state)
    out = pb.NetParameter(name=param.name)
    out.state.phase = pb.TRAIN
    inp = out.layer.add(name="data", type="Input")
    inp.top.extend(["data", "label"])
    inp.input_param.shape.add(dim=[case.batch, *case.sample])
    inp.input_param.shape.add(dim=[case.batch])
    for layer in param.layer:
        if layer.type not in DATA_TYPES and (dropout or layer.type != "Dropout"):
            out.layer.add().CopyFrom(layer)
    return out


def batch(case: Case, seed: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """A reproducible random input batch and labels."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((case.batch, *case.sample), dtype=numpy.float32)
    y = rng.integers(0, case.classes, case.batch).astype(numpy.float32)
    return x, y


def netdef_net(case: Case) -> netdef.Net:
    """The netdef net with one batch loaded."""
    net = netdef.Net(net_param(case), netdef.TRAIN)
    x, y = batch(case)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = y
    return net


def netdef_step(net: netdef.Net):
    """One forward+backward of ``net`` (parameter gradients cleared first, as a solver does)."""

    def step():
        net.clear_param_diffs()
        return net.forward_backward()

    return step


# --- the PyTorch twin -------------------------------------------------------------------
class TorchTwin:
    """Runs a netdef NetParameter's layers with ``torch`` operations, weights copied from ``net``."""

    def __init__(self, param: pb.NetParameter, net: netdef.Net):
        import torch

        self.torch = torch
        self.layers = [layer for layer in param.layer if layer.type != "Input"]
        self.weights = {
            name: [torch.tensor(numpy.array(b.data), requires_grad=True) for b in blobs]
            for name, blobs in net.params.items()
        }

    def parameters(self) -> list:
        return [t for ts in self.weights.values() for t in ts]

    def zero_grad(self) -> None:
        for t in self.parameters():
            if t.grad is not None:
                t.grad.zero_()

    def loss(self, x, y):
        blobs = {"data": x, "label": y}
        out = None
        for layer in self.layers:
            args = [blobs[b] for b in layer.bottom]
            result = getattr(self, "_" + layer.type)(layer, *args)
            blobs[layer.top[0]] = result
            if layer.type.endswith("Loss"):
                out = result
        return out

    def _Convolution(self, layer, x):
        cp = layer.convolution_param
        w = self.weights[layer.name]
        stride = cp.stride[0] if len(cp.stride) else 1
        pad = cp.pad[0] if len(cp.pad) else 0
        bias = w[1] if cp.bias_term else None
        return self.torch.nn.functional.conv2d(x, w[0], bias, stride, pad, 1, cp.group)

    def _Pooling(self, layer, x):
        pp = layer.pooling_param
        f = self.torch.nn.functional
        k, s, p = pp.kernel_size, pp.stride, pp.pad
        if pp.pool == pb.PoolingParameter.MAX:
            return f.max_pool2d(x, k, s, p, ceil_mode=True)
        return f.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True)

    def _ReLU(self, layer, x):
        return self.torch.relu(x)

    def _Dropout(self, layer, x):
        return self.torch.nn.functional.dropout(x, layer.dropout_param.dropout_ratio, training=True)

    def _LRN(self, layer, x):
        lp = layer.lrn_param
        f = self.torch.nn.functional
        if lp.norm_region == pb.LRNParameter.ACROSS_CHANNELS:
            return f.local_response_norm(x, lp.local_size, lp.alpha, lp.beta, lp.k)
        n = lp.local_size
        mean_sq = f.avg_pool2d(x * x, n, 1, (n - 1) // 2, count_include_pad=True)
        return x * (lp.k + lp.alpha * mean_sq) ** -lp.beta

    def _InnerProduct(self, layer, x):
        w = self.weights[layer.name]
        bias = w[1] if layer.inner_product_param.bias_term else None
        return self.torch.nn.functional.linear(x.flatten(1), w[0], bias)

    def _SoftmaxWithLoss(self, layer, x, y):
        return self.torch.nn.functional.cross_entropy(x, y)


def torch_step(case: Case, net: netdef.Net):
    """One forward+backward of the PyTorch twin, or None when PyTorch is not installed."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    twin = TorchTwin(net_param(case), net)
    x, y = batch(case)
    xt, yt = twin.torch.from_numpy(x), twin.torch.from_numpy(y.astype(numpy.int64))

    def step():
        twin.zero_grad()
        loss = twin.loss(xt, yt)
        loss.backward()
        return float(loss.detach())

    return step


def check_losses(case: Case, net: netdef.Net) -> tuple[float, float | None]:
    """The loss of both frameworks on the benchmark batch with ``net``'s weights and without Dropout.

    Dropout draws different masks in the two frameworks, so the check that both compute the
    same function leaves it out (Dropout layers in these nets work in place, so removing
    them changes no blob names).
    """
    param = net_param(case, dropout=False)
    plain = netdef.Net(param, netdef.TRAIN)
    for name, blobs in net.params.items():
        for dst, src in zip(plain.params[name], blobs, strict=True):
            dst.data[...] = src.data
    x, y = batch(case)
    plain.blobs["data"].data[...] = x
    plain.blobs["label"].data[...] = y
    nd = float(plain.forward()[param.layer[-1].top[0]])
    try:
        import torch  # noqa: F401
    except ImportError:
        return nd, None
    twin = TorchTwin(param, net)
    return nd, float(twin.loss(twin.torch.from_numpy(x), twin.torch.from_numpy(y.astype(numpy.int64))).detach())


def flops(case: Case) -> float:
    """Multiply-adds of one forward pass (convolutions and inner products), for the table."""
    net = netdef_net(case)
    total = 0
    for layer, rec in zip(net.layers, net.records, strict=True):
        if layer.type in ("Convolution", "InnerProduct") and rec.top:
            total += math.prod(rec.top[0].shape) * layer.blobs[0].count // layer.blobs[0].shape[0]
    return float(total)
