"""Never lose a run: kill -9 at many points, resume, and get the uninterrupted run's exact bytes."""

import errno
import filecmp
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import make_rows, write_csv
from kill_runner import KILL_POINTS
from textpipe.core.checkpoint import CheckpointError, CheckpointStore, OutputError
from textpipe.core.batching import Batches
from textpipe.text.dataset import TextClassificationDataset
from textpipe.run.folder import STAGE
from textpipe.text.sources import SourceConfig
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

RUNNER = Path(__file__).resolve().parents[1] / "kill_runner.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def run(*args, check=True):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def resume(out):
    return run("-m", "textpipe", "train", "--resume", out, "--quiet")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data files and an uninterrupted run to compare every resumed run with."""
    tmp = tmp_path_factory.mktemp("resume")
    train = write_csv(tmp / "train.csv", make_rows(400, seed=1))
    test = write_csv(tmp / "test.csv", make_rows(100, seed=3))
    run(RUNNER, train, test, tmp / "reference")
    return train, test, tmp / "reference"


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("weights.safetensors", "vocab.json", "metrics.json"):
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs from the uninterrupted run"


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_9_then_resume_gives_the_uninterrupted_result(point, reference, tmp_path):
    train, test, ref = reference
    out = tmp_path / "run"
    killed = run(RUNNER, train, test, out, point, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "metrics.json").exists() or point == "during-commit"
    if point == "during-checkpoint-write":
        assert list((out / STAGE / "checkpoints").glob(".step-*.tmp")), "the kill should leave a half-written temporary file"
    resume(out)
    assert_same_run(ref, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no staging folder, lock or checkpoints left


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(sig, reference, tmp_path):
    train, test, ref = reference
    out = tmp_path / "run"
    stopped = run(RUNNER, train, test, out, "mid-epoch", sig, check=False)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stdout == f"{sig}: training stopped, checkpoint saved to {out}/{STAGE}/checkpoints/step-000000017.pt\n"
    resume(out)
    assert_same_run(ref, out)


def test_cli_signal_message_names_the_resume_command(tmp_path):
    train = write_csv(tmp_path / "train.csv", make_rows(2000, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(50, seed=3))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "textpipe", "train", "--train", train, "--test", test, "--out", out, "--tokenizer", "whitespace", "--epochs", "50", "--quiet",
         "--checkpoint-seconds", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    # Wait for the first timed checkpoint, so the run is surely inside the training loop.
    while not list((out / STAGE / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert stderr.startswith("textpipe train: SIGTERM: training stopped, checkpoint saved to ")
    assert f"\nresume with: {sys.executable} -m textpipe train --resume {out}" in stderr  # works without textpipe on PATH


def test_resume_needs_no_other_flag_and_refuses_changed_data(reference, tmp_path):
    train, test, _ = reference
    data = tmp_path / "train.csv"
    data.write_bytes(train.read_bytes())
    out = tmp_path / "run"
    run(RUNNER, data, test, out, "mid-epoch", check=False)
    assert json.loads((out / STAGE / "run.json").read_text())["data"]["train"] == str(data)
    mixed = run("-m", "textpipe", "train", "--resume", out, "--train", data, check=False)
    assert mixed.returncode == 2 and "--resume DIR takes the data and settings from DIR/run.json" in mixed.stderr
    data.write_text(data.read_text() + "pos,one more row\n")
    changed = run("-m", "textpipe", "train", "--resume", out, check=False)
    assert changed.returncode == 2
    assert changed.stderr == f"textpipe train: error: {data}: the training file changed since the run started; a resume needs the same data (start a new run instead)\n"


def test_resume_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    result = run("-m", "textpipe", "train", "--resume", tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr == f"textpipe train: error: {tmp_path} holds no unfinished run: is it the --out folder of a textpipe train run?\n"


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"weights": torch.ones(3)}, step=1)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError) as err:
        store.save({"weights": torch.zeros(3)}, step=2)
    assert str(err.value) == f"could not write checkpoint {tmp_path}/step-000000002.pt: No space left on device; the previous checkpoint is intact"
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digests.json", "step-000000001.pt"]  # no temporary file left behind
    assert torch.equal(store.load_latest()["weights"], torch.ones(3))


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"weights": torch.ones(3)}, step=1)
    newest = store.save({"weights": torch.zeros(3)}, step=2)
    newest.write_bytes(newest.read_bytes()[:100])
    assert store.load_latest()["path"].endswith("step-000000001.pt")
    assert "its sha256 is not the one recorded when it was written" in capsys.readouterr().err


def test_a_background_write_keeps_the_values_of_when_it_was_asked_for(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    weights = torch.ones(1000)
    store.save_async({"weights": weights}, step=1)
    weights.zero_()  # training goes on while the file is written
    store.wait()
    assert torch.equal(store.load_latest()["weights"], torch.ones(1000))


def test_a_failed_background_write_is_raised_by_wait(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    store.save_async({"weights": torch.ones(3)}, step=1)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is intact"):
        store.wait()
    store.wait()  # the error is reported once


def test_only_the_newest_k_checkpoints_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in (5, 10, 15):
        store.save({"step": step}, step=step)
    assert [p.name for p in store.paths()] == ["step-000000010.pt", "step-000000015.pt"]


def test_an_unusable_output_folder_fails_before_training(toy_files, tmp_path):
    train, _, test = toy_files
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run("-m", "textpipe", "train", "--train", train, "--test", test, "--out", blocker / "run", "--quiet", check=False)
    assert result.returncode == 2
    assert result.stderr == f"textpipe train: error: cannot write to output folder {blocker}/run: Not a directory\n"


def test_a_full_disk_is_reported_before_training(toy_files, tmp_path):
    train, _, test = toy_files
    code = (
        "import shutil, sys, collections; from textpipe.cli import main; "
        "shutil.disk_usage = lambda p: collections.namedtuple('u', 'total used free')(10**9, 10**9 - 10**6, 10**6); "
        "sys.exit(main(sys.argv[1:]))"
    )
    result = run("-c", code, "train", "--train", train, "--test", test, "--out", tmp_path / "run", "--quiet", "--tokenizer", "whitespace", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(f"textpipe train: error: output folder {tmp_path}/run has 1 MB free; this run's checkpoints and bundle need at least ")
    assert not (tmp_path / "run" / STAGE / "checkpoints").exists()


def test_free_space_below_the_worst_case_only_warns(tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    from textpipe.run import folder as runfolder

    model = torch.nn.Linear(250, 1000)  # about 1 MB of weights
    weights = sum(p.numel() * 4 for p in model.parameters())
    usage = namedtuple("usage", "total used free")
    for free, outcome in [(weights * 3, "error"), (weights * 5, "warning"), (weights * 20, "")]:
        monkeypatch.setattr(runfolder.shutil, "disk_usage", lambda path, free=free: usage(10**12, 10**12 - free, free))
        try:
            runfolder.check_free_space(tmp_path, model, keep=2, quiet=False)
        except OutputError as err:
            assert outcome == "error", err
        else:
            assert outcome != "error"
        assert ("warning: " in capsys.readouterr().err) == (outcome == "warning"), free


def test_stream_state_resumes_mid_block(tmp_path):
    path = write_csv(tmp_path / "rows.csv", make_rows(50, seed=4))
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in make_rows(50, seed=4))
    ds = Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"]), shuffle_buffer=8, seed=3)
    ds.set_epoch(2)
    whole = [ids.tolist() for ids, _ in ds]
    for cut in (0, 5, 8, 13, 49, 50):
        stream = iter(ds)
        head = [next(stream)[0].tolist() for _ in range(cut)]
        again = iter(ds)
        again.load_state_dict(stream.state_dict())
        assert head + [ids.tolist() for ids, _ in again] == whole, cut


def test_a_resumed_stream_seeks_instead_of_rereading(tmp_path):
    path = write_csv(tmp_path / "rows.csv", make_rows(60, seed=5))
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in make_rows(60, seed=5))
    ds = Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], holdout_every=10, part="train"), shuffle_buffer=8, seed=1)
    whole = [ids.tolist() for ids, _ in ds]
    stream = iter(ds)
    head = [next(stream)[0].tolist() for _ in range(21)]  # into the third block
    state = stream.state_dict()
    assert state["reader_at"] is not None and state["block"] == 2
    # Blank out every row before the block: a resume that re-read them would go wrong.
    data = path.read_bytes()
    header_end = data.index(b"\n") + 1
    offset = state["reader_at"][0]
    path.write_bytes(data[:header_end] + b"\n" * (offset - header_end) + data[offset:])
    again = iter(ds)
    again.load_state_dict(state)
    assert head + [ids.tolist() for ids, _ in again] == whole


def write_source(tmp_path, kind: str, rows) -> Path:
    if kind == "csv":
        return write_csv(tmp_path / "rows.csv", rows)
    if kind == "jsonl":
        path = tmp_path / "rows.jsonl"
        lines = [json.dumps({"label": label, "text": text}) for label, text in rows]
        lines.insert(7, "{not json")  # a bad row, skipped (and skipped again after a resume)
        path.write_text("\n".join(lines) + "\n")
        return path
    folder = tmp_path / "rows"
    for i, (label, text) in enumerate(rows):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{i:03d}.txt").write_text(text)
    return folder


@pytest.mark.parametrize("kind", ["csv", "jsonl", "folder"])
def test_every_source_resumes_exactly_mid_block(kind, tmp_path):
    rows = make_rows(40, seed=6)
    path = write_source(tmp_path, kind, rows)
    tok = Tokenizer("whitespace")
    vocab = build_vocab(tok(t) for _, t in rows)
    source = SourceConfig(on_bad_row="skip")
    ds = Batches(TextClassificationDataset(path, tok, vocab, ["neg", "pos"], source=source), shuffle_buffer=6, seed=2)
    whole = [ids.tolist() for ids, _ in ds]
    assert len(whole) == 40
    for cut in (3, 6, 17, 39):
        stream = iter(ds)
        head = [next(stream)[0].tolist() for _ in range(cut)]
        again = iter(ds)
        again.load_state_dict(stream.state_dict())
        assert head + [ids.tolist() for ids, _ in again] == whole, cut


@pytest.mark.parametrize("model", ["bag", "cnn", "gru", "transformer"])
def test_deterministic_mode_trains_every_model_to_the_same_weights(model, toy_files, tmp_path):
    from textpipe.core.models import ModelConfig
    from textpipe.run.config import PipelineConfig
    from textpipe.run.phases import train_files
    from textpipe.text.tokenizer import TokenizerConfig
    from textpipe.core.train import TrainConfig

    train, dev, test = toy_files
    config = lambda deterministic: PipelineConfig(  # noqa: E731
        tokenizer=TokenizerConfig("whitespace"), model=ModelConfig(name=model, ngram_buckets=64, embed_dim=16, hidden_dim=16, num_layers=1),
        train=TrainConfig(epochs=1, lr=0.02, keep_checkpoints=0, deterministic=deterministic),
    )
    train_files(train, test, tmp_path / "plain", dev=dev, config=config(False), quiet=True)
    train_files(train, test, tmp_path / "deterministic", dev=dev, config=config(True), quiet=True)
    assert not torch.are_deterministic_algorithms_enabled()  # fit puts the global setting back
    assert filecmp.cmp(tmp_path / "plain" / "weights.safetensors", tmp_path / "deterministic" / "weights.safetensors", shallow=False)


# Issue 30, item 2: a resume refuses changed data in every phase, with a checkpoint or without.

@pytest.mark.parametrize("point", ["early", "refit-vocab", "mid-refit"])
def test_resume_refuses_a_changed_training_file_in_every_phase(point, reference, tmp_path):
    train, test, _ = reference
    data = tmp_path / "train.csv"
    data.write_bytes(train.read_bytes())
    out = tmp_path / "run"
    assert run(RUNNER, data, test, out, point, check=False).returncode == -signal.SIGKILL
    data.write_bytes(data.read_bytes().replace(b"pos,", b"neg,", 1))
    changed = run("-m", "textpipe", "train", "--resume", out, check=False)
    assert changed.returncode == 2
    assert changed.stderr == f"textpipe train: error: {data}: the training file changed since the run started; a resume needs the same data (start a new run instead)\n"


def test_resume_after_a_data_file_moved_is_one_line(reference, tmp_path):
    train, test, _ = reference
    data, scored = tmp_path / "train.csv", tmp_path / "test.csv"
    data.write_bytes(train.read_bytes())
    scored.write_bytes(test.read_bytes())
    out = tmp_path / "run"
    assert run(RUNNER, data, scored, out, "early", check=False).returncode == -signal.SIGKILL
    for path, what in [(data, "training file"), (scored, "test file")]:  # the test file: said now, not after the training
        path.rename(tmp_path / "moved.csv")
        moved = run("-m", "textpipe", "train", "--resume", out, check=False)
        assert moved.returncode == 2
        assert moved.stderr == (f"textpipe train: error: {path}: the {what} is gone (moved or deleted since the run started); "
                                "a resume needs the same data at the same path (put it back, or start a new run)\n")
        (tmp_path / "moved.csv").rename(path)


def test_resume_refuses_a_changed_dev_file(toy_files, tmp_path):
    from conftest import crash_after_step
    from kill_runner import CONFIG
    from textpipe.run.phases import resume_run, train_files
    from textpipe.text.sources import DataError

    train, dev, test = toy_files
    with crash_after_step(2, KeyboardInterrupt()), pytest.raises(KeyboardInterrupt):
        train_files(train, test, tmp_path / "run", dev=dev, config=CONFIG, quiet=True)
    dev.write_text(dev.read_text().replace("pos,", "neg,", 1))
    with pytest.raises(DataError, match="dev.csv: the dev file changed since the run started"):
        resume_run(tmp_path / "run", quiet=True)


# Issue 30, item 10: SIGINT or SIGTERM at any named point: exit 130 / 143, the last good state kept, a resume that works.

CLI_CONFIG = ["--tokenizer", "whitespace", "--set", "data.shuffle_buffer=100", "--set", "model.ngram_buckets=1024", "--epochs", "4", "--lr", "0.02",
              "--checkpoint-every", "5", "--quiet"]  # kill_runner.CONFIG as flags


# Each phase boundary once (phase_start of train, checkpoints_cleared, phase_end of the refit and phase_start of done were
# tried too, all alike: every point between the training loops is the same handler's).
@pytest.mark.parametrize("event, sig", [("phase_end:phase=train", "SIGTERM"), ("phase_start:phase=refit", "SIGINT"), ("bundle_weights_written", "SIGTERM"),
                                        ("commit_start", "SIGINT"), ("commit_files_moved", "SIGTERM")])
def test_a_signal_between_phases_stops_with_its_status_and_resumes(event, sig, reference, tmp_path):
    train, test, ref = reference
    out = tmp_path / "run"
    stopped = run(RUNNER, "--cli", event, sig, "train", "--train", train, "--test", test, "--out", out, *CLI_CONFIG, check=False)
    assert stopped.returncode == (130 if sig == "SIGINT" else 143), stopped.stderr
    assert stopped.stderr.startswith(f"textpipe train: {sig}: the run stopped; what it had finished is saved in {out / STAGE}\n"
                                     f"resume with: {sys.executable} -m textpipe train --resume {out}")
    resume(out)
    assert_same_run(ref, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


def overwrite_run(out: Path, train: Path, test: Path, replace_file) -> None:
    """A run of kill_runner.CONFIG over the bundle in ``out`` (--overwrite), its commit's moves done by ``replace_file``."""
    from kill_runner import CONFIG
    from textpipe.run import folder as runfolder
    from textpipe.run.phases import train_files

    real_os = runfolder.os
    runfolder.os = types.ModuleType("os")
    runfolder.os.__dict__.update(vars(real_os), replace=replace_file)
    try:
        train_files(train, test, out, config=CONFIG, quiet=True, overwrite=True)
    finally:
        runfolder.os = real_os


def test_a_signal_during_the_commit_waits_for_every_move(reference, tmp_path):
    from textpipe.bundle.store import load_bundle
    from textpipe.core.runtime import Interrupted

    train, test, ref = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / "bundle.json").write_text("{}")  # a previous bundle's manifest: replaced only with the rest
    moved = []

    def replace_and_signal(src, dst):
        if not moved:
            os.kill(os.getpid(), signal.SIGTERM)
        moved.append(Path(dst).name)
        os.replace(src, dst)

    with pytest.raises(Interrupted, match="SIGTERM: the run stopped"):
        overwrite_run(out, train, test, replace_and_signal)
    assert moved[-1] == "bundle.json" and len(moved) == len(list(ref.iterdir()))
    load_bundle(out)  # whole: the new one
    assert (out / STAGE).is_dir()  # a resume removes it
    resume(out)
    assert_same_run(ref, out)


def test_a_kill_during_the_commit_says_how_to_repair_and_resume_repairs(reference, tmp_path):
    import shutil

    from conftest import cli_here
    from textpipe.bundle.store import load_bundle
    from textpipe.run.folder import start_fresh

    train, test, ref = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / "bundle.json").write_text("{}")
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise SystemExit("killed")  # as kill -9 would: some files moved, bundle.json not
        os.replace(src, dst)

    with pytest.raises(SystemExit):
        overwrite_run(out, train, test, replace_then_die)
    info = cli_here("info", out)
    assert info.returncode == 2
    assert info.stderr == (f"textpipe info: error: {out}: a finished training run was stopped while moving its files in (some new, some old)\n"
                           f"hint: finish the move with: textpipe train --resume {out}\n")
    again = tmp_path / "again"
    shutil.copytree(out, again)
    start_fresh(again, overwrite=True)  # a new --overwrite run instead of the resume: the moves are finished first
    load_bundle(again)
    assert filecmp.cmp(again / "weights.safetensors", ref / "weights.safetensors", shallow=False)
    resumed = run("-m", "textpipe", "train", "--resume", out)
    assert "the move is finished now, the bundle whole again" in resumed.stderr
    assert_same_run(ref, out)
    assert cli_here("info", out).returncode == 0
