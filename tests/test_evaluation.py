"""netdef.evaluation: one exact pass over the test data, pooled classification metrics."""

import logging
from pathlib import Path

import numpy as np
import pytest

import netdef
from netdef.errors import NetdefError
from netdef.evaluation import (
    classification_report,
    dataset_size,
    evaluate,
    find_classifier,
    plan_batches,
    read_class_names,
    save_predictions,
)
from tests.solver_helpers import SCORED_NET

ROOT = Path(__file__).resolve().parents[1]
DIGITS = (ROOT / "models" / "digits" / "train_val.prototxt").read_text()


def digits_net(tmp_path, monkeypatch, batch: int = 120) -> netdef.Net:
    """The digits TEST net (360 test images) with test batch ``batch``; data paths resolve from the repo root."""
    monkeypatch.chdir(ROOT)
    path = tmp_path / "digits.prototxt"
    path.write_text(DIGITS.replace("batch_size: 120", f"batch_size: {batch}"))
    return netdef.Net(str(path), netdef.TEST)


def test_report_from_known_scores():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 2, 2, 1])
    r = classification_report(scores, labels, top_k=(1, 2, 7), class_names=["a", "b", "c"])
    assert r.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert r.samples == 5 and r.accuracy == pytest.approx(0.6)
    assert r.precision.tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert r.recall.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert r.f1.tolist() == pytest.approx([2 / 3, 0.5, 2 / 3])
    assert r.support.tolist() == [1, 2, 2]
    macro, weighted = r.averages()["macro avg"], r.averages()["weighted avg"]
    assert macro == pytest.approx((2 / 3, 2 / 3, 11 / 18))
    assert weighted == pytest.approx((0.7, 0.6, (2 / 3 + 1 + 4 / 3) / 5))
    # top-2: sample 2 (label c, 0.3 second) and sample 4 (label b, 0.4 second) become right; k=7 > 3 classes is left out
    assert r.top_k == {1: pytest.approx(0.6), 2: pytest.approx(1.0)}
    table = r.table()
    assert table[1].split() == ["a", "0.5000", "1.0000", "0.6667", "1"]
    assert any(line.split()[:2] == ["top-2", "accuracy"] for line in table)
    assert r.confusion_lines()[1].split() == ["a", "1", "0", "0"]


def test_report_rejects_labels_outside_the_classes():
    with pytest.raises(NetdefError, match="labels must lie in 0 .. 1"):
        classification_report(np.zeros((2, 2)), np.array([0, 5]))


def test_digits_size_is_read_from_the_hdf5_files(tmp_path, monkeypatch):
    net = digits_net(tmp_path, monkeypatch, batch=100)
    assert dataset_size(net) == (360, 100)
    assert plan_batches(net, None) == ([100, 100, 100, 60], True)
    assert plan_batches(net, 3) == ([100, 100, 100], False)
    c = find_classifier(net)
    assert (c.scores, c.labels) == ("ip2_ip2_0_split_0", "label_digits_1_split_0")


def test_exact_pass_counts_every_test_image_once(tmp_path, monkeypatch):
    net = digits_net(tmp_path, monkeypatch, batch=100)
    result = evaluate(net, keep_scores=True)
    assert result.exact and result.batches == 4 and result.samples == 360
    r = result.report
    assert r.confusion.sum() == 360
    assert r.support.tolist() == [36] * 10  # the bundled test set has 36 images per digit
    # the batch-weighted mean of the Accuracy output is the pooled top-1 accuracy
    assert result.means["accuracy"] == pytest.approx(r.accuracy, abs=1e-6)
    assert result.scores.shape == (360, 10) and result.labels.tolist()[:3] == [0, 4, 7]


def test_caffes_fixed_batch_count_wraps(tmp_path, monkeypatch):
    net = digits_net(tmp_path, monkeypatch, batch=100)
    result = evaluate(net, iterations=5)
    assert not result.exact and result.samples == 500
    assert result.report.confusion.sum() == 500
    assert result.report.support.sum() == 500


def test_iterations_below_one_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(NetdefError, match="iterations must be at least 1. Received: 0"):
        evaluate(digits_net(tmp_path, monkeypatch), iterations=0)


def test_unknown_size_falls_back_to_caffes_50_batches(tmp_path, caplog):
    path = tmp_path / "scored.prototxt"
    path.write_text(SCORED_NET)
    net = netdef.Net(str(path), netdef.TEST)
    assert "DummyData" in dataset_size(net)
    with caplog.at_level(logging.INFO, logger="netdef"):
        result = evaluate(net)
    assert result.batches == 50 and not result.exact and result.report is None
    assert result.means["loss"] == pytest.approx(13.5)
    assert "running Caffe's default of 50 batches" in caplog.text


def test_memory_data_size_is_known_once_arrays_are_given(tmp_path):
    text = """
    layer { name: "m" type: "MemoryData" top: "data" top: "label"
            memory_data_param { batch_size: 4 channels: 3 height: 1 width: 1 } }
    layer { name: "flat" type: "Flatten" bottom: "data" top: "scores" }
    layer { name: "acc" type: "Accuracy" bottom: "scores" bottom: "label" top: "accuracy" }
    """
    path = tmp_path / "mem.prototxt"
    path.write_text(text)
    net = netdef.Net(str(path), netdef.TEST)
    assert isinstance(dataset_size(net), str)
    x = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2, 0, 1]].reshape(8, 3, 1, 1)
    y = np.array([0, 1, 2, 0, 1, 2, 2, 2], dtype=np.float32)
    net.set_input_arrays(x, y)
    result = evaluate(net)
    assert result.exact and result.samples == 8
    assert result.report.confusion.tolist() == [[2, 0, 0], [0, 2, 0], [1, 1, 2]]
    assert result.means["accuracy"] == pytest.approx(0.75)


def test_predictions_csv_and_npz(tmp_path):
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    labels = np.array([1, 1])
    save_predictions(str(tmp_path / "p.csv"), scores, labels)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == ["index,label,predicted,score_0,score_1", "0,1,1,0.1,0.9", "1,1,0,0.8,0.2"]
    save_predictions(str(tmp_path / "p.npz"), scores, labels)
    z = np.load(tmp_path / "p.npz")
    assert z["predicted"].tolist() == [1, 0] and z["label"].tolist() == [1, 1] and z["scores"].shape == (2, 2)


def test_class_names_skip_blank_lines(tmp_path):
    (tmp_path / "synset.txt").write_text("n01 tench, Tinca tinca\n\nn02 goldfish\n")
    assert read_class_names(str(tmp_path / "synset.txt")) == ["n01 tench, Tinca tinca", "n02 goldfish"]
