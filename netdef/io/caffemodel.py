"""Weights files: binary ``.caffemodel`` (a NetParameter with blobs) and HDF5 (``/data/<layer>/<i>``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy

from .. import backend
from ..errors import ShapeMismatchError, WeightsFileError
from ..proto import netdef_pb2 as pb
from ..proto.upgrade import upgrade_net
from . import wire
from .atomic import atomic_target
from .blobproto import array_to_proto, blob_shape, encode_blob, length_delimited, proto_to_array

log = logging.getLogger("netdef")


def is_hdf5(path: str) -> bool:
    return path.lower().endswith((".h5", ".hdf5"))


def net_to_proto(net, write_diff: bool = False):
    """The net as a NetParameter whose layers carry their parameter blobs (Caffe's Net::ToProto)."""
    param = pb.NetParameter(name=net.name)
    for layer in net.layers:
        lp = param.layer.add()
        lp.CopyFrom(layer.param)
        del lp.blobs[:]
        for blob in layer.blobs:
            data = backend.to_numpy(blob.data)
            diff = backend.to_numpy(blob.diff) if write_diff else None
            array_to_proto(data, diff, lp.blobs.add())
    return param


def encode_net(net, write_diff: bool = False) -> bytes:
    """``net_to_proto(net, write_diff).SerializeToString()``, built without per-value Python objects."""
    return b"".join(encode_net_chunks(net, write_diff))


def encode_net_chunks(net, write_diff: bool = False) -> Iterator[bytes]:
    """The serialised NetParameter one layer at a time, so a writer never holds the whole file."""
    if net.name:
        yield length_delimited(1, net.name.encode("utf-8"))
    for layer in net.layers:
        lp = pb.LayerParameter()
        lp.CopyFrom(layer.param)
        del lp.blobs[:]
        blobs = b"".join(
            length_delimited(
                7, encode_blob(backend.to_numpy(blob.data), backend.to_numpy(blob.diff) if write_diff else None)
            )
            for blob in layer.blobs
        )
        yield length_delimited(100, lp.SerializeToString() + blobs)  # NetParameter.layer = 100


def save_weights(net, path: str, write_diff: bool = False, atomic: bool = True) -> None:
    """Write ``net``'s parameters to ``path`` (.caffemodel binary, or HDF5 for .h5).

    With ``atomic`` (the default) the file is written under a temporary name and
    renamed into place, so an interrupted save never leaves a truncated file.
    """
    if not atomic:
        _write_weights(net, path, write_diff)
        return
    with atomic_target(path) as tmp:
        _write_weights(net, tmp, write_diff)


def _write_weights(net, path: str, write_diff: bool) -> None:
    if is_hdf5(path):
        import h5py

        with h5py.File(path, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for layer in net.layers:
                group = data.create_group(layer.name)
                dgroup = diff.create_group(layer.name) if diff is not None else None
                for i, blob in enumerate(layer.blobs):
                    group.create_dataset(str(i), data=backend.to_numpy(blob.data))
                    if dgroup is not None:
                        dgroup.create_dataset(str(i), data=backend.to_numpy(blob.diff))
        return
    with open(path, "wb") as f:
        for chunk in encode_net_chunks(net, write_diff):
            f.write(chunk)


def read_weight_blobs(path: str) -> dict[str, list[tuple[numpy.ndarray, bool]]]:
    """``{layer name: [(array, legacy_shape)]}`` from a binary or HDF5 weights file.

    ``legacy_shape`` is True for blobs stored with num/channels/height/width,
    which Caffe matches against the trailing axes of the layer's blob.
    """
    if not os.path.exists(path):
        raise WeightsFileError(f"Weights file not found: {path}")
    if is_hdf5(path):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "data" not in f:
                    raise WeightsFileError(
                        f"{path}: HDF5 weights need a /data group (Caffe's layout /data/<layer>/<i>)"
                    )
                return {
                    name: [(numpy.asarray(group[str(i)]), False) for i in range(len(group))]
                    for name, group in f["data"].items()
                }
        except OSError as err:
            raise WeightsFileError(f"{path}: cannot read HDF5 weights: {err}") from None
    try:
        return wire.read_layers(path)
    except wire.Unsupported:
        pass  # legacy V0 layers or unpacked values: protobuf reads those
    except (IndexError, ValueError) as err:
        raise WeightsFileError(f"{path}: not a binary .caffemodel (NetParameter) file: {err}") from None
    param = pb.NetParameter()
    try:
        with open(path, "rb") as f:
            param.ParseFromString(f.read())
    except Exception as err:
        raise WeightsFileError(f"{path}: not a binary .caffemodel (NetParameter) file: {err}") from None
    upgrade_net(param, path)
    return {
        layer.name: [(proto_to_array(b), not b.HasField("shape")) for b in layer.blobs]
        for layer in param.layer
        if layer.blobs
    }


def read_weights(path: str) -> dict[str, list[numpy.ndarray]]:
    """``{layer name: [arrays]}`` from a binary or HDF5 weights file (legacy V1 files included)."""
    return {name: [a for a, _ in blobs] for name, blobs in read_weight_blobs(path).items()}


def _shapes_match(target: tuple, source: tuple, legacy: bool) -> bool:
    if target == source:
        return True
    if not legacy:
        return False
    # Legacy 4-D blobs (num, channels, height, width) match when the leading axes are 1.
    extra = len(source) - len(target)
    return extra >= 0 and all(d == 1 for d in source[:extra]) and source[extra:] == target


def load_weights(net, path: str) -> None:
    """Copy parameters into ``net`` by layer name; Caffe's CopyTrainedLayersFrom rules."""
    weights = read_weight_blobs(path)
    used = set()
    for layer in net.layers:
        if layer.name not in weights or not layer.blobs:
            if layer.blobs:
                log.info("Layer %s: not in %s, keeps its initial values", layer.name, path)
            continue
        arrays = weights[layer.name]
        used.add(layer.name)
        if len(arrays) != len(layer.blobs):
            raise ShapeMismatchError(
                f'Cannot copy weights for layer "{layer.name}" (type {layer.type_name}) from {path}: the file '
                f"has {len(arrays)} blobs, the layer has {len(layer.blobs)}"
            )
        for i, (blob, (arr, legacy)) in enumerate(zip(layer.blobs, arrays)):
            if not _shapes_match(blob.shape, tuple(arr.shape), legacy):
                raise ShapeMismatchError(
                    f'Cannot copy param {i} weights for layer "{layer.name}" (type {layer.type_name}) from '
                    f"{path}: shape {tuple(arr.shape)} in the file, {blob.shape} in the net. To learn this "
                    "layer from scratch instead, rename it in the net definition."
                )
            blob.data[...] = backend.asarray(arr.reshape(blob.shape), blob.xp, blob.dtype)
    for name in weights:
        if name not in used and name not in net.layer_dict:
            log.info("Ignoring source layer %s (not in the net)", name)


__all__ = [
    "encode_net",
    "blob_shape",
    "is_hdf5",
    "load_weights",
    "net_to_proto",
    "read_weight_blobs",
    "read_weights",
    "save_weights",
]
