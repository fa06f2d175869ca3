"""Running the Caffe reference cases in ``shared/parity`` through netdef.

The folder is looked up in ``$NETDEF_PARITY_DIR``, then ``../shared/parity``
beside the repository. Tests skip cleanly when it is absent.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy

import netdef

from ..backend import to_numpy

RTOL, ATOL = 1e-4, 1e-5


def parity_root() -> Path | None:
    """The reference folder, or None when it is not available."""
    env = os.environ.get("NETDEF_PARITY_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "parity")
    for c in candidates:
        if (c / "layers" / "INDEX.tsv").exists():
            return c
    return None


def read_tsv(path: Path) -> list[dict]:
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        return [dict(zip(head, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def layer_cases(types: set[str] | None = None) -> list[dict]:
    """INDEX.tsv rows of ``layers/`` (optionally only the given Caffe types)."""
    root = parity_root()
    if root is None:
        return []
    rows = read_tsv(root / "layers" / "INDEX.tsv")
    return [r for r in rows if types is None or r["type"] in types]


def compare(got, want, rtol: float = RTOL, atol: float = ATOL) -> float | None:
    """Largest error scaled by max(1, max|want|); None when within tolerance... see ``within``."""
    got = numpy.asarray(got, dtype=numpy.float64)
    want = numpy.asarray(want, dtype=numpy.float64)
    if got.size == want.size:
        got = got.reshape(want.shape)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != reference {want.shape}")
    if want.size == 0:
        return 0.0
    scale = max(1.0, float(numpy.max(numpy.abs(want))))
    err = numpy.abs(got - want)
    if not numpy.all(err <= atol * scale + rtol * numpy.abs(want)):
        raise AssertionError(f"max scaled error {float(numpy.max(err)) / scale:.3g} exceeds rtol {rtol}/atol {atol}")
    return float(numpy.max(err) / scale)


@contextlib.contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _indexed_count(d, prefix: str) -> int:
    """How many ``<prefix>_<i>`` arrays the case holds."""
    return sum(1 for k in d if re.fullmatch(rf"{prefix}_\d+", k))


def _load_inputs(net, d) -> list:
    """Put the case's bottoms and parameter values into ``net``; return the tested layer's parameter blobs."""
    for i in range(_indexed_count(d, "bottom")):
        net.blobs[f"b{i}"].data[...] = d[f"bottom_{i}"]
        if f"b{i}" in net.params:
            net.params[f"b{i}"][0].data[...] = d[f"bottom_{i}"]
    params = net.params.get("L", [])
    for j in range(_indexed_count(d, "param")):
        params[j].data[...] = d[f"param_{j}"]
    return params


def _check_forward(net, params: list, d, check) -> None:
    for key in d:
        if key.startswith("param_post_"):
            check(key, params[int(key.rsplit("_", 1)[1])].data)
    k = 0
    while f"top_{k}" in d:
        check(f"top_{k}", net.blobs[f"t{k}"].data)
        k += 1


def _check_backward(net, params: list, d, check) -> None:
    k = 0
    while f"top_diff_{k}" in d:
        net.blobs[f"t{k}"].diff[...] = d[f"top_diff_{k}"]
        k += 1
    net.backward()
    for key in d:
        if key.startswith("bottom_diff_"):
            check(key, net.blobs[f"b{key.rsplit('_', 1)[1]}"].diff)
        elif key.startswith("param_diff_"):
            check(key, params[int(key.rsplit("_", 1)[1])].diff)


def run_layer_case(case: str, phase_name: str = "TRAIN") -> dict[str, float]:
    """Run one ``layers/`` case; return ``{key: scaled error}``; raise AssertionError on a mismatch."""
    root = parity_root() / "layers"
    d = numpy.load(root / f"{case}.npz")
    errors: dict[str, float] = {}

    def check(key, got):
        try:
            errors[key] = compare(to_numpy(got), d[key])
        except AssertionError as err:
            raise AssertionError(f"{case}: {key}: {err}") from None

    with _chdir(root):
        phase = netdef.TRAIN if phase_name.upper() == "TRAIN" else netdef.TEST
        net = netdef.Net(str(root / f"{case}.prototxt"), phase)
        params = _load_inputs(net, d)
        net.forward()
        _check_forward(net, params, d, check)
        if any(key.startswith("top_diff_") for key in d):
            _check_backward(net, params, d, check)
    return errors


def check_parity_covers(types: set[str]) -> None:
    """Every type in ``types`` has at least one reference case (skips without the reference folder)."""
    import pytest  # a test-only dependency: netdef.testing stays importable without it

    if parity_root() is None:
        pytest.skip("shared/parity not available")
    missing = set(types) - {c["type"] for c in layer_cases(types)}
    assert not missing, f"no parity case for {sorted(missing)}"


def parametrize_layer_cases(types: set[str]):
    """``pytest.mark.parametrize("case", ...)`` over the reference cases of ``types``.

    Without the reference folder there is one placeholder that ``check_layer_case`` skips.
    """
    import pytest  # a test-only dependency: netdef.testing stays importable without it

    cases = layer_cases(types)
    return pytest.mark.parametrize("case", cases or [None], ids=[c["case"] for c in cases] or ["no-parity-data"])


def check_layer_case(case: dict | None) -> dict[str, float]:
    """Run one case given by ``parametrize_layer_cases``: skip without data, fail on any mismatch."""
    import pytest  # a test-only dependency: netdef.testing stays importable without it

    if case is None or parity_root() is None:
        pytest.skip("shared/parity not available")
    errors = run_layer_case(case["case"], case["phase"])
    assert errors, f"{case['case']}: nothing was compared"
    return errors
