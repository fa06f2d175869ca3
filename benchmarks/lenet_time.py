"""LeNet forward+backward time: netdef versus PyTorch on the CPU, measured in one run.

Caffe's LeNet (examples/mnist/lenet.prototxt shape: batch 64, 1x28x28, conv 20 5x5,
max-pool 2, conv 50 5x5, max-pool 2, ip 500, ReLU, ip 10, softmax loss), with an
Input layer in place of the data layer. Usage:

    python benchmarks/lenet_time.py [--iterations 50] [--threads N]

PyTorch is optional (pip install torch); without it only netdef is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy

import netdef
from netdef.proto import net_from_text

LENET = """
name: "LeNet"
force_backward: false
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def netdef_step(x, y):
    """A function running one netdef LeNet forward+backward (after one warm-up pass)."""
    net = netdef.Net(net_from_text(LENET), netdef.TRAIN)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = y
    net.forward_backward()

    def step():
        net.clear_param_diffs()
        net.forward_backward()

    return step


def torch_step(x, y):
    """The same network in PyTorch, or None when PyTorch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(numpy.int64))
    loss_fn(model(xt), yt).backward()

    def step():
        model.zero_grad(set_to_none=False)
        loss_fn(model(xt), yt).backward()

    return step


def timed(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="PyTorch intra-op threads (0: its default)")
    args = p.parse_args()
    rng = numpy.random.default_rng(0)
    x = rng.random((64, 1, 28, 28), dtype=numpy.float32)
    y = rng.integers(0, 10, 64).astype(numpy.float32)
    if args.threads:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    # Blocks of 10 iterations, alternating, so that both frameworks see the same machine
    # (shared machines speed up and slow down); the first iteration of each block is dropped
    # because the other framework's worker threads may still be winding down.
    nd_step, pt_step = netdef_step(x, y), torch_step(x, y)
    nd, pt = [], []
    for _ in range(max(1, args.iterations // 10)):
        nd += timed(nd_step, 11)[1:]
        if pt_step is not None:
            pt += timed(pt_step, 11)[1:]
    med_nd = statistics.median(nd) * 1e3
    print(f"netdef  LeNet fwd+bwd batch 64: median {med_nd:.2f} ms over {len(nd)} iterations")
    if pt:
        med_pt = statistics.median(pt) * 1e3
        print(f"PyTorch LeNet fwd+bwd batch 64: median {med_pt:.2f} ms over {len(pt)} iterations")
        print(f"ratio netdef / PyTorch: {med_nd / med_pt:.2f}")


if __name__ == "__main__":
    main()
