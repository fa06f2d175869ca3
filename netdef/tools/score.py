"""``netdef test``: evaluate a trained model on its test data (Caffe's ``caffe test``, made exact).

By default one exact pass over the test data when its size is known, with the mean
of every output and, for a classification net, the confusion matrix, per-class
precision / recall / F1 / support and top-k accuracy (see :mod:`netdef.evaluation`);
``--iterations N`` runs N full batches as Caffe does.

As one Python call::

    from netdef.tools.score import score
    means = score("models/digits/train_val.prototxt", "digits_iter_1000.caffemodel")
    # {"accuracy": 0.980556, "loss": 0.0699628}

``evaluate_model(...)`` returns the whole :class:`netdef.evaluation.Evaluation`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from ..errors import NetdefError
from ..evaluation import Evaluation, evaluate, output_labels, read_class_names, save_predictions
from ..logs import format_g, output_line
from ..net import TEST
from ..progress import Progress
from .common import add_net_arguments, open_net, print_results, select_device, split_stages

log = logging.getLogger("netdef")


def evaluate_model(
    model: str,
    weights: str | None = None,
    *,
    iterations: int | None = None,
    gpu: str | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
    labels_file: str | None = None,
    top_k: Sequence[int] = (1, 5),
    keep_scores: bool = False,
) -> Evaluation:
    """Evaluate ``model`` with ``weights`` on its TEST-phase data; logs as ``caffe test`` does.

    Each batch's values, the mean loss and the means (with their loss weights) are
    logged in Caffe's words. On a terminal a progress bar replaces the per-batch lines.

    Args:
        model: the net definition file.
        weights: trained weights (``.caffemodel``/``.h5``); None tests the filler weights.
        iterations: None for one exact pass over the data (Caffe's 50 batches when its
            size is unknown); a number for that many full batches, as Caffe.
        gpu: the ``--gpu`` value (None: the CPU).
        level, stages: the net state for include/exclude rules.
        labels_file: class names, one a line, for the classification report.
        top_k: top-k accuracies to report.
        keep_scores: keep per-sample scores and labels (``--save-predictions``).
    """
    if iterations is not None and iterations < 1:
        raise NetdefError(f"--iterations must be at least 1. Received: {iterations}")
    select_device(gpu)
    net = open_net(model, TEST, weights, level, stages)
    if not weights:
        log.warning("No --weights given: testing the net's initial (filler) weights")
    names = read_class_names(labels_file) if labels_file else []
    progress = Progress(None, "Testing")
    batch_level = logging.DEBUG if progress.enabled else logging.INFO

    def on_batch(i: int, values: dict) -> None:
        for name, value in values.items():
            for label, v in output_labels(name, value):
                log.log(batch_level, "Batch %d, %s", i, output_line(label, v))
        progress.update()

    def on_start(batches: int) -> None:
        progress.total = batches

    with progress:
        result = evaluate(
            net,
            iterations,
            top_k=top_k,
            class_names=names,
            keep_scores=keep_scores,
            on_start=on_start,
            on_batch=on_batch,
        )
    log.info("Loss: %s", format_g(result.loss))
    weights_of = net.loss_weights()
    for label, v in result.means.items():
        log.info("%s", output_line(label, v, weights_of.get(label.split("[")[0], 0.0)))
    if result.report is not None:
        log.info(
            "%d samples%s; top-1 accuracy %s (pooled over samples)",
            result.samples,
            "" if result.exact else " (Caffe's fixed batch count: may repeat samples)",
            format_g(result.report.accuracy),
        )
    return result


def score(
    model: str,
    weights: str | None = None,
    *,
    iterations: int | None = None,
    gpu: str | None = None,
    level: int = 0,
    stages: Sequence[str] = (),
) -> dict[str, float]:
    """The mean of every output value over the test data (see :func:`evaluate_model`).

    An output with several values gives one entry per value, ``name[k]``.
    """
    return evaluate_model(model, weights, iterations=iterations, gpu=gpu, level=level, stages=stages).means


def plot_confusion(report, path: str) -> None:
    """Draw the confusion matrix of a :class:`ClassificationReport` to an image file (needs matplotlib)."""
    from .plot import import_pyplot

    plt = import_pyplot()
    n = len(report.confusion)
    size = min(max(4.0, 0.45 * n + 2), 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(report.confusion, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    names = [report.name(k) for k in range(n)]
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(n), names)
    if n <= 30:
        top = report.confusion.max(initial=0)
        for i in range(n):
            for j in range(n):
                v = int(report.confusion[i, j])
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({report.samples} samples, accuracy {report.accuracy:.4f})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _parse_top_k(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise NetdefError(f"--top-k takes comma-separated positive integers, e.g. 1,5. Received: {text!r}")
    return ks


def cmd_test(args: argparse.Namespace) -> int:
    """Run ``netdef test`` from parsed arguments; prints ``name = mean`` and the classification report."""
    if not args.model:
        raise NetdefError("test needs --model NET.prototxt (and usually --weights MODEL.caffemodel)")
    if args.plot_confusion:
        from .plot import import_pyplot

        import_pyplot()  # a missing matplotlib is reported before the pass, not after it
    result = evaluate_model(
        args.model,
        args.weights,
        iterations=args.iterations,
        gpu=args.gpu,
        level=args.level,
        stages=split_stages(args.stage),
        labels_file=args.labels,
        top_k=_parse_top_k(args.top_k),
        keep_scores=bool(args.save_predictions),
    )
    print_results(output_line(label, v) for label, v in result.means.items())
    report = result.report
    if report is not None:
        how = "one exact pass" if result.exact else f"{result.batches} batches, Caffe's way"
        print(f"\n{result.samples} samples ({how}); per-class numbers pooled over all samples")
        print("\n".join(report.table()))
        if len(report.confusion) <= 20:
            print("\nConfusion matrix (rows: true class, columns: predicted class)")
            print("\n".join(report.confusion_lines()))
    elif args.save_predictions or args.plot_confusion:
        raise NetdefError(
            "--save-predictions and --plot-confusion need a classification net (an Accuracy or SoftmaxWithLoss "
            "layer reading class scores and a label blob); this net has none"
        )
    if args.save_predictions:
        save_predictions(args.save_predictions, result.scores, result.labels)
        log.info("Predictions written to %s", args.save_predictions)
    if args.plot_confusion:
        plot_confusion(report, args.plot_confusion)
        log.info("Confusion matrix drawn to %s", args.plot_confusion)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef test``."""
    p = subparsers.add_parser(
        "test",
        help="evaluate a trained model on its test data (exact pass, per-class metrics)",
        description="Evaluate a trained model on its TEST-phase data. By default one exact pass over the data "
        "when its size is known (HDF5Data, LMDB Data, ImageData, MemoryData); --iterations N runs N full "
        "batches as `caffe test` does. Classification nets also get a confusion matrix, per-class precision, "
        "recall, F1 and support, and top-k accuracy, pooled over all samples.",
        epilog="example: netdef test --model models/digits/train_val.prototxt "
        "--weights models/digits/digits_iter_1000.caffemodel --plot-confusion confusion.png",
    )
    add_net_arguments(p)
    p.add_argument(
        "--iterations",
        "-iterations",
        type=int,
        default=None,
        help="run this many full batches as Caffe does (default: one exact pass; 50 when the data size is unknown)",
    )
    p.add_argument("--labels", metavar="FILE", help="class names, one a line (e.g. synset_words.txt)")
    p.add_argument("--top-k", default="1,5", metavar="K,...", help="top-k accuracies to report (default 1,5)")
    p.add_argument(
        "--save-predictions", metavar="FILE", help="write scores, predicted class and label per sample (.csv or .npz)"
    )
    p.add_argument("--plot-confusion", metavar="FILE.png", help="draw the confusion matrix (needs matplotlib)")
    p.set_defaults(func=cmd_test)
    return p


__all__ = ["add_parser", "cmd_test", "evaluate_model", "plot_confusion", "score"]
