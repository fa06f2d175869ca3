"""Running the reference data in ``shared/`` through netdef.

``shared/parity/layers`` holds single-layer cases from BVLC Caffe, ``shared/parity/forks/<fork>``
the same kind of cases from Caffe's forks (plus the cases a fork refuses: ``<case>.error.txt``
instead of an ``.npz``), and ``shared/realworld/nets`` published net files. The parity folder is
looked up in ``$NETDEF_PARITY_DIR``, then ``../shared/parity`` beside the repository; tests that
use any of them skip cleanly when it is absent.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy

import netdef

from ..backend import to_numpy
from ..errors import NetdefError

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
    """Largest error scaled by max(1, max|want|); AssertionError when any element is out of tolerance.

    An element passes when ``|got - want| <= atol * max(1, max|want|) + rtol * |want|`` (the rule of
    ``shared/parity/check.py``).
    """
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
        if f"b{i}" in net.params:  # produced by a Parameter layer: its blob is the source of truth
            net.params[f"b{i}"][0].data[...] = d[f"bottom_{i}"]
    params = net.params.get("L", [])
    for j in range(_indexed_count(d, "param")):
        params[j].data[...] = d[f"param_{j}"]
    return params


#: where each recorded key lives: key pattern -> (array kind, blob name prefix). ``L_bottom_*`` are the
#: bottoms ``p0, p1, ...`` of ``L`` in the fork cases that chain a producer layer in front of it.
_FORWARD_KEYS = ((r"param_post_(\d+)", "param", ""), (r"top_(\d+)", "data", "t"), (r"L_bottom_(\d+)", "data", "p"))
_BACKWARD_KEYS = (
    (r"bottom_diff_(\d+)", "diff", "b"),
    (r"param_diff_(\d+)", "param_diff", ""),
    (r"L_bottom_diff_(\d+)", "diff", "p"),
)


def _recorded_array(net, params: list, kind: str, prefix: str, i: int):
    if kind.startswith("param"):
        return params[i].diff if kind == "param_diff" else params[i].data
    blob = net.blobs[f"{prefix}{i}"]
    return blob.diff if kind == "diff" else blob.data


def _compare_keys(net, params: list, d, rules, check) -> None:
    for key in d:
        for pattern, kind, prefix in rules:
            match = re.fullmatch(pattern, key)
            if match:
                check(key, _recorded_array(net, params, kind, prefix, int(match.group(1))))


def run_case(
    folder: Path, case: str, phase_name: str = "TRAIN", rtol: float = RTOL, atol: float = ATOL
) -> dict[str, float]:
    """Run the case ``<folder>/<case>.{prototxt,npz}``; return ``{key: scaled error}``.

    The net's inputs are ``b0, b1, ...``, the layer under test is ``L`` with tops ``t0, t1, ...``.
    Forward is compared on ``top_k``, ``param_post_j`` and ``L_bottom_i``; when the case records
    ``top_diff_k``, backward is run and compared on ``bottom_diff_i``, ``param_diff_j`` and
    ``L_bottom_diff_i``. Raises AssertionError naming the case and key on a mismatch.
    """
    d = numpy.load(folder / f"{case}.npz")
    errors: dict[str, float] = {}

    def check(key, got):
        try:
            errors[key] = compare(to_numpy(got), d[key], rtol, atol)
        except AssertionError as err:
            raise AssertionError(f"{case}: {key}: {err}") from None

    with _chdir(folder):  # a few cases name files (an InfogainLoss matrix) relative to their folder
        net = netdef.Net(str(folder / f"{case}.prototxt"), _phase(phase_name))
        params = _load_inputs(net, d)
        net.forward()
        _compare_keys(net, params, d, _FORWARD_KEYS, check)
        top_diffs = [key for key in d if re.fullmatch(r"top_diff_\d+", key)]
        if top_diffs:
            for key in top_diffs:
                net.blobs[f"t{key.rsplit('_', 1)[1]}"].diff[...] = d[key]
            net.backward()
            _compare_keys(net, params, d, _BACKWARD_KEYS, check)
    return errors


def _phase(name: str):
    return netdef.TRAIN if name.upper() == "TRAIN" else netdef.TEST


def run_layer_case(case: str, phase_name: str = "TRAIN") -> dict[str, float]:
    """Run one ``layers/`` case; return ``{key: scaled error}``; raise AssertionError on a mismatch."""
    return run_case(parity_root() / "layers", case, phase_name)


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


# --- fork folders -------------------------------------------------------------------------------
#: the sorts of fork case: reference numbers, a refusal (a CHECK failed in the fork), or a stage the
#: fork's CPU code lacks ("Not Implemented Yet": netdef follows the fork's CUDA kernels there)
CASE_KINDS = ("data", "refused", "cuda")


def fork_dir(fork: str) -> Path | None:
    """``shared/parity/forks/<fork>``, or None when it is not available."""
    root = parity_root()
    if root is None or not (root / "forks" / fork / "INDEX.tsv").exists():
        return None
    return root / "forks" / fork


def case_kind(folder: Path, case: str) -> str | None:
    """One of ``CASE_KINDS`` for a case of a fork folder; None for an INDEX row with no files (a note)."""
    if (folder / f"{case}.npz").exists():
        return "data"
    error = folder / f"{case}.error.txt"
    if not error.exists():
        return None
    return "cuda" if "Not Implemented" in error.read_text() else "refused"


def fork_cases(fork: str, types: set[str], kind: str = "data") -> list[dict]:
    """INDEX rows of a fork folder for ``types`` and one ``kind``, each with its ``fork`` added."""
    if kind not in CASE_KINDS:
        raise ValueError(f"kind must be one of {CASE_KINDS}. Received: {kind!r}")
    folder = fork_dir(fork)
    if folder is None:
        return []
    rows = [r for r in read_tsv(folder / "INDEX.tsv") if r["type"] in types]
    return [dict(r, fork=fork) for r in rows if case_kind(folder, r["case"]) == kind]


def parametrize_fork_cases(forks: str | list[str], types: set[str], kind: str = "data"):
    """``pytest.mark.parametrize("case", ...)`` over fork cases; ids ``<case>`` (``<fork>/<case>`` for several forks).

    Without a fork's folder there is one placeholder ``None`` that the ``check_fork_*`` helpers skip.
    """
    import pytest  # a test-only dependency: netdef.testing stays importable without it

    several = not isinstance(forks, str)
    params = []
    for fork in [forks] if isinstance(forks, str) else forks:
        picked = fork_cases(fork, types, kind)
        prefix = f"{fork}/" if several else ""
        params += [pytest.param(r, id=prefix + r["case"]) for r in picked] or [
            pytest.param(None, id=f"{prefix}no-parity-data")
        ]
    return pytest.mark.parametrize("case", params)


def _skip_without(case: dict | None) -> Path:
    import pytest  # a test-only dependency: netdef.testing stays importable without it

    folder = fork_dir(case["fork"]) if case is not None else None
    if folder is None:
        pytest.skip("shared/parity/forks not available")
    return folder


def fork_case_net(case: dict | None):
    """The net of one fork case, in the case's phase; skips without the fork folder."""
    folder = _skip_without(case)
    return netdef.Net(str(folder / f"{case['case']}.prototxt"), _phase(case["phase"]))


def fork_case_arrays(case: dict | None):
    """The ``.npz`` of one fork case; skips without the fork folder."""
    folder = _skip_without(case)
    return numpy.load(folder / f"{case['case']}.npz")


def check_fork_case(case: dict | None, rtol: float = RTOL, atol: float = ATOL) -> dict[str, float]:
    """Run one fork case with reference numbers: skip without data, fail on a mismatch or when nothing was compared."""
    folder = _skip_without(case)
    errors = run_case(folder, case["case"], case["phase"], rtol, atol)
    assert errors, f"{case['case']}: nothing was compared"
    return errors


def check_fork_refusal(case: dict | None, refusals: dict, feed=None, forward: bool = True) -> Exception:
    """A case the fork refuses is refused by netdef too, with a named error about layer ``L``.

    Args:
        case: a row from ``parametrize_fork_cases(..., kind="refused")`` (None skips).
        refusals: case name -> (error class, regular expression its message must contain).
        feed: optional ``feed(net, case)`` that puts inputs into the built net before its forward pass.
        forward: run the forward pass (False: the net set-up itself must refuse).

    Returns:
        The error netdef raised.
    """
    import pytest  # a test-only dependency: netdef.testing stays importable without it

    _skip_without(case)
    if case["case"] not in refusals:
        pytest.fail(f"refusal case {case['case']} has no expected error in the test")
    error, message = refusals[case["case"]]
    with pytest.raises(error, match=message) as info:
        net = fork_case_net(case)
        if forward:
            if feed is not None:
                feed(net, case)
            net.forward()
    assert isinstance(info.value, NetdefError) and type(info.value) is not NetdefError, repr(info.value)
    assert f'Layer "L" (type {case["type"]})' in str(info.value), str(info.value)
    return info.value


# --- published nets ---------------------------------------------------------------------------------
def realworld_nets() -> Path | None:
    """``shared/realworld/nets`` beside the parity folder or the repository, or None."""
    root = parity_root()
    candidates = [root.parent / "realworld"] if root is not None else []
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "realworld")
    for c in candidates:
        if (c / "nets").is_dir():
            return c / "nets"
    return None


def random_weights(net, seed: int = 0, input_std: float = 1.0) -> None:
    """Random parameters that keep a deep net's activations finite, and random inputs.

    Weight blobs with a fan-in (convolution, inner product, ...) get Gaussian values with
    standard deviation ``1 / sqrt(fan_in)``, 1-axis blobs (biases, slopes) small values;
    normalisation layers get positive variances and a statistics scale factor of 1
    (BatchNorm's third blob, the BN forks' statistics), Scale layers values near 1.
    """
    rng = numpy.random.default_rng(seed)
    for layer in net.layers:
        kind = layer.type_name
        for blob in layer.blobs:
            shape = tuple(blob.shape)
            fan_in = int(numpy.prod(shape[1:])) if len(shape) > 1 else 0
            std = 1.0 / numpy.sqrt(fan_in) if fan_in else 0.05
            blob.data[...] = rng.standard_normal(shape, dtype=numpy.float32) * numpy.float32(std)
        if kind == "BatchNorm" and len(layer.blobs) == 3:
            layer.blobs[1].data[...] = rng.uniform(0.5, 1.5, layer.blobs[1].shape)
            layer.blobs[2].data[...] = 1.0
        elif kind == "BN":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            if len(layer.blobs) == 4:  # PSPNet's: scale, shift, mean, variance
                layer.blobs[3].data[...] = rng.uniform(0.5, 1.5, layer.blobs[3].shape)
        elif kind == "Scale" and layer.blobs:
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape, dtype=numpy.float32) * input_std


def assert_finite_tops(net, types: set[str] | None = None) -> int:
    """Every top of every layer of ``types`` (all layers: None) is finite; returns how many layers were checked."""
    checked = 0
    for layer, rec in zip(net.layers, net.records):
        if types is None or layer.type_name in types:
            for blob in rec.top:
                finite = numpy.isfinite(to_numpy(blob.data)).all()
                assert finite, f'layer "{layer.name}" ({layer.type_name}): non-finite top "{blob.name}"'
            checked += 1
    return checked
