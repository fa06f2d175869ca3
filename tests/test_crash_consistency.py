"""A training process killed (SIGKILL) at every step of writing a snapshot resumes bit-exactly from what is left.

A child process trains with its snapshot steps counted (writing the weights, the state,
the sidecar; renaming the journal and each file into place; removing the journal) and
kills itself before step k, or half way through writing a file. The test then checks
what is on disk: no state file without its weights and sidecar; a fresh solver on the
same prefix finishes a journaled snapshot and removes every temporary file; and
training resumed from the newest state file left ends with exactly the parameters of a
run that was never interrupted. A few kill points run by default, all of them (both
snapshot formats) with ``-m slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdef.io import solverstate
from netdef.solvers import get_solver
from tests.solver_helpers import mlp_text, write_problem

#: the counted steps of one snapshot, in the order the writer takes them
STEPS = (
    "write weights",
    "write state",
    "write sidecar",
    "rename journal into place",
    "rename sidecar",
    "rename weights",
    "rename state",
    "remove journal",
)
WRITES = 3  # the first three steps write a file (a "torn" kill truncates it first)
TARGET = 4  # the snapshot (iteration) the kill happens in; snapshots every 2 iterations, 6 in all

CHILD = r"""
import json, os, signal, sys

import numpy as np

from netdef.io import caffemodel, solverstate
from netdef.solvers import get_solver, snapshot

args = json.loads(sys.argv[1])
k, kind, target = args["k"], args["kind"], args["target"]
seen = {"active": False, "steps": 0}


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def counted(function, written=None):
    def step(*a, **kw):
        if seen["active"]:
            seen["steps"] += 1
            if seen["steps"] == k and kind == "before":
                die()
        out = function(*a, **kw)
        if seen["active"] and seen["steps"] == k and kind == "torn":
            path = written(a, kw)
            os.truncate(path, os.path.getsize(path) // 2)
            die()
        return out
    return step


caffemodel.save_weights = counted(caffemodel.save_weights, lambda a, kw: a[1])
solverstate.write_solverstate_any = counted(solverstate.write_solverstate_any, lambda a, kw: a[0])
solverstate.write_sidecar = counted(solverstate.write_sidecar, lambda a, kw: kw["path"])
os.replace = counted(os.replace)
os.remove = counted(os.remove)
real_save = snapshot.save


def save(solver):
    seen["active"] = solver.iter == target
    try:
        out = real_save(solver)
    finally:
        seen["active"] = False
    if solver.iter == target:
        if kind == "after":
            die()
        with open(args["count_file"], "w") as f:
            f.write(str(seen["steps"]))
    return out


snapshot.save = save
solver = get_solver(args["solver"])
solver.solve()
np.savez(args["out"], **{f"{n}_{i}": b.data for n, blobs in solver.net.params.items() for i, b in enumerate(blobs)})
"""


def _write_config(folder: Path, fmt: str) -> Path:
    """The run's files; its paths are relative to ``folder`` so that every run writes the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    write_problem(folder)
    (folder / "net.prototxt").write_text(mlp_text("list.txt", batch=24, shuffle=True, dropout=True))
    (folder / "snap").mkdir()
    solver = folder / "solver.prototxt"
    solver.write_text(
        'net: "net.prototxt" type: "SGD" base_lr: 0.1 momentum: 0.9 lr_policy: "step" gamma: 0.5 stepsize: 3 '
        f'max_iter: 6 display: 0 snapshot: 2 snapshot_prefix: "snap/s" snapshot_format: {fmt} random_seed: 7 '
        "solver_mode: CPU"
    )
    return solver


def _run_child(solver: Path, k: int, kind: str) -> subprocess.CompletedProcess:
    args = {
        "solver": str(solver),
        "k": k,
        "kind": kind,
        "target": TARGET,
        "out": str(solver.parent / "final.npz"),
        "count_file": str(solver.parent / "steps.txt"),
    }
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)], cwd=solver.parent, env=env, capture_output=True, timeout=120
    )


def _params(solver) -> dict:
    return {f"{n}_{i}": np.array(b.data) for n, blobs in solver.net.params.items() for i, b in enumerate(blobs)}


def _complete_states(folder: Path, ext: str) -> dict[int, Path]:
    """Iteration -> state file, for each state file whose weights and sidecar are there too."""
    out = {}
    for state in folder.glob(f"s_iter_*{ext}"):
        it = int(state.name[len("s_iter_") : -len(ext)])
        model = folder / f"s_iter_{it}{ext.replace('solverstate', 'caffemodel')}"
        sidecar = Path(solverstate.sidecar_path(str(state)))
        assert model.exists() and sidecar.exists(), f"{state.name} is there without its weights or sidecar"
        out[it] = state
    return out


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory):
    """An uninterrupted run in a child (with the steps counted): its final parameters and folder."""
    folder = tmp_path_factory.mktemp(f"reference_{request.param}")
    solver = _write_config(folder, request.param)
    run = _run_child(solver, k=0, kind="count")
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert int((folder / "steps.txt").read_text()) == len(STEPS), "the snapshot sequence changed: update STEPS"
    final = np.load(folder / "final.npz")
    return request.param, {k: final[k] for k in final.files}, folder / "snap"


def _assert_same_snapshot(snaps: Path, reference_snaps: Path, fmt: str, ext: str) -> None:
    sidecar = f"s_iter_{TARGET}{ext}.netdef.json"
    assert (snaps / sidecar).read_bytes() == (reference_snaps / sidecar).read_bytes()
    if fmt == "BINARYPROTO":
        for name in (f"s_iter_{TARGET}.caffemodel", f"s_iter_{TARGET}.solverstate"):
            assert (snaps / name).read_bytes() == (reference_snaps / name).read_bytes(), name
        return
    # HDF5 files are compared by contents (the library records times in them)
    got, want = (
        solverstate.read_solverstate(str(folder / f"s_iter_{TARGET}{ext}")) for folder in (snaps, reference_snaps)
    )
    assert (got.iter, got.current_step, got.learned_net) == (want.iter, want.current_step, want.learned_net)
    assert all(np.array_equal(a, b) for a, b in zip(got.history, want.history, strict=True))


def _trial(reference, tmp_path, monkeypatch, k: int, kind: str) -> dict:
    fmt, expected, reference_snaps = reference
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    solver_file = _write_config(tmp_path, fmt)
    monkeypatch.chdir(tmp_path)
    snaps = tmp_path / "snap"
    run = _run_child(solver_file, k, kind)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-3000:]

    states = _complete_states(snaps, ext)  # no state file without its weights and sidecar, whatever was killed
    leftovers = sorted(f.name for f in snaps.iterdir() if f.name.startswith("."))
    journaled = kind == "after" or (kind == "before" and k > STEPS.index("rename journal into place") + 1)
    resume_from = states[max(states)] if states else None

    solver = get_solver(str(solver_file))  # finishes a journaled snapshot, removes temporary files
    assert not [f.name for f in snaps.iterdir() if f.name.startswith(".")]
    after_recovery = _complete_states(snaps, ext)
    assert (TARGET in after_recovery) == journaled
    if journaled:  # the finished snapshot is the one the uninterrupted run wrote
        _assert_same_snapshot(snaps, reference_snaps, fmt, ext)

    solver.solve(str(resume_from) if resume_from else None)
    got = _params(solver)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(got[key], value), f"{key} differs after resuming from {resume_from}"
    assert not [f.name for f in snaps.iterdir() if f.name.startswith(".")]
    return {"resumed_from": resume_from.name if resume_from else None, "leftovers": leftovers}


KILL_POINTS = (
    [(k, "before") for k in range(1, len(STEPS) + 1)] + [(k, "torn") for k in range(1, WRITES + 1)] + [(0, "after")]
)


def _name(point) -> str:
    k, kind = point
    return "after_the_last_step" if kind == "after" else f"{kind} {STEPS[k - 1]}".replace(" ", "_")


@pytest.mark.parametrize("reference", ["BINARYPROTO"], indirect=True)
@pytest.mark.parametrize("point", [(WRITES - 1, "torn"), (5, "before"), (7, "before")], ids=_name)
def test_killed_during_a_snapshot_resumes_exactly(reference, tmp_path, monkeypatch, point):
    result = _trial(reference, tmp_path, monkeypatch, *point)
    if point == (7, "before"):  # journal, sidecar and weights renamed: the next run finishes the state file
        assert result["resumed_from"] == "s_iter_2.solverstate"
        assert any(name.endswith(".commit") for name in result["leftovers"])


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["BINARYPROTO", "HDF5"], indirect=True)
@pytest.mark.parametrize("point", KILL_POINTS, ids=_name)
def test_killed_at_every_step_of_a_snapshot_resumes_exactly(reference, tmp_path, monkeypatch, point):
    result = _trial(reference, tmp_path, monkeypatch, *point)
    print(f"{reference[0]} {_name(point)}: resumed from {result['resumed_from']}, left {result['leftovers']}")
