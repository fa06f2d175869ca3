"""netdef versus PyTorch on the CPU: every comparison in one command, one table.

    python benchmarks/compare.py                      # all nets, quiet machine
    python benchmarks/compare.py --nets lenet cifar10_quick --blocks 5
    python benchmarks/compare.py --busy 2             # with 2 CPU-bound processes running
    python benchmarks/compare.py --memory --digits    # peak memory and the digits example too

Forward+backward time per iteration of Caffe's example nets (fed by an Input layer, see
``benchmarks/nets.py``). The two frameworks run in alternating blocks in the same process
(shared machines speed up and slow down; alternating gives both the same conditions), the
first iteration of each block is dropped and the table shows medians. PyTorch is optional
(``pip install torch``); without it only netdef is timed. netdef's thread policy applies
(``--threads`` / ``NETDEF_NUM_THREADS``, see docs/performance.md); PyTorch keeps its own
default unless ``--torch-threads`` is given.
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
from nets import CASES, ROOT, netdef_net, netdef_step, torch_step  # noqa: E402

from netdef import threads  # noqa: E402


def timed(step, n: int) -> list[float]:
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
    lines = [
        f"cpu: {cpu}; logical cores {os.cpu_count()}, usable {threads.available_cores()}",
        f"python {platform.python_version()}, numpy {numpy.__version__}, {platform.system()} {platform.release()}",
        f"netdef threads: {threads.describe()}",
    ]
    try:
        import torch

        lines.append(f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()}")
    except ImportError:
        lines.append("torch: not installed (netdef timed alone)")
    return lines


def compare(case, blocks: int, per_block: int) -> dict:
    """Medians in ms of netdef and PyTorch for one case, alternating blocks."""
    net = netdef_net(case)
    nd_step = netdef_step(net)
    pt_step = torch_step(case, net)
    nd_loss = nd_step()
    pt_loss = pt_step() if pt_step else None
    nd, pt = [], []
    for _ in range(blocks):
        nd += timed(nd_step, per_block + 1)[1:]
        if pt_step:
            pt += timed(pt_step, per_block + 1)[1:]
    row = {"case": case.label, "netdef": statistics.median(nd) * 1e3, "loss": (nd_loss, pt_loss)}
    if pt:
        row["torch"] = statistics.median(pt) * 1e3
    return row


def format_rows(rows: list[dict]) -> list[str]:
    out = ["| net, batch | netdef ms | PyTorch ms | ratio | first loss netdef / PyTorch |", "|---|---|---|---|---|"]
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
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    threads.apply_policy(args.threads)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    for line in machine_info():
        print(line)
    busy = start_busy(args.busy)
    try:
        if args.busy:
            print(f"contention: {args.busy} CPU-bound processes running")
        rows = [compare(CASES[name], args.blocks, args.per_block) for name in args.nets]
        print("\n".join(format_rows(rows)))
        if args.digits:
            print(f"digits example (netdef train models/digits/solver.prototxt): {run_digits(args.threads):.1f} s")
        if args.memory:
            print("\n".join(memory_rows("cifar10_quick")))
    finally:
        stop_busy(busy)


if __name__ == "__main__":
    main()
