"""Mutation fuzzing of every input netdef reads: nothing but a NetdefError may escape.

A seeded mutator of our own (no extra dependency) derives broken inputs from small valid
ones, per kind: nets (prototxt text, JSON, YAML, binary; loaded, built, run forward and
backward), solvers (loaded), ``.caffemodel`` and HDF5 weights (loaded into a net),
``.solverstate`` files (binary and HDF5), ``.binaryproto`` files and HDF5 data files
(read by an HDF5Data layer). Mutations are byte-level (flips, splices, truncation,
huge varints), token-level for text (numbers replaced by extreme values, blob names
swapped) and structure-aware (a random field of the parsed message set to an extreme
value; HDF5 datasets of odd types, shapes and links).

The inputs run in a child process with a capped address space and a low netdef array
limit, one alarm per input, so a regression shows up as a counted failure instead of
swapping the machine. Run this file directly for a long campaign::

    python tests/test_fuzz.py --count 1250 --seed 7 --keep fuzz-failures
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("net_text", "net_json", "net_yaml", "net_binary", "solver", "caffemodel", "weights_h5",
         "solverstate", "solverstate_h5", "binaryproto", "hdf5_data")  # fmt: skip
ADDRESS_SPACE = 6 << 30  # the child's whole address space
ARRAY_LIMIT = "64M"  # netdef's per-array limit in the child
PER_INPUT_SECONDS = 20

NET = """name: "fuzz"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "label" type: "DummyData" top: "label"
  dummy_data_param { shape { dim: 2 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "lrn" type: "LRN" bottom: "pool" top: "lrn" lrn_param { local_size: 3 } }
layer { name: "drop" type: "Dropout" bottom: "lrn" top: "lrn" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "lrn" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
"""

NET2 = """name: "fuzz2"
layer { name: "a" type: "DummyData" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 6 } shape { dim: 2 dim: 6 } data_filler { type: "uniform" } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { operation: SUM } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "a" top: "cat" concat_param { axis: 1 } }
layer { name: "sl" type: "Slice" bottom: "cat" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 4 } }
layer { name: "rs" type: "Reshape" bottom: "s1" top: "rs" reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }
layer { name: "fl" type: "Flatten" bottom: "rs" top: "fl" }
layer { name: "sig" type: "Sigmoid" bottom: "fl" top: "sig" }
layer { name: "pw" type: "Power" bottom: "s2" top: "pw" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "sig" top: "ip" inner_product_param { num_output: 8 } }
layer { name: "eu" type: "EuclideanLoss" bottom: "ip" bottom: "pw" top: "eu" }
"""

LEGACY = """name: "legacy"
input: "data"
input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 2 } blobs_lr: 1 blobs_lr: 2 }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 } }
layers { name: "ip" type: INNER_PRODUCT bottom: "pool" top: "ip" inner_product_param { num_output: 2 } }
"""

HDF5_NET = """name: "h5"
layer { name: "d" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "list.txt" batch_size: 3 shuffle: true } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
base_lr: 0.01 lr_policy: "step" gamma: 0.1 stepsize: 100 momentum: 0.9 weight_decay: 0.0005
max_iter: 1000 display: 10 snapshot: 500 snapshot_prefix: "snap/run" type: "Adam" test_iter: 2 test_interval: 50
"""

NUMBERS = ["0", "-1", "1", "2", "3", "7", "65536", "100000", "2147483647", "4294967296", "9223372036854775807",
           "18446744073709551615", "99999999999999999999", "1e308", "-1e308", "nan", "inf", "-inf", "0.0", "-0",
           "1e-45", "0.5"]  # fmt: skip
NAMES = ["data", "label", "conv", "pool", "ip", "loss", "a", "b", "sum", "missing", "", "lrn", "fl", "s1"]
ENUMS = ["MAX", "AVE", "STOCHASTIC", "SUM", "PROD", "TRAIN", "TEST", "CAFFE", "CUDNN", "LMDB", "LEVELDB", "BOGUS"]
BIG_INTS = [0, 1, 2, 3, 255, 1 << 16, 100000, (1 << 31) - 1, 1 << 31, 1 << 32, (1 << 63) - 1, (1 << 64) - 1]
FLOATS = [0.0, -1.0, 0.5, 1e30, -1e30, float("nan"), float("inf"), float("-inf"), 1e-40]


# --- seeds -------------------------------------------------------------------------------------------
def _seed_nets() -> list[str]:
    seeds = [NET, NET2, LEGACY]
    for model in ("lenet", "cifar10_quick"):
        path = ROOT / "models" / model / "deploy.prototxt"
        if path.exists():
            seeds.append(path.read_text())
    return seeds


def _net_param(text: str):
    from netdef.proto import netdef_pb2, parse_text

    return parse_text(text, netdef_pb2.NetParameter())


def _weights_of(text: str, tmp: Path, suffix: str) -> bytes:
    import netdef

    net = netdef.Net(_net_param(text), netdef.TEST)
    path = tmp / f"seed{suffix}"
    net.save(str(path))
    return path.read_bytes()


# --- generic mutators ------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One to four byte-level edits: flips, random bytes, splices, truncation, 0xff runs (huge varints)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf.extend(rng.randbytes(rng.randint(1, 16)))
            continue
        pos = rng.randrange(len(buf))
        op = rng.randrange(7)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 4:
            end = min(len(buf), pos + rng.randint(1, 64))
            at = rng.randrange(len(buf))
            buf[at:at] = buf[pos:end]
        elif op == 5:
            del buf[pos:]
        else:
            buf[pos : pos + 1] = b"\xff" * rng.randint(1, 10) + b"\x01"
    return bytes(buf)


def _random_scalar(rng: random.Random, field):
    from google.protobuf.descriptor import FieldDescriptor as F

    t = field.type
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return rng.choice(FLOATS)
    if t == F.TYPE_BOOL:
        return rng.random() < 0.5
    if t == F.TYPE_STRING:
        return rng.choice(NAMES + ["x" * rng.randint(1, 40), "\u00e9t\u00e9", "../up", "nul\x00"])
    if t == F.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 32))
    if t == F.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    bits = 32 if t in (F.TYPE_INT32, F.TYPE_UINT32, F.TYPE_SINT32, F.TYPE_FIXED32, F.TYPE_SFIXED32) else 64
    signed = t not in (F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_FIXED32, F.TYPE_FIXED64)
    value = rng.choice(BIG_INTS)
    if signed and rng.random() < 0.3:
        value = -value
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return min(max(value, lo), hi)


def _set_field(rng: random.Random, msg, field) -> None:
    from google.protobuf.descriptor import FieldDescriptor as F

    container = getattr(msg, field.name)
    if field.type == F.TYPE_MESSAGE:
        if field.is_repeated:
            if len(container) and rng.random() < 0.5:
                del container[rng.randrange(len(container))]
            else:
                new = container.add()
                if len(container) > 1 and rng.random() < 0.7:
                    new.CopyFrom(container[rng.randrange(len(container) - 1)])
        else:
            msg.ClearField(field.name) if rng.random() < 0.3 else container.SetInParent()
        return
    value = _random_scalar(rng, field)
    if field.is_repeated:
        op = rng.randrange(3)
        if op == 0 and len(container):
            container[rng.randrange(len(container))] = value
        elif op == 1 and len(container):
            del container[rng.randrange(len(container))]
        else:
            container.append(value)
    else:
        setattr(msg, field.name, value)


def _all_messages(msg, out: list) -> list:
    out.append(msg)
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for sub in value if field.is_repeated else [value]:
            _all_messages(sub, out)
    return out


def mutate_message(rng: random.Random, msg) -> None:
    """Set one to three random fields (present or not) of random sub-messages to extreme values."""
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(_all_messages(msg, []))
        fields = target.DESCRIPTOR.fields
        if fields:
            _set_field(rng, target, rng.choice(fields))


def mutate_text(rng: random.Random, text: str) -> str:
    """Token-level edits of protobuf text: extreme numbers, swapped names and enums, duplicated or dropped lines."""
    import re

    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        if op == 0:
            spots = list(re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?", text))
            if spots:
                m = rng.choice(spots)
                text = text[: m.start()] + rng.choice(NUMBERS) + text[m.end() :]
        elif op == 1:
            spots = list(re.finditer(r'"[^"\n]*"', text))
            if spots:
                m = rng.choice(spots)
                text = text[: m.start()] + f'"{rng.choice(NAMES)}"' + text[m.end() :]
        elif op == 2:
            spots = list(re.finditer(r"\b[A-Z][A-Z_]+\b", text))
            if spots:
                m = rng.choice(spots)
                text = text[: m.start()] + rng.choice(ENUMS) + text[m.end() :]
        elif op == 3:
            lines = text.splitlines(keepends=True)
            i = rng.randrange(len(lines))
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
            text = "".join(lines)
        elif op == 4:
            lines = text.splitlines(keepends=True)
            del lines[rng.randrange(len(lines))]
            text = "".join(lines) or "\n"
        else:
            return mutate_bytes(rng, text.encode()).decode("utf-8", "replace") if rng.random() < 0.5 else text
    return text


def _nested(depth: int, leaf) -> object:
    value = leaf
    for _ in range(depth):
        value = {"layer": [value]} if depth % 2 else [value]
    return value


def mutate_mapping(rng: random.Random, data):
    """A JSON-like tree with one edit: deleted key, value of another type, extreme number, deep nesting."""
    nodes: list = []

    def walk(node):
        nodes.append(node)
        for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
            walk(child)

    walk(data)
    containers = [n for n in nodes if isinstance(n, (dict, list)) and n]
    node = rng.choice(containers)
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    op = rng.randrange(5)
    if op == 0:
        del node[key]
    elif op == 1:
        node[key] = rng.choice([None, True, "x", [], {}, 3.5, -7, "1e400", {"dim": [1]}])
    elif op == 2:
        node[key] = rng.choice([int(x) for x in BIG_INTS] + [-1, 1e308, -(1 << 70)])
    elif op == 3:
        node[key] = _nested(rng.choice([3, 20, 150]), node[key])
    else:
        if isinstance(node, dict):
            node[key + "_x" if isinstance(key, str) else "k"] = node[key]
        else:
            node.append(node[key])
    return data


# --- per-kind generation ------------------------------------------------------------------------------
class Generator:
    """Makes the seed inputs once, then one mutated input file per call, inside ``work``."""

    def __init__(self, work: Path, seed: int):
        from google.protobuf import json_format

        self.work = work
        self.rng = random.Random(seed)
        self.nets = _seed_nets()
        self.net_params = [_net_param(t) for t in self.nets]
        self.dicts = [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in self.net_params]
        self.solvers = [SOLVER] + [p.read_text() for p in sorted((ROOT / "solvers").glob("*.prototxt"))]
        seed_dir = work / "seeds"
        seed_dir.mkdir(exist_ok=True)
        self.caffemodels = [_weights_of(t, seed_dir, ".caffemodel") for t in self.nets[:3]]
        (work / "net.prototxt").write_text(self.nets[0])

    def _write(self, name: str, data) -> Path:
        path = self.work / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape"))
        return path

    def net_text(self) -> Path:
        return self._write("n.prototxt", mutate_text(self.rng, self.rng.choice(self.nets)))

    def net_json(self) -> Path:
        if self.rng.random() < 0.05:
            depth = self.rng.choice([500, 1000, 5000])
            return self._write("n.json", '{"layer": [' * depth + "{}" + "]}" * depth)
        data = mutate_mapping(self.rng, json.loads(json.dumps(self.rng.choice(self.dicts))))
        raw = json.dumps(data).encode()
        return self._write("n.json", mutate_bytes(self.rng, raw) if self.rng.random() < 0.3 else raw)

    def net_yaml(self) -> Path:
        import yaml

        if self.rng.random() < 0.1:
            return self._write("n.yaml", _yaml_bomb(self.rng.choice([4, 9])))
        if self.rng.random() < 0.05:
            depth = self.rng.choice([500, 1000, 5000])
            return self._write("n.yaml", "layer: " + "[" * depth + "]" * depth)
        data = mutate_mapping(self.rng, json.loads(json.dumps(self.rng.choice(self.dicts))))
        raw = yaml.safe_dump(data).encode()
        return self._write("n.yaml", mutate_bytes(self.rng, raw) if self.rng.random() < 0.3 else raw)

    def net_binary(self) -> Path:
        msg = type(self.net_params[0])()
        msg.CopyFrom(self.rng.choice(self.net_params))
        mutate_message(self.rng, msg)
        raw = msg.SerializePartialToString()
        return self._write("n.binaryproto", mutate_bytes(self.rng, raw) if self.rng.random() < 0.5 else raw)

    def solver(self) -> Path:
        from netdef.proto import netdef_pb2, parse_text, to_text

        text = self.rng.choice(self.solvers)
        if self.rng.random() < 0.5:
            return self._write("s.prototxt", mutate_text(self.rng, text))
        msg = parse_text(text, netdef_pb2.SolverParameter())
        mutate_message(self.rng, msg)
        return self._write("s.prototxt", to_text(msg))

    def caffemodel(self) -> Path:
        from netdef.proto import netdef_pb2

        raw = self.rng.choice(self.caffemodels)
        if self.rng.random() < 0.02:
            return self._write("w.caffemodel", b"")
        if self.rng.random() < 0.5:
            return self._write("w.caffemodel", mutate_bytes(self.rng, raw))
        msg = netdef_pb2.NetParameter.FromString(raw)
        mutate_message(self.rng, msg)
        return self._write("w.caffemodel", msg.SerializePartialToString())

    def weights_h5(self) -> Path:
        path = self.work / "w.h5"
        _hdf5_file(self.rng, path, weights=True)
        return path

    def _solverstate_msg(self):
        import numpy

        from netdef.io.solverstate import SolverStateData, encode_solverstate
        from netdef.proto import netdef_pb2

        history = [numpy.ones((4, 3, 3, 3), numpy.float32), numpy.zeros(4, numpy.float32)]
        raw = encode_solverstate(SolverStateData(10, "w.caffemodel", history, 1))
        return netdef_pb2.SolverState.FromString(raw)

    def solverstate(self) -> Path:
        msg = self._solverstate_msg()
        if self.rng.random() < 0.5:
            mutate_message(self.rng, msg)
            return self._write("s.solverstate", msg.SerializePartialToString())
        return self._write("s.solverstate", mutate_bytes(self.rng, msg.SerializePartialToString()))

    def solverstate_h5(self) -> Path:
        path = self.work / "s.solverstate.h5"
        _hdf5_file(self.rng, path, state=True)
        return path

    def binaryproto(self) -> Path:
        from netdef.proto import netdef_pb2

        msg = netdef_pb2.BlobProto(num=1, channels=3, height=2, width=2)
        msg.data.extend([0.5] * 12)
        if self.rng.random() < 0.5:
            mutate_message(self.rng, msg)
            return self._write("m.binaryproto", msg.SerializePartialToString())
        return self._write("m.binaryproto", mutate_bytes(self.rng, msg.SerializePartialToString()))

    def hdf5_data(self) -> Path:
        path = self.work / "d.h5"
        _hdf5_file(self.rng, path)
        listing = b"d.h5\n"
        if self.rng.random() < 0.1:
            listing = self.rng.choice([b"d.h5\n\xff\xfe\n", b"", b"# only a comment\n", b"missing.h5\n", b".\n"])
        self._write("list.txt", listing)
        return self._write("h5net.prototxt", HDF5_NET)


def _yaml_bomb(levels: int) -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"name: *a{levels - 1}")
    return "\n".join(lines).encode()


def _odd_dataset(rng: random.Random, group, name: str, good) -> None:
    """A dataset called ``name``: the good array, or one of many odd forms."""
    import h5py
    import numpy

    op = rng.randrange(12)
    if op == 0:
        group.create_dataset(name, shape=(1 << 20, 1 << 16), dtype="f4", chunks=(1, 16))  # declares 4 TiB
    elif op == 1:
        group.create_dataset(name, data=numpy.float32(2.5))  # scalar
    elif op == 2:
        group.create_dataset(name, data=["a", "bc"], dtype=h5py.string_dtype())  # variable-length strings
    elif op == 3:
        group.create_dataset(name, data=numpy.zeros((0,) + good.shape[1:], good.dtype))
    elif op == 4:
        bad = good.astype(numpy.float64)
        bad.flat[rng.randrange(bad.size)] = rng.choice([numpy.nan, numpy.inf, -numpy.inf])
        group.create_dataset(name, data=bad)
    elif op == 5:
        group[name] = h5py.SoftLink(f"/{name}_loop")
        group.file[f"{name}_loop"] = h5py.SoftLink(f"/{name}")
    elif op == 6:
        group.create_group(name)
    elif op == 7:
        group.create_dataset(name, data=numpy.zeros(3, dtype=[("x", "i4"), ("y", "f4")]))
    elif op == 8:
        group.create_dataset(name, data=good.reshape(good.shape[0], -1)[:, :1].astype(numpy.int64) + (1 << 40))
    elif op == 9:
        group[name] = h5py.ExternalLink("nowhere.h5", "/x")
    elif op == 10:
        group.create_dataset(name, data=numpy.asarray(b"5"))
    else:
        group.create_dataset(name, data=good.reshape(-1)[: max(1, good.size // 2)])


def _hdf5_file(rng: random.Random, path: Path, weights: bool = False, state: bool = False) -> None:
    """An HDF5 data, weights or solver-state file with one odd part (or byte edits of a good one)."""
    import h5py
    import numpy

    nrng = numpy.random.default_rng(rng.randrange(1 << 30))
    if weights:
        entries = {"data/conv/0": nrng.random((4, 3, 3, 3)), "data/conv/1": nrng.random(4)}
    elif state:
        entries = {"iter": numpy.array([10], numpy.int32), "current_step": numpy.array([1], numpy.int32),
                   "history/0": nrng.random((4, 3, 3, 3)), "history/1": nrng.random(4)}  # fmt: skip
    else:
        entries = {"data": nrng.random((5, 3, 2, 2)).astype(numpy.float32), "label": numpy.arange(5.0) % 2}
    odd = rng.choice(list(entries)) if rng.random() < 0.8 else None
    with h5py.File(path, "w") as f:
        for name, arr in entries.items():
            folder, _, leaf = name.rpartition("/")
            group = f.require_group(folder) if folder else f
            if name == odd:
                _odd_dataset(rng, group, leaf, numpy.asarray(arr))
            else:
                group.create_dataset(leaf, data=arr)
        if state and rng.random() < 0.3:
            f.create_dataset("learned_net", data=rng.choice([b"w.caffemodel", b"\xff\xfe", 7]))
    if rng.random() < 0.25:
        path.write_bytes(mutate_bytes(rng, path.read_bytes()))


# --- running one input -----------------------------------------------------------------------------------
class Hang(BaseException):
    """Raised by the per-input alarm (a BaseException, so no `except Exception` in netdef swallows it)."""


def _run_net(path: Path, weights: str | None = None) -> None:
    import netdef

    net = netdef.Net(str(path), netdef.TRAIN, weights=weights)
    net.forward()
    net.backward()
    net.forward()


def consume(kind: str, path: Path) -> None:
    """Do with the input what netdef's users do with such a file."""
    from netdef.io.blobproto import read_binaryproto
    from netdef.io.solverstate import read_solverstate
    from netdef.proto import load_solver

    if kind.startswith("net_") or kind == "hdf5_data":
        _run_net(path)
    elif kind == "solver":
        load_solver(str(path))
    elif kind in ("caffemodel", "weights_h5"):
        import netdef

        netdef.Net(str(path.parent / "net.prototxt"), netdef.TEST, weights=str(path))
    elif kind.startswith("solverstate"):
        read_solverstate(str(path))
    elif kind == "binaryproto":
        read_binaryproto(str(path))


def _where(err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "netdef" in f.filename]
    frame = frames[-1] if frames else traceback.extract_tb(err.__traceback__)[-1]
    parts = Path(frame.filename).parts
    short = "/".join(parts[parts.index("netdef") :]) if "netdef" in parts else Path(frame.filename).name
    return f"{short}:{frame.lineno}"


def campaign(kinds, count: int, seed: int, work: Path, keep: Path | None) -> dict:
    """Run ``count`` inputs of each kind; return counts and distinct failures per kind."""
    import logging
    import resource
    import signal
    import warnings

    from netdef.errors import NetdefError

    logging.getLogger("netdef").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")

    def alarm(*_):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    os.chdir(work)
    gen = Generator(work, seed)
    report = {}
    for kind in kinds:
        counts = collections.Counter()
        failures: dict[str, str] = {}
        started = time.perf_counter()
        for i in range(count):
            path = getattr(gen, kind)()
            detail = ""
            signal.alarm(PER_INPUT_SECONDS)
            try:
                consume(kind, path)
                outcome = "ok"
            except NetdefError:
                outcome = "netdef"
            except Hang:
                outcome, key = "hang", "hang"
            except MemoryError as err:
                outcome, key = "memory", f"MemoryError at {_where(err)}"
            except Exception as err:  # the point of the test: anything else is a defect
                outcome, key = "other", f"{type(err).__name__} at {_where(err)}"
                detail = str(err)[:160]
            finally:
                signal.alarm(0)
            counts[outcome] += 1
            if outcome in ("hang", "memory", "other") and key not in failures:
                failures[key] = f"{kind} #{i}: {detail}"
                if keep is not None:
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / f"{kind}-{i}{''.join(path.suffixes)}").write_bytes(path.read_bytes())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        report[kind] = {"counts": dict(counts), "failures": failures, "seconds": time.perf_counter() - started,
                        "peak_rss_mib": peak}  # fmt: skip
    return report


def _limit_child() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_child(kinds, count: int, seed: int, timeout: float, keep: str | None = None) -> dict:
    """Run a campaign in a child process with a capped address space and netdef's limit set low."""
    env = dict(os.environ, NETDEF_MAX_ARRAY_BYTES=ARRAY_LIMIT, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", "--count", str(count), "--seed", str(seed), "--kinds", ",".join(kinds)]
    if keep:
        cmd += ["--keep", keep]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=_limit_child, check=False
    )
    assert proc.returncode == 0, f"fuzz child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _problems(report: dict) -> list[str]:
    return [f"{kind}: {key} (first: {where})" for kind, r in report.items() for key, where in r["failures"].items()]


@pytest.mark.skipif(sys.platform == "win32", reason="needs resource limits of a POSIX system")
def test_fuzzed_inputs_raise_only_netdef_errors():
    report = run_child(KINDS, count=150, seed=2024, timeout=600)
    assert not _problems(report), "\n".join(_problems(report))
    assert all(sum(r["counts"].values()) == 150 for r in report.values())


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs resource limits of a POSIX system")
def test_fuzzed_inputs_long_run():
    report = run_child(KINDS, count=1000, seed=99, timeout=3600)
    assert not _problems(report), "\n".join(_problems(report))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="inputs per kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--keep", help="folder to copy the first failing input of each kind and cause to")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    keep = Path(args.keep).resolve() if args.keep else None
    if args.child:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(campaign(kinds, args.count, args.seed, Path(work), keep)))
        return
    report = run_child(kinds, args.count, args.seed, timeout=24 * 3600, keep=args.keep and str(keep))
    for kind, r in report.items():
        print(
            f"{kind:16s} {r['seconds']:6.1f}s peak {r['peak_rss_mib']:5d} MiB {json.dumps(r['counts'], sort_keys=True)}"
        )
        for key, where in r["failures"].items():
            print(f"    {key}  [{where}]")


if __name__ == "__main__":
    main()
