"""textpipe.run.phases: a run's explicit phases, the state run.json holds, and the events at each phase change."""

import json
import random
from collections import Counter

import pytest

from conftest import write_csv
from textpipe.core.events import listen
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.text.dataset import is_held_out
from textpipe.run.counts import count_training_file
from textpipe.run.phases import Placement, resume_run, start_distributed, train_files
from textpipe.run.folder import RUN, STAGE, Phase, RunState
from textpipe.text.sources import read_examples
from textpipe.text.tokenizer import Tokenizer, TokenizerConfig
from textpipe.core.train import TrainConfig
from textpipe.text.vocab import build_vocab, load_vocab

SMALL = dict(tokenizer=TokenizerConfig("whitespace"), train=TrainConfig(epochs=2, lr=0.02, keep_checkpoints=1))


@pytest.fixture
def events():
    """The (name, phase) of every run event, with the phase run.json held at that moment."""
    seen, stops = [], []

    def record(name):
        def listener(phase=None, stage=None, **_):
            seen.append((name, phase))
        return listener

    for name in ("phase_start", "phase_end", "commit_start"):
        stops.append(listen(name, record(name)))
    yield seen
    for stop in stops:
        stop()


def run_json_phase_at_each_phase_start(out):
    phases = []
    stop = listen("phase_start", lambda phase, **_: phases.append((phase, json.loads((out / STAGE / RUN).read_text())["phase"])))
    return phases, stop


def test_a_refitting_run_goes_train_refit_done_and_run_json_says_so_first(toy_files, tmp_path, events):
    train, _, test = toy_files
    out = tmp_path / "run"
    recorded, stop = run_json_phase_at_each_phase_start(out)
    try:
        metrics = train_files(train, test, out, config=PipelineConfig(**SMALL), quiet=True)
    finally:
        stop()
    assert events == [("phase_start", "train"), ("phase_end", "train"), ("phase_start", "refit"), ("phase_end", "refit"),
                      ("phase_start", "done"), ("commit_start", None)]
    assert recorded == [("train", "train"), ("refit", "refit"), ("done", "done")], "an event comes after run.json records the phase"
    state = RunState.load(out)
    assert state.phase is Phase.DONE and state.refit["epochs"] == metrics["best_epoch"] == metrics["refit"]["epochs"]
    assert state.num_train == 400 and state.labels == ["neg", "pos"]  # the refit's pass over every training row


def test_one_pass_counts_the_vocabularies_of_both_phases(tmp_path):
    rng = random.Random(3)
    rows = [(rng.choice(["neg", "pos"]), " ".join(f"w{rng.randint(0, 400)}" for _ in range(rng.randint(1, 9)))) for _ in range(300)]
    path, data, tok = write_csv(tmp_path / "train.csv", rows), DataConfig(), Tokenizer("whitespace")
    texts = [text for _, text in rows]
    training = [text for i, text in enumerate(texts) if not is_held_out(i, 10)]
    counts = count_training_file(path, 10, tok, data, quiet=True)
    assert counts.vocab(data).get_itos() == build_vocab(tok.pipe(training)).get_itos()
    refit = counts.all_rows()
    assert refit.vocab(data).get_itos() == build_vocab(tok.pipe(texts)).get_itos() == count_training_file(path, 0, tok, data, quiet=True).vocab(data).get_itos()
    assert len(refit.vocab(data)) > len(counts.vocab(data)), "some words are only in held-out rows"
    assert (counts.training_rows, refit.training_rows) == (len(training), 300)
    assert refit.label_counts == counts.label_counts == dict(sorted(Counter(label for label, _ in rows).items()))


def test_a_refitting_run_counts_the_training_file_once(toy_files, tmp_path, monkeypatch):
    import textpipe.run.phases

    holdouts, count = [], textpipe.run.phases.count_training_file
    monkeypatch.setattr(textpipe.run.phases, "count_training_file", lambda train, holdout, *rest, **kw: holdouts.append(holdout) or count(train, holdout, *rest, **kw))
    train, _, test = toy_files
    train_files(train, test, tmp_path / "run", config=PipelineConfig(**SMALL), quiet=True)
    assert holdouts == [10]
    every_row = build_vocab(Tokenizer("whitespace")(example.text) for example in read_examples(train))
    assert load_vocab(tmp_path / "run" / "vocab.json").get_itos() == every_row.get_itos()


def test_with_a_dev_file_the_run_has_no_refit_phase(toy_files, tmp_path, events):
    train, dev, test = toy_files
    metrics = train_files(train, test, tmp_path / "run", dev=dev, config=PipelineConfig(**SMALL), quiet=True)
    assert events == [("phase_start", "train"), ("phase_end", "train"), ("phase_start", "done"), ("commit_start", None)]
    assert "refit" not in metrics and RunState.load(tmp_path / "run").refit is None


def test_a_run_stopped_once_done_is_only_committed_by_resume(toy_files, tmp_path, events):
    train, _, test = toy_files
    out = tmp_path / "run"

    def crash(**_):
        raise RuntimeError("stopped before the commit")

    stop = listen("commit_start", crash)
    try:
        with pytest.raises(RuntimeError, match="stopped before the commit"):
            train_files(train, test, out, config=PipelineConfig(**SMALL), quiet=True)
    finally:
        stop()
    assert RunState.load(out / STAGE).phase is Phase.DONE and not (out / "metrics.json").exists()
    events.clear()
    metrics = resume_run(out, quiet=True)
    assert events == [("commit_start", None)], "nothing is trained again"
    assert metrics == json.loads((out / "metrics.json").read_text()) and not (out / STAGE).exists()


def test_run_state_round_trips_through_json_and_names_its_phase():
    state = RunState.start({"train": "train.csv", "dev": None, "test": "torchtext:AG_NEWS"}, PipelineConfig().to_dict())
    saved = json.loads(json.dumps(state.to_dict()))
    assert saved["phase"] == "train" and "refit" not in saved and saved["data"]["test"] == "torchtext:AG_NEWS"
    assert RunState.from_dict(saved).to_dict() == saved and RunState.from_dict(saved).phase is Phase.TRAIN
    with pytest.raises(ValueError, match="'finished' is not a valid Phase"):
        RunState.from_dict({**saved, "phase": "finished"})


def test_outside_torchrun_the_process_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    placement = start_distributed("cpu")
    assert placement == Placement(0, 1) and placement.writes


def test_a_distributed_run_destroys_the_process_group_it_started(toy_files, tmp_path, monkeypatch):
    """Under torchrun (faked here: rank 1 of 2) train_files starts the process group and destroys it when the run ends."""
    import torch.distributed

    import textpipe.run.phases

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: calls.count("init") > calls.count("destroy"))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.append("init"))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(textpipe.run.phases.Run, "phases", lambda run, resume=None: calls.append("phases") or {})
    train, _, test = toy_files
    assert train_files(train, test, tmp_path / "run", config=PipelineConfig(tokenizer=TokenizerConfig(name="whitespace"))) == {}
    assert calls == ["init", "phases", "destroy"]


def test_resume_of_a_folder_that_is_not_there_makes_none(tmp_path):
    from textpipe.run.config import SettingsError

    with pytest.raises(SettingsError, match="holds no unfinished run: is it the --out folder"):
        resume_run(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_check_settings_checks_the_world_outside_the_config(toy_files, tmp_path):
    """The device, the vectors and the files: each refusal a SettingsError or DataError the CLI maps to exit 2."""
    from textpipe.run.config import SettingsError
    from textpipe.run.pipeline import check_settings
    from textpipe.text.sources import DataError

    train, _, test = toy_files
    with pytest.raises(SettingsError, match="nope.txt': neither named vectors nor a file") as refused:
        check_settings(PipelineConfig(data=DataConfig(vectors=str(tmp_path / "nope.txt"))), {"train": train})
    assert "textpipe vectors list" in refused.value.hint
    with pytest.raises(DataError, match="no such file"):
        check_settings(PipelineConfig(), {"train": train, "test": tmp_path / "missing.csv"})
    bad_first = write_csv(tmp_path / "bad.csv", [("", "no label"), ("pos", "fine")])
    with pytest.raises(DataError, match="bad.csv"):
        check_settings(PipelineConfig(), {"train": bad_first})  # on_bad_row = "error": the first bad row now, with its line
