"""Never lose a run: kill -9 at many points, resume, and get the uninterrupted run's exact bytes."""

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
from textpipe.run.folder import STAGE

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


@pytest.fixture(scope="module")
def multi_label_reference(tmp_path_factory):
    """Multi-label toy files and an uninterrupted --multi-label run (the bag with its NB path per label) to compare with."""
    from conftest import make_multilabel_rows

    tmp = tmp_path_factory.mktemp("resume-multi-label")
    train = write_csv(tmp / "train.csv", make_multilabel_rows(400, seed=1))
    test = write_csv(tmp / "test.csv", make_multilabel_rows(100, seed=3))
    run("-m", "textpipe", "train", "--train", train, "--test", test, "--out", tmp / "reference", "--multi-label", *CLI_CONFIG)
    return train, test, tmp / "reference"


# Mid-epoch in the train phase (its newest checkpoint the step-15 one), and once run.json records the refit (the train phase's
# NB choice, temperature and thresholds in it, the refit's vocabulary not yet built).
@pytest.mark.parametrize("event", ["step_done:step=16@15", "phase_start:phase=refit"])
def test_multi_label_kill_9_then_resume_gives_the_uninterrupted_result(event, multi_label_reference, tmp_path):
    train, test, ref = multi_label_reference
    assert json.loads((ref / "metrics.json").read_text())["nb_linear"]["dev"]["score"] == "micro_f1"
    out = tmp_path / "run"
    killed = run(RUNNER, "--cli", event, "SIGKILL", "train", "--train", train, "--test", test, "--out", out, "--multi-label", *CLI_CONFIG, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "metrics.json").exists()
    resume(out)
    assert_same_run(ref, out)
    for name in ("bundle.json", "config.json"):  # the thresholds, temperature and multi-label model config too
        assert (ref / name).read_text() == (out / name).read_text(), f"{name} differs from the uninterrupted run"
