"""Net: turns a NetParameter into a layer DAG and runs it forward and backward.

The construction follows Caffe's Net::Init: keep the layers whose include/exclude
rules match the NetState, insert Split layers where a blob feeds several
consumers, build and set up each layer in order, share parameters by ParamSpec
name, then decide which layers need a backward pass (walking the layers in
reverse from the losses). Forward is a walk in order, backward the reverse walk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy

from . import allocator, backend, batch_split
from .blob import Blob
from .errors import (
    DuplicateTopBlobError,
    InvalidParameterError,
    NetdefError,
    ShapeMismatchError,
    UnknownBottomBlobError,
    UnknownLayerTypeError,
    layer_prefix,
)
from .layers import layer_class
from .layers.forks import fork_hint
from .layers.pooling import using_pooling_rule
from .layers.python_layer import python_layers_allowed
from .logs import format_g
from .proto import load_net
from .proto import netdef_pb2 as pb
from .summary import summarize

log = logging.getLogger("netdef")

TRAIN = pb.TRAIN
TEST = pb.TEST
#: the name Caffe gives the tops it adds to a loss layer written without one
AUTOMATIC_TOP = "(automatic)"


# --- phase / level / stage filtering -------------------------------------------------
def state_meets_rule(state, rule) -> bool:
    """Caffe's NetStateRule test: phase, min/max level, stage and not_stage."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param, state=None):
    """A copy of ``param`` holding only the layers its NetState includes."""
    state = state if state is not None else param.state
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer.include and layer.exclude:
            raise InvalidParameterError(
                f"{layer_prefix(layer.name, layer.type)} specifies both include and exclude rules; use one of them"
            )
        if layer.include:
            keep = any(state_meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


# --- automatic Split layers --------------------------------------------------------
def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def _count_consumers(param):
    """Where each bottom comes from, how many readers each top has (a weighted loss counts as one),
    and each top's loss weight; keys are (layer index, blob index)."""
    last_producer: dict[str, tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise UnknownBottomBlobError(
                    f'{layer_prefix(layer.name, layer.type)} reads bottom blob "{name}", which no earlier '
                    f"layer produces. Available blobs: {', '.join(sorted(last_producer)) or '(none)'}"
                )
            src = last_producer[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
            if j < len(layer.loss_weight):
                loss_weight[(i, j)] = layer.loss_weight[j]
                if layer.loss_weight[j]:
                    consumers[(i, j)] = consumers.get((i, j), 0) + 1
    return source_of, consumers, loss_weight


def insert_splits(param):
    """Give every blob read by several layers its own Split layer (gradients then sum)."""
    source_of, consumers, loss_weight = _count_consumers(param)
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if consumers[src] > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                new.bottom[j] = split_blob_name(name, param.layer[src[0]].name, src[1], k)
        for j, name in enumerate(layer.top):
            n = consumers.get((i, j), 0)
            if n <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(name, layer.name, j)
            split.type = "Split"
            split.bottom.append(name)
            split.top.extend(split_blob_name(name, layer.name, j, k) for k in range(n))
            w = loss_weight.get((i, j), 0.0)
            if w:
                # the loss moves onto the split's first top, which then stands for the weighted loss reader
                del new.loss_weight[:]
                split.loss_weight.extend([w] + [0.0] * (n - 1))
                next_split[(i, j)] = 1
    return out


def _declaration_line(source: str | None, layer_name: str) -> str:
    """``"file:line: "`` of the first line naming ``layer_name`` in a definition file (empty if unknown)."""
    if not source or not os.path.isfile(source):
        return ""
    pattern = re.compile(r"""\bname["']?\s*:\s*["']""" + re.escape(layer_name) + r"""["']""")
    try:
        with open(source, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if pattern.search(line):
                    return f"{source}:{number}: "
    except OSError:
        return f"{source}: "
    return f"{source}: "


# --- records ----------------------------------------------------------------------------
@dataclass
class ParamRecord:
    """One learnable parameter blob the solver updates (shared blobs appear once, under their owner)."""

    blob: Blob
    lr_mult: float
    decay_mult: float
    layer: str
    index: int


@dataclass
class LayerRecord:
    """A layer in the built net with the blobs it reads and writes and what its backward must produce."""

    layer: object
    bottom: list[Blob] = field(default_factory=list)
    top: list[Blob] = field(default_factory=list)
    bottom_names: list[str] = field(default_factory=list)
    top_names: list[str] = field(default_factory=list)
    #: per bottom: whether backward must write its diff
    propagate_down: list[bool] = field(default_factory=list)
    #: whether backward runs at all
    need_backward: bool = False

    def forward(self) -> float:
        return self.layer.forward_step(self.bottom, self.top)

    def backward(self) -> None:
        if self.need_backward:
            self.layer.backward(self.top, self.propagate_down, self.bottom)


def _fits(given: tuple, blob: tuple) -> bool:
    """Whether an input array of shape ``given`` may be written into a blob of shape ``blob``.

    pycaffe checks only the batch size and lets NumPy broadcast the rest (a (1, 8, 8)
    array fills a (1, 1, 8, 8) blob); the same is accepted here.
    """
    if not given or not blob or given[0] != blob[0]:
        return False
    try:
        return numpy.broadcast_shapes(given, blob) == tuple(blob)
    except ValueError:
        return False


def _batch_of(arrays: dict, start: int, take: int, batch: int) -> dict:
    """Samples ``start .. start+take`` of each array, padded with zeros to ``batch`` samples."""
    out = {}
    for k, v in arrays.items():
        chunk = v[start : start + take]
        if take < batch:
            chunk = numpy.concatenate([chunk, numpy.zeros((batch - take,) + chunk.shape[1:], chunk.dtype)])
        out[k] = chunk
    return out


def _trim(array, take: int) -> numpy.ndarray:
    """A NumPy copy of one batch's result without its padding (a scalar, such as a loss, stays whole)."""
    array = backend.to_numpy(array)
    return (array[:take] if array.ndim else array).copy()


def _join(pieces: list) -> numpy.ndarray:
    """Batch results joined along the samples; scalars (one per batch) become a vector."""
    if pieces and pieces[0].ndim == 0:
        return numpy.stack(pieces)
    return numpy.concatenate(pieces)


# --- pycaffe's call forms -------------------------------------------------------------
_PHASE_NAMES = {"TRAIN": TRAIN, "TEST": TEST}


def _is_path(value) -> bool:
    """Whether a positional argument is a file path (a phase name such as "test" is not, unless such a file exists)."""
    if isinstance(value, str) and value.upper() in _PHASE_NAMES and not os.path.exists(value):
        return False
    return isinstance(value, (str, bytes, os.PathLike))


def _check_phase(phase):
    """``phase`` as TRAIN or TEST; also accepts the names "TRAIN"/"TEST" (any case)."""
    if phase is None:
        return None
    if isinstance(phase, str) and phase.upper() in _PHASE_NAMES:
        return _PHASE_NAMES[phase.upper()]
    if isinstance(phase, (int, numpy.integer)) and not isinstance(phase, bool) and int(phase) in (TRAIN, TEST):
        return int(phase)
    raise InvalidParameterError(
        f"Net: phase must be netdef.TRAIN ({TRAIN}) or netdef.TEST ({TEST}). Received: {phase!r}"
    )


def _positional_kind(value) -> str:
    """Which of weights, level and stages a positional argument after the phase is, by its type."""
    if _is_path(value):
        return "weights"
    if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
        return "level"
    if isinstance(value, (list, tuple)):
        return "stages"
    raise InvalidParameterError(
        "Net: after the phase, positional arguments are the weights (a path), the level (an int) and "
        f"the stages (a list of names). Received: {value!r}"
    )


def _call_form(args: tuple, phase, weights, level, stages):
    """Sort ``Net(model, *args)``'s positional arguments into (phase, weights, level, stages).

    A path first is pycaffe's legacy ``Net(model, weights, phase)``; otherwise the
    first is the phase and the rest are told apart by type.
    """
    given = {"phase": phase is not None, "weights": weights is not None, "level": bool(level), "stages": bool(stages)}
    found: dict[str, object] = {}

    def put(name, value):
        if name in found or given[name]:
            raise InvalidParameterError(
                f"Net: {name} is given twice (by position and by keyword, or twice by position). "
                f"Received: {value!r} as well as {found[name] if name in found else 'a keyword value'!r}"
            )
        found[name] = value

    rest = list(args)
    if rest and _is_path(rest[0]):
        put("weights", rest.pop(0))
        if len(rest) > 1:
            raise InvalidParameterError(
                "Net(model, weights, phase) takes at most the phase after the weights. "
                f"Received: {len(rest)} more arguments {rest!r}"
            )
        if rest:
            put("phase", rest.pop(0))
    elif rest:
        put("phase", rest.pop(0))
    for value in rest:
        if value is not None:  # pycaffe's stages=None / weights=None placeholders
            put(_positional_kind(value), value)
    phase = _check_phase(found.get("phase", phase))
    weights = found.get("weights", weights)
    if isinstance(weights, bytes):
        weights = weights.decode()
    level = found.get("level", level)
    stages = list(found.get("stages", stages) or ())
    return phase, (os.fspath(weights) if weights is not None else None), int(level or 0), stages


# --- the net ------------------------------------------------------------------------
class Net:
    """A network built from a definition file or NetParameter (pycaffe's ``caffe.Net``).

    The call forms pycaffe accepts all work, so scripts run unchanged::

        Net(model, phase)                          # random initial parameters
        Net(model, phase, weights=path)            # pycaffe's current form
        Net(model, path, phase)                    # pycaffe's legacy form (weights second)
        Net(model, phase, level, stages, weights)  # pycaffe's full positional order

    After the phase, positional arguments are told apart by type (a path is the
    weights, an int the level, a list the stages), so netdef's own older order
    ``Net(model, phase, weights)`` works too. pycaffe logs a deprecation warning for
    the legacy form; netdef accepts it quietly.

    Args:
        model: path of a prototxt/YAML/JSON/binary net definition, or a NetParameter.
        phase: ``netdef.TRAIN`` or ``netdef.TEST`` (the definition's ``state`` when omitted,
            where pycaffe requires it).
        weights: optional ``.caffemodel``/``.h5`` file to copy parameters from.
        level, stages: the NetState used with include/exclude rules.
        rng: the random streams its layers draw from (fillers, Dropout, shuffling);
            by default new ones following ``netdef.set_random_seed``. A solver passes
            one set to all its nets.
        allow_python_layers: let ``type: "Python"`` layers import their modules (None: the
            process-wide setting, see :func:`netdef.allow_python_layers`).
        pooling_rule: ``"bvlc"`` or ``"caffe-yolov3"`` (that port's patched output size); None: the
            process-wide setting (:func:`netdef.layers.pooling.set_pooling_rule`, ``NETDEF_POOLING_RULE``).
    """

    def __init__(
        self,
        model,
        *args,
        phase: int | None = None,
        weights: str | os.PathLike | None = None,
        level: int = 0,
        stages: Sequence[str] | None = (),
        dtype=numpy.float32,
        xp=None,
        rng: backend.RandomStreams | None = None,
        allow_python_layers: bool | None = None,
        pooling_rule: str | None = None,
    ):
        phase, weights, level, stages = _call_form(args, phase, weights, level, stages)
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        param = load_net(model) if not isinstance(model, pb.NetParameter) else model
        self.source = model if isinstance(model, str) else None
        if phase is None:
            phase = param.state.phase
        state = pb.NetState()
        state.CopyFrom(param.state)
        state.phase = phase
        if level:
            state.level = level
        if stages:
            del state.stage[:]
            state.stage.extend(stages)
        self.phase = phase
        self.state = state
        self.dtype = numpy.dtype(dtype)
        self.xp = xp or backend.default_xp()
        self.rng = rng if rng is not None else backend.new_streams()
        allocator.tune()  # once per process: freed temporaries stay for the next iteration
        self.name = param.name
        self.param = param
        self._callbacks: dict[str, list] = {
            "before_forward": [],
            "after_forward": [],
            "before_backward": [],
            "after_backward": [],
        }
        with python_layers_allowed(allow_python_layers), using_pooling_rule(pooling_rule):
            self._init(insert_splits(filter_net(param, state)))
        if weights:
            self.copy_from(weights)

    # construction -----------------------------------------------------------------
    def _init(self, param) -> None:
        self.records: list[LayerRecord] = []
        self.layers: list = []
        self.layer_names: list[str] = []
        self.blobs: OrderedDict[str, Blob] = OrderedDict()
        self.inputs: list[str] = []
        self.param_specs: list[ParamRecord] = []
        self.params: OrderedDict[str, list[Blob]] = OrderedDict()
        # blob name -> whether a gradient can reach anything learnable through it
        self._blob_need_backward: dict[str, bool] = {}
        self._available: set[str] = set()
        # blob name -> the loss weight its last producer gave it (Caffe's blob_loss_weights_)
        self._blob_loss_weight: dict[str, float] = {}
        shared: dict[str, tuple[Blob, object, str]] = {}
        memory = 0
        seen_layers: set[str] = set()
        for layer_param in param.layer:
            if layer_param.name in seen_layers and layer_param.name:
                log.warning('Layer name "%s" appears more than once; parameters are saved by name', layer_param.name)
            seen_layers.add(layer_param.name)
            layer = self._layer_class(layer_param)(
                layer_param, phase=self.phase, dtype=self.dtype, xp=self.xp, rng=self.rng
            )
            rec = self._bind_bottoms(layer, layer_param)
            self._bind_tops(rec, layer_param)
            if layer_param.type == "Input":
                self.inputs.extend(layer_param.top)
            if not hasattr(layer, "type"):
                with contextlib.suppress(AttributeError):  # a user's Python layer class may use __slots__
                    layer.type = layer_param.type  # pycaffe's layer.type: the type string of the definition
            layer.layer_setup(rec.bottom, rec.top)
            for name, weight in zip(rec.top_names, layer.loss_weights):
                self._blob_loss_weight[name] = float(weight)
            memory = self._log_setup(rec, memory)
            self._share_params(layer, layer_param, shared)
            if layer.blobs:
                self.params[layer.name] = layer.blobs
            layer.param_propagate_down = [
                (layer_param.param[k].lr_mult if k < len(layer_param.param) else 1.0) != 0
                for k in range(len(layer.blobs))
            ]
            rec.need_backward |= any(layer.param_propagate_down)
            for name in layer_param.top:
                self._blob_need_backward[name] = rec.need_backward
            self.layers.append(layer)
            self.layer_names.append(layer.name)
            self.records.append(rec)
        self._prune_backward(param.force_backward)
        self.outputs = sorted(self._available)
        self.layer_dict = OrderedDict(zip(self.layer_names, self.layers))
        log.info("Network initialization done.")

    def _log_setup(self, rec: LayerRecord, memory: int) -> int:
        """Caffe's set-up lines for one layer (``Top shape: 64 1 28 28 (50176)``); returns the data memory so far.

        Like Caffe, every top counts towards "Memory required for data", in-place ones again.
        """
        verbose = log.isEnabledFor(logging.INFO)
        if verbose:
            log.info("Setting up %s", rec.layer.name)
        for blob, weight in zip(rec.top, rec.layer.loss_weights):
            memory += blob.count
            if verbose:
                log.info("Top shape: %s", " ".join([*(str(d) for d in blob.shape), f"({blob.count})"]))
                if weight:
                    log.info("    with loss weight %s", format_g(weight))
        if verbose:
            log.info("Memory required for data: %d", memory * self.dtype.itemsize)
        return memory

    def _layer_class(self, layer_param):
        try:
            return layer_class(layer_param.type)
        except UnknownLayerTypeError as err:
            where = _declaration_line(self.source, layer_param.name)
            raise UnknownLayerTypeError(
                f"{where}{layer_prefix(layer_param.name, layer_param.type)}: unknown layer type."
                f"{fork_hint(layer_param.type)} {err} A type netdef lacks can be supplied as a Python layer: "
                f'type: "Python" python_param {{ module: "my_layers" layer: "{layer_param.type}" }} with a class '
                "subclassing netdef.Layer (see docs/layers.md)."
            ) from None

    def _bind_bottoms(self, layer, layer_param) -> LayerRecord:
        """A record for ``layer`` with its bottoms bound; they stop being net outputs."""
        propagate = list(layer_param.propagate_down)
        if propagate and len(propagate) != len(layer_param.bottom):
            raise layer.error(
                f"propagate_down must be given once per bottom ({len(layer_param.bottom)}). "
                f"Received: {len(propagate)} values"
            )
        rec = LayerRecord(layer, bottom_names=list(layer_param.bottom), top_names=list(layer_param.top))
        for j, name in enumerate(layer_param.bottom):
            if name not in self._available:
                raise layer.error(
                    f'reads bottom blob "{name}", which is not available at this point (produced by no earlier '
                    f"layer, or already consumed). Available: {', '.join(sorted(self._available)) or '(none)'}",
                    UnknownBottomBlobError,
                )
            rec.bottom.append(self.blobs[name])
            rec.propagate_down.append(bool(propagate[j]) if propagate else self._blob_need_backward[name])
            rec.need_backward |= self._blob_need_backward[name]
            self._available.discard(name)
        return rec

    def _bind_tops(self, rec: LayerRecord, layer_param) -> None:
        """Create (or, in place, reuse) the top blobs of ``rec``'s layer."""
        for name in layer_param.top:
            if name in layer_param.bottom:
                rec.top.append(self.blobs[name])
            elif name in self.blobs:
                raise rec.layer.error(
                    f'produces top blob "{name}", which an earlier layer already produces. Give the top a '
                    "new name (only in-place layers, whose top equals a bottom, may reuse a name).",
                    DuplicateTopBlobError,
                )
            else:
                self.blobs[name] = Blob((), dtype=self.dtype, xp=self.xp, name=name)
                rec.top.append(self.blobs[name])
            self._available.add(name)
        if rec.layer.is_loss:
            # Caffe's AutoTopBlobs: a loss layer written without a top still gets the tops it needs. They are
            # named "(automatic)" and, as in Caffe, are not net outputs.
            needed = max(rec.layer.min_num_top or 0, rec.layer.exact_num_top or 0)
            for _ in range(len(rec.top), needed):
                blob = Blob((), dtype=self.dtype, xp=self.xp, name=AUTOMATIC_TOP)
                self.blobs[AUTOMATIC_TOP] = blob
                rec.top.append(blob)
                rec.top_names.append(AUTOMATIC_TOP)

    def _share_params(self, layer, layer_param, shared) -> None:
        for k, blob in enumerate(layer.blobs):
            spec = layer_param.param[k] if k < len(layer_param.param) else pb.ParamSpec()
            lr, decay = spec.lr_mult, spec.decay_mult
            pname = spec.name
            if pname and pname in shared:
                owner, owner_spec, owner_layer = shared[pname]
                strict = spec.share_mode != pb.ParamSpec.PERMISSIVE
                if (strict and owner.shape != blob.shape) or owner.count != blob.count:
                    mode = "STRICT (same shape)" if strict else "PERMISSIVE (same count)"
                    raise layer.error(
                        f'shares parameter "{pname}" with layer "{owner_layer}", but the shapes differ: '
                        f"{blob.shape} here, {owner.shape} in the owner. Share mode {mode}.",
                        ShapeMismatchError,
                    )
                if owner_spec.HasField("lr_mult") and spec.HasField("lr_mult") and owner_spec.lr_mult != lr:
                    raise InvalidParameterError(
                        f'Shared parameter "{pname}" has lr_mult {owner_spec.lr_mult} in layer "{owner_layer}" '
                        f'but {lr} in layer "{layer.name}"; shared parameters need one lr_mult'
                    )
                if strict or owner.shape == blob.shape:
                    layer.blobs[k] = owner
                else:  # permissive sharing of a differently shaped view over the same values
                    view = Blob(blob.shape, dtype=self.dtype, xp=self.xp, name=blob.name)
                    view.data = owner.data.reshape(blob.shape)
                    view.diff = owner.diff.reshape(blob.shape)
                    layer.blobs[k] = view
                continue
            if pname:
                shared[pname] = (blob, spec, layer.name)
            self.param_specs.append(ParamRecord(blob, lr, decay, layer.name, k))

    def _prune_backward(self, force_backward: bool) -> None:
        under_loss: set[str] = set()
        skip_backp: set[str] = set()
        for rec in reversed(self.records):
            contributes = False
            skip_down = True
            for j, name in enumerate(rec.top_names):
                if rec.layer.loss_weights[j] or name in under_loss:
                    contributes = True
                if name not in skip_backp:
                    skip_down = False
            if rec.need_backward and skip_down:
                rec.need_backward = False
                rec.propagate_down = [False] * len(rec.propagate_down)
            if not contributes:
                rec.need_backward = False
            for j, name in enumerate(rec.bottom_names):
                if contributes:
                    under_loss.add(name)
                else:
                    rec.propagate_down[j] = False
                if not rec.propagate_down[j]:
                    skip_backp.add(name)
        if force_backward:
            for rec in self.records:
                rec.need_backward = True
                rec.propagate_down = [
                    need or rec.layer.allow_force_backward(j) for j, need in enumerate(rec.propagate_down)
                ]
                rec.layer.param_propagate_down = [True] * len(rec.layer.blobs)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        """Bottom blob names per layer name (pycaffe's ``net.bottom_names``)."""
        return OrderedDict((r.layer.name, list(r.bottom_names)) for r in self.records)

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        """Top blob names per layer name (pycaffe's ``net.top_names``)."""
        return OrderedDict((r.layer.name, list(r.top_names)) for r in self.records)

    def loss_weights(self) -> dict[str, float]:
        """The loss weight of every blob that has one (a top with a non-zero weight)."""
        weights: dict[str, float] = {}
        for rec in self.records:
            for name, w in zip(rec.top_names, rec.layer.loss_weights):
                if w:
                    weights[name] = float(w)
        return weights

    # pycaffe's names -----------------------------------------------------------------
    @property
    def _layer_names(self) -> list[str]:
        """Layer names in order (pycaffe's ``net._layer_names``)."""
        return list(self.layer_names)

    @property
    def _blob_names(self) -> list[str]:
        """Blob names in order of creation (pycaffe's ``net._blob_names``)."""
        return list(self.blobs)

    @property
    def _blobs(self) -> list[Blob]:
        """The blobs in order of creation (pycaffe's ``net._blobs``)."""
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self) -> list[float]:
        """Each blob's loss weight, in the order of ``_blob_names`` (pycaffe's ``net._blob_loss_weights``)."""
        return [self._blob_loss_weight.get(name, 0.0) for name in self.blobs]

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Loss weight per blob name, 0 for blobs that are not losses (pycaffe's ``net.blob_loss_weights``).

        As in Caffe, the weight is the one the blob's last producer gave it, so an
        in-place layer after a loss resets it, and a loss read by another layer moves
        to the first top of the Split that netdef inserts.
        """
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def _inputs(self) -> list[int]:
        """Indices of the input blobs in ``_blob_names`` (pycaffe's ``net._inputs``)."""
        names = self._blob_names
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        """Indices of the output blobs in ``_blob_names`` (pycaffe's ``net._outputs``)."""
        names = self._blob_names
        return [names.index(n) for n in self.outputs]

    def _top_ids(self, index: int) -> list[int]:
        """Blob indices of layer ``index``'s tops (pycaffe's ``net._top_ids``)."""
        names = self._blob_names
        return [names.index(n) for n in self.records[index].top_names]

    def _bottom_ids(self, index: int) -> list[int]:
        """Blob indices of layer ``index``'s bottoms (pycaffe's ``net._bottom_ids``)."""
        names = self._blob_names
        return [names.index(n) for n in self.records[index].bottom_names]

    def _forward(self, start: int, end: int) -> float:
        """pycaffe's ``net._forward(start, end)``: layers by index, inclusive."""
        return self.forward_from_to(start, end)

    def _backward(self, start: int, end: int) -> None:
        """pycaffe's ``net._backward(start, end)``: layers by index, ``start >= end``, inclusive."""
        self.backward_from_to(start, end)

    def before_forward(self, callback) -> None:
        """Call ``callback(layer_index)`` before each layer's forward (pycaffe's ``net.before_forward``)."""
        self._callbacks["before_forward"].append(callback)

    def after_forward(self, callback) -> None:
        """Call ``callback(layer_index)`` after each layer's forward."""
        self._callbacks["after_forward"].append(callback)

    def before_backward(self, callback) -> None:
        """Call ``callback(layer_index)`` before each layer's backward."""
        self._callbacks["before_backward"].append(callback)

    def after_backward(self, callback) -> None:
        """Call ``callback(layer_index)`` after each layer's backward."""
        self._callbacks["after_backward"].append(callback)

    # running ------------------------------------------------------------------------
    def _layer_index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        if name not in self.layer_dict:
            raise NetdefError(f'Net has no layer named "{name}". Layers: {", ".join(self.layer_names)}')
        return self.layer_names.index(name)

    def forward_from_to(self, start: int = 0, end: int | None = None) -> float:
        """Run layers ``start..end`` (inclusive) forward; return the summed weighted loss."""
        end = len(self.layers) - 1 if end is None else end
        before, after = self._callbacks["before_forward"], self._callbacks["after_forward"]
        loss = 0.0
        for i in range(start, end + 1):
            for callback in before:
                callback(i)
            loss += self.records[i].forward()
            for callback in after:
                callback(i)
        return loss

    def backward_from_to(self, start: int | None = None, end: int = 0) -> None:
        """Run layers ``start..end`` (inclusive, start >= end) backward."""
        start = len(self.layers) - 1 if start is None else start
        before, after = self._callbacks["before_backward"], self._callbacks["after_backward"]
        for i in range(start, end - 1, -1):
            for callback in before:
                callback(i)
            self.records[i].backward()
            for callback in after:
                callback(i)

    def forward(
        self, blobs: Iterable[str] | None = None, start: str | None = None, end: str | None = None, **inputs
    ) -> dict:
        """Forward pass (pycaffe's ``net.forward``).

        Keyword arguments set input blobs first; returns ``{output name: array}``
        for the net outputs plus any names in ``blobs``.
        """
        for name, value in inputs.items():
            if name not in self.blobs:
                raise NetdefError(f'forward() got input "{name}", which is not a blob of this net')
            arr = backend.asarray(value, self.xp, self.dtype)
            shape = self.blobs[name].shape
            if arr.shape != shape and not _fits(arr.shape, shape):
                raise ShapeMismatchError(
                    f'input "{name}" has shape {arr.shape}, but the blob has shape {shape}; '
                    "call net.reshape() after changing an input's shape"
                )
            self.blobs[name].data[...] = arr
        i0 = self._layer_index(start, 0)
        i1 = self._layer_index(end, len(self.layers) - 1)
        self.loss = self.forward_from_to(i0, i1)
        names = list(self.outputs) if end is None else list(self.records[i1].top_names)
        names += [b for b in (blobs or ()) if b not in names]
        return {n: self.blobs[n].data for n in names}

    def forward_all(self, blobs: Iterable[str] | None = None, **inputs) -> dict:
        """Forward over inputs of any length, a batch at a time (pycaffe's ``net.forward_all``).

        Each keyword gives an input blob's values for all samples (first axis); the
        net runs in batches of that blob's batch size, the last batch padded with
        zeros, and the outputs (plus ``blobs``) come back concatenated, trimmed to
        the number of samples, as NumPy arrays.
        """
        names = list(self.outputs) + [b for b in (blobs or ()) if b not in self.outputs]
        if not inputs:
            return {n: backend.to_numpy(v).copy() for n, v in self.forward(blobs).items()}
        arrays = {k: backend.to_numpy(v) for k, v in inputs.items()}
        counts = {len(v) for v in arrays.values()}
        if len(counts) != 1:
            raise ShapeMismatchError(
                "forward_all inputs need the same number of samples. Received: "
                + ", ".join(f"{k}: {len(v)}" for k, v in arrays.items())
            )
        total = counts.pop()
        for name in arrays:
            if name not in self.blobs:
                raise NetdefError(f'forward_all() got input "{name}", which is not a blob of this net')
        batch = self.blobs[next(iter(arrays))].shape[0]
        pieces: dict[str, list] = {n: [] for n in names}
        for start in range(0, total, batch):
            take = min(batch, total - start)
            out = self.forward(blobs, **_batch_of(arrays, start, take, batch))
            for n in names:
                pieces[n].append(_trim(out[n], take))
        return {n: _join(p) for n, p in pieces.items()}

    def backward(
        self, diffs: Iterable[str] | None = None, start: str | None = None, end: str | None = None, **top_diffs
    ) -> dict:
        """Backward pass; returns ``{input name: diff}`` (pycaffe's ``net.backward``)."""
        for name, value in top_diffs.items():
            self.blobs[name].diff[...] = backend.asarray(value, self.xp, self.dtype)
        i0 = self._layer_index(start, len(self.layers) - 1)
        i1 = self._layer_index(end, 0)
        self.backward_from_to(i0, i1)
        names = list(self.inputs) + [d for d in (diffs or ()) if d not in self.inputs]
        return {n: self.blobs[n].diff for n in names}

    def forward_backward_all(self, blobs: Iterable[str] | None = None, diffs: Iterable[str] | None = None, **kwargs):
        """Forward and backward over inputs of any length, a batch at a time (pycaffe's ``forward_backward_all``).

        Keywords naming net inputs feed the forward passes, keywords naming net outputs
        set the top diffs of the backward passes; both are cut into batches (the last
        padded with zeros). Returns ``(outputs, diffs)``: ``{output or blobs name: array}``
        and ``{input or diffs name: diff array}``, concatenated over batches and trimmed
        to the number of samples, as NumPy arrays.
        """
        blobs, diffs = list(blobs or ()), list(diffs or ())
        feed = {k: backend.to_numpy(v) for k, v in kwargs.items() if k in self.inputs}
        seed = {k: backend.to_numpy(v) for k, v in kwargs.items() if k in self.outputs}
        unknown = sorted(set(kwargs) - set(feed) - set(seed))
        if unknown:
            raise NetdefError(
                f"forward_backward_all() takes net inputs ({', '.join(self.inputs) or 'none'}) and outputs "
                f"({', '.join(self.outputs) or 'none'}). Received: {', '.join(unknown)}"
            )
        counts = {len(v) for v in kwargs.values()}
        if len(counts) > 1:
            raise ShapeMismatchError(
                "forward_backward_all arrays need the same number of samples. Received: "
                + ", ".join(f"{k}: {len(v)}" for k, v in kwargs.items())
            )
        out_names = list(self.outputs) + [b for b in blobs if b not in self.outputs]
        diff_names = list(self.inputs) + [d for d in diffs if d not in self.inputs]
        outs: dict[str, list] = {n: [] for n in out_names}
        grads: dict[str, list] = {n: [] for n in diff_names}
        if not kwargs:
            forward_out = self.forward(blobs)
            backward_out = self.backward(diffs)
            return (
                {n: backend.to_numpy(forward_out[n]).copy() for n in out_names},
                {n: backend.to_numpy(backward_out[n]).copy() for n in diff_names},
            )
        total = counts.pop()
        batch = self.blobs[next(iter(kwargs))].shape[0]
        for start in range(0, total, batch):
            take = min(batch, total - start)
            forward_out = self.forward(blobs, **_batch_of(feed, start, take, batch))
            backward_out = self.backward(diffs, **_batch_of(seed, start, take, batch))
            for n in out_names:
                outs[n].append(_trim(forward_out[n], take))
            for n in diff_names:
                grads[n].append(_trim(backward_out[n], take))
        return {n: _join(p) for n, p in outs.items()}, {n: _join(p) for n, p in grads.items()}

    def forward_backward(self) -> float:
        """Forward then backward through every layer (a solver's step); the weighted loss.

        On the CPU, when other processes keep every core busy, a net whose layers after the
        data layers treat each sample on its own runs them on one share of the batch per
        thread (:mod:`netdef.batch_split`); the blobs, gradients and loss are the whole
        batch's as usual. A later ``backward()`` alone does not repeat this step's backward: call
        ``forward_backward()`` again, or ``forward()`` then ``backward()``.
        """
        return batch_split.forward_backward(self, Net)

    def reshape(self) -> None:
        """Propagate changed input shapes through every layer."""
        for rec in self.records:
            rec.layer.reshape(rec.bottom, rec.top)

    def set_input_arrays(self, data, labels, layer: int | str = 0) -> None:
        """Give a MemoryData layer (by index or name; default the first layer) arrays to serve (pycaffe)."""
        target = self.layer_dict[layer] if isinstance(layer, str) else self.layers[layer]
        if not hasattr(target, "set_input_arrays"):
            raise target.error("is not a MemoryData layer; set_input_arrays feeds MemoryData layers only", NetdefError)
        target.set_input_arrays(data, labels)

    def clear_param_diffs(self) -> None:
        for spec in self.param_specs:
            spec.blob.diff[...] = 0

    @property
    def learnable_params(self) -> list[Blob]:
        return [spec.blob for spec in self.param_specs]

    # weights ------------------------------------------------------------------------
    def copy_from(self, path: str) -> None:
        """Copy parameters by layer name from a ``.caffemodel`` or HDF5 weights file."""
        from .io import caffemodel

        caffemodel.load_weights(self, path)

    def save(self, path: str, write_diff: bool = False) -> None:
        """Write the parameters as a binary ``.caffemodel`` (or HDF5 when ``path`` ends in .h5)."""
        from .io import caffemodel

        caffemodel.save_weights(self, path, write_diff=write_diff)

    def save_hdf5(self, path: str | os.PathLike) -> None:
        """Write the parameters as Caffe's HDF5 weights (``/data/<layer>/<i>``), whatever the file name (pycaffe)."""
        from .io import caffemodel
        from .io.atomic import atomic_target

        path = os.fspath(path)
        with atomic_target(path) as tmp:
            # the writer picks HDF5 by the name, so write under an .h5 name and move it onto the staged one
            staged = tmp if tmp.endswith(".h5") else tmp + ".h5"
            try:
                caffemodel.save_weights(self, staged, atomic=False)
                if staged != tmp:
                    os.replace(staged, tmp)
            finally:
                if staged != tmp and os.path.exists(staged):
                    os.remove(staged)

    def load_hdf5(self, path: str | os.PathLike) -> None:
        """Copy parameters by layer name from Caffe's HDF5 weights, whatever the file name (pycaffe)."""
        import shutil
        import tempfile

        from .errors import WeightsFileError
        from .io import caffemodel
        from .io.h5 import is_hdf5_file

        path = os.fspath(path)
        if not os.path.exists(path):
            raise WeightsFileError(f"HDF5 weights file not found: {path}")
        if not is_hdf5_file(path):
            raise WeightsFileError(
                f"{path}: not an HDF5 file (load_hdf5 reads HDF5 weights; use copy_from for a .caffemodel)"
            )
        if caffemodel.is_hdf5(path):
            caffemodel.load_weights(self, path)
            return
        # the reader picks HDF5 by the name: give it the file under an .h5 name
        with tempfile.TemporaryDirectory() as folder:
            alias = os.path.join(folder, os.path.basename(path) + ".h5")
            try:
                os.symlink(os.path.abspath(path), alias)
            except OSError:
                shutil.copyfile(path, alias)
            caffemodel.load_weights(self, alias)

    def share_with(self, other: Net) -> None:
        """Use ``other``'s parameter arrays for layers of the same name (Caffe's ShareTrainedLayersWith)."""
        for name, blobs in self.params.items():
            theirs = other.params.get(name)
            if theirs is None:
                continue
            if len(theirs) != len(blobs):
                raise ShapeMismatchError(
                    f'Layer "{name}" has {len(blobs)} parameter blobs here and {len(theirs)} in the other net'
                )
            for k, (mine, src) in enumerate(zip(blobs, theirs)):
                if mine.shape != src.shape:
                    raise ShapeMismatchError(
                        f'Layer "{name}" parameter {k}: shape {mine.shape} here, {src.shape} in the other net'
                    )
                blobs[k] = src
        for layer in self.layers:
            if layer.name in self.params:
                layer.blobs = self.params[layer.name]

    def close(self) -> None:
        """End the net's background work now: the prefetch threads of its data layers.

        Without it they end when the net is garbage collected or the program exits. The net
        stays usable; a later forward reads on from the batch last taken. ``with Net(...) as
        net:`` closes the net at the end of the block.
        """
        for layer in self.layers:
            layer.close()

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self, input_shapes: dict | None = None):
        """A table of layers, top shapes, parameters, state, multiply-adds and memory (see :mod:`netdef.summary`)."""
        return summarize(self, input_shapes)

    def __repr__(self) -> str:
        return f"<Net {self.name!r}: {len(self.layers)} layers, phase {'TRAIN' if self.phase == TRAIN else 'TEST'}>"
