"""Runs the Python snippets of README.md on toy data, so the documentation cannot rot."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_three_snippets_the_five_line_api_first():
    blocks = python_blocks()
    assert len(blocks) == 3 and "TextClassifier" in blocks[0]
    assert len([line for line in blocks[0].splitlines() if line.strip()]) == 5


def test_readme_is_short_enough_to_finish():
    """The rest lives in docs/ pages it links to (tests/test_docs_names.py checks the links)."""
    assert README.stat().st_size < 15_000, f"README.md is {README.stat().st_size:,} bytes: move a section into docs/"


def dry_run_of_make_venv(*variables: str) -> list[str]:
    """The commands `make venv` would run in a fresh clone (-B: as if nothing were installed; -n: none is run)."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    done = subprocess.run(["make", "-n", "-B", "-C", str(README.parent), "venv", *variables], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_quick_start_installs_cpu_torch_before_textpipe_when_asked():
    """`make venv TORCH=cpu`, the quick start's first line, puts the CPU build in before the editable install."""
    assert "make venv TORCH=cpu" in README.read_text(encoding="utf-8").split("## Quick start")[1].split("```")[1]
    cpu = dry_run_of_make_venv("TORCH=cpu")
    torch_line = next(i for i, line in enumerate(cpu) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    assert "pip install" in cpu[torch_line] and "torch==2.3.1" in cpu[torch_line]
    assert torch_line < next(i for i, line in enumerate(cpu) if "install --quiet -e" in line)
    assert not any("download.pytorch.org" in line for line in dry_run_of_make_venv())  # the default is PyPI's torch


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
