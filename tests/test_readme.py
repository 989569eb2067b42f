"""Runs the Python snippets of README.md on toy data, so the documentation cannot rot."""

import os
import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_three_snippets_the_five_line_api_first():
    blocks = python_blocks()
    assert len(blocks) == 3 and "TextClassifier" in blocks[0]
    assert len([line for line in blocks[0].splitlines() if line.strip()]) == 5


def test_readme_snippets_run(toy_files, tmp_path, capsys, monkeypatch):
    train, _, test = toy_files
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(train, work / "train.csv")
    shutil.copy(test, work / "test.csv")
    monkeypatch.chdir(work)
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert re.search(r"'accuracy': \d", out) and "'label': 'pos'" in out
    assert out.startswith("['pos'] ['neg', 'pos'] [[")  # the five-line API's predict, labels_, predict_proba
    assert (work / "runs" / "api" / "bundle.json").is_file()
    assert (work / "runs" / "mine" / "weights.safetensors").is_file()
    assert os.path.isfile(work / "runs" / "mine" / "metrics.json")
