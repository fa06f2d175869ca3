"""netdef versus PyTorch on the CPU: every comparison in one command, one table.

    python benchmarks/compare.py                      # all nets, quiet machine
    python benchmarks/compare.py --nets lenet cifar10_quick --blocks 5
    python benchmarks/compare.py --busy 2             # with 2 CPU-bound processes running
    python benchmarks/compare.py --memory --digits    # peak memory and the digits example too
    python benchmarks/compare.py --all                # all of it, plus quiet/busy ratios

Forward+backward time per iteration of Caffe's example nets (fed by an Input layer, see
``benchmarks/nets.py``). The two frameworks run in alternating blocks in the same process
(shared machines speed up and slow down; alternating gives both the same conditions), the
first 0.3 s of each block is not timed (``WARMUP_SECONDS``) and the table shows medians. PyTorch is optional
(``pip install torch``); without it only netdef is timed. netdef's thread policy applies
(``--threads`` / ``NETDEF_NUM_THREADS``, see docs/performance.md); PyTorch keeps its own
default unless ``--torch-threads`` is given.

``--all`` runs every comparison of the performance targets in one go: the table on the
machine as it is, cifar10_quick and the digits example again with one CPU-bound process per
usable core running (the contention figures, as ratios to the first run), and the peak
memory of a cifar10_quick training step of both frameworks.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy  # noqa: E402
from nets import CASES, ROOT, check_losses, netdef_net, netdef_step, torch_step  # noqa: E402

import netdef  # noqa: E402
from netdef import allocator, threads  # noqa: E402
from netdef.tools.device_query import cpu_kernels  # noqa: E402


def timed(step, n: int) -> list[float]:
    """Seconds of ``n`` calls of ``step`` after :data:`WARMUP_SECONDS` of untimed ones (one at least)."""
    start = time.perf_counter()
    step()
    while time.perf_counter() - start < WARMUP_SECONDS:
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def machine_info() -> list[str]:
    """CPU model, cores usable by this process, library versions and thread settings."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    kernels = cpu_kernels()  # first: ONNX Runtime's kernels cap BLAS at one thread, which the next line shows
    lines = [
        f"cpu: {cpu}; logical cores {os.cpu_count()}, usable {threads.available_cores()}",
        f"python {platform.python_version()}, numpy {numpy.__version__}, {platform.system()} {platform.release()}",
        f"CPU kernels: {kernels}",
        f"netdef threads: {threads.describe()}",
        f"BLAS kernels: {blas_kernels()}",
        f"malloc: {allocator.tune()}",
    ]
    try:
        import torch

        lines.append(f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()}")
    except ImportError:
        lines.append("torch: not installed (netdef timed alone)")
    return lines


def blas_kernels() -> str:
    """The kernel family OpenBLAS runs (and OPENBLAS_CORETYPE when the environment forces one)."""
    try:
        from threadpoolctl import threadpool_info

        arch = next((i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"), None)
    except ImportError:
        arch = None
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return f"{arch or 'unknown'}" + (f" (OPENBLAS_CORETYPE={forced} in the environment)" if forced else "")


#: Pause before each timed block: the other side's idle threads (OpenMP's, OpenBLAS's) spin for a
#: while after their work before they sleep, and would otherwise take cores from this block.
SETTLE_SECONDS = 0.3
#: Untimed iterations at the start of every block, for both frameworks. The first iterations
#: after the other framework's block run slower, with many involuntary context switches
#: (LeNet: five of 11-13 ms, then 8; cifar10_quick: two or three of 45-65 ms, then 37).
WARMUP_SECONDS = 0.3


class TorchPeer:
    """The PyTorch twin of a case in a process of its own, timed a block at a time on request.

    netdef's malloc settings (``netdef/allocator.py``) apply to the process that builds a net;
    the peer runs with ``NETDEF_MALLOC_TUNING=0``, so PyTorch is timed with the C library's
    defaults, as in a user's own PyTorch program. ``--torch-in-process`` times it in this
    process instead (with netdef's settings).
    """

    def __init__(self, case, torch_threads: int):
        cmd = [sys.executable, os.path.abspath(__file__), "--peer", case.name, "--torch-threads", str(torch_threads)]
        env = {**os.environ, "NETDEF_MALLOC_TUNING": "0"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        words = self.proc.stdout.readline().split()
        if not words:
            raise RuntimeError(f"the PyTorch peer for {case.name} did not start")
        self.available = words[0] == "ready"
        self.losses = (float(words[1]), float(words[2])) if self.available else (None, None)

    def block(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return [float(v) for v in self.proc.stdout.readline().split()]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_peer(case_name: str) -> None:
    """The peer's side of :class:`TorchPeer`: report the check losses, then time blocks until stdin closes."""
    case = CASES[case_name]
    net = netdef_net(case)
    step = torch_step(case, net)
    if step is None:
        print("none", flush=True)
        return
    nd_loss, pt_loss = check_losses(case, net)
    print("ready", nd_loss, pt_loss, flush=True)
    for line in sys.stdin:
        time.sleep(SETTLE_SECONDS)
        print(" ".join(f"{t:.9f}" for t in timed(step, int(line))), flush=True)


def compare(case, blocks: int, per_block: int, torch_threads: int = 0, in_process: bool = False) -> dict:
    """Medians in ms of netdef and PyTorch for one case, alternating blocks."""
    net = netdef_net(case)
    nd_step = netdef_step(net)
    peer = None
    if in_process:
        nd_loss, pt_loss = check_losses(case, net)
        pt_step = torch_step(case, net)
        pt_block = (lambda n: timed(pt_step, n)) if pt_step else None
    else:
        peer = TorchPeer(case, torch_threads)
        nd_loss, pt_loss = peer.losses if peer.available else (check_losses(case, net)[0], None)
        pt_block = peer.block if peer.available else None
    nd, pt = [], []
    try:
        for _ in range(blocks):
            time.sleep(SETTLE_SECONDS)
            nd += timed(nd_step, per_block)
            if pt_block:
                pt += pt_block(per_block)
    finally:
        if peer is not None:
            peer.close()
    row = {"case": case.label, "netdef": statistics.median(nd) * 1e3, "loss": (nd_loss, pt_loss)}
    if pt:
        row["torch"] = statistics.median(pt) * 1e3
    return row


def format_rows(rows: list[dict]) -> list[str]:
    out = [
        "| net, batch | netdef ms | PyTorch ms | ratio | loss without Dropout, netdef / PyTorch |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        pt = r.get("torch")
        nd_loss, pt_loss = r["loss"]
        losses = f"{nd_loss:.4f} / {pt_loss:.4f}" if pt_loss is not None else f"{nd_loss:.4f} / -"
        ratio = f"{r['netdef'] / pt:.2f}x" if pt else "-"
        pt_ms = f"{pt:.1f}" if pt else "-"
        out.append(f"| {r['case']} | {r['netdef']:.1f} | {pt_ms} | {ratio} | {losses} |")
    return out


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes (the contention of a shared machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def run_digits(threads_arg: int | None) -> float:
    """Wall seconds of ``netdef train models/digits/solver.prototxt`` in a fresh process.

    It runs in a temporary copy of ``models/digits``, so its snapshots do not land in the tree.
    """
    cmd = [sys.executable, "-m", "netdef", "-q"]
    if threads_arg:
        cmd += ["--threads", str(threads_arg)]
    cmd += ["train", "models/digits/solver.prototxt"]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(tmp, "models", "digits"))
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def memory_rows(case_name: str) -> list[str]:
    """Peak memory of one training step of each framework, each measured in a fresh process."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memory.py")
    out = []
    for framework in ("netdef", "torch"):
        res = subprocess.run(
            [sys.executable, script, case_name, framework], capture_output=True, text=True, check=False
        )
        out.append(res.stdout.strip() or f"{framework}: {res.stderr.strip().splitlines()[-1:]}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", choices=sorted(CASES), default=list(CASES))
    p.add_argument("--blocks", type=int, default=5, help="alternating blocks per net")
    p.add_argument("--per-block", type=int, default=5, help="timed iterations per block")
    p.add_argument("--threads", type=int, default=None, help="netdef BLAS threads (default: the policy)")
    p.add_argument("--torch-threads", type=int, default=0, help="PyTorch intra-op threads (0: its default)")
    p.add_argument("--busy", type=int, default=0, help="CPU-bound processes to run alongside")
    p.add_argument("--memory", action="store_true", help="also measure peak memory of a cifar10_quick step")
    p.add_argument("--digits", action="store_true", help="also time the digits training example")
    p.add_argument("--all", action="store_true", help="every comparison: table, contention ratios, memory")
    p.add_argument(
        "--torch-in-process",
        action="store_true",
        help="time PyTorch in this process (with netdef's malloc settings) instead of a process of its own",
    )
    p.add_argument("--peer", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_table(args, busy: int) -> tuple[list[dict], float | None]:
    """The table (and the digits example's seconds when asked) with ``busy`` CPU-bound processes running."""
    procs = start_busy(busy)
    try:
        if busy:
            print(f"contention: {busy} CPU-bound processes running")
        rows = [
            compare(CASES[name], args.blocks, args.per_block, args.torch_threads, args.torch_in_process)
            for name in args.nets
        ]
        print("\n".join(format_rows(rows)))
        digits = run_digits(args.threads) if args.digits else None
        if digits is not None:
            print(f"digits example (netdef train models/digits/solver.prototxt): {digits:.1f} s")
        return rows, digits
    finally:
        stop_busy(procs)


def contention_lines(quiet: tuple[list[dict], float | None], busy: tuple[list[dict], float | None]) -> list[str]:
    """Busy time over quiet time per net and framework, and for the digits example (target: at most 2x)."""
    out = []
    before = {r["case"]: r for r in quiet[0]}
    for r in busy[0]:
        q = before[r["case"]]
        line = f"contention {r['case']}: netdef {r['netdef'] / q['netdef']:.2f}x quiet time"
        if "torch" in r and "torch" in q:
            line += f", PyTorch {r['torch'] / q['torch']:.2f}x"
        out.append(line)
    if quiet[1] and busy[1]:
        out.append(
            f"contention digits example: {busy[1] / quiet[1]:.2f}x quiet time ({quiet[1]:.1f} s -> {busy[1]:.1f} s)"
        )
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    netdef.quiet()
    threads.apply_policy(args.threads)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.peer:
        run_peer(args.peer)
        return
    for line in machine_info():
        print(line)
    if args.all:
        args.digits = args.memory = True
    first = run_table(args, args.busy)
    if args.all and not args.busy:
        busy_args = argparse.Namespace(**{**vars(args), "nets": ["cifar10_quick"]})
        second = run_table(busy_args, threads.available_cores())
        print("\n".join(contention_lines(first, second)))
    if args.memory:
        print("\n".join(memory_rows("cifar10_quick")))


if __name__ == "__main__":
    main()
