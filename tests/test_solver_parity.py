"""Solver traces against BVLC Caffe (shared/parity/solvers): 40 iterations per case, and Caffe's resume."""

import numpy as np
import pytest

from netdef.proto import load_solver
from netdef.solvers import get_solver
from netdef.testing.parity import parity_root, read_tsv
from tests.solver_helpers import caffe_solvers_root

RTOL = 1e-3


def cases():
    root = parity_root()
    return [row["case"] for row in read_tsv(root / "solvers" / "INDEX.tsv")] if root else ["(none)"]


def close(got, want, rtol=RTOL, atol=1e-5):
    """check.py's rule: |got - want| <= atol * max(1, max|want|) + rtol * |want|."""
    want = np.asarray(want, np.float64)
    got = np.asarray(got, np.float64).reshape(want.shape)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    return bool(np.all(np.abs(got - want) <= atol * scale + rtol * np.abs(want)))


def build(root, monkeypatch, solver_file: str):
    """The case's solver, run from solvers/ as Caffe was, without writing snapshots into the reference folder."""
    monkeypatch.chdir(root)
    param = load_solver(str(root / solver_file))
    param.snapshot = 0
    param.snapshot_after_train = False
    solver = get_solver(param)
    solver.net.copy_from("init.caffemodel")
    return solver


def check_params(solver, reference, index=None):
    for key in reference:
        layer, i = key.rsplit("_", 1)
        want = reference[key] if index is None else reference[key][index]
        got = solver.net.params[layer][int(i)].data
        assert close(got, want), f"{key} differs" + ("" if index is None else f" after {index} updates")


def run_trace(solver, trace, params_trace, first: int = 0):
    for k, row in enumerate(trace):
        assert solver.iter == int(row["iter"])
        assert solver.lr == pytest.approx(float(row["lr"]), rel=1e-6)
        solver.step(1)
        loss = float(solver.net.blobs["loss"].data)
        assert np.isclose(loss, float(row["loss"]), rtol=RTOL, atol=1e-5), f"iter {row['iter']}: loss {loss}"
        check_params(solver, params_trace, first + k + 1)


@pytest.mark.parametrize("case", cases())
def test_trace_matches_caffe(case, monkeypatch):
    root = caffe_solvers_root()
    solver = build(root, monkeypatch, f"{case}/solver.prototxt")
    params_trace = np.load(root / case / "params_trace.npz")
    check_params(solver, params_trace, 0)
    run_trace(solver, read_tsv(root / case / "trace.tsv"), params_trace)
    check_params(solver, np.load(root / case / "final.npz"))


def test_resume_from_caffe_solverstate(monkeypatch):
    root = caffe_solvers_root()
    solver = build(root, monkeypatch, "resume_sgd_step/solver_resumed.prototxt")
    solver.restore("resume_sgd_step/snap_iter_20.solverstate")
    assert (solver.iter, solver.current_step) == (20, 1)
    # Caffe's state has no data position: 20 updates x 32 = 640 samples = 128 into the third pass = 4 batches
    for _ in range(4):
        solver.net.forward()
    run_trace(
        solver,
        read_tsv(root / "resume_sgd_step" / "trace_resumed.tsv"),
        np.load(root / "resume_sgd_step" / "params_trace_resumed.npz"),
    )
    check_params(solver, np.load(root / "resume_sgd_step" / "final_resumed.npz"))


def test_resume_from_own_snapshot_needs_no_realignment(tmp_path, monkeypatch):
    root = caffe_solvers_root()
    first = build(root, monkeypatch, "resume_sgd_step/solver.prototxt")
    first.param.snapshot_prefix = str(tmp_path / "own")
    first.step(20)
    state = first.snapshot()
    second = build(root, monkeypatch, "resume_sgd_step/solver.prototxt")
    second.restore(state)
    trace = read_tsv(root / "resume_sgd_step" / "trace.tsv")
    run_trace(second, trace[20:], np.load(root / "resume_sgd_step" / "params_trace.npz"), first=20)
    check_params(second, np.load(root / "resume_sgd_step" / "final.npz"))
