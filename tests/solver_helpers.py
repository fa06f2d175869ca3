"""Building blocks the solver, snapshot and CLI tests share: tiny nets, a small data set, run recorders,
a clean copy of the bundled digits example."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from netdef.proto import net_from_text, parse_text
from netdef.proto import netdef_pb2 as pb
from netdef.testing.parity import parity_root

# Two learnable vectors and nothing else: the tests put gradients into the diffs themselves
# (on_gradients_ready), so each update rule is checked on known inputs.
TINY_NET = """
name: "tiny"
layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 3 } } }
layer { name: "b" type: "Parameter" top: "b" param { lr_mult: 2 decay_mult: 0.5 }
        parameter_param { shape { dim: 3 } } }
"""

# Outputs with known values: "half" (six 0.5s) and "loss", EuclideanLoss of 3s against 0s,
# 6 * 9 / (2 * 2) = 13.5, with loss_weight 2.
SCORED_NET = """
name: "scored"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 }
                           data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 } } }
layer { name: "triple" type: "Power" bottom: "data" top: "tripled" power_param { scale: 3 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "tripled" bottom: "label" top: "loss" loss_weight: 2 }
layer { name: "half" type: "Power" bottom: "data" top: "half" power_param { scale: 0.5 } }
"""


def solver_param(text: str, net_text: str = TINY_NET) -> pb.SolverParameter:
    """A SolverParameter from ``text`` (fixed lr, 100 iterations, no display or final snapshot by default)."""
    param = parse_text(
        'lr_policy: "fixed" max_iter: 100 display: 0 snapshot_after_train: false ' + text, pb.SolverParameter()
    )
    if not (param.HasField("net") or param.HasField("train_net")):
        param.net_param.CopyFrom(net_from_text(net_text))
    return param


def write_problem(folder: Path, n: int = 64, dim: int = 6, classes: int = 3, seed: int = 0) -> Path:
    """A small classification set in HDF5 and the list file HDF5Data reads."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.float32)
    with h5py.File(folder / "data.h5", "w") as f:
        f["data"] = x
        f["label"] = y
    listing = folder / "list.txt"
    listing.write_text(str(folder / "data.h5") + "\n")
    return listing


def mlp_text(source, batch: int = 16, shuffle: bool = False, dropout: bool = False, test_batch: int = 16) -> str:
    """A two-layer classifier on the ``write_problem`` data, with Accuracy in the TEST phase."""
    drop = 'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.3 } }'
    return f"""
name: "mlp"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TRAIN }}
        hdf5_data_param {{ source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" include {{ phase: TEST }}
        hdf5_data_param {{ source: "{source}" batch_size: {test_batch} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param {{ num_output: 8 weight_filler {{ type: "xavier" }}
                               bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
{drop if dropout else ""}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


def record_losses(solver) -> list:
    """A list that collects the solver's loss at every iteration from now on."""
    losses = []
    solver.add_callback(on_gradients_ready=lambda: losses.append(solver.loss))
    return losses


def params_of(solver) -> dict:
    """A copy of every parameter blob of the train net, keyed ``<layer>_<index>``."""
    return {f"{k}_{i}": np.array(b.data) for k, blobs in solver.net.params.items() for i, b in enumerate(blobs)}


def caffe_solvers_root() -> Path:
    """``shared/parity/solvers`` (what BVLC Caffe wrote); the test is skipped when it is absent."""
    root = parity_root()
    if root is None:
        pytest.skip("shared/parity not available")
    return root / "solvers"


def copy_digits(root: Path) -> Path:
    """Copy the bundled digits example to ``root/models/digits``, without snapshots a training run left in
    the checkout (the README's first command writes them there); the copy's path."""
    repo = Path(__file__).resolve().parents[1]
    dest = root / "models" / "digits"
    shutil.copytree(repo / "models" / "digits", dest, ignore=shutil.ignore_patterns("*_iter_*"))
    return dest
