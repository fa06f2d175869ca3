"""Upgrading legacy Caffe definitions to the current schema, as Caffe does on load.

Handled here: V0 nets (``layers { layer { type: "conv" ... } }``, via
:mod:`netdef.proto.upgrade_v0`), the V0-era transformation fields of data layers
(``data_param { scale mean_file crop_size mirror }`` -> ``transform_param``),
V1 nets (``layers { type: CONVOLUTION blobs_lr: 1 ... }``), the net-level
``input``/``input_shape``/``input_dim`` fields (become an Input layer) and the
solver's ``solver_type`` enum (becomes the ``type`` string).
"""

from __future__ import annotations

import logging

from ..errors import NetdefError
from . import netdef_pb2 as pb
from .upgrade_v0 import net_needs_v0_upgrade, upgrade_v0_net

log = logging.getLogger("netdef")

# V1 LayerType enum name -> layer type string
_V1_TYPES = {
    # DeepLab v1's V1 types keep their fork names; netdef implements Interp, the rest are named as unknown types.
    "IMAGE_SEG_DATA": "ImageSegData",
    "SEG_ACCURACY": "SegAccuracy",
    "INTERP": "Interp",
    "PADDING": "Padding",
    "MAT_WRITE": "MatWrite",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

# V1 fields copied verbatim (same name and message type in LayerParameter)
_V1_SAME = [
    "bottom",
    "top",
    "name",
    "blobs",
    "include",
    "exclude",
    "loss_weight",
    "transform_param",
    "loss_param",
]


# V1 data layer types whose parameter message held the transformation fields before transform_param
_DATA_TRANSFORM_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_UPGRADE_HINT = "run `netdef upgrade net IN OUT` to save the upgraded definition"


def legacy_transform_fields(v1) -> tuple[str | None, list[str]]:
    """The data-parameter field of V1 layer ``v1`` and which transformation fields it still sets there."""
    enum_name = pb.V1LayerParameter.LayerType.Name(v1.type) if v1.HasField("type") else ""
    field = _DATA_TRANSFORM_PARAMS.get(enum_name)
    if field is None or not v1.HasField(field):
        return None, []
    message = getattr(v1, field)
    return field, [name for name in _TRANSFORM_FIELDS if message.HasField(name)]


def net_needs_data_upgrade(param) -> bool:
    """True when a V1 data layer sets scale/mean_file/crop_size/mirror in its own parameter message."""
    return any(legacy_transform_fields(v1)[1] for v1 in param.layers)


def upgrade_net_data_transformation(param) -> None:
    """Move the transformation fields of V1 Data/ImageData/WindowData layers into ``transform_param`` (in place)."""
    for v1 in param.layers:
        field, names = legacy_transform_fields(v1)
        for name in names:
            message = getattr(v1, field)
            setattr(v1.transform_param, name, getattr(message, name))
            message.ClearField(name)


def net_needs_v1_upgrade(param) -> bool:
    return len(param.layers) > 0


def _copy_same_fields(v1, layer) -> None:
    """Fields that V1 and the current LayerParameter share by name and meaning."""
    for name in _V1_SAME:
        field = pb.V1LayerParameter.DESCRIPTOR.fields_by_name[name]
        value = getattr(v1, name)
        if field.is_repeated and field.message_type is not None:
            for item in value:
                getattr(layer, name).add().CopyFrom(item)
        elif field.is_repeated:
            getattr(layer, name).extend(value)
        elif v1.HasField(name) and field.message_type is not None:
            getattr(layer, name).CopyFrom(value)
        elif v1.HasField(name):
            setattr(layer, name, value)


def _v1_param_specs(v1, layer) -> None:
    """V1's parallel blobs_lr / weight_decay / param / blob_share_mode lists as ParamSpecs."""
    n = max(len(v1.blobs_lr), len(v1.weight_decay), len(v1.param), len(v1.blob_share_mode))
    for i in range(n):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]


def upgrade_v1_layer(v1, where: str):
    """One V1LayerParameter as a LayerParameter."""
    layer = pb.LayerParameter()
    if v1.HasField("layer"):
        raise NetdefError(
            f'{where}: layer "{v1.name or v1.layer.name}" mixes the V0 format (layers {{ layer {{ ... }} }}) '
            "into a V1 layer; use one format"
        )
    _copy_same_fields(v1, layer)
    if v1.HasField("type"):
        enum_name = pb.V1LayerParameter.LayerType.Name(v1.type)
        if enum_name not in _V1_TYPES:
            raise NetdefError(f'{where}: V1 layer "{v1.name}" has type {enum_name}, which has no current equivalent')
        layer.type = _V1_TYPES[enum_name]
    _v1_param_specs(v1, layer)
    for field in pb.V1LayerParameter.DESCRIPTOR.fields:
        special = field.name in ("transform_param", "loss_param")
        if field.name.endswith("_param") and not special and v1.HasField(field.name):
            if field.name not in pb.LayerParameter.DESCRIPTOR.fields_by_name:
                # Only DeepLab v1 layers netdef lacks read these; building the net names the layer type.
                log.warning(
                    '%s: V1 layer "%s": %s has no current equivalent and is dropped', where, v1.name, field.name
                )
                continue
            getattr(layer, field.name).CopyFrom(getattr(v1, field.name))
    return layer


def upgrade_input_fields(param, where: str) -> None:
    """Turn net-level ``input`` fields into an Input layer at the front, as Caffe does."""
    if not param.input:
        return
    if not param.input_shape and not param.input_dim and any(layer.blobs for layer in param.layer):
        # Old .caffemodel files list their input names without shapes; Caffe just drops them.
        del param.input[:]
        log.info("%s: dropped legacy input names that give no shape", where)
        return
    shapes = [pb.BlobShape(dim=list(s.dim)) for s in param.input_shape]
    if param.input_dim:
        if len(param.input_dim) != 4 * len(param.input):
            raise NetdefError(
                f"{where}: input_dim must give 4 values per input ({len(param.input)} inputs -> "
                f"{4 * len(param.input)} values). Received: {len(param.input_dim)} values"
            )
        dims = list(param.input_dim)
        shapes = [pb.BlobShape(dim=dims[4 * i : 4 * i + 4]) for i in range(len(param.input))]
    if len(shapes) != len(param.input):
        raise NetdefError(
            f"{where}: {len(param.input)} input(s) but {len(shapes)} input_shape(s); give one shape per input"
        )
    layer = pb.LayerParameter(name="input", type="Input")
    layer.top.extend(param.input)
    for s in shapes:
        layer.input_param.shape.add().CopyFrom(s)
    layers = [layer] + list(param.layer)
    del param.layer[:]
    param.layer.extend(layers)
    del param.input[:]
    del param.input_shape[:]
    del param.input_dim[:]
    log.info("%s: upgraded legacy input fields to an Input layer", where)


def upgrade_net(param, where: str = "<net>", hint: bool = True):
    """Upgrade every legacy form in NetParameter ``param`` (in place); returns it.

    ``hint`` adds a log line saying how to save the upgraded definition.
    """
    if net_needs_v0_upgrade(param):
        problems = upgrade_v0_net(param, where)
        if problems:
            log.warning(
                "%s: upgraded V0 layer definitions (layers { layer { ... } }) with %d problem(s) (see "
                "above); continuing anyway",
                where,
                len(problems),
            )
        else:
            log.info("%s: upgraded V0 layer definitions (layers { layer { ... } })", where)
    if net_needs_data_upgrade(param):
        upgrade_net_data_transformation(param)
        log.info("%s: moved the data layers' scale/mean_file/crop_size/mirror fields into transform_param", where)
    if param.layers:
        if param.layer:
            raise NetdefError(f"{where}: uses both 'layer' and the legacy 'layers' field; use only 'layer'")
        for v1 in param.layers:
            param.layer.add().CopyFrom(upgrade_v1_layer(v1, where))
        del param.layers[:]
        log.info("%s: upgraded V1 layer definitions (layers { type: ENUM })", where)
        if hint:
            log.info("%s: %s", where, _UPGRADE_HINT)
    upgrade_input_fields(param, where)
    return param


def upgrade_solver(param, where: str = "<solver>"):
    """Map the legacy ``solver_type`` enum onto the ``type`` string (in place)."""
    if param.HasField("solver_type"):
        new = _SOLVER_TYPES[param.solver_type]
        if param.HasField("type") and param.type != new:
            raise NetdefError(
                f"{where}: solver_type {pb.SolverParameter.SolverType.Name(param.solver_type)} conflicts with "
                f'type "{param.type}"; keep only type'
            )
        param.type = new
        param.ClearField("solver_type")
        log.info('%s: upgraded solver_type to type: "%s"', where, new)
    return param
