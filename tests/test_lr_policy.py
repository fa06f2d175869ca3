"""Learning-rate policies: Caffe's SGDSolver::GetLearningRate formulas, with literal values."""

import pytest

from netdef.errors import SolverError
from netdef.proto import netdef_pb2 as pb
from netdef.proto import parse_text
from netdef.solvers import LR_POLICIES, learning_rate


def solver_param(text: str) -> pb.SolverParameter:
    return parse_text(text, pb.SolverParameter())


def rate(text: str, iteration: int, current_step: int = 0) -> float:
    return learning_rate(solver_param(text), iteration, current_step)[0]


def test_fixed():
    for it in (0, 1, 1000):
        assert rate('lr_policy: "fixed" base_lr: 0.01', it) == pytest.approx(0.01, rel=1e-7)


@pytest.mark.parametrize(("it", "expected", "step"), [(0, 0.1, 0), (9, 0.1, 0), (10, 0.05, 1), (25, 0.025, 2)])
def test_step(it, expected, step):
    got, current = learning_rate(solver_param('lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 10'), it, 0)
    assert got == pytest.approx(expected, rel=1e-7)
    assert current == step  # step recomputes current_step = floor(iter / stepsize)


@pytest.mark.parametrize(("it", "expected"), [(0, 0.1), (2, 0.081), (10, 0.034867844)])
def test_exp(it, expected):
    assert rate('lr_policy: "exp" base_lr: 0.1 gamma: 0.9', it) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("it", "expected"), [(0, 0.01), (100, 0.0099256503), (10000, 0.0059460356)])
def test_inv(it, expected):
    # base_lr * (1 + gamma * iter) ^ (-power): (1.01)^-0.75 = 0.99256503, 2^-0.75 = 0.59460356
    text = 'lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75'
    assert rate(text, it) == pytest.approx(expected, rel=1e-6)


def test_multistep_sequence():
    param = solver_param('lr_policy: "multistep" base_lr: 0.1 gamma: 0.1 stepvalue: 5 stepvalue: 8')
    step = 0
    got = []
    for it in range(10):
        r, step = learning_rate(param, it, step)
        got.append(r)
    expected = [0.1] * 5 + [0.01] * 3 + [0.001] * 2
    assert got == pytest.approx(expected, rel=1e-6)
    assert step == 2


def test_multistep_advances_at_most_one_step_per_call():
    # Caffe's `if` (not `while`): resuming at iter 9 with current_step 0 passes one stepvalue per call.
    param = solver_param('lr_policy: "multistep" base_lr: 0.1 gamma: 0.1 stepvalue: 5 stepvalue: 8')
    r, step = learning_rate(param, 9, 0)
    assert (r, step) == (pytest.approx(0.01, rel=1e-6), 1)
    r, step = learning_rate(param, 10, step)
    assert (r, step) == (pytest.approx(0.001, rel=1e-6), 2)
    r, step = learning_rate(param, 11, step)  # no stepvalue left: stays
    assert step == 2


@pytest.mark.parametrize(("it", "expected"), [(0, 0.1), (50, 0.025), (75, 0.00625), (100, 0.0)])
def test_poly(it, expected):
    text = 'lr_policy: "poly" base_lr: 0.1 power: 2 max_iter: 100'
    assert rate(text, it) == pytest.approx(expected, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("it", "expected"), [(10, 0.05), (12, 0.073105858), (8, 0.026894142)])
def test_sigmoid(it, expected):
    # base_lr / (1 + exp(-gamma * (iter - stepsize))): 1/(1+e^-1) = 0.73105858
    text = 'lr_policy: "sigmoid" base_lr: 0.1 gamma: 0.5 stepsize: 10'
    assert rate(text, it) == pytest.approx(expected, rel=1e-6)


def test_rates_are_float32_values():
    r = rate('lr_policy: "fixed" base_lr: 0.1', 0)
    assert r == 0.10000000149011612  # float32(0.1), as Caffe's Dtype rate


def test_function_does_not_mutate_param():
    param = solver_param('lr_policy: "multistep" base_lr: 0.1 gamma: 0.1 stepvalue: 1')
    before = param.SerializeToString()
    learning_rate(param, 5, 0)
    assert param.SerializeToString() == before


def test_all_seven_policies_listed():
    assert LR_POLICIES == ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('lr_policy: "Step" base_lr: 0.1 stepsize: 1', 'Did you mean "step"?'),
        ('lr_policy: "cosine" base_lr: 0.1', "Valid: fixed, step, exp, inv, multistep, poly, sigmoid"),
        ("base_lr: 0.1", "(not set)"),
        ('lr_policy: "step" base_lr: 0.1 gamma: 0.5', "stepsize must be positive. Received: 0"),
        ('lr_policy: "sigmoid" base_lr: 0.1 gamma: 0.5', "stepsize must be positive"),
        ('lr_policy: "exp" base_lr: 0.1 gamma: -0.5', "gamma must be >= 0. Received: -0.5"),
        ('lr_policy: "poly" base_lr: 0.1 power: 1', "max_iter must be positive"),
    ],
)
def test_errors(text, fragment):
    with pytest.raises(SolverError) as err:
        rate(text, 3)
    assert fragment in str(err.value)
