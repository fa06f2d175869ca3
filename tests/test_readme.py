"""The README's examples run as written, and every command it names exists."""

import re
from pathlib import Path

import pytest

from netdef.cli import build_parser
from tests.solver_helpers import copy_digits

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_first_lines_give_exactly_the_two_commands():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert first == [
        "pip install . && netdef train models/digits/solver.prototxt",
        'pip install ".[test]" && python -m pytest -q',
    ]


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_examples_run_as_written(index, tmp_path, monkeypatch, capsys):
    # run where the example's relative paths resolve, in a copy, so nothing lands in the checkout
    copy_digits(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {})
    assert capsys.readouterr().out.strip()
    assert not [p for p in (tmp_path / "models" / "digits").iterdir() if "_iter_" in p.name]


def test_every_command_the_readme_names_exists():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    known = set(subparsers.choices)
    code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", README, re.S))
    named = set(re.findall(r"^netdef ([a-z_]+)", code, re.M)) | set(re.findall(r"`netdef ([a-z_]+)[ `]", README))
    assert named - known == set()
    assert {"train", "test", "summary", "plot", "convert_imageset"} <= named
