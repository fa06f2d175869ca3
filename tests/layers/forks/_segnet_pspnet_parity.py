"""Running the SegNet / PSPNet fork reference cases (``shared/parity/forks/<fork>``) through netdef.

``netdef.testing.parity`` reads ``shared/parity/layers``; these folders differ in that the
net-level inputs are ``b0, b1, ...`` and the ``up_chain_*`` cases also record the bottoms
of layer ``L`` (``L_bottom_i`` = blobs ``p0, p1``, ``L_bottom_diff_0``).
Everything here skips cleanly when the folder is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy
import pytest

import netdef
from netdef.backend import to_numpy
from netdef.testing.parity import compare, parity_root, read_tsv


def fork_dir(fork: str) -> Path | None:
    root = parity_root()
    if root is None or not (root / "forks" / fork / "INDEX.tsv").exists():
        return None
    return root / "forks" / fork


def cases(fork: str, types: set[str], refusals: bool = False) -> list[dict]:
    """INDEX rows of ``types``: the ones with reference numbers, or (``refusals``) the ones the fork refuses."""
    folder = fork_dir(fork)
    if folder is None:
        return []
    rows = [r for r in read_tsv(folder / "INDEX.tsv") if r["type"] in types]
    return [r for r in rows if (folder / f"{r['case']}.error.txt").exists() == refusals]


def parametrize(fork: str, types: set[str], refusals: bool = False):
    picked = cases(fork, types, refusals)
    return pytest.mark.parametrize("case", picked or [None], ids=[r["case"] for r in picked] or ["no-parity-data"])


def case_net(fork: str, case: dict | None):
    """(net, folder) for one case; skips without the reference folder."""
    folder = fork_dir(fork)
    if case is None or folder is None:
        pytest.skip(f"shared/parity/forks/{fork} not available")
    phase = netdef.TRAIN if case["phase"].upper() == "TRAIN" else netdef.TEST
    return netdef.Net(str(folder / f"{case['case']}.prototxt"), phase), folder


#: where each recorded key lives in the net: key pattern -> (kind, blob name prefix)
_FORWARD_KEYS = ((r"param_post_(\d+)", "param", ""), (r"top_(\d+)", "data", "t"), (r"L_bottom_(\d+)", "data", "p"))
_BACKWARD_KEYS = (
    (r"bottom_diff_(\d+)", "diff", "b"),
    (r"param_diff_(\d+)", "param_diff", ""),
    (r"L_bottom_diff_(\d+)", "diff", "p"),
)


def _recorded_array(net, kind: str, prefix: str, i: int):
    if kind.startswith("param"):
        blob = net.params["L"][i]
        return blob.diff if kind == "param_diff" else blob.data
    blob = net.blobs[f"{prefix}{i}"]
    return blob.diff if kind == "diff" else blob.data


def _compare_keys(net, d, case: str, rules, errors: dict[str, float]) -> None:
    for key in d:
        for pattern, kind, prefix in rules:
            match = re.fullmatch(pattern, key)
            if not match:
                continue
            got = _recorded_array(net, kind, prefix, int(match.group(1)))
            try:
                errors[key] = compare(to_numpy(got), d[key])
            except AssertionError as err:
                raise AssertionError(f"{case}: {key}: {err}") from None


def run_case(fork: str, case: dict | None) -> dict[str, float]:
    """Run one reference case; return ``{key: scaled error}``; AssertionError on any mismatch."""
    net, folder = case_net(fork, case)
    d = numpy.load(folder / f"{case['case']}.npz")
    params = net.params.get("L", [])
    for key in d:
        if re.fullmatch(r"bottom_\d+", key):
            net.blobs[f"b{key.rsplit('_', 1)[1]}"].data[...] = d[key]
        elif re.fullmatch(r"param_\d+", key):
            params[int(key.rsplit("_", 1)[1])].data[...] = d[key]
    net.forward()
    errors: dict[str, float] = {}
    _compare_keys(net, d, case["case"], _FORWARD_KEYS, errors)
    top_diffs = [key for key in d if key.startswith("top_diff_")]
    if top_diffs:
        for key in top_diffs:
            net.blobs[f"t{key.rsplit('_', 1)[1]}"].diff[...] = d[key]
        net.backward()
        _compare_keys(net, d, case["case"], _BACKWARD_KEYS, errors)
    assert errors, f"{case['case']}: nothing was compared"
    return errors


def realworld_nets() -> Path | None:
    """``shared/realworld/nets`` beside the parity folder or the repository, or None."""
    root = parity_root()
    candidates = [root.parent / "realworld"] if root is not None else []
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / "realworld")
    for c in candidates:
        if (c / "nets").is_dir():
            return c / "nets"
    return None


def random_weights(net, seed: int = 0) -> None:
    """Small random parameters (positive variances for the normalisation layers) and random inputs."""
    rng = numpy.random.default_rng(seed)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.data[...] = rng.normal(0, 0.05, blob.shape)
        if layer.type_name == "BatchNorm":
            layer.blobs[1].data[...] = rng.uniform(0.5, 1.5, layer.blobs[1].shape)
            layer.blobs[2].data[...] = 1.0
        if layer.type_name == "BN":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            if len(layer.blobs) == 4:
                layer.blobs[3].data[...] = rng.uniform(0.5, 1.5, layer.blobs[3].shape)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.normal(0, 1, net.blobs[name].shape)


def assert_finite_tops(net, types: set[str]) -> int:
    """Every top of every layer of ``types`` is finite; returns how many layers were checked."""
    checked = 0
    for layer, rec in zip(net.layers, net.records):
        if layer.type_name in types:
            for blob in rec.top:
                assert numpy.isfinite(to_numpy(blob.data)).all(), f"{layer.name}: non-finite top"
            checked += 1
    return checked
