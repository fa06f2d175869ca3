"""netdef.logparse: Caffe-format training logs and JSON Lines run records as one history; Caffe's CSV tables."""

import json
import math

import pytest

from netdef.cli import main
from netdef.errors import LogFormatError
from netdef.logparse import (
    RECORDS_FILE,
    Record,
    parse_caffe_log,
    parse_records,
    read_history,
    record_line,
    write_csv_tables,
)
from netdef.tools.parse_log import parse_log

# A training log in Caffe's words (glog prefix), two displays and two tests; lr lines follow the outputs.
LOG = """\
I1231 23:59:58.000000 100 solver.py:120] Initializing solver from parameters:
base_lr: 0.01
I1231 23:59:59.000000 100 solver.py:355] Solving TinyNet
I1231 23:59:59.500000 100 solver.py:411] Iteration 0, Testing net (#0)
I1231 23:59:59.600000 100 solver.py:393]     Test net output #0: accuracy = 0.1
I1231 23:59:59.600000 100 solver.py:393]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1231 23:59:59.700000 100 solver.py:329] Iteration 0 (0 iter/s, 0.1s/10 iters), loss = 2.4
I1231 23:59:59.700000 100 solver.py:393]     Train net output #0: loss = 2.4 (* 1 = 2.4 loss)
I1231 23:59:59.700000 100 sgd_solvers.py:50] Iteration 0, lr = 0.01
I0101 00:00:01.000000 100 solver.py:329] Iteration 10 (7.7 iter/s, 1.3s/10 iters), loss = 0.5
I0101 00:00:01.000000 100 solver.py:393]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)
I0101 00:00:01.000000 100 sgd_solvers.py:50] Iteration 10, lr = 0.005
I0101 00:00:02.000000 100 solver.py:411] Iteration 20, Testing net (#0)
I0101 00:00:02.000000 100 solver.py:393]     Test net output #0: accuracy = 0.9
I0101 00:00:02.000000 100 solver.py:393]     Test net output #1: loss = 0.25 (* 1 = 0.25 loss)
"""


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "tiny.log"
    path.write_text(LOG)
    return path


def test_caffe_log_records_follow_parse_log_rules(log_file):
    h = parse_caffe_log(str(log_file), year=2023)
    train, test = h.phase("train"), h.phase("test")
    assert [(r.iteration, r.seconds, r.outputs) for r in train] == [(0, 0.7, {"loss": 2.4}), (10, 2.0, {"loss": 0.5})]
    # the year rolls over at the new year; lr lags one display and the first row takes the second's
    assert [(r.iteration, r.seconds, r.outputs) for r in test] == [
        (0, 0.6, {"accuracy": 0.1, "loss": 2.3}),
        (20, 3.0, {"accuracy": 0.9, "loss": 0.25}),
    ]
    assert [r.lr for r in train] == [0.01, 0.01] and [r.lr for r in test] == [0.005, 0.005]
    # plots take each rate at its own iteration
    assert h.series("train", "lr") == ([0, 10], [0.01, 0.005])
    assert h.series("test", "accuracy", x="seconds") == ([0.6, 3.0], [0.1, 0.9])


def test_csv_tables_have_caffes_columns(log_file, tmp_path):
    out = tmp_path / "out"
    train_csv, test_csv = parse_log(str(log_file), str(out))
    assert train_csv.endswith("tiny.log.train") and test_csv.endswith("tiny.log.test")
    assert (out / "tiny.log.train").read_text().splitlines()[0] == "NumIters,Seconds,LearningRate,loss"
    test_rows = (out / "tiny.log.test").read_text().splitlines()
    assert test_rows[0] == "NumIters,Seconds,LearningRate,accuracy,loss"
    assert len(test_rows) == 3 and test_rows[2].split(",")[0] == "20" and test_rows[2].endswith(",0.9,0.25")


def test_netdef_parse_log_prints_the_tables(log_file, tmp_path, capsys):
    assert main(["parse_log", str(log_file), str(tmp_path / "o"), "--delimiter", ";"]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "o" / "tiny.log.train"),
        str(tmp_path / "o" / "tiny.log.test"),
    ]
    assert (tmp_path / "o" / "tiny.log.train").read_text().startswith("NumIters;Seconds;LearningRate;loss")


def test_run_records_round_trip(tmp_path):
    run = tmp_path / "runs" / "sgd"
    run.mkdir(parents=True)
    lines = [
        json.dumps({"run": {"solver": "solver.prototxt"}}),
        record_line(0, 0.1, 0.01, "train", {"loss": 2.0}),
        record_line(100, 1.5, 0.009, "test", {"accuracy": 0.75, "loss": 0.6}, test_net=0),
        record_line(100, 1.6, None, "train", {"loss": 0.5}),
    ]
    (run / RECORDS_FILE).write_text("\n".join(lines) + "\n")
    h = read_history(str(run))
    assert h.source == str(run)
    assert [(r.iteration, r.phase) for r in h.records] == [(0, "train"), (100, "test"), (100, "train")]
    assert h.phase("test")[0].outputs == {"accuracy": 0.75, "loss": 0.6}
    assert math.isnan(h.phase("train")[1].lr)
    assert h.series("train", "lr") == ([0], [0.01])
    write_csv_tables(h, str(tmp_path), stem="sgd")
    assert (tmp_path / "sgd.test").read_text().splitlines()[1] == "100,1.5,0.009,0.75,0.6"


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(LogFormatError, match="no such run folder"):
        read_history(str(tmp_path / "missing.log"))
    (tmp_path / "empty.log").write_text("nothing to see\n")
    with pytest.raises(LogFormatError, match="holds no training records"):
        read_history(str(tmp_path / "empty.log"))
    with pytest.raises(LogFormatError, match=r"bad.jsonl:2: a run record needs iteration"):
        parse_records(str(tmp_path / "bad.jsonl"), '{"phase": "train", "iteration": 1}\n{"phase": "train"}\n')
    with pytest.raises(ValueError, match="phase must be"):
        record_line(0, 0, 0, "val", {})


def test_record_lines_keep_nine_digits_and_the_optional_fields(tmp_path):
    records = [
        Record(0, 0.1234567891, 0.05000000074505806, "train", {"loss": 2.3025850929940455}),
        Record(50, 1.5, math.nan, "train", {"loss": 0.5}, iters_per_s=123.4567891234),
        Record(50, 1.6, 0.01, "test", {"accuracy": 0.9805555740992228, "acc[1]": 1.0}, test_net=1),
    ]
    lines = [r.line() for r in records]
    assert json.loads(lines[0]) == {
        "iteration": 0,
        "seconds": 0.123457,
        "lr": 0.0500000007,
        "phase": "train",
        "outputs": {"loss": 2.30258509},
    }
    assert json.loads(lines[1])["lr"] is None and json.loads(lines[1])["iters_per_s"] == 123.456789
    assert json.loads(lines[2])["test_net"] == 1 and "iters_per_s" not in json.loads(lines[2])
    assert json.loads(records[0].line(seconds_offset=10.0))["seconds"] == 10.123457
    back = parse_records("r.jsonl", "\n".join(lines))
    assert [(r.test_net, r.iters_per_s) for r in back.records] == [(0, None), (0, 123.456789), (1, None)]
    assert back.records[2].outputs == {"accuracy": 0.980555574, "acc[1]": 1.0}
    shifted = records[2].shifted(2.0)
    assert (
        shifted.seconds == 3.6 and shifted.outputs == records[2].outputs and shifted.outputs is not records[2].outputs
    )
