import os

from netdef.io.paths import path_candidates, resolve_path


def test_as_given_first_then_beside_the_naming_file(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.prototxt").write_text("")
    solver = tmp_path / "models" / "solver.prototxt"
    solver.write_text("")
    monkeypatch.chdir(tmp_path)
    # not in the working directory: found beside the solver
    assert resolve_path("net.prototxt", str(solver)) == str(tmp_path / "models" / "net.prototxt")
    # in the working directory: taken as given, as Caffe opens it
    (tmp_path / "net.prototxt").write_text("")
    assert resolve_path("net.prototxt", str(solver)) == "net.prototxt"
    # a folder works as the anchor too
    os.remove(tmp_path / "net.prototxt")
    assert resolve_path("net.prototxt", str(tmp_path / "models")) == str(tmp_path / "models" / "net.prototxt")


def test_missing_path_comes_back_unchanged_and_candidates_are_listed(tmp_path):
    assert resolve_path("nope.txt", str(tmp_path / "s.prototxt")) == "nope.txt"
    assert path_candidates("nope.txt", str(tmp_path / "s.prototxt")) == ["nope.txt", str(tmp_path / "nope.txt")]
    assert path_candidates("/abs/x", str(tmp_path)) == ["/abs/x"]
    assert path_candidates("x") == ["x"]
