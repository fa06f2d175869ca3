"""The ``netdef`` command line: train, test and time nets (the shape of Caffe's ``caffe`` tool)."""
from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy

from . import backend
from .errors import NetdefError

log = logging.getLogger("netdef")


class GlogFormatter(logging.Formatter):
    """Caffe's (glog's) line prefix, so tools that parse Caffe logs read ours too."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micro = int((record.created % 1) * 1e6)
        prefix = f"{record.levelname[0]}{time.strftime('%m%d %H:%M:%S', t)}.{micro:06d} {record.process} " \
                 f"{record.module}.py:{record.lineno}]"
        return f"{prefix} {record.getMessage()}"


def setup_logging(quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(GlogFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _select_device(gpu: str | None, solver_mode_gpu: bool = False, device_id: int = 0) -> None:
    if gpu is None and solver_mode_gpu:
        if backend.gpu_available():
            gpu = str(device_id)
        else:
            log.warning("solver_mode is GPU but no CUDA device/CuPy is available: running on the CPU")
    if gpu is None:
        backend.set_mode_cpu()
        log.info("Use CPU.")
        return
    if gpu == "all":
        gpu = "0"
        log.info("netdef trains on one device; --gpu all uses device 0")
    try:
        ids = [int(g) for g in gpu.split(",")]
    except ValueError:
        raise NetdefError(f"--gpu takes a device number, a comma-separated list or 'all'. Received: {gpu!r}") from None
    if len(ids) > 1:
        log.info("netdef trains on one device; using the first of %s", ids)
    backend.set_device(ids[0])
    backend.set_mode_gpu()
    log.info("Use GPU with device ID %d", ids[0])


def cmd_train(args) -> int:
    from .proto import load_solver
    from .solvers import get_solver
    from .solvers.signals import handle_signals

    solver_file = args.solver or args.solver_pos
    if not solver_file:
        raise NetdefError("train needs a solver file: netdef train solver.prototxt (or --solver FILE)")
    if args.snapshot and args.weights:
        raise NetdefError(
            "Give either --snapshot (resume training) or --weights (fine-tune from a model), not both"
        )
    param = load_solver(solver_file)
    _select_device(args.gpu, param.solver_mode == param.GPU, param.device_id)
    solver = get_solver(solver_file, net=args.net)
    if args.weights:
        for w in args.weights.split(","):
            log.info("Finetuning from %s", w)
            solver.net.copy_from(w)
            for test_net in solver.test_nets:
                test_net.copy_from(w)
    with handle_signals(solver, args.sigint_effect, args.sighup_effect):
        log.info("Starting Optimization")
        solver.solve(args.snapshot)
    return 0


def _open_net(args, phase):
    from .net import Net

    stages = [s for s in (args.stage or "").split(",") if s]
    return Net(args.model, phase, weights=args.weights, level=args.level, stages=stages)


def cmd_test(args) -> int:
    from .net import TEST

    if not args.model:
        raise NetdefError("test needs --model NET.prototxt (and usually --weights MODEL.caffemodel)")
    _select_device(args.gpu)
    net = _open_net(args, TEST)
    if not args.weights:
        log.warning("No --weights given: testing the net's initial (filler) weights")
    totals: dict[str, numpy.ndarray] = {}
    loss = 0.0
    for i in range(args.iterations):
        outputs = net.forward()
        loss += net.loss
        for name, value in outputs.items():
            value = backend.to_numpy(value).astype(numpy.float64).reshape(-1)
            totals[name] = totals.get(name, 0) + value
            for k, v in enumerate(value):
                log.info("Batch %d, %s = %.6g", i, name if value.size == 1 else f"{name}[{k}]", v)
    log.info("Loss: %.6g", loss / args.iterations)
    weights = net.loss_weights()
    for name, total in totals.items():
        mean = total / args.iterations
        weight = weights.get(name, 0.0)
        for k, v in enumerate(mean):
            label = name if mean.size == 1 else f"{name}[{k}]"
            extra = f" (* {weight:g} = {weight * v:.6g} loss)" if weight else ""
            log.info("%s = %.6g%s", label, v, extra)
            print(f"{label} = {v:.6g}")
    return 0


def _sync():
    if backend.mode() == "GPU":
        backend.cupy.cuda.Stream.null.synchronize()


def cmd_time(args) -> int:
    from .net import TEST, TRAIN

    if not args.model:
        raise NetdefError("time needs --model NET.prototxt")
    _select_device(args.gpu)
    net = _open_net(args, TEST if args.phase == "TEST" else TRAIN)
    n = len(net.layers)
    log.info("Performing Forward")
    net.forward_from_to()
    log.info("Performing Backward")
    net.backward_from_to()
    fwd = numpy.zeros(n)
    bwd = numpy.zeros(n)
    total = numpy.zeros(args.iterations)
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    for it in range(args.iterations):
        t_iter = time.perf_counter()
        for i, rec in enumerate(net.records):
            t0 = time.perf_counter()
            rec.forward()
            _sync()
            fwd[i] += time.perf_counter() - t0
        for i in reversed(range(n)):
            t0 = time.perf_counter()
            net.records[i].backward()
            _sync()
            bwd[i] += time.perf_counter() - t0
        total[it] = time.perf_counter() - t_iter
        log.info("Iteration: %d forward-backward time: %.3f ms.", it + 1, total[it] * 1e3)
    ms = 1e3 / args.iterations
    log.info("Average time per layer: ")
    width = max(len(name) for name in net.layer_names)
    lines = []
    for i, name in enumerate(net.layer_names):
        lines.append(f"{name:>{width}}\tforward: {fwd[i] * ms:.4f} ms.")
        lines.append(f"{name:>{width}}\tbackward: {bwd[i] * ms:.4f} ms.")
    lines.append(f"Average Forward pass: {fwd.sum() * ms:.4f} ms.")
    lines.append(f"Average Backward pass: {bwd.sum() * ms:.4f} ms.")
    lines.append(f"Average Forward-Backward: {total.sum() * ms:.4f} ms.")
    lines.append(f"Total Time: {total.sum() * 1e3:.4f} ms.")
    for line in lines:
        log.info(line)
        print(line)
    log.info("*** Benchmark ends ***")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netdef",
        description="Train, test and time Caffe-style networks defined in prototxt (also YAML/JSON) files.",
        epilog="Caffe's single-dash spellings (-solver, -weights, -model, ...) are accepted too.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp, model=True):
        sp.add_argument("--gpu", "-gpu", help="GPU device id to use (CPU when omitted)")
        if model:
            sp.add_argument("--model", "-model", help="net definition file (.prototxt, .yaml, .json)")
        sp.add_argument("--weights", "-weights",
                        help="weights (.caffemodel or .h5) to start from; train accepts a comma-separated list")
        sp.add_argument("--level", "-level", type=int, default=0, help="net state level for include/exclude rules")
        sp.add_argument("--stage", "-stage", help="comma-separated net state stages for include/exclude rules")

    t = sub.add_parser("train", help="train a net with a solver", description=(
        "Train with a solver definition. Relative paths inside the solver (net:, snapshot_prefix, data "
        "sources) are resolved against the current directory, as Caffe does."))
    t.add_argument("solver_pos", nargs="?", metavar="SOLVER", help="solver definition file")
    t.add_argument("--solver", "-solver", help="solver definition file (same as the positional argument)")
    t.add_argument("--net", "-net", help="net definition to train, overriding the solver's net: field")
    t.add_argument("--snapshot", "-snapshot", help="resume from a .solverstate (or .solverstate.h5) file")
    t.add_argument("--sigint_effect", "-sigint_effect", choices=["stop", "snapshot", "none"], default="stop",
                   help="what Ctrl-C does during training (default: stop)")
    t.add_argument("--sighup_effect", "-sighup_effect", choices=["stop", "snapshot", "none"], default="snapshot",
                   help="what SIGHUP does during training (default: snapshot)")
    common(t, model=False)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("test", help="score a trained model (TEST phase, mean of each output)")
    common(s)
    s.add_argument("--iterations", "-iterations", type=int, default=50, help="number of batches (default 50)")
    s.set_defaults(func=cmd_test)

    m = sub.add_parser("time", help="time forward and backward per layer, like `caffe time`")
    common(m)
    m.add_argument("--iterations", "-iterations", type=int, default=50, help="number of iterations (default 50)")
    m.add_argument("--phase", "-phase", choices=["TRAIN", "TEST"], default="TRAIN", help="net phase (default TRAIN)")
    m.set_defaults(func=cmd_time)

    from .tools import classify, upgrade

    upgrade.add_parser(sub)
    classify.add_parser(sub)
    return p


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept Caffe's ``-flag=value`` spelling as ``--flag value``."""
    out = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and "=" in a and len(a) > 2:
            out.append("-" + a)
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if not args.command:
        parser.print_help()
        return 2
    setup_logging(args.quiet)
    try:
        return args.func(args)
    except NetdefError as err:
        print(f"netdef: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"netdef: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("netdef: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
