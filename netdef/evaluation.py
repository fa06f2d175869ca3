"""Evaluating a net on its test data: one exact pass, output means, and classification metrics.

:func:`evaluate` runs a TEST-phase net over its data and returns an :class:`Evaluation`:
the mean of every net output and, for a classification net, a
:class:`ClassificationReport` (confusion matrix, per-class precision / recall / F1 /
support, macro and weighted averages, top-k accuracy).

**Exact pass.** When the data layers say how many samples they hold (``HDF5Data``: the
rows of every listed file; ``Data``: the records of an LMDB; ``ImageData``: the lines of
its list; ``MemoryData``: the arrays given to it), the net runs
``ceil(samples / batch_size)`` batches and the last batch holds only the samples that
remain: every sample counts exactly once. Caffe's ``caffe test`` runs a fixed number of
batches (50 by default) and wraps around the data, so samples at the start count twice
and the printed mean is off (digits: 0.980667 for a true 0.980556). Pass ``iterations``
for Caffe's behaviour; with a data layer whose size is unknown (``Input``, ``DummyData``,
``Python``, ``WindowData``, LevelDB) netdef falls back to it with an INFO line.

**Means.** Each output's mean is the mean of its batch values weighted by the number of
samples in each batch (equal weights in Caffe's mode), so accuracy and the loss are the
per-sample means over the data.

**Pooled per-class numbers.** Precision, recall and F1 are computed from one confusion
matrix pooled over every sample. Caffe's ``Accuracy`` layer with a second top gives
per-class accuracy per batch, and ``caffe test`` averages those batch values: a class
absent from a batch counts 0 there, so Caffe's per-class mean is neither the pooled
recall nor comparable across batch sizes. The report uses the pooled values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy

from . import backend
from .errors import NetdefError

log = logging.getLogger("netdef")

#: data layer types whose sample count :func:`dataset_size` can read
SIZED_TYPES = ("HDF5Data", "Data", "ImageData", "MemoryData")


# --- how much data -------------------------------------------------------------------
def _layer_samples(layer) -> int | None:
    """How many samples one data layer serves per pass, or None when it cannot tell."""
    kind = layer.type_name
    if kind == "HDF5Data":
        import h5py

        total = 0
        for path in layer.files:
            with h5py.File(path, "r") as f:
                total += int(f[layer.top_names[0]].shape[0])
        return total
    if kind == "Data":
        reader = getattr(layer, "reader", None)
        try:
            return len(reader)
        except TypeError:
            return None  # LevelDB cursors cannot count without reading everything
    if kind == "ImageData":
        return len(layer.lines)
    if kind == "MemoryData":
        return None if layer.data is None else int(layer.data.shape[0])
    return None


def _layer_batch(layer) -> int:
    if layer.type_name == "MemoryData":
        return int(layer.shape[0])
    return int(layer.batch_size)


def data_layers(net) -> list:
    """The layers that produce data from nothing (no bottoms, at least one top), in net order."""
    return [rec.layer for rec in net.records if not rec.bottom_names and rec.top_names]


def dataset_size(net) -> tuple[int, int] | str:
    """``(samples, batch_size)`` of the net's test data, or a sentence saying why it is unknown.

    Every data layer must report its size, and all must agree on samples and batch size.
    """
    layers = data_layers(net)
    if not layers:
        return "the net has no data layer"
    sizes = []
    for layer in layers:
        if layer.type_name not in SIZED_TYPES:
            return f"{layer.describe()} does not say how many samples it holds"
        n = _layer_samples(layer)
        if n is None:
            return f"{layer.describe()} does not say how many samples it holds"
        sizes.append((n, _layer_batch(layer)))
    if len(set(sizes)) != 1:
        return "the data layers disagree on samples or batch size: " + ", ".join(
            f"{layer.name}: {n} samples in batches of {b}" for layer, (n, b) in zip(layers, sizes)
        )
    return sizes[0]


# --- classification ------------------------------------------------------------------
@dataclass
class ClassifierOutputs:
    """Where a classification net keeps its class scores and labels."""

    scores: str
    labels: str
    axis: int = 1
    ignore_label: int | None = None
    top_k: int = 1


def find_classifier(net) -> ClassifierOutputs | None:
    """The score and label blobs of the net's first Accuracy layer, else of its first SoftmaxWithLoss."""
    for wanted in ("Accuracy", "SoftmaxWithLoss"):
        for rec in net.records:
            if rec.layer.type_name != wanted or len(rec.bottom_names) < 2:
                continue
            p = rec.layer.param
            if wanted == "Accuracy":
                ap = p.accuracy_param
                ignore = int(ap.ignore_label) if ap.HasField("ignore_label") else None
                return ClassifierOutputs(rec.bottom_names[0], rec.bottom_names[1], int(ap.axis), ignore, int(ap.top_k))
            lp = p.loss_param
            ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
            return ClassifierOutputs(rec.bottom_names[0], rec.bottom_names[1], int(p.softmax_param.axis), ignore)
    return None


def _scores_and_labels(scores: numpy.ndarray, labels: numpy.ndarray, axis: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Scores as (samples, classes) and labels as (samples,), the class axis moved last."""
    axis = axis % scores.ndim
    classes = scores.shape[axis]
    flat = numpy.moveaxis(scores, axis, -1).reshape(-1, classes)
    labels = labels.reshape(-1)
    if labels.size != flat.shape[0]:
        raise NetdefError(
            f"the label blob holds {labels.size} values but the scores give {flat.shape[0]} predictions "
            f"(scores shape {scores.shape}, class axis {axis})"
        )
    return flat, labels


@dataclass
class ClassificationReport:
    """Metrics pooled over every evaluated sample.

    ``confusion[i, j]`` counts samples of true class ``i`` predicted as ``j``.
    """

    confusion: numpy.ndarray
    top_k: dict[int, float]
    class_names: list[str] = field(default_factory=list)

    @property
    def support(self) -> numpy.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def samples(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(numpy.trace(self.confusion) / max(self.samples, 1))

    @property
    def precision(self) -> numpy.ndarray:
        predicted = self.confusion.sum(axis=0)
        return numpy.divide(numpy.diag(self.confusion), predicted, out=numpy.zeros(len(predicted)), where=predicted > 0)

    @property
    def recall(self) -> numpy.ndarray:
        support = self.support
        return numpy.divide(numpy.diag(self.confusion), support, out=numpy.zeros(len(support)), where=support > 0)

    @property
    def f1(self) -> numpy.ndarray:
        p, r = self.precision, self.recall
        return numpy.divide(2 * p * r, p + r, out=numpy.zeros(len(p)), where=(p + r) > 0)

    def name(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else str(k)

    def averages(self) -> dict[str, tuple[float, float, float]]:
        """``{"macro avg": (p, r, f1), "weighted avg": (p, r, f1)}`` over classes with samples or predictions."""
        support = self.support
        present = (support > 0) | (self.confusion.sum(axis=0) > 0)
        p, r, f = self.precision[present], self.recall[present], self.f1[present]
        w = support[present] / max(support.sum(), 1)
        return {
            "macro avg": (float(p.mean()), float(r.mean()), float(f.mean())),
            "weighted avg": (float((p * w).sum()), float((r * w).sum()), float((f * w).sum())),
        }

    def table(self) -> list[str]:
        """Per-class precision, recall, F1 and support, then the averages and top-k accuracies."""
        width = max([len(self.name(k)) for k in range(len(self.support))] + [12])
        lines = [f"{'class':>{width}}  precision     recall         f1    support"]
        for k, (p, r, f, s) in enumerate(zip(self.precision, self.recall, self.f1, self.support)):
            lines.append(f"{self.name(k):>{width}}  {p:9.4f}  {r:9.4f}  {f:9.4f}  {int(s):9d}")
        lines.append("")
        for label, (p, r, f) in self.averages().items():
            lines.append(f"{label:>{width}}  {p:9.4f}  {r:9.4f}  {f:9.4f}  {self.samples:9d}")
        lines.append("")
        for k, v in sorted(self.top_k.items()):
            lines.append(f"{f'top-{k} accuracy':>{width}}  {v:.6f}")
        return lines

    def confusion_lines(self) -> list[str]:
        """The confusion matrix as text: rows are true classes, columns predicted ones."""
        n = len(self.confusion)
        cell = max(len(str(int(self.confusion.max(initial=0)))), len(str(n - 1)), 3)
        head = max([len(self.name(k)) for k in range(n)] + [16])
        corner = "true \\ predicted"
        lines = [f"{corner:>{head}} " + " ".join(f"{k:>{cell}}" for k in range(n))]
        for k in range(n):
            lines.append(f"{self.name(k):>{head}} " + " ".join(f"{int(v):>{cell}}" for v in self.confusion[k]))
        return lines


def classification_report(
    scores: numpy.ndarray, labels: numpy.ndarray, top_k: Sequence[int] = (1, 5), class_names: Sequence[str] = ()
) -> ClassificationReport:
    """Metrics for ``scores`` (samples, classes) against integer ``labels`` (samples,).

    Labels outside ``0 .. classes-1`` are an error; top-k values larger than the number
    of classes are left out.
    """
    scores = numpy.asarray(scores)
    labels = numpy.asarray(labels).astype(numpy.int64).reshape(-1)
    classes = scores.shape[1]
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        raise NetdefError(
            f"labels must lie in 0 .. {classes - 1} for {classes} class scores. Received: "
            f"{sorted(set(labels[bad].tolist()))[:5]}"
        )
    predicted = scores.argmax(axis=1)
    confusion = numpy.zeros((classes, classes), dtype=numpy.int64)
    numpy.add.at(confusion, (labels, predicted), 1)
    tops = {}
    for k in sorted(set(top_k)):
        if 1 <= k <= classes:
            # Caffe's Accuracy rule: a sample is right when fewer than k classes score higher than its label
            higher = (scores > scores[numpy.arange(len(labels)), labels][:, None]).sum(axis=1)
            tops[k] = float((higher < k).mean()) if len(labels) else 0.0
    return ClassificationReport(confusion, tops, list(class_names))


# --- the pass ------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What :func:`evaluate` found.

    Attributes:
        means: every output value's mean (``name`` or ``name[k]`` for multi-value outputs).
        loss: the mean weighted loss.
        samples: how many samples were evaluated (batches x batch size in Caffe's mode).
        batches: how many forward passes ran.
        exact: whether every sample counted exactly once.
        report: the classification metrics, or None for a net that is not a classifier.
        scores, labels: per-sample class scores and labels (classifiers only).
    """

    means: dict[str, float]
    loss: float
    samples: int
    batches: int
    exact: bool
    report: ClassificationReport | None = None
    scores: numpy.ndarray | None = None
    labels: numpy.ndarray | None = None


def output_labels(name: str, values: numpy.ndarray):
    """(label, value) for each value of output ``name``: ``name``, or ``name[k]`` for a multi-value output."""
    for k, v in enumerate(values):
        yield (name if values.size == 1 else f"{name}[{k}]"), v


def _set_batch(layers: list, size: int) -> list[tuple]:
    """Make every data layer serve ``size`` samples per forward; what to restore afterwards."""
    saved = []
    for layer in layers:
        shape = getattr(layer, "shape", None)
        saved.append((layer, layer.batch_size, shape))
        layer.batch_size = size
        if isinstance(shape, tuple) and shape:
            layer.shape = (size,) + shape[1:]
    return saved


def _restore_batch(saved: list[tuple]) -> None:
    for layer, batch, shape in saved:
        layer.batch_size = batch
        if shape is not None:
            layer.shape = shape


def plan_batches(net, iterations: int | None) -> tuple[list[int], bool]:
    """The number of samples in each batch to run, and whether that is one exact pass.

    ``iterations`` given: that many full batches (Caffe). None: one exact pass when the
    data size is known, else Caffe's default of 50 batches (logged).
    """
    if iterations is not None:
        if iterations < 1:
            raise NetdefError(f"iterations must be at least 1. Received: {iterations}")
        batch = dataset_size(net)
        size = batch[1] if isinstance(batch, tuple) else _first_batch(net)
        return [size] * iterations, False
    known = dataset_size(net)
    if isinstance(known, str):
        log.info("Cannot make one exact pass over the test data (%s): running Caffe's default of 50 batches", known)
        return [_first_batch(net)] * 50, False
    samples, batch = known
    full, rest = divmod(samples, batch)
    log.info(
        "One pass over %d test samples: %d batches of %d%s",
        samples,
        full + bool(rest),
        batch,
        f", the last of {rest}" if rest else "",
    )
    return [batch] * full + ([rest] if rest else []), True


def _first_batch(net) -> int:
    """The batch size of the first data top (1 when the net has none)."""
    for rec in net.records:
        if not rec.bottom_names:
            for blob in rec.top:
                if blob.shape:
                    return int(blob.shape[0])
    return 1


def evaluate(
    net,
    iterations: int | None = None,
    *,
    top_k: Sequence[int] = (1, 5),
    class_names: Sequence[str] = (),
    keep_scores: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int, dict[str, numpy.ndarray]], None] | None = None,
) -> Evaluation:
    """Run ``net`` (TEST phase) over its data; output means and, for a classifier, its metrics.

    Args:
        net: a built :class:`netdef.Net`, its data layers at the start of their data.
        iterations: None for one exact pass (see the module docstring); a number for
            Caffe's fixed count of full batches.
        top_k: the k values of top-k accuracy to report (those above the class count are skipped).
        class_names: names for the class indices in the report.
        keep_scores: keep every sample's class scores and label (for saving predictions).
        on_start: called once with the number of batches about to run (progress bars).
        on_batch: called after each batch with its index and ``{output: values}`` (logging, progress).
    """
    sizes, exact = plan_batches(net, iterations)
    if on_start is not None:
        on_start(len(sizes))
    layers = data_layers(net) if exact else []
    classifier = find_classifier(net)
    totals: dict[str, numpy.ndarray] = {}
    loss = 0.0
    seen = 0
    all_scores: list[numpy.ndarray] = []
    all_labels: list[numpy.ndarray] = []
    full = sizes[0] if sizes else 0
    for i, size in enumerate(sizes):
        saved = _set_batch(layers, size) if size != full else []
        try:
            outputs = net.forward()
        finally:
            _restore_batch(saved)
        loss += net.loss * size
        values = {}
        for name, value in outputs.items():
            value = backend.to_numpy(value).astype(numpy.float64).reshape(-1)
            values[name] = value
            totals[name] = totals.get(name, 0) + value * size
        if classifier is not None:
            s, y = _scores_and_labels(
                backend.to_numpy(net.blobs[classifier.scores].data),
                backend.to_numpy(net.blobs[classifier.labels].data),
                classifier.axis,
            )
            if classifier.ignore_label is not None:
                keep = y != classifier.ignore_label
                s, y = s[keep], y[keep]
            all_scores.append(s.astype(numpy.float32))
            all_labels.append(y)
        seen += size
        if on_batch is not None:
            on_batch(i, values)
    count = max(seen, 1)
    means: dict[str, float] = {}
    for name, total in totals.items():
        for label, v in output_labels(name, total / count):
            means[label] = float(v)
    result = Evaluation(means, loss / count, seen, len(sizes), exact)
    if classifier is not None and all_scores:
        scores = numpy.concatenate(all_scores)
        labels = numpy.concatenate(all_labels)
        if numpy.any(labels != numpy.round(labels)):
            log.warning('Labels in blob "%s" are not whole numbers: no classification report', classifier.labels)
        else:
            ks = list(top_k) + [classifier.top_k]
            result.report = classification_report(scores, labels, ks, class_names)
            if keep_scores:
                result.scores, result.labels = scores, labels.astype(numpy.int64)
    return result


def read_class_names(path: str) -> list[str]:
    """Class names, one a line (Caffe's ``synset_words.txt`` lines are kept whole); blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def save_predictions(path: str, scores: numpy.ndarray, labels: numpy.ndarray) -> None:
    """Write every sample's scores, predicted class and label: ``.npz`` (arrays) or CSV (any other name).

    CSV columns: ``index,label,predicted,score_0,...``; the ``.npz`` holds ``scores``,
    ``predicted`` and ``label``.
    """
    predicted = scores.argmax(axis=1)
    if path.endswith(".npz"):
        numpy.savez(path, scores=scores, predicted=predicted, label=labels)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(["index", "label", "predicted"] + [f"score_{k}" for k in range(scores.shape[1])]) + "\n")
        for i, (y, p, row) in enumerate(zip(labels, predicted, scores)):
            f.write(f"{i},{int(y)},{int(p)}," + ",".join(f"{v:.7g}" for v in row) + "\n")


__all__ = [
    "ClassificationReport",
    "ClassifierOutputs",
    "Evaluation",
    "classification_report",
    "data_layers",
    "dataset_size",
    "evaluate",
    "find_classifier",
    "output_labels",
    "plan_batches",
    "read_class_names",
    "save_predictions",
]
