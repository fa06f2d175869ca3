"""Upgrading V0 nets, Caffe's first format: ``layers { layer { name type: "conv" ... } bottom top }``.

V0 layers keep every setting flat in one message (``num_output``,
``kernelsize``, ``blobs_lr`` ...) and give the type as a lower-case string. The
upgrade follows Caffe's ``UpgradeV0Net``: first fold each ``padding`` layer into
the convolution or pooling layer it feeds (``UpgradeV0PaddingLayers``), then turn
every V0 layer into a V1 layer (``layers { type: CONVOLUTION convolution_param
{ ... } }``), which :func:`netdef.proto.upgrade.upgrade_net` then brings to the
current ``layer { type: "Convolution" }`` form. Settings that do not apply to a
layer's type are dropped and reported, as Caffe does.
"""

from __future__ import annotations

import logging

from ..errors import NetdefError, UnknownBottomBlobError, did_you_mean
from . import netdef_pb2 as pb

log = logging.getLogger("netdef")

# V0 type string -> V1 LayerType enum name
V0_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type: (V1 parameter message field, field inside it)}; the fields a type accepts.
_FIELD_MAP: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {
        "conv": ("convolution_param", "weight_filler"),
        "innerproduct": ("inner_product_param", "weight_filler"),
    },
    "bias_filler": {
        "conv": ("convolution_param", "bias_filler"),
        "innerproduct": ("inner_product_param", "bias_filler"),
    },
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {
        "data": ("data_param", "source"),
        "hdf5_data": ("hdf5_data_param", "source"),
        "images": ("image_data_param", "source"),
        "window_data": ("window_data_param", "source"),
        "infogain_loss": ("infogain_loss_param", "source"),
    },
    "batchsize": {
        "data": ("data_param", "batch_size"),
        "hdf5_data": ("hdf5_data_param", "batch_size"),
        "images": ("image_data_param", "batch_size"),
        "window_data": ("window_data_param", "batch_size"),
    },
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("", "hdf5_output_param")},
}

# V0 fields that become the data transformation whatever the layer type.
_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}


def net_needs_v0_upgrade(param) -> bool:
    """True when any ``layers`` entry holds a V0 ``layer { }`` message."""
    return any(v1.HasField("layer") for v1 in param.layers)


def _fold_padding_layers(param, where: str) -> list:
    """The V0 ``layers`` with every ``padding`` layer merged into the conv/pool layer that reads it."""
    producer: dict[str, int] = {name: -1 for name in param.input}
    out = []
    for i, entry in enumerate(param.layers):
        v0 = entry.layer
        if v0.type != "padding":
            out.append(pb.V1LayerParameter())
            out[-1].CopyFrom(entry)
        for j, blob in enumerate(entry.bottom):
            if blob not in producer:
                raise UnknownBottomBlobError(
                    f'{where}: V0 layer "{v0.name}" (type {v0.type}) reads bottom blob "{blob}", which no earlier '
                    f"layer or net input produces. Available: {', '.join(sorted(producer)) or '(none)'}"
                )
            src_index = producer[blob]
            if src_index < 0:
                continue
            src = param.layers[src_index]
            if src.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise NetdefError(
                    f'{where}: padding layer "{src.layer.name}" feeds layer "{v0.name}" of type {v0.type}; a V0 '
                    "padding layer can only feed a conv or pool layer"
                )
            if len(entry.bottom) != 1 or len(src.bottom) != 1 or len(src.top) != 1:
                raise NetdefError(
                    f'{where}: padding layer "{src.layer.name}" and the layer it feeds ("{v0.name}") must each '
                    f"have exactly one bottom (and the padding layer one top). Received: {len(src.bottom)} "
                    f"bottom(s) and {len(src.top)} top(s) on the padding layer, {len(entry.bottom)} bottom(s) "
                    f'on "{v0.name}"'
                )
            out[-1].layer.pad = src.layer.pad
            out[-1].bottom[j] = src.bottom[0]
        for blob in entry.top:
            producer[blob] = i
    return out


def upgrade_v0_layer(entry, where: str) -> tuple[pb.V1LayerParameter, list[str]]:
    """One V0 ``layers`` entry as a V1 layer, and the problems met (settings that were dropped)."""
    v1 = pb.V1LayerParameter()
    v1.bottom.extend(entry.bottom)
    v1.top.extend(entry.top)
    problems: list[str] = []
    if not entry.HasField("layer"):
        return v1, problems
    v0 = entry.layer
    kind = v0.type
    if v0.HasField("name"):
        v1.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise NetdefError(
                f'{where}: V0 layer "{v0.name}" has type "{kind}", which is not a V0 layer type.'
                f"{did_you_mean(kind, V0_TYPES)} Valid: {', '.join(sorted(V0_TYPES))}"
            )
        v1.type = pb.V1LayerParameter.LayerType.Value(V0_TYPES[kind])
    for blob in v0.blobs:
        v1.blobs.add().CopyFrom(blob)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for field, targets in _FIELD_MAP.items():
        if not v0.HasField(field):
            continue
        if kind not in targets:
            problems.append(
                f'{where}: V0 layer "{v0.name}" (type {kind}): setting {field} does not apply to this type; '
                f"dropped (it applies to: {', '.join(targets)})"
            )
            continue
        message_field, name = targets[kind]
        _set(getattr(v1, message_field) if message_field else v1, name, getattr(v0, field))
    for field, name in _TRANSFORM_FIELDS.items():
        if v0.HasField(field):
            setattr(v1.transform_param, name, getattr(v0, field))
    return v1, problems


def _set(message, name: str, value) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        getattr(message, name).append(value)
    elif field.message_type is not None:
        getattr(message, name).CopyFrom(value)
    else:
        setattr(message, name, value)


def upgrade_v0_net(param, where: str = "<net>") -> list[str]:
    """Turn the V0 ``layers`` of NetParameter ``param`` into V1 layers, in place.

    Returns the problems met (settings dropped because they do not apply to a
    layer's type); each is also logged as a warning.
    """
    if not all(entry.HasField("layer") for entry in param.layers):
        plain = [i for i, entry in enumerate(param.layers) if not entry.HasField("layer")]
        raise NetdefError(
            f"{where}: mixes V0 layers (layers {{ layer {{ ... }} }}) with V1 layers (layers {{ type: ... }}) "
            f"at layers entries {plain}; use one format"
        )
    folded = _fold_padding_layers(param, where)
    upgraded, problems = [], []
    for entry in folded:
        v1, found = upgrade_v0_layer(entry, where)
        upgraded.append(v1)
        problems.extend(found)
    del param.layers[:]
    param.layers.extend(upgraded)
    for problem in problems:
        log.warning("%s", problem)
    return problems


__all__ = ["V0_TYPES", "net_needs_v0_upgrade", "upgrade_v0_layer", "upgrade_v0_net"]
