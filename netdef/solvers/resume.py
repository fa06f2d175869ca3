"""netdef's resume sidecar (``<state file>.netdef.json``): reading it, checking it against the solver, applying it.

The sidecar holds what Caffe's ``.solverstate`` lacks for an exact resume: the random
streams and each data layer's read position. In data-parallel training rank 0 writes it;
the read positions are the same on every rank (they walk one order, each taking its own
block), so every rank resumes from them, and ranks > 0 derive their random streams
from rank 0's again (:mod:`.parallel`). It is checked whole before anything is
applied: every key, type and range, and its fit with the net being resumed (the same
data layers, orders of the right length, positions inside them). A sidecar that does
not fit is refused with a WeightsFileError naming the file and the key, rather than
letting training run on empty or wrong batches; deleting it resumes without the exact
data positions, as from a Caffe snapshot.
"""

from __future__ import annotations

import json
import os

import numpy

from ..errors import NetdefError, WeightsFileError
from ..io import solverstate

#: position key -> (the list it indexes, whether it may equal that list's length)
_POSITIONS = {"pos": ("order", False), "row": ("perm", True), "file_pos": ("file_order", False)}
#: lists whose length depends on the file being read, not on the net (HDF5Data's row order)
_PER_FILE = {"perm"}
#: keys a layer records only in data-parallel training (its shared shuffle stream); a
#: snapshot resumes with or without them, in one process or on any number of ranks
_OPTIONAL = {"order_rng"}
_ADVICE = "delete it to resume without the exact data positions"


def data_states(net) -> dict:
    """``{layer name: state}`` for each layer of ``net`` that has a read position (``get_state``)."""
    return {layer.name: layer.get_state() for layer in net.layers if callable(getattr(layer, "get_state", None))}


def apply_data_states(net, states: dict) -> None:
    """Give each layer of ``net`` that has an entry in ``states`` its recorded state back (``set_state``)."""
    for layer in net.layers:
        set_state = getattr(layer, "set_state", None)
        if callable(set_state) and layer.name in states:
            set_state(states[layer.name])


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Checker:
    """Raises WeightsFileErrors that name the sidecar file and the key."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, problem: str, value=None, valid: str = "") -> WeightsFileError:
        received = "" if value is None else f" Received: {_shown(value)}."
        expected = f" Valid: {valid}." if valid else ""
        return WeightsFileError(
            f'{self.path}: netdef resume sidecar, key "{key}": {problem}.{received}{expected} '
            f"It does not fit this solver state and net; {_ADVICE}"
        )

    def integer(self, key: str, value, low: int = 0, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "not an integer", value, "a whole number")
        if value < low or (high is not None and value > high):
            raise self.fail(key, "out of range", value, f"{low}..{high}" if high is not None else f">= {low}")
        return value

    def mapping(self, key: str, value) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"a JSON {type(value).__name__} where an object is expected", value)
        return value

    def integers(self, key: str, value) -> list[int]:
        if not isinstance(value, list):
            raise self.fail(key, "not a list", value, "a list of whole numbers")
        for i, item in enumerate(value):
            self.integer(f"{key}[{i}]", item)
        return value

    def permutation(self, key: str, value: list[int]) -> None:
        if not value:
            raise self.fail(key, "empty (a data layer would read empty batches)", value, "a non-empty permutation")
        if sorted(value) != list(range(len(value))):
            raise self.fail(key, "not a permutation of 0..n-1", value, f"each of 0..{len(value) - 1} once")


def read_sidecar(state_file: str) -> dict | None:
    """The sidecar of ``state_file`` as a JSON object, or None when there is none (e.g. Caffe wrote the state)."""
    path = solverstate.sidecar_path(state_file)
    if not os.path.exists(path):
        return None
    check = _Checker(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as err:
        raise WeightsFileError(f"{path}: unreadable netdef resume sidecar ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise check.fail("(top level)", f"the file holds a JSON {type(data).__name__}; a sidecar is an object")
    if data.get("kind") != solverstate.SIDECAR_KIND:
        raise check.fail("kind", "not a netdef resume sidecar", data.get("kind"), repr(solverstate.SIDECAR_KIND))
    if data.get("version") != 1:
        raise check.fail("version", "a sidecar version this netdef does not read", data.get("version"), "1")
    return data


def apply_sidecar(solver, path: str, extras: dict, state) -> None:
    """Check ``extras`` (read from ``path``) against ``solver`` and ``state`` whole, then restore from it."""
    check = _Checker(path)
    for key, expected in (("iter", int(state.iter)), ("current_step", int(state.current_step))):
        if check.integer(key, extras.get(key)) != expected:
            raise check.fail(key, f"differs from the state file's {key} ({expected})", extras.get(key))
    rng = extras.get("rng")
    if rng is not None:
        _check_rng(check, solver, rng)
    nets = [solver.net, *solver.test_nets]
    saved = [extras.get("train_net", {})]
    tests = extras.get("test_nets", [])
    if not isinstance(tests, list) or len(tests) != len(solver.test_nets):
        raise check.fail(
            "test_nets", "not one entry per test net", tests, f"a list of {len(solver.test_nets)} object(s)"
        )
    saved += tests
    keys = ["train_net", *(f"test_nets[{i}]" for i in range(len(tests)))]
    for key, net, states in zip(keys, nets, saved, strict=True):
        _check_net_states(check, key, net, states)
    if rng is not None:
        solver.rng.restore(rng)
    for key, net, states in zip(keys, nets, saved, strict=True):
        _apply_net_states(check, key, net, states)


def _check_rng(check: _Checker, solver, rng) -> None:
    check.mapping("rng", rng)
    check.integer("rng.device_epoch", rng.get("device_epoch"))
    numpy_state = check.mapping("rng.numpy", rng.get("numpy"))
    scratch = type(solver.rng.numpy.bit_generator)()
    try:
        scratch.state = numpy_state
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise check.fail(
            "rng.numpy", f"not a state of NumPy's {type(scratch).__name__} generator ({err})", numpy_state
        ) from None


def _check_net_states(check: _Checker, key: str, net, states) -> None:
    check.mapping(key, states)
    templates = data_states(net)
    extra = sorted(set(states) - set(templates))
    missing = sorted(set(templates) - set(states))
    if extra or missing:
        names = ", ".join(templates) or "none"
        problem = f"names data layer(s) {extra} the net lacks" if extra else f"lacks data layer(s) {missing}"
        raise check.fail(key, problem, sorted(states), f"the net's data layers with a read position: {names}")
    for name, template in templates.items():
        _check_layer_state(check, f"{key}.{name}", check.mapping(f"{key}.{name}", states[name]), template)


def _check_layer_state(check: _Checker, key: str, saved: dict, template: dict) -> None:
    """``saved`` has ``template``'s keys and kinds of values, permutations where it has them, positions in range."""
    if set(saved) - _OPTIONAL != set(template) - _OPTIONAL:
        raise check.fail(key, "has other keys than this data layer records", sorted(saved), ", ".join(template))
    for name, now in ((n, v) for n, v in template.items() if n in saved):
        value, where = saved[name], f"{key}.{name}"
        if isinstance(now, list):
            check.integers(where, value)
            if name not in _PER_FILE and len(value) != len(now):
                raise check.fail(where, f"has {len(value)} entries; this data layer has {len(now)}", value)
            if sorted(now) == list(range(len(now))):
                check.permutation(where, value)
        elif isinstance(now, int) and not isinstance(now, bool):
            check.integer(where, value)
        elif not isinstance(value, type(now)):
            raise check.fail(where, f"not a {type(now).__name__}", value)
    for name, (indexed, may_equal) in _POSITIONS.items():
        if name in saved and indexed in saved:
            high = len(saved[indexed]) - (0 if may_equal else 1)
            check.integer(f"{key}.{name}", saved[name], 0, high)
    if {"loaded", "file_order", "file_pos"} <= set(saved):
        expected = saved["file_order"][saved["file_pos"]]
        if saved["loaded"] != expected:
            raise check.fail(f"{key}.loaded", f"is not the file at file_pos (file {expected})", saved["loaded"])


def _apply_net_states(check: _Checker, key: str, net, states: dict) -> None:
    for layer in net.layers:
        if layer.name not in states or not callable(getattr(layer, "set_state", None)):
            continue
        saved = states[layer.name]
        try:
            layer.set_state(saved)
        except NetdefError as err:
            raise check.fail(f"{key}.{layer.name}", f"refused by the layer ({err})") from err
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
            raise check.fail(f"{key}.{layer.name}", f"refused by the layer ({type(err).__name__}: {err})") from None
        rows = getattr(layer, "rows", None)
        if "perm" in saved and isinstance(rows, (int, numpy.integer)) and len(saved["perm"]) != rows:
            raise check.fail(
                f"{key}.{layer.name}.perm", f"has {len(saved['perm'])} entries; the file it orders has {rows} rows"
            )


__all__ = ["apply_data_states", "apply_sidecar", "data_states", "read_sidecar"]
