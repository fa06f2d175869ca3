"""Peak memory of one training step (forward+backward) of a benchmark net, in this process.

    python benchmarks/memory.py cifar10_quick netdef
    python benchmarks/memory.py cifar10_quick torch

Run once per framework, each in a fresh process (``compare.py --memory`` does both). The
figure is the growth of the resident set's high-water mark over the resident set after
imports (ONNX Runtime's, where netdef uses it, included; for PyTorch: after its weights are
copied from a netdef net that is then freed):
it includes the activations, gradients and any workspace (and netdef's weights, which are
a few hundred KiB here). Linux only
(it reads ``/proc/self/status``); elsewhere it prints the process's peak resident set.
"""

from __future__ import annotations

import gc
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nets import CASES, netdef_net, netdef_step, torch_step  # noqa: E402

import netdef  # noqa: E402
from netdef import threads  # noqa: E402
from netdef.layers import ort_kernels  # noqa: E402


def status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> int | None:
    """Restart the high-water mark at the current resident set (Linux); that resident set in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return status_kib("VmRSS")


def main() -> None:
    case, framework = CASES[sys.argv[1]], sys.argv[2]
    netdef.quiet()
    threads.apply_policy()
    if framework == "torch":
        import torch  # noqa: F401
    else:
        ort_kernels.active()  # loads ONNX Runtime where installed: an import, like PyTorch's above
    base = reset_peak()
    net = netdef_net(case)
    step = torch_step(case, net) if framework == "torch" else netdef_step(net)
    if framework == "torch":
        # The twin holds its own copy of the weights; the netdef net was only their source.
        del net
        gc.collect()
        base = reset_peak()
    for _ in range(3):
        step()
    peak = status_kib("VmHWM")
    if base is None or peak is None:
        print(f"{framework}: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        return
    growth, after_imports = (peak - base) / 1024, base / 1024
    print(f"{framework} {case.label}: step peak {growth:.0f} MiB over {after_imports:.0f} MiB after imports")


if __name__ == "__main__":
    main()
