"""Solvers: lr policies, the update rules, the training loop, snapshot/restore, and ``get_solver``.

``get_solver(path)`` builds the solver a definition's ``type:`` names, like
pycaffe's ``caffe.get_solver``; the classes can also be built directly
(``netdef.SGDSolver("solver.prototxt")``), which ignores ``type:`` as pycaffe does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..errors import SolverError, did_you_mean
from ..runs import override_strings
from . import parallel
from .lr_policy import LR_POLICIES, learning_rate
from .sgd_solvers import AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver
from .signals import SignalHandler, SolverAction, handle_signals
from .solver import Solver, load_solver_parameter

#: solver classes by the ``type:`` string Caffe registers them under
SOLVER_TYPES: dict[str, type[Solver]] = {
    cls.type_name: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)
}


def solver_class(type_name: str) -> type[Solver]:
    """The class for a solver ``type:`` string (case-sensitive, as in Caffe); a named error otherwise."""
    try:
        return SOLVER_TYPES[type_name]
    except KeyError:
        pass
    known = list(SOLVER_TYPES)
    by_case = {k.lower(): k for k in known}
    hint = (
        f' Did you mean "{by_case[type_name.lower()]}"?'
        if type_name.lower() in by_case
        else did_you_mean(type_name, known)
    )
    raise SolverError(f'Unknown solver type "{type_name}".{hint} Known types: {", ".join(known)}')


def get_solver(
    solver,
    net: str | os.PathLike | None = None,
    *,
    source: str | None = None,
    on_divergence: str = "stop",
    allow_python_layers: bool | None = None,
    overrides: Sequence[str] | Mapping[str, object] | None = None,
) -> Solver:
    """Build the solver a definition names with ``type:`` (pycaffe's ``caffe.get_solver``).

    Under an MPI launcher (``mpiexec -n N``) the solver trains data-parallel over the
    ranks (:mod:`netdef.solvers.parallel`).

    Args:
        solver: a solver definition file path, or a SolverParameter.
        net: optional net definition path that replaces the definition's train net
            (and its generic test nets), as the CLI's ``--net`` does.
        source: with a SolverParameter that ``load_solver_parameter`` already read
            from a file, that file (net paths are also looked up beside it); the
            definition is then used as it is, not read or prepared again.
        on_divergence: ``"stop"`` (default: a NaN/inf loss or parameter raises
            TrainingDivergedError) or ``"continue"`` (Caffe's behaviour, with a warning).
        allow_python_layers: True lets the nets' ``type: "Python"`` layers import and run
            their modules; None follows the process setting and ``NETDEF_ALLOW_PYTHON_LAYERS``.
        overrides: ``key=value`` changes to the definition, as the CLI's ``--set``
            (``["type=Adam", "base_lr=0.001"]`` or ``{"type": "Adam"}``); ``type`` among them
            chooses the class. See :mod:`netdef.runs`.
    """
    param, source = load_solver_parameter(solver, net, source=source, overrides=overrides)
    cls = solver_class(param.type)
    if parallel.launched_size() > 1:  # under mpiexec: data-parallel over the ranks
        cls = parallel.data_parallel(cls)
    built = cls(param, source=source, on_divergence=on_divergence, allow_python_layers=allow_python_layers)
    built.overrides = override_strings(overrides)
    return built


__all__ = [
    "LR_POLICIES",
    "SOLVER_TYPES",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "NesterovSolver",
    "RMSPropSolver",
    "SGDSolver",
    "SignalHandler",
    "Solver",
    "SolverAction",
    "get_solver",
    "handle_signals",
    "learning_rate",
    "load_solver_parameter",
    "solver_class",
]
