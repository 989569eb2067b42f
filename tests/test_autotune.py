"""textpipe train --autotune: a search on dev only, then the winner trained as train does it."""

import json

import pytest

from textpipe import autotune
from textpipe.autotune import Trial, autotune_files, merge
from textpipe.config import PipelineConfig

SMALL = {"tokenizer": {"name": "whitespace"}, "model": {"ngram_buckets": 1024}, "train": {"epochs": 4, "patience": 2, "keep_checkpoints": 0}}


@pytest.fixture
def small_space(monkeypatch):
    space = [("lr", [{"train": {"lr": 0.05}}, {"train": {"lr": 1e-6}}]), ("batch", [{"train": {"batch_size": 64}}])]
    monkeypatch.setattr(autotune, "SPACE", space)
    return space


def test_search_scores_dev_only_then_trains_the_winner_with_a_refit(toy_files, tmp_path, small_space):
    train, _, test = toy_files
    out = tmp_path / "run"
    metrics = autotune_files(train, test, out, config=PipelineConfig.from_dict(SMALL), budget=600, quiet=True)
    run = json.loads((out / "run.json").read_text())
    trials = run["autotune"]["trials"]
    assert trials[0]["changes"] == {}, "the starting configuration is always tried first"
    assert trials[1]["changes"] == {"train": {"lr": 0.05}} and trials[2]["changes"]["train"]["lr"] == 1e-6
    assert trials[3]["changes"]["train"]["batch_size"] == 64, "the next knob starts from the best so far"
    best = max(trials, key=lambda t: (t["dev_accuracy"], -t["dev_loss"]))
    assert run["autotune"]["chosen"] == best["changes"]
    winner = PipelineConfig.from_dict(merge(SMALL, best["changes"]))
    assert PipelineConfig.from_dict(run["config"]) == winner, "the bundle's config is the winner's"
    assert run["refit"]["epochs"] == best["best_epoch"], "the refit reuses the winner's early-stopping result"
    assert metrics["refit"]["epochs"] == best["best_epoch"] and metrics["test"]["n"] == 100
    report = (out / "report.md").read_text()
    assert "Autotune tried 4 configurations" in report and "| 2 |" in report and "`train.lr = 0.05`" in report
    assert len(trials) == 1 + 2 + 1


def test_a_tiny_budget_still_trains_the_starting_configuration(toy_files, tmp_path, small_space):
    train, dev, test = toy_files
    metrics = autotune_files(train, test, tmp_path / "run", dev=dev, config=PipelineConfig.from_dict(SMALL), budget=0.01, quiet=True)
    assert [t["changes"] for t in metrics["autotune"]["trials"]] == [{}]
    assert metrics["autotune"]["chosen"] == {} and "refit" not in metrics, "with a dev file there is nothing to refit on"


def test_a_trial_beats_another_on_accuracy_then_on_loss():
    a, b = Trial({}, 0.8, 0.5, 1, 2, 1.0), Trial({}, 0.8, 0.4, 1, 2, 1.0)
    assert b.beats(a) and not a.beats(b) and Trial({}, 0.81, 9.0, 1, 2, 1.0).beats(b)


def test_cli_autotune_prints_the_table(toy_files, tmp_path):
    import subprocess
    import sys

    train, _, test = toy_files
    result = subprocess.run([sys.executable, "-m", "textpipe", "train", "--train", train, "--test", test, "--out", tmp_path / "run",
                             "--tokenizer", "whitespace", "--epochs", "2", "--keep-checkpoints", "0", "--set", "model.ngram_buckets=1024",
                             "--autotune", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "autotune: configurations tried, scored on dev" in result.stderr and "the starting configuration" in result.stderr
    assert "test accuracy" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "textpipe", "train", "--train", train, "--test", test, "--out", tmp_path / "r2", "--autotune", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "positive number of seconds" in bad.stderr
