"""Snapshots and restore: file names, Caffe's layouts, atomic writes, exact resume, Caffe-written states."""

import json
import logging
import os
import re
import shutil
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from netdef.errors import SolverError, WeightsFileError
from netdef.io import solverstate
from netdef.proto import netdef_pb2 as pb
from netdef.proto import to_text
from netdef.solvers import get_solver, snapshot
from tests.solver_helpers import (
    caffe_solvers_root,
    mlp_text,
    params_of,
    record_losses,
    solver_param,
    write_problem,
)


def make_param(tmp_path, text: str = "", **net_kw):
    listing = write_problem(tmp_path)
    return solver_param(
        'type: "SGD" base_lr: 0.1 momentum: 0.9 lr_policy: "step" gamma: 0.5 stepsize: 7 random_seed: 11 ' + text,
        net_text=mlp_text(listing, **net_kw),
    )


def snapshot_files(folder) -> list:
    return sorted(f for f in os.listdir(folder) if "_iter_" in f)


# --- names -----------------------------------------------------------------------------------------------
def test_binaryproto_names_and_schedule(tmp_path):
    (tmp_path / "a").mkdir()
    solver = get_solver(
        make_param(tmp_path, f'snapshot: 3 snapshot_prefix: "{tmp_path}/a/net" max_iter: 7 snapshot_after_train: true')
    )
    solver.solve()
    assert snapshot_files(tmp_path / "a") == sorted(
        f"net_iter_{n}{ext}" for n in (3, 6, 7) for ext in (".caffemodel", ".solverstate", ".solverstate.netdef.json")
    )


def test_no_extra_snapshot_when_max_iter_is_a_multiple(tmp_path):
    solver = get_solver(
        make_param(tmp_path, f'snapshot: 2 snapshot_prefix: "{tmp_path}/s" max_iter: 4 snapshot_after_train: true')
    )
    solver.solve()
    assert [f for f in snapshot_files(tmp_path) if f.endswith(".caffemodel")] == [
        "s_iter_2.caffemodel",
        "s_iter_4.caffemodel",
    ]


def test_hdf5_names(tmp_path):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/h" snapshot_format: HDF5'))
    solver.step(2)
    path = solver.snapshot()
    assert path == f"{tmp_path}/h_iter_2.solverstate.h5"
    assert snapshot_files(tmp_path) == [
        "h_iter_2.caffemodel.h5",
        "h_iter_2.solverstate.h5",
        "h_iter_2.solverstate.h5.netdef.json",
    ]


def test_prefix_defaults_to_the_solver_file_without_extension(tmp_path):
    param = make_param(tmp_path)
    param.ClearField("snapshot_prefix")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "my_solver.prototxt").write_text(to_text(param))
    solver = get_solver(str(tmp_path / "conf" / "my_solver.prototxt"))
    assert solver.param.snapshot_prefix == str(tmp_path / "conf" / "my_solver")
    solver.snapshot()
    assert snapshot_files(tmp_path / "conf")[0] == "my_solver_iter_0.caffemodel"


def test_prefix_that_is_a_folder_gets_the_solver_stem(tmp_path):
    param = make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/snaps"')
    (tmp_path / "snaps").mkdir()
    (tmp_path / "lenet_solver.prototxt").write_text(to_text(param))
    solver = get_solver(str(tmp_path / "lenet_solver.prototxt"))
    assert solver.param.snapshot_prefix == os.path.join(str(tmp_path / "snaps"), "lenet_solver")


def test_relative_prefix_resolves_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "work" / "out").mkdir(parents=True)
    param = make_param(tmp_path, 'snapshot_prefix: "out/rel" snapshot: 1')
    monkeypatch.chdir(tmp_path / "work")
    solver = get_solver(param)
    solver.step(1)
    assert snapshot_files(tmp_path / "work" / "out")[0] == "rel_iter_1.caffemodel"
    state = solverstate.read_solverstate(str(tmp_path / "work" / "out" / "rel_iter_1.solverstate"))
    assert state.learned_net == "out/rel_iter_1.caffemodel"  # as Caffe records it: the prefix as given


# --- layouts -----------------------------------------------------------------------------------------------
def test_binary_state_is_a_caffe_solverstate(tmp_path):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/b"'))
    solver.step(9)
    path = solver.snapshot()
    msg = pb.SolverState()
    msg.ParseFromString(open(path, "rb").read())
    assert (msg.iter, msg.current_step, msg.learned_net) == (9, 1, f"{tmp_path}/b_iter_9.caffemodel")
    shapes = [tuple(h.shape.dim) for h in msg.history]
    assert shapes == [(8, 6), (8,), (3, 8), (3,)]
    np.testing.assert_array_equal(np.array(msg.history[2].data).reshape(3, 8), solver.history[2])
    # our hand-written encoder produces exactly protobuf's bytes
    assert open(path, "rb").read() == msg.SerializeToString()


def test_encoder_matches_protobuf_for_edge_cases():
    state = solverstate.SolverStateData(
        -3, "x.caffemodel", [np.zeros((0, 2), np.float32), np.float32(2.5), np.arange(3, dtype=np.float64)], 0
    )
    msg = pb.SolverState(iter=-3, learned_net="x.caffemodel", current_step=0)
    msg.history.add().shape.dim.extend([0, 2])
    scalar = msg.history.add()
    scalar.shape.SetInParent()
    scalar.data.append(2.5)
    msg.history.add(double_data=[0.0, 1.0, 2.0]).shape.dim.append(3)
    assert solverstate.encode_solverstate(state) == msg.SerializeToString()


def test_hdf5_state_layout_and_round_trip(tmp_path):
    solver = get_solver(
        make_param(tmp_path, f'type: "Adam" snapshot_prefix: "{tmp_path}/h" snapshot_format: HDF5 momentum: 0.9')
    )
    solver.step(5)
    path = solver.snapshot()
    with h5py.File(path, "r") as f:
        assert f["iter"].shape == (1,) and f["iter"].dtype == np.int32 and f["iter"][0] == 5
        assert f["current_step"][0] == 0
        assert f["learned_net"][()] == f"{tmp_path}/h_iter_5.caffemodel.h5".encode()
        assert f["learned_net"].id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert sorted(f["history"].keys()) == ["0", "1", "2", "3", "4", "5", "6", "7"]  # m then v
        np.testing.assert_array_equal(f["history/5"][()], solver.history[5])
    with h5py.File(f"{tmp_path}/h_iter_5.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(f["data/ip2/0"][()], solver.net.params["ip2"][0].data)
    fresh = get_solver(make_param(tmp_path, 'type: "Adam" momentum: 0.9 random_seed: 99'))
    fresh.restore(path)
    assert fresh.iter == 5
    for a, b in zip(fresh.history, solver.history, strict=True):
        np.testing.assert_array_equal(a, b)
    for key, value in params_of(solver).items():
        np.testing.assert_array_equal(params_of(fresh)[key], value)


def test_snapshot_diff_writes_gradients(tmp_path):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/d" snapshot_diff: true'))
    solver.step(1)
    solver.snapshot()
    net = pb.NetParameter()
    net.ParseFromString(open(f"{tmp_path}/d_iter_1.caffemodel", "rb").read())
    ip1 = next(layer for layer in net.layer if layer.name == "ip1")
    assert len(ip1.blobs[0].diff) == 8 * 6


# --- atomic writes -----------------------------------------------------------------------------------------
def _contents(folder) -> dict:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


def snapshotted(tmp_path, iters: int):
    """A solver that wrote a snapshot at ``iters`` into snap/, then trained on and was set back to ``iters``:
    its next snapshot replaces the same files with other weights and history. Also the files' contents."""
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/snap/x"'))
    (tmp_path / "snap").mkdir()
    solver.step(iters)
    solver.snapshot()
    before = _contents(tmp_path / "snap")
    solver.step(1)
    solver.iter = iters
    return solver, before


def test_failure_while_writing_the_state_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    solver, before = snapshotted(tmp_path, 2)

    class HalfWrite:
        """A file whose write stops half way with a full disk."""

        def __init__(self, path, mode):
            self.f = open(path, mode)  # noqa: SIM115 - closed in __exit__

        def write(self, payload):
            self.f.write(payload[: len(payload) // 2])
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(solverstate, "open", HalfWrite, raising=False)
    with pytest.raises(OSError, match="No space left"):
        solver.snapshot()
    assert _contents(tmp_path / "snap") == before  # every old file intact, no temporary file left behind


def test_failure_while_writing_the_weights_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    from netdef.io import caffemodel

    solver, before = snapshotted(tmp_path, 1)

    def crash(net, path, write_diff=False, atomic=True):
        with open(path, "wb") as f:
            f.write(b"\x0a\x05trunc")
        raise KeyboardInterrupt  # e.g. the user pressed Ctrl+C twice

    monkeypatch.setattr(caffemodel, "save_weights", crash)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    assert _contents(tmp_path / "snap") == before


def test_read_only_snapshot_files_are_not_replaced(tmp_path, caplog):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/ro"'))
    solver.snapshot()
    os.chmod(tmp_path / "ro_iter_0.caffemodel", 0o444)
    before = _contents(tmp_path)
    solver.step(1)
    solver.iter = 0
    with caplog.at_level(logging.WARNING, logger="netdef"):
        assert solver.snapshot() is None
    assert _contents(tmp_path) == before
    assert "Snapshot at iteration 0 skipped" in caplog.text and "read-only" in caplog.text


# --- resume --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_resume_is_exact(tmp_path, fmt, caplog):
    # Shuffled data and dropout: the run depends on the data order and the random stream, both of which
    # the snapshot must carry for the resumed run to be the same run.
    text = f'snapshot: 20 snapshot_prefix: "{tmp_path}/run" snapshot_format: {fmt} max_iter: 40 display: 1'
    straight = get_solver(make_param(tmp_path, text, shuffle=True, dropout=True, batch=24))
    straight_losses = record_losses(straight)
    with caplog.at_level(logging.INFO, logger="netdef"):
        straight.step(40)
    straight_log = [r.getMessage() for r in caplog.records if "Train net output" in r.getMessage()]
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = f"{tmp_path}/run_iter_20{ext}"
    assert os.path.exists(state)

    caplog.clear()
    text = text.replace("/run", "/again") + " random_seed: 12345"
    resumed = get_solver(make_param(tmp_path, text, shuffle=True, dropout=True, batch=24))
    resumed_losses = record_losses(resumed)
    with caplog.at_level(logging.INFO, logger="netdef"):
        resumed.solve(resume_file=state)
    resumed_log = [r.getMessage() for r in caplog.records if "Train net output" in r.getMessage()]
    assert resumed.iter == 40
    assert resumed_losses == straight_losses[20:]
    assert len(straight_log) == 40 and resumed_log == straight_log[20:]
    for key, value in params_of(straight).items():
        assert np.array_equal(params_of(resumed)[key], value), key


def test_restore_finds_moved_snapshots(tmp_path, monkeypatch):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/orig/s"'))
    (tmp_path / "orig").mkdir()
    solver.step(3)
    solver.snapshot()
    shutil.move(str(tmp_path / "orig"), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    fresh = get_solver(make_param(tmp_path))
    fresh.restore(str(tmp_path / "moved" / "s_iter_3.solverstate"))
    for key, value in params_of(solver).items():
        np.testing.assert_array_equal(params_of(fresh)[key], value)


def test_sidecar_of_another_snapshot_is_ignored(tmp_path, caplog):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/s"'))
    solver.step(2)
    first = solver.snapshot()
    solver.step(1)
    second = solver.snapshot()
    shutil.copy(solverstate.sidecar_path(second), solverstate.sidecar_path(first))
    with caplog.at_level(logging.WARNING, logger="netdef"):
        get_solver(make_param(tmp_path)).restore(first)
    assert "does not belong to this solver state" in caplog.text
    extras = json.loads(open(solverstate.sidecar_path(second)).read())
    assert extras["iter"] == 3 and "data" in extras["train_net"]


def test_history_count_mismatch(tmp_path):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/s"'))
    path = solver.snapshot()
    adam = get_solver(make_param(tmp_path, 'type: "Adam" momentum: 0.9'))
    with pytest.raises(
        WeightsFileError, match="incorrect number of history blobs for a Adam solver.*Received: 4. Expected: 8"
    ):
        adam.restore(path)


def test_missing_and_corrupt_state_files(tmp_path):
    solver = get_solver(make_param(tmp_path))
    with pytest.raises(WeightsFileError, match="solver state file not found"):
        solver.restore(str(tmp_path / "nope.solverstate"))
    (tmp_path / "bad.solverstate").write_bytes(b"\xff\xff\xff")
    with pytest.raises(WeightsFileError, match="not a binary SolverState file"):
        solver.restore(str(tmp_path / "bad.solverstate"))


# --- states Caffe wrote -----------------------------------------------------------------------------------------
def test_read_caffe_solverstate():
    folder = caffe_solvers_root() / "resume_sgd_step"
    state = solverstate.read_solverstate(str(folder / "snap_iter_20.solverstate"))
    assert (state.iter, state.current_step, state.learned_net) == (20, 1, "resume_sgd_step/snap_iter_20.caffemodel")
    assert [h.shape for h in state.history] == [(16, 20), (16,), (4, 16), (4,)]
    assert all(h.dtype == np.float32 for h in state.history)
    for name in ("snap_iter_20", "snap_iter_40", "resumed_iter_40"):
        raw = (folder / f"{name}.solverstate").read_bytes()
        assert solverstate.encode_solverstate(solverstate.read_solverstate(str(folder / f"{name}.solverstate"))) == raw


def test_restore_caffe_solverstate_from_elsewhere(tmp_path, monkeypatch):
    from netdef.proto import load_solver

    root = caffe_solvers_root()
    param = load_solver(str(root / "resume_sgd_step" / "solver.prototxt"))
    param.snapshot = 0
    monkeypatch.chdir(root)  # the net reads data_list.txt relative to this folder
    solver = get_solver(param)
    monkeypatch.chdir(tmp_path)  # learned_net is relative to solvers/; found next to the state file instead
    solver.restore(str(root / "resume_sgd_step" / "snap_iter_20.solverstate"))
    assert (solver.iter, solver.current_step) == (20, 1)
    weights = pb.NetParameter()
    weights.ParseFromString((root / "resume_sgd_step" / "snap_iter_20.caffemodel").read_bytes())
    ip2 = next(layer for layer in weights.layer if layer.name == "ip2")
    np.testing.assert_array_equal(solver.net.params["ip2"][0].data.ravel(), np.array(ip2.blobs[0].data, np.float32))
    state = solverstate.read_solverstate(str(root / "resume_sgd_step" / "snap_iter_20.solverstate"))
    np.testing.assert_array_equal(solver.history[0], state.history[0])


# --- the snapshot module on its own ---------------------------------------------------------------------------
def test_snapshot_filename_and_prefix_check(tmp_path):
    assert snapshot.snapshot_filename("out/lenet", 7, ".caffemodel") == "out/lenet_iter_7.caffemodel"
    snapshot.check_prefix(pb.SolverParameter(snapshot=0))  # nothing to check without snapshots
    with pytest.raises(SolverError, match=r"^snapshot is set \(every 5 iterations\) but snapshot_prefix is not$"):
        snapshot.check_prefix(pb.SolverParameter(snapshot=5))
    snapshot.check_prefix(pb.SolverParameter(snapshot=5, snapshot_prefix=str(tmp_path / "ok")))
    assert os.listdir(tmp_path) == []  # the probe file is removed again
    with pytest.raises(SolverError, match="Cannot write to snapshot prefix '.*/no/such/x'"):
        snapshot.check_prefix(pb.SolverParameter(snapshot=5, snapshot_prefix=str(tmp_path / "no" / "such" / "x")))


def test_fingerprint_covers_iteration_step_and_history_values():
    history = [np.array([1.0, 2.0], np.float32), np.zeros((2, 2), np.float32)]
    digest = snapshot.fingerprint(4, 1, history)
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert snapshot.fingerprint(4, 1, [h.copy() for h in history]) == digest
    assert snapshot.fingerprint(4, 1, [h.astype(">f4") for h in history]) == digest  # byte order does not matter
    assert snapshot.fingerprint(5, 1, history) != digest
    assert snapshot.fingerprint(4, 2, history) != digest
    changed = [history[0], np.array([[0.0, 0.0], [0.0, 1e-7]], np.float32)]
    assert snapshot.fingerprint(4, 1, changed) != digest


def test_resolve_learned_net_lookup_order(tmp_path, monkeypatch):
    (tmp_path / "snaps").mkdir()
    (tmp_path / "work" / "snaps").mkdir(parents=True)
    state = str(tmp_path / "snaps" / "x_iter_3.solverstate")
    monkeypatch.chdir(tmp_path / "work")
    # 3. by file name alone, beside the state file
    (tmp_path / "snaps" / "x_iter_3.caffemodel").write_bytes(b"")
    assert snapshot.resolve_learned_net("old/place/x_iter_3.caffemodel", state) == str(
        tmp_path / "snaps" / "x_iter_3.caffemodel"
    )
    # 2. the recorded relative path, taken from the state file's folder
    (tmp_path / "snaps" / "snaps").mkdir()
    (tmp_path / "snaps" / "snaps" / "x_iter_3.caffemodel").write_bytes(b"")
    assert snapshot.resolve_learned_net("snaps/x_iter_3.caffemodel", state) == str(
        tmp_path / "snaps" / "snaps" / "x_iter_3.caffemodel"
    )
    # 1. the recorded path as it stands, relative to the working directory (as Caffe opens it)
    (tmp_path / "work" / "snaps" / "x_iter_3.caffemodel").write_bytes(b"")
    assert snapshot.resolve_learned_net("snaps/x_iter_3.caffemodel", state) == "snaps/x_iter_3.caffemodel"


def test_resolve_learned_net_names_every_place_looked_at(tmp_path):
    state = str(tmp_path / "s_iter_1.solverstate")
    with pytest.raises(WeightsFileError) as err:
        snapshot.resolve_learned_net("gone/s_iter_1.caffemodel", state)
    assert str(err.value) == (
        f"{state}: the weights file it names (learned_net) was not found: gone/s_iter_1.caffemodel "
        f"(looked for: gone/s_iter_1.caffemodel, {tmp_path}/gone/s_iter_1.caffemodel, {tmp_path}/s_iter_1.caffemodel)"
    )


def test_data_states_round_trip_through_layers_that_have_them():
    class Reader:
        def __init__(self, name, position):
            self.name, self.position = name, position

        def get_state(self):
            return {"position": self.position}

        def set_state(self, state):
            self.position = state["position"]

    class Plain:
        name = "ip"

    net = SimpleNamespace(layers=[Reader("train_data", 5), Plain(), Reader("extra", 2)])
    assert snapshot.data_states(net) == {"train_data": {"position": 5}, "extra": {"position": 2}}
    snapshot.apply_data_states(net, {"train_data": {"position": 9}, "ip": {"position": 1}})
    assert [getattr(layer, "position", None) for layer in net.layers] == [9, None, 2]


# --- the snapshot prefix is a name, and its probe never follows a link ------------------------------------------
def test_prefix_with_a_nul_byte_is_named(tmp_path):
    param = make_param(tmp_path, f'snapshot: 2 snapshot_prefix: "{tmp_path}/a\\0b"')
    assert "\0" in param.snapshot_prefix
    with pytest.raises(SolverError, match=r"snapshot_prefix contains a NUL character.*Received: '.*a\\x00b'"):
        get_solver(param)
    param.snapshot = 0  # also when only a final or requested snapshot would use it
    with pytest.raises(SolverError, match="NUL character"):
        get_solver(param)


def test_prefix_probe_never_truncates_what_a_link_points_to(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "s_iter_0.tempfile").symlink_to(victim)
    snapshot.check_prefix(pb.SolverParameter(snapshot=5, snapshot_prefix=str(tmp_path / "s")))
    assert victim.read_text() == "keep me"
    assert (tmp_path / "s_iter_0.tempfile").is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["precious.txt", "s_iter_0.tempfile"]


# --- the resume sidecar is checked whole --------------------------------------------------------------------------
@pytest.fixture
def saved_run(tmp_path):
    """(make a fresh solver, state file) for a run snapshotted at iteration 3 with shuffled data and a test net."""
    text = f'snapshot_prefix: "{tmp_path}/s" test_iter: 1 test_interval: 100'
    solver = get_solver(make_param(tmp_path, text, shuffle=True))
    solver.step(3)
    state = solver.snapshot()
    return (lambda: get_solver(make_param(tmp_path, text, shuffle=True))), state


def _edit_sidecar(state: str, edit) -> str:
    path = solverstate.sidecar_path(state)
    with open(path) as f:
        data = json.load(f)
    data = edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _perm(data):
    return data["train_net"]["data"]["perm"]


SIDECAR_DEFECTS = {
    "not an object": (lambda d: [d], r'"\(top level\)": the file holds a JSON list'),
    "rng not a state": (lambda d: {**d, "rng": {"numpy": "x", "device_epoch": 0}}, '"rng.numpy": a JSON str'),
    "rng state of the wrong type": (
        lambda d: {**d, "rng": {"numpy": {"bit_generator": "PCG64", "state": "x"}, "device_epoch": 0}},
        '"rng.numpy": not a state of NumPy\'s PCG64',
    ),
    "rng epoch": (lambda d: {**d, "rng": {**d["rng"], "device_epoch": "one"}}, '"rng.device_epoch": not an integer'),
    "empty perm": (lambda d: _set(d, "perm", []), '"train_net.data.perm": empty'),
    "perm out of range": (lambda d: _set(d, "perm", [99] * len(_perm(d))), "not a permutation"),
    "perm of strings": (lambda d: _set(d, "perm", ["a"]), r'"train_net.data.perm\[0\]": not an integer'),
    "short perm": (
        lambda d: _set(_set(d, "row", 0), "perm", [0, 1]),
        "has 2 entries; the file it orders has 64 rows|refused by the layer .*perm",
    ),
    "row past the end": (
        lambda d: _set(d, "row", 65),
        '"train_net.data.row": out of range. Received: 65. Valid: 0..64',
    ),
    "negative row": (lambda d: _set(d, "row", -1), '"train_net.data.row": out of range'),
    "row as text": (lambda d: _set(d, "row", "3"), '"train_net.data.row": not an integer'),
    "bool position": (lambda d: _set(d, "file_pos", True), "not an integer"),
    "file order": (lambda d: _set(d, "file_order", [0, 1]), '"train_net.data.file_order": has 2 entries'),
    "loaded file": (lambda d: _set(d, "loaded", 1), '"train_net.data.loaded": out of range|is not the file'),
    "unknown layer": (
        lambda d: {**d, "train_net": {**d["train_net"], "ghost": {}}},
        "names data layer\\(s\\) \\['ghost'\\] the net lacks",
    ),
    "missing layer": (lambda d: {**d, "train_net": {}}, "lacks data layer\\(s\\) \\['data'\\]"),
    "layer not an object": (lambda d: {**d, "train_net": {"data": 3}}, '"train_net.data": a JSON int'),
    "missing key": (lambda d: _drop(d, "row"), '"train_net.data": has other keys'),
    "test nets count": (lambda d: {**d, "test_nets": []}, '"test_nets": not one entry per test net'),
    "test net perm": (
        lambda d: {**d, "test_nets": [{"data": {**d["test_nets"][0]["data"], "perm": []}}]},
        '"test_nets\\[0\\].data.perm": empty',
    ),
    "other kind": (lambda d: {**d, "kind": "something"}, '"kind": not a netdef resume sidecar'),
    "newer version": (lambda d: {**d, "version": 7}, '"version": a sidecar version'),
    "iteration": (lambda d: {**d, "current_step": "0"}, '"current_step": not an integer'),
}


def _set(data, key, value):
    data["train_net"]["data"][key] = value
    return data


def _drop(data, key):
    del data["train_net"]["data"][key]
    return data


@pytest.mark.parametrize("defect", list(SIDECAR_DEFECTS))
def test_a_sidecar_that_does_not_fit_is_refused_by_name(saved_run, defect):
    fresh, state = saved_run
    edit, expected = SIDECAR_DEFECTS[defect]
    path = _edit_sidecar(state, edit)
    solver = fresh()
    with pytest.raises(WeightsFileError) as err:
        solver.restore(state)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert re.search(expected, message), message
    if "key" in message:
        assert "delete it to resume without the exact data positions" in message


def test_a_sidecar_that_fits_restores_the_read_position(saved_run):
    fresh, state = saved_run
    expected = json.loads(open(solverstate.sidecar_path(state)).read())["train_net"]
    solver = fresh()
    solver.restore(state)
    assert snapshot.data_states(solver.net) == expected


def test_an_unreadable_sidecar_is_named(saved_run):
    fresh, state = saved_run
    with open(solverstate.sidecar_path(state), "wb") as f:
        f.write(b"\xff\xfe{")
    with pytest.raises(WeightsFileError, match="unreadable netdef resume sidecar"):
        fresh().restore(state)


# --- the order files appear in, and what an interrupted writer leaves --------------------------------------------
def test_the_state_file_appears_last_through_a_journal(tmp_path, monkeypatch):
    solver = get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/s"'))
    solver.step(2)
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    solver.snapshot()
    targets = [dst for _, dst in renamed]
    assert targets == [".s_iter_2.solverstate.commit", "s_iter_2.solverstate.netdef.json", "s_iter_2.caffemodel",
                       "s_iter_2.solverstate"]  # fmt: skip
    assert all(re.fullmatch(r"\.s_iter_2\..*\.[0-9a-f]{12}\.tmp", src) for src, _ in renamed)
    assert snapshot_files(tmp_path) == [
        "s_iter_2.caffemodel",
        "s_iter_2.solverstate",
        "s_iter_2.solverstate.netdef.json",
    ]


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_an_interrupted_commit_is_finished_by_the_next_run(tmp_path, monkeypatch, fmt, caplog):
    text = f'snapshot_prefix: "{tmp_path}/s" snapshot_format: {fmt}'
    solver = get_solver(make_param(tmp_path, text, shuffle=True))
    solver.step(2)
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # journal and sidecar in place, then the writer dies
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    monkeypatch.setattr(os, "replace", real_replace)
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    assert not (tmp_path / f"s_iter_2{ext}").exists()  # no state file: nothing looks resumable yet
    assert (tmp_path / f".s_iter_2{ext}.commit").exists()
    with caplog.at_level(logging.WARNING, logger="netdef"):
        fresh = get_solver(make_param(tmp_path, text, shuffle=True))
    assert "Finished the snapshot an interrupted run left half written" in caplog.text
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
    fresh.restore(str(tmp_path / f"s_iter_2{ext}"))
    assert fresh.iter == 2
    for key, value in params_of(solver).items():
        assert np.array_equal(params_of(fresh)[key], value), key
    assert snapshot.data_states(fresh.net) == snapshot.data_states(solver.net)


def test_temporary_files_of_an_interrupted_writer_are_removed_at_start(tmp_path, caplog):
    left = [
        ".s_iter_4.caffemodel.0123456789ab.tmp",
        ".s_iter_4.solverstate.h5.abcdefabcdef.tmp.h5",
        ".s_iter_4.solverstate.netdef.json.00000000ffff.tmp",
        ".s_iter_0.tempfile.0123456789ab.tmp",
    ]
    kept = [
        ".other_iter_4.caffemodel.0123456789ab.tmp",  # another prefix
        "s_iter_4.caffemodel.tmp",  # not a name netdef writes
        ".s_iter_4.caffemodel.0123456789ab.tmp.bak",
        "notes.tmp",
    ]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"x" * 1000)
    with caplog.at_level(logging.WARNING, logger="netdef"):
        get_solver(make_param(tmp_path, f'snapshot: 5 snapshot_prefix: "{tmp_path}/s"'))
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["data.h5", "list.txt"])
    assert "Removed 4 temporary file(s)" in caplog.text


def test_a_journal_naming_files_elsewhere_is_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    (tmp_path / ".s_iter_2.solverstate.commit").write_text(
        json.dumps({"renames": [["../outside.txt", "s_iter_2.solverstate"], [".s_iter_2.x.0123456789ab.tmp", "../x"]]})
    )
    get_solver(make_param(tmp_path, f'snapshot_prefix: "{tmp_path}/s"'))
    assert outside.read_text() == "mine"
    assert not (tmp_path / ".s_iter_2.solverstate.commit").exists() and not (tmp_path / "s_iter_2.solverstate").exists()
