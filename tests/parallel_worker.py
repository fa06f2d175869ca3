"""One rank of the data-parallel tests (tests/test_parallel.py starts it with ``mpiexec -n 2``).

Usage: ``python tests/parallel_worker.py SPEC.json``. The spec names the solver file,
the iterations, an output folder and what to do (train or solve; restore first; make
one rank fail, hang or exit; poll signals). Every rank writes its final weights and the
sample indices it read to the output folder.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy

from netdef.solvers import SGDSolver, get_solver, handle_signals, parallel


def _build(spec: dict):
    if spec.get("local"):
        return parallel.data_parallel(SGDSolver)(spec["solver"], comm=parallel.LocalCommunicator())
    return get_solver(spec["solver"])


def _fail_at(solver, spec: dict) -> None:
    fail = spec.get("fail")
    if not fail or solver.comm.rank != fail["rank"]:
        return

    def on_start() -> None:
        if solver.iter != fail["iter"]:
            return
        if fail["how"] == "error":
            raise ValueError("the worker was told to fail here")
        if fail["how"] == "stall":
            time.sleep(600)
        if fail["how"] == "exit":
            os._exit(3)

    solver.add_callback(on_start, None)


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    solver = _build(spec)
    rank = solver.comm.rank
    out = spec["out"]
    seen: list[int] = []
    names = list(solver.net.blobs)
    if "index" in names:
        solver.net.after_forward(
            lambda i: seen.extend(int(v) for v in solver.net.blobs["index"].data.ravel()) if i == 0 else None
        )
    _fail_at(solver, spec)
    if spec.get("pid_file"):
        with open(f"{spec['pid_file']}.{rank}", "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
    if spec.get("solve"):
        with handle_signals(solver):
            solver.solve(spec.get("restore"))
    else:
        if spec.get("restore"):
            solver.restore(spec["restore"])
        solver.step(spec["iters"])
    weights = {f"p{i}": blob.data for i, blob in enumerate(solver.net.learnable_params)}
    numpy.savez(os.path.join(out, f"weights_rank{rank}.npz"), **weights)
    with open(os.path.join(out, f"result_rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "rank": rank,
                "size": solver.comm.size,
                "iter": solver.iter,
                "seen": seen,
                "last_snapshot": solver.last_snapshot,
                "stopped": solver.requested_early_exit,
                "communication_seconds": solver.communication_seconds,
                "random": float(solver.rng.numpy.random()),
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
