"""``netdef plot``: training curves of one or more runs in one figure (needs matplotlib, the ``plot`` extra).

Reads Caffe-format training logs and netdef's run records (see :mod:`netdef.logparse`).
One panel per quantity: every train output (the loss first), every test output, and
the learning rate; each run is one line in every panel, named in the legend. As one
Python call::

    from netdef.tools.plot import plot_runs
    plot_runs(["sgd.log", "adam.log"], "compare.png", x="iteration")
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from ..errors import MissingDependencyError, NetdefError
from ..logparse import History, read_history

log = logging.getLogger("netdef")


def import_pyplot():
    """matplotlib's pyplot on a file-only backend; a MissingDependencyError naming the extra when absent."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "Drawing plots needs matplotlib, which is not installed: install netdef's 'plot' extra "
            "or run `pip install matplotlib`"
        ) from None
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def run_label(path: str) -> str:
    """A short name for a run in the legend: the folder or file name without its extension."""
    name = os.path.basename(os.path.normpath(path))
    stem, ext = os.path.splitext(name)
    return stem if ext in (".log", ".jsonl", ".txt") else name


def panels(histories: Sequence[History]) -> list[tuple[str, str]]:
    """The (phase, quantity) of every panel: train outputs (loss first), test outputs, then ``lr``."""
    out: list[tuple[str, str]] = []
    for phase in ("train", "test"):
        names: dict[str, None] = {}
        for h in histories:
            names.update(dict.fromkeys(h.output_names(phase)))
        ordered = sorted(names, key=lambda n: (0 if "loss" in n else 1, list(names).index(n)))
        out += [(phase, n) for n in ordered]
    if any(h.series("train", "lr")[0] or h.series("test", "lr")[0] for h in histories):
        out.append(("train", "lr"))
    return out


def plot_runs(
    paths: Sequence[str],
    output: str = "training.png",
    *,
    x: str = "iteration",
    labels: Sequence[str] = (),
    log_y: bool = False,
    title: str | None = None,
) -> list[tuple[str, str]]:
    """Draw the curves of every run in ``paths`` to ``output`` (PNG, SVG or PDF by its extension).

    Args:
        paths: run folders, run-record ``.jsonl`` files or Caffe-format training logs.
        output: the image file to write.
        x: ``"iteration"`` or ``"seconds"`` on the horizontal axis.
        labels: legend names, one per path (default: the file or folder names).
        log_y: logarithmic loss and learning-rate axes.
        title: a title over the figure.

    Returns:
        The (phase, quantity) of every panel drawn.
    """
    if x not in ("iteration", "seconds"):
        raise NetdefError(f'--x must be "iteration" or "seconds". Received: {x!r}')
    if not paths:
        raise NetdefError("plot needs at least one run folder, run-record file or training log")
    if labels and len(labels) != len(paths):
        raise NetdefError(f"--label must be given once per run ({len(paths)}) or not at all. Received: {len(labels)}")
    plt = import_pyplot()
    histories = [read_history(p) for p in paths]
    names = list(labels) or [run_label(p) for p in paths]
    drawn = panels(histories)
    cols = min(3, len(drawn))
    rows = -(-len(drawn) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (phase, quantity) in zip(axes.flat, drawn):
        for history, name in zip(histories, names):
            xs, ys = history.series(phase, quantity, x)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=name)
        ax.set_title("learning rate" if quantity == "lr" else f"{phase} {quantity}")
        ax.set_xlabel("iteration" if x == "iteration" else "seconds")
        if log_y and (quantity == "lr" or "loss" in quantity):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(histories) > 1 or labels:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(drawn) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output)
    plt.close(fig)
    log.info("Plotted %d run(s), %d panels, to %s", len(paths), len(drawn), output)
    return drawn


def cmd_plot(args: argparse.Namespace) -> int:
    """Run ``netdef plot`` from parsed arguments."""
    plot_runs(args.runs, args.output, x=args.x, labels=args.label, log_y=args.log_y, title=args.title)
    print(args.output)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``netdef plot``."""
    p = subparsers.add_parser(
        "plot",
        help="plot loss, test outputs and lr of one or more runs (needs matplotlib)",
        description="Plot the training loss, every test output and the learning rate against iteration "
        "(or seconds) for one or more runs, overlaid with a legend. Reads netdef run folders or run-record "
        ".jsonl files and Caffe-format training logs.",
        epilog="example: netdef plot sgd.log adam.log -o compare.png --x seconds",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_OR_LOG", help="run folder, run-record .jsonl file or training log")
    p.add_argument(
        "-o", "--output", default="training.png", help="image to write (.png, .svg, .pdf; default training.png)"
    )
    p.add_argument("--x", choices=["iteration", "seconds"], default="iteration", help="horizontal axis")
    p.add_argument("--label", action="append", default=[], help="legend name of each run, in order (repeatable)")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss and learning-rate axes")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=cmd_plot)
    return p


__all__ = ["add_parser", "cmd_plot", "import_pyplot", "panels", "plot_runs", "run_label"]
