"""Learning-rate policies, as Caffe's ``SGDSolver::GetLearningRate`` defines them.

Caffe keeps solver hyper-parameters in single precision and evaluates the
policies in a mix of float and double arithmetic; the arithmetic below follows
the same precision at each step so that the rates match Caffe's to the last bit
in the common cases.
"""

from __future__ import annotations

import math

import numpy

from ..errors import SolverError, did_you_mean

_f32 = numpy.float32

#: Every policy ``learning_rate`` knows, in Caffe's documentation order.
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _need(condition: bool, policy: str, message: str) -> None:
    if not condition:
        raise SolverError(f'lr_policy "{policy}": {message}')


def learning_rate(param, iteration: int, current_step: int = 0) -> tuple[float, int]:
    """The learning rate of update number ``iteration`` under ``param.lr_policy``.

    Formulas (``it`` = iteration):

    - ``fixed``: ``base_lr``
    - ``step``: ``base_lr * gamma ^ floor(it / stepsize)``
    - ``exp``: ``base_lr * gamma ^ it``
    - ``inv``: ``base_lr * (1 + gamma * it) ^ (-power)``
    - ``multistep``: ``base_lr * gamma ^ k`` where ``k`` counts the ``stepvalue``
      entries passed; like Caffe, ``k`` advances by at most one per call
    - ``poly``: ``base_lr * (1 - it / max_iter) ^ power``
    - ``sigmoid``: ``base_lr / (1 + exp(-gamma * (it - stepsize)))``

    Args:
        param: a SolverParameter.
        iteration: the solver's iteration counter (number of updates done so far).
        current_step: the solver's step counter (used and advanced by ``multistep``,
            recomputed by ``step``; other policies leave it unchanged).

    Returns:
        ``(rate, current_step)``: the rate as a float holding a float32 value, and
        the step counter after this call. The function itself changes nothing.

    Raises:
        SolverError: an unknown policy, or a parameter value Caffe refuses.
    """
    policy = param.lr_policy
    base_lr = _f32(param.base_lr)
    gamma = _f32(param.gamma)
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if policy == "fixed":
            rate = base_lr
        elif policy == "step":
            _need(param.stepsize > 0, policy, f"stepsize must be positive. Received: {param.stepsize}")
            _need(gamma >= 0, policy, f"gamma must be >= 0. Received: {param.gamma:.7g}")
            current_step = iteration // param.stepsize
            rate = _f32(float(base_lr) * _pow_double(float(gamma), current_step))
        elif policy == "exp":
            _need(gamma >= 0, policy, f"gamma must be >= 0. Received: {param.gamma:.7g}")
            rate = _f32(float(base_lr) * _pow_double(float(gamma), iteration))
        elif policy == "inv":
            _need(gamma >= 0, policy, f"gamma must be >= 0. Received: {param.gamma:.7g}")
            inner = _f32(1) + gamma * _f32(iteration)
            rate = base_lr * numpy.power(inner, -_f32(param.power))
        elif policy == "multistep":
            values = list(param.stepvalue)
            if current_step < len(values) and iteration >= values[current_step]:
                current_step += 1
            _need(gamma >= 0, policy, f"gamma must be >= 0. Received: {param.gamma:.7g}")
            rate = _f32(float(base_lr) * _pow_double(float(gamma), current_step))
        elif policy == "poly":
            _need(param.max_iter > 0, policy, f"max_iter must be positive. Received: {param.max_iter}")
            frac = _f32(1) - _f32(iteration) / _f32(param.max_iter)
            rate = base_lr * numpy.power(frac, _f32(param.power))
        elif policy == "sigmoid":
            _need(gamma >= 0, policy, f"gamma must be >= 0. Received: {param.gamma:.7g}")
            _need(param.stepsize > 0, policy, f"stepsize must be positive. Received: {param.stepsize}")
            z = numpy.exp(-gamma * (_f32(iteration) - _f32(param.stepsize)))
            rate = base_lr * (_f32(1) / (_f32(1) + z))
        else:
            shown = f'"{policy}"' if policy else "(not set)"
            raise SolverError(f"Unknown lr_policy {shown}.{_suggest(policy)} Valid: {', '.join(LR_POLICIES)}")
    return float(_f32(rate)), int(current_step)


def _pow_double(base: float, exponent: int) -> float:
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return math.inf


def _suggest(policy: str) -> str:
    lowered = policy.strip().lower()
    if lowered in LR_POLICIES and lowered != policy:
        return f' Did you mean "{lowered}"?'
    return did_you_mean(policy, LR_POLICIES) if policy else ""
