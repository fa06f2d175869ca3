"""Weights files: binary ``.caffemodel`` (a NetParameter with blobs) and HDF5 (``/data/<layer>/<i>``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy

from .. import backend
from ..errors import PrototxtSyntaxError, ShapeMismatchError, WeightsFileError
from ..proto import check_text_fields
from ..proto import netdef_pb2 as pb
from ..proto.upgrade import upgrade_net
from . import h5, wire
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
        return _read_hdf5_weights(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise WeightsFileError(f"{path}: the weights file is empty (0 bytes). Valid: a .caffemodel written by a solver")
    try:
        return wire.read_layers(path)
    except wire.Unsupported:
        pass  # legacy V0 layers or unpacked values: protobuf reads those
    except OSError as err:
        raise WeightsFileError(f"cannot read weights file {path}: {err.strerror or err}") from None
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}") from None
    except (IndexError, ValueError) as err:
        raise WeightsFileError(f"{path}: not a binary .caffemodel (NetParameter) file: {err}") from None
    return _read_with_protobuf(path)


def _read_with_protobuf(path: str) -> dict[str, list[tuple[numpy.ndarray, bool]]]:
    param = pb.NetParameter()
    try:
        with open(path, "rb") as f:
            param.ParseFromString(f.read())
    except Exception as err:
        raise WeightsFileError(f"{path}: not a binary .caffemodel (NetParameter) file: {err}") from None
    try:
        check_text_fields(param, path)
    except PrototxtSyntaxError as err:
        raise WeightsFileError(str(err)) from None
    upgrade_net(param, path)
    try:
        return {
            layer.name: [(proto_to_array(b), not b.HasField("shape")) for b in layer.blobs]
            for layer in param.layer
            if layer.blobs
        }
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}") from None


def _read_hdf5_weights(path: str) -> dict[str, list[tuple[numpy.ndarray, bool]]]:
    """Caffe's HDF5 weights layout ``/data/<layer>/<i>``; anything else is a WeightsFileError naming the entry."""
    import h5py

    with h5.open_file(path, WeightsFileError, "HDF5 weights file") as f:
        with h5.h5_errors(path, 'group "/data"', WeightsFileError):
            data = f.get("data")
        if not isinstance(data, h5py.Group):
            hint = " It looks like an HDF5 data file (for an HDF5Data layer)" if isinstance(data, h5py.Dataset) else ""
            raise WeightsFileError(
                f"{path}: not an HDF5 weights file: it has no /data group.{hint} Valid: Caffe's layout "
                "/data/<layer name>/<blob index>, as written by Net.save(...h5)"
            )
        with h5.h5_errors(path, 'group "/data"', WeightsFileError):
            names = list(data.keys())
        return {name: _hdf5_layer_blobs(data, name, path) for name in names}


def _hdf5_layer_blobs(data, name: str, path: str) -> list[tuple[numpy.ndarray, bool]]:
    import h5py

    with h5.h5_errors(path, f'group "/data/{name}"', WeightsFileError):
        group = data[name]
        keys = list(group.keys()) if isinstance(group, h5py.Group) else None
    if keys is None:
        raise WeightsFileError(f'{path}: "/data/{name}" must be a group of blobs named 0, 1, ... Received: a dataset')
    if sorted(keys, key=lambda k: (len(k), k)) != [str(i) for i in range(len(keys))]:
        raise WeightsFileError(
            f'{path}: the blobs of "/data/{name}" must be named 0..{len(keys) - 1}. Received: {", ".join(keys[:20])}'
        )
    return [(h5.read_array(group, str(i), path, WeightsFileError), False) for i in range(len(keys))]


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


def _warn_unmatched(kept: list[str], with_params: int, path: str) -> None:
    """One loud warning naming the layers that keep their initial values (none or only some matched)."""
    if not kept:
        return
    names = ", ".join(kept[:20]) + (f", ... ({len(kept)} in all)" if len(kept) > 20 else "")
    if len(kept) == with_params:
        log.warning(
            "No layer of the net matched a layer in %s: every layer keeps its initial values (%s). Weights are "
            "copied by layer name; is this the file for this net?",
            path,
            names,
        )
    else:
        log.warning(
            "%d of %d layers with parameters are not in %s and keep their initial values: %s",
            len(kept),
            with_params,
            path,
            names,
        )


def load_weights(net, path: str) -> None:
    """Copy parameters into ``net`` by layer name; Caffe's CopyTrainedLayersFrom rules."""
    weights = read_weight_blobs(path)
    used = set()
    kept = [layer.name for layer in net.layers if layer.blobs and layer.name not in weights]
    _warn_unmatched(kept, sum(1 for layer in net.layers if layer.blobs), path)
    for layer in net.layers:
        if layer.name not in weights or not layer.blobs:
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
