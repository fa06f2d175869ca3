"""A training step split by samples: one replica of the net per thread, each on its share of the batch.

Splitting each heavy layer over threads (:func:`netdef.threads.run_parts`) makes every
thread wait for the others at the end of every split layer: fourteen times per
cifar10_quick step. When other processes keep every core busy, a thread the scheduler
holds back for a few milliseconds holds up each of them. Most training nets compute every
sample on its own until the loss, so on such a machine (:func:`netdef.threads.crowded`)
:meth:`netdef.Net.forward_backward` instead cuts the batch into one share per thread and
runs the net's layers after its data layers once per share, each thread through all of
them, with one wait at the end. (On a quiet machine this is 5-8% faster too, but a
cifar10_quick step then peaks at 96-100 MiB instead of 89: the replica on the helper
thread allocates from glibc's second malloc arena, which keeps its own freed memory; run
one after the other on one thread the replicas peak at 78. One arena for the process gave
81 MiB but slowed LeNet's per-layer split from 8.1-8.4 to 8.4-9.7 ms. So the per-layer
split stays on a quiet machine.) What the step gives is unchanged:

- each replica is a copy of the net's layers for its share of the samples; its data
  layers' tops are views of the net's (the batch axis comes first, so a share is one
  contiguous block), and the net's other blobs join the replicas' pieces when they are
  read (:meth:`netdef.blob.Blob.defer`), so every blob holds the whole batch's values;
- the replicas use the net's parameter arrays; the first adds its gradients straight into
  the net's, the others into their own, which are added in at the end;
- a loss or accuracy is the mean over its samples, so each replica's is weighted by its
  share of the batch (its loss weight too, in backward), and the net's output blobs get
  the weighted sum. A loss normalised by nothing (``normalization: NONE``) is a sum.

The result equals the whole batch's up to float rounding (sums in another order).

Only nets whose every layer after the data layers is known to treat samples separately
are split (:data:`SAMPLEWISE`, with axis and parameter checks in :func:`_layer_ok`).
Dropout draws its masks in the net, before the replicas run, in layer order and for the
whole batch, so they are the very masks the whole batch would get; each replica takes its
share. BatchNorm computing batch statistics, Python layers, losses with an
``ignore_label`` or class weights, and every other type keep the usual path, as do nets
on the GPU, nets with ``before_forward``-style callbacks (data-parallel reduction, debug
output), steps with one thread or on a machine with a core free, and batches whose share
per thread would be small: fewer than :data:`MIN_SAMPLES` samples, or activations under
:data:`MIN_SHARE_BYTES`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field

import numpy

from . import backend, threads
from .errors import NetdefError
from .proto import netdef_pb2 as pb

log = logging.getLogger("netdef")

#: Each thread gets at least this many samples; with fewer the per-layer split is kept.
MIN_SAMPLES = 8
#: ... and a share whose activations (the tops of the layers after the data layers) take at
#: least this many bytes. A smaller share is done in a few milliseconds, where a thread the
#: scheduler holds back for its slice delays the whole step, and the per-layer split, whose
#: threads take parts as they become free, does better. Measured on two cores (ms per
#: step, replicas against the per-layer split): LeNet b64, 2.3 MiB a share, 7.8-7.9 against
#: 7.6-7.7 quiet and 12-16 against 11.3 beside two CPU-bound processes; cifar10_quick b100,
#: 10.8 MiB a share, 34.2-34.5 against 35.9-36.8 quiet; cifar10_full b100, 12.7 MiB, 39.2-39.6
#: against 42.4-43.4.
MIN_SHARE_BYTES = 8 << 20
#: The replicas after the first keep their own parameter gradients; a net whose copies
#: would take more memory than this keeps the per-layer split.
MAX_EXTRA_GRADIENT_BYTES = 64 << 20

#: Layer types that compute each sample from that sample alone (given the checks of
#: :func:`_layer_ok`); those in :data:`DRAWING` from numbers the net draws for them.
SAMPLEWISE = frozenset(
    {
        "Convolution",
        "Deconvolution",
        "Pooling",
        "LRN",
        "InnerProduct",
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "AbsVal",
        "BNLL",
        "Power",
        "Split",
        "Eltwise",
        "Concat",
        "Slice",
        "Flatten",
        "Softmax",
        "Scale",
        "Bias",
        "BatchNorm",
        "Dropout",
    }
)
#: Layers that draw random numbers as they run; the net draws for them (:class:`_Drawn`).
DRAWING = frozenset({"Dropout"})
#: Layers whose output is a mean over the batch (a scalar) and how to combine the replicas'.
REDUCING = frozenset({"SoftmaxWithLoss", "EuclideanLoss", "Accuracy"})


def _layer_ok(rec) -> bool:
    """Whether the layer of net record ``rec`` (already set up on the whole batch) treats samples separately."""
    layer, kind = rec.layer, rec.layer.param.type
    if kind not in SAMPLEWISE and kind not in REDUCING:
        return False
    axis = getattr(layer, "axis", 1)
    if isinstance(axis, int) and axis < 1:
        return False
    p = layer.param
    if kind == "Flatten":
        return layer.canonical_axis(p.flatten_param.axis, rec.bottom[0].num_axes) >= 1
    if kind in ("Scale", "Bias"):
        own = p.scale_param if kind == "Scale" else p.bias_param
        return len(rec.bottom) == 1 and layer.canonical_axis(own.axis, rec.bottom[0].num_axes) >= 1
    if kind == "BatchNorm":
        return bool(layer.use_global_stats)
    if kind == "Accuracy":
        return len(rec.top) == 1 and layer.ignore_label is None
    if kind == "SoftmaxWithLoss":
        lp = p.loss_param
        return layer.ignore_label is None and not lp.class_weighting and not lp.weight_by_label_freqs
    return True


@dataclass
class _Plan:
    """What a net's structure allows: how many leading data layers, and whether the rest may be split."""

    head: int
    #: why the net is not split (None: it may be)
    reason: str | None = None
    #: the indices of the layers that draw random numbers (:data:`DRAWING`)
    drawing: list = field(default_factory=list)
    #: the data layers' top shapes and the thread count last decided for, and the replicas for
    #: them (None where those shapes and that count are not split)
    built: tuple | None = None
    replicas: list | None = None


def _plan(net) -> _Plan:
    head = 0
    while head < len(net.records) and not net.records[head].bottom:
        head += 1
    if net.xp is not numpy:
        return _Plan(head, "the net is on the GPU")
    if head == 0:
        return _Plan(head, "the net has no data or Input layer first")
    drawing = []
    for index, rec in enumerate(net.records[head:], start=head):
        if not rec.bottom:
            return _Plan(head, f'layer "{rec.layer.name}" makes data after other layers')
        if not _layer_ok(rec):
            return _Plan(
                head, f'layer "{rec.layer.name}" (type {rec.layer.param.type}) is not known to keep samples apart'
            )
        if rec.layer.param.type in DRAWING:
            drawing.append(index)
    return _Plan(head, drawing=drawing)


def plan_of(net) -> _Plan:
    """The net's plan, made on first use."""
    plan = getattr(net, "_batch_plan", None)
    if plan is None:
        plan = net._batch_plan = _plan(net)
    return plan


def _batch_size(net, head: int) -> int | None:
    """The batch size of the data layers' tops (None when they disagree or one has no batch axis)."""
    sizes = {blob.shape[0] if blob.shape else None for rec in net.records[:head] for blob in rec.top}
    return sizes.pop() if len(sizes) == 1 else None


def _sample_bytes(net, head: int, batch: int) -> int:
    """Bytes of the activations of one sample: the batch-shaped tops of the layers after the data layers."""
    seen: dict[int, int] = {}
    for rec in net.records[head:]:
        for blob in rec.top:
            shape = blob.shape
            if shape[:1] == (batch,):
                seen[id(blob)] = blob.count // batch * net.dtype.itemsize
    return sum(seen.values())


def _has_callbacks(net) -> bool:
    return any(net._callbacks.values())


def forward_backward(net, net_class) -> float:
    """One forward and backward of ``net``: over replicas where :func:`plan_of` and the thread count allow.

    ``net_class`` builds the replicas (:class:`netdef.Net`; a subclass such as the
    Classifier may take other arguments).
    """
    plan = plan_of(net)
    k = threads.count()
    if plan.reason is not None or k < 2 or not threads.crowded() or _has_callbacks(net):
        loss = net.forward_from_to()
        net.backward_from_to()
        return loss
    loss = net.forward_from_to(0, plan.head - 1)
    replicas = _replicas(net, net_class, plan, k)
    if replicas is None:
        loss += net.forward_from_to(plan.head)
        net.backward_from_to()
        return loss
    return loss + _run(net, plan, replicas)


def _replicas(net, net_class, plan: _Plan, k: int) -> list | None:
    """The replicas for the data layers' present shapes and ``k`` threads (None: not split for them).

    Decided once per shapes and thread count; a step only compares the key.
    """
    shapes = tuple(blob.shape for rec in net.records[: plan.head] for blob in rec.top)
    if plan.built != (shapes, k):
        plan.replicas = _build(net, net_class, plan, k)
        plan.built = (shapes, k)
    return plan.replicas


def _build(net, net_class, plan: _Plan, k: int) -> list | None:
    batch = _batch_size(net, plan.head)
    if batch is None or batch // k < max(MIN_SAMPLES, 1):
        return None
    if batch // k * _sample_bytes(net, plan.head, batch) < MIN_SHARE_BYTES:
        return None
    extra = (k - 1) * sum(spec.blob.count for spec in net.param_specs) * net.dtype.itemsize
    if extra > MAX_EXTRA_GRADIENT_BYTES:
        return None
    try:
        replicas = [_Replica(net, net_class, plan.head, part, batch) for part in threads.even_slices(batch, k)]
    except _NotSplittable as why:
        plan.reason = str(why)
        log.debug("Net %s: the step is not split by samples: %s", net.name, why)
        return None
    log.info(
        "Net %s: every core is busy, so each training step runs its layers after the data layers "
        "on %d threads, one share of the %d samples each",
        net.name,
        k,
        batch,
    )
    return replicas


class _NotSplittable(NetdefError):
    pass


class _QuietHere(logging.Filter):
    """Drops the records logged by one thread (a replica's set-up lines repeat the net's)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextlib.contextmanager
def _quiet():
    quiet = _QuietHere()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def _replica_param(net, head: int, take: int) -> pb.NetParameter:
    """``net``'s layers for ``take`` samples: each data layer becomes an Input layer of the same name and tops.

    The layers are the built net's own (after phase filtering, with its Split layers), so the
    replica's layers pair up with the net's one to one.
    """
    out = pb.NetParameter(name=net.name)
    out.state.CopyFrom(net.state)
    out.force_backward = net.param.force_backward
    for i, rec in enumerate(net.records):
        if i < head:
            inp = out.layer.add(name=rec.layer.name, type="Input")
            inp.top.extend(rec.top_names)
            for blob in rec.top:
                inp.input_param.shape.add(dim=[take, *blob.shape[1:]])
        else:
            out.layer.add().CopyFrom(rec.layer.param)
    return out


class _Replica:
    """The net's layers after its data layers, built for one share of the batch, using the net's blobs' memory."""

    def __init__(self, net, net_class, head: int, part: slice, batch: int):
        take = part.stop - part.start
        rule = next((layer.pooling_rule for layer in net.layers if hasattr(layer, "pooling_rule")), None)
        try:
            with _quiet():
                self.net = net_class(
                    _replica_param(net, head, take),
                    phase=net.phase,
                    dtype=net.dtype,
                    xp=numpy,
                    rng=backend.RandomStreams(0),  # its fillers' values are replaced
                    allow_python_layers=False,
                    pooling_rule=rule,
                )
        except NetdefError as err:
            raise _NotSplittable(f"the net does not build for {take} samples: {err}") from err
        if self.net.layer_names != net.layer_names or len(self.net.param_specs) != len(net.param_specs):
            raise _NotSplittable("the replica's layers differ from the net's")
        for layer in self.net.layers:
            if layer.param.type in DRAWING:
                layer.rng = _Drawn()
        self.part, self.share = part, take / batch
        self.first = part.start == 0
        # the data layers' tops: views of the net's arrays, bound each step [replica blob, net blob, data, diff]
        self.inputs: list[list] = []
        # the other batch-shaped blobs: (replica blob, net blob), gathered into the net's blob when read
        self.pieces: list[tuple] = []
        self.reduced: list[tuple] = []  # (replica blob, net blob, weight) per mean or sum over the batch
        seen: set[int] = set()
        for i, (rec, main_rec) in enumerate(zip(self.net.records, net.records, strict=True)):
            for j, (blob, main) in enumerate(zip(rec.top, main_rec.top, strict=True)):
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                if main.shape[:1] == (batch,) and blob.shape == (take, *main.shape[1:]):
                    if i < head:
                        self.inputs.append([blob, main, None, None])
                    else:
                        self.pieces.append((blob, main))
                else:
                    self._reduced(main_rec, j, blob, main)

    def _reduced(self, main_rec, j: int, blob, main) -> None:
        """Note a top that is not batch-shaped: a loss or accuracy (a mean, or a plain sum), else not splittable."""
        kind = main_rec.layer.param.type
        if blob.shape != main.shape or kind not in REDUCING:
            name = main_rec.top_names[j]
            raise _NotSplittable(f'blob "{name}" is {main.shape} for the batch and {blob.shape} for a share of it')
        # SoftmaxWithLoss's mode as its set-up read it (the legacy ``normalize`` included)
        plain_sum = kind == "SoftmaxWithLoss" and main_rec.layer.normalization == pb.LossParameter.NONE
        weight = 1.0 if plain_sum else self.share
        self.reduced.append((blob, main, weight))
        loss_weight = main_rec.layer.loss_weights[j] if j < len(main_rec.layer.loss_weights) else 0.0
        blob.diff[...] = loss_weight * weight

    def bind(self, net) -> None:
        """Point the replica at the net's input and parameter arrays (again each step: the net may replace them)."""
        part = self.part
        for view in self.inputs:
            blob, main = view[0], view[1]
            view[2], view[3] = blob.data, blob.diff = main.data[part], main.diff[part]
        for layer, main_layer in zip(self.net.layers, net.layers, strict=True):
            for mine, theirs in zip(layer.blobs, main_layer.blobs, strict=True):
                mine.data = theirs.data
                if self.first:
                    mine.diff = theirs.diff
        if not self.first:
            for spec in self.net.param_specs:
                spec.blob.diff[...] = 0

    def step(self) -> None:
        try:
            self.net.forward_from_to()
            self.net.backward_from_to()
        except NetdefError as err:  # positions in the message count from this share's first sample
            part = self.part
            err.args = (f"{err} (samples {part.start}..{part.stop - 1} of the batch, run as one share of it)",)
            raise
        part = self.part
        for blob, main, data, diff in self.inputs:  # a layer that replaced an input's array: copy its values back
            if blob.data is not data:
                main.data[part] = blob.data
            if blob.diff is not diff:
                main.diff[part] = blob.diff

    def add_gradients(self, net) -> None:
        """Add this replica's parameter gradients to the net's (the first replica wrote into the net's own)."""
        if not self.first:
            for spec, main_spec in zip(self.net.param_specs, net.param_specs, strict=True):
                main_spec.blob.diff += spec.blob.diff


class _Drawn:
    """Stands in for a replica layer's random streams: hands out its share of numbers the net drew."""

    def __init__(self) -> None:
        self.values = None

    def uniform(self, xp, shape, low=0.0, high=1.0, dtype=numpy.float32):
        values, self.values = self.values, None
        if values is None or tuple(values.shape) != tuple(shape) or (low, high) != (0.0, 1.0):
            raise NetdefError(f"a replica drew {tuple(shape)} numbers the net did not draw for it")
        return values.astype(dtype, copy=False)


def _draw(net, plan: _Plan, replicas: list) -> None:
    """Draw, in the net and in layer order, what its random layers would draw for the whole batch; share it out."""
    for index in plan.drawing:
        layer = net.layers[index]
        if layer.phase != pb.TRAIN:
            continue
        shape = net.records[index].bottom[0].shape
        values = layer.rng.uniform(numpy, shape, dtype=net.dtype)
        for replica in replicas:
            replica.net.layers[index].rng.values = values[replica.part]


def _gather(pieces: list):
    """What a net blob's deferred arrays become: the replicas' pieces joined along the batch axis."""

    def gather():
        return numpy.concatenate([p.data for p in pieces]), numpy.concatenate([p.diff for p in pieces])

    return gather


def _run(net, plan: _Plan, replicas: list) -> float:
    """Forward and backward of the layers after the data layers, one replica per thread; the net's loss."""
    for replica in replicas:
        replica.bind(net)
    _draw(net, plan, replicas)
    # the net's own arrays for these blobs go now, before the replicas make theirs; read later, a
    # blob joins the replicas' pieces of this step
    for column in zip(*(replica.pieces for replica in replicas), strict=True):
        column[0][1].defer(_gather([blob for blob, _ in column]))

    def work(parts):
        for replica in parts:
            replica.step()

    threads.run_parts(work, replicas)
    for _blob, main, _ in replicas[0].reduced:
        main.data[...] = 0
    for replica in replicas:
        replica.add_gradients(net)
        for blob, main, weight in replica.reduced:
            main.data += weight * blob.data
    return sum((rec.layer.weighted_loss(rec.top) for rec in net.records[plan.head :]), 0.0)
