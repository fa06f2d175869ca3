"""Every solver recipe in solvers/ runs: its schedule is valid over the whole run, and
`netdef train --solver solvers/X.prototxt --net models/digits/train_val.prototxt` trains."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from netdef.cli import main
from netdef.errors import SolverError
from netdef.proto import netdef_pb2 as pb
from netdef.solvers import load_solver_parameter
from netdef.solvers.lr_policy import learning_rate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "solvers").glob("*.prototxt"))
DIGITS = "models/digits/train_val.prototxt"


def test_there_are_recipes():
    assert len(RECIPES) >= 7
    assert "sigmoid.prototxt" in {p.name for p in RECIPES}


def rates(param) -> list[float]:
    out, step = [], 0
    for it in range(param.max_iter + 1):
        rate, step = learning_rate(param, it, step)
        out.append(rate)
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_schedule_is_valid_for_the_whole_run(recipe):
    param, _ = load_solver_parameter(str(recipe))
    assert param.lr_policy == recipe.stem
    values = rates(param)
    assert all(math.isfinite(v) and 0 <= v <= param.base_lr * (1 + 1e-6) for v in values)
    assert max(values) > 0
    # the header comment names the command that uses it
    assert f"--solver solvers/{recipe.name} --net {DIGITS}" in recipe.read_text()


def test_sigmoid_recipe_is_a_rising_warm_up():
    param, _ = load_solver_parameter(str(ROOT / "solvers" / "sigmoid.prototxt"))
    assert param.gamma >= 0 and param.stepsize > 0  # Caffe's CHECK_GE(gamma, 0) and CHECK_GT(stepsize, 0)
    values = rates(param)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[0] < 0.05 * param.base_lr
    assert values[param.stepsize] == pytest.approx(param.base_lr / 2, rel=1e-6)
    assert values[-1] > 0.99 * param.base_lr
    assert "gamma >= 0" in (ROOT / "solvers" / "sigmoid.prototxt").read_text()


def test_negative_sigmoid_gamma_is_refused_as_caffe_does():
    param = pb.SolverParameter(lr_policy="sigmoid", base_lr=0.1, gamma=-0.01, stepsize=10, max_iter=5)
    with pytest.raises(SolverError, match="gamma must be >= 0"):
        learning_rate(param, 0)


def shortened(recipe: Path, tmp_path: Path, iters: int = 12) -> Path:
    """The recipe with a short run, testing at its end, and snapshots under tmp_path."""
    text = recipe.read_text()
    text = re.sub(r"^max_iter: \d+", f"max_iter: {iters}", text, flags=re.M)
    text = re.sub(r"^test_interval: \d+", f"test_interval: {iters}", text, flags=re.M)
    text = re.sub(r"^display: \d+", "display: 4", text, flags=re.M)
    text = re.sub(r'^snapshot_prefix: ".*"', f'snapshot_prefix: "{tmp_path / recipe.stem}"', text, flags=re.M)
    assert f"max_iter: {iters}" in text and str(tmp_path) in text
    copy = tmp_path / recipe.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_the_digits_net_from_the_command_line(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the net's data paths are relative to the repository root, as documented
    copy = shortened(recipe, tmp_path)
    assert main(["train", "--solver", str(copy), "--net", DIGITS, "--run-dir", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().err
    assert "Optimization Done" in text
    assert "gamma must be" not in text
    losses = [float(v) for v in re.findall(r"Iteration \d+.*, loss = ([-+0-9.e]+)", text)]
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses)
    accuracy = [float(v) for v in re.findall(r"Test net output #\d+: accuracy = ([0-9.e+-]+)", text)]
    assert accuracy and 0 <= accuracy[-1] <= 1
    assert (tmp_path / f"{recipe.stem}_iter_12.caffemodel").exists()
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # the run record went where asked, not into the checkout
