"""Nothing lost: a failed or concurrent run never damages a user's model or files (issue 15)."""

import filecmp
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_here, crash_after_step, make_rows, write_csv
from textpipe.cli import atomic_output
from textpipe.run.folder import LOCK, STAGE, RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
SMALL = ["--tokenizer", "whitespace", "--epochs", "2", "--set", "model.ngram_buckets=1024", "--quiet"]
BUNDLE_AND_REPORT = {"bundle.json", "vocab.json", "weights.safetensors", "config.json", "metrics.json", "run.json", "report.md",
                     "misclassified.csv", "confusion_matrix.png", "learning_curves.png", "reliability.png", "coverage.png"}


def textpipe(*args):
    return subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], capture_output=True, text=True, env=ENV)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    train = write_csv(tmp / "train.csv", make_rows(200, seed=1))
    test = write_csv(tmp / "test.csv", make_rows(50, seed=3))
    bad = write_csv(tmp / "bad_labels.csv", make_rows(10, seed=3) + [("maybe", "a label the model never saw")])
    model = tmp / "model"
    result = textpipe("train", "--train", train, "--test", test, "--out", model, *SMALL)
    assert result.returncode == 0, result.stderr
    return train, test, bad, model


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_finished_run_folder_is_the_bundle_and_its_report(data):
    _, _, _, model = data
    assert {p.name for p in model.iterdir()} == BUNDLE_AND_REPORT  # no checkpoints, staging folder or lock left


def test_a_failed_retrain_leaves_the_previous_model_as_it_was(data, tmp_path):
    train, _, bad, model = data
    out = tmp_path / "M"
    shutil.copytree(model, out)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    result = textpipe("train", "--train", train, "--test", bad, "--out", out, "--overwrite", *SMALL)
    assert result.returncode == 2 and "bad_labels.csv:12" in result.stderr, result.stderr
    assert snapshot(out) == before  # every file byte for byte, the user's own included
    assert textpipe("info", out).returncode == 0


def test_a_folder_holding_anything_is_refused_without_overwrite(data, tmp_path):
    train, test, _, model = data
    out = tmp_path / "M"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = textpipe("train", "--train", train, "--test", test, "--out", out, *SMALL)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"textpipe train: error: output folder {out} is not empty (notes.txt); give --overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    done = textpipe("train", "--train", train, "--test", test, "--out", out, "--overwrite", *SMALL)
    assert done.returncode == 0, done.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert filecmp.cmp(out / "weights.safetensors", model / "weights.safetensors", shallow=False)  # same seed, same weights
    again = textpipe("train", "--train", train, "--test", test, "--out", out, *SMALL)
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_a_second_run_on_a_locked_folder_names_the_holder(data, tmp_path):
    train, test, _, _ = data
    out = tmp_path / "M"
    with RunLock(out):
        result = textpipe("train", "--train", train, "--test", test, "--out", out, *SMALL)
        resumed = textpipe("train", "--resume", out, "--quiet")
    message = f"output folder {out} is in use by another textpipe run (pid {os.getpid()})"
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert resumed.returncode == 2 and message in resumed.stderr, resumed.stderr
    assert not (out / LOCK).exists()  # the holder removes it when it is done


def test_a_run_failing_its_checks_leaves_nothing_and_an_unfinished_run_is_one_to_info(data, tmp_path):
    train, _, bad, _ = data
    out = tmp_path / "new"
    assert textpipe("train", "--train", train, "--test", bad, "--out", out, *SMALL).returncode == 2
    assert not out.exists()  # stopped before training: nothing to resume, and a rerun is not refused (issue 28)
    (out / STAGE).mkdir(parents=True)  # what a run killed while training leaves
    info = textpipe("info", out)
    assert info.returncode == 2
    assert info.stderr == f"textpipe info: error: {out} holds an unfinished training run, not yet a bundle\nhint: finish it with: textpipe train --resume {out}\n"


def test_temporary_output_names_are_unique(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_output(target) as first, atomic_output(target) as second:
        first.write("json\n" * 1000)
        second.write("csv\n" * 1000)
        assert len(list(tmp_path.iterdir())) == 2
    assert target.read_text() in ("json\n" * 1000, "csv\n" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_diverging_run_stops_with_exit_2_and_keeps_its_last_checkpoint(data, tmp_path):
    train, test, _, _ = data
    out = tmp_path / "M"
    result = textpipe("train", "--train", train, "--test", test, "--out", out, "--lr", "1e30", "--checkpoint-seconds", "0.001", *SMALL)
    assert result.returncode == 2
    assert "training diverged: the loss became nan at step 2 (epoch 1) with lr 1e+30; the last good checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    checkpoints = out / STAGE / "checkpoints"
    assert [p.name for p in checkpoints.glob("step-*.pt")] == ["step-000000001.pt"]
    assert not (out / "bundle.json").exists()


def test_checkpoint_timing_never_changes_the_weights(data, tmp_path):
    train, test, _, model = data
    out = tmp_path / "often"
    result = textpipe("train", "--train", train, "--test", test, "--out", out, "--checkpoint-seconds", "0.001", "--keep-checkpoints-after", *SMALL)
    assert result.returncode == 0, result.stderr
    assert filecmp.cmp(out / "weights.safetensors", model / "weights.safetensors", shallow=False)
    assert list((out / "checkpoints").glob("step-*.pt"))  # kept, as asked
    assert {p.name for p in out.iterdir()} == BUNDLE_AND_REPORT | {"checkpoints"}


DISK_FULL = """
import errno, sys
import textpipe.{module} as target
from textpipe.cli import main

def fail(*args, **kwargs):
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 448 vs 342")  # what torch.save raises

target.{name} = fail
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("where", ["checkpoint", "bundle"])
def test_a_full_disk_says_so_with_the_resume_hint_and_loses_nothing(where, data, tmp_path):
    train, test, _, model = data
    out = tmp_path / "M"
    module, name = ("core.checkpoint", "torch.save") if where == "checkpoint" else ("bundle.store", "safetensors_bytes")
    code = DISK_FULL.format(module=module, name=name)
    result = subprocess.run([sys.executable, "-c", code, "train", "--train", train, "--test", test, "--out", out, "--checkpoint-seconds", "0.001", *SMALL],
                            capture_output=True, text=True, env=ENV)
    assert result.returncode == 2, result.stderr
    assert "No space left on device" in result.stderr and "internal error" not in result.stderr
    assert f"hint: free some space, then: {sys.executable} -m textpipe train --resume {out}" in result.stderr.splitlines()[-1]
    resumed = textpipe("train", "--resume", out, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert filecmp.cmp(out / "weights.safetensors", model / "weights.safetensors", shallow=False)


@pytest.mark.parametrize("flags, message", [
    (["--set", "data.holdout_every=0"], "data.holdout_every must be an integer >= 2, got 0"),
    (["--seed", "12345678901234567890"], "seed must be between 0 and 2**63 - 1, got 12345678901234567890"),
    (["--set", "model.embed_dim=0"], "model.embed_dim must be an integer from 1 to 2**40, got 0"),
    (["--device", "cuda:9"], "device 'cuda:9': no CUDA GPU is available here") if not __import__("torch").cuda.is_available() else
    (["--set", "model.ngram_buckets=-1"], "model.ngram_buckets must be an integer from 0 to 2**40, got -1"),
    (["--test", "HEADER_ONLY"], "the test file holds no usable row (only a header?)"),
    (["--test", "MISSING"], "no such file"),
])
def test_inputs_and_settings_are_checked_before_the_first_token(flags, message, data, tmp_path):
    train, test, _, _ = data
    header_only = tmp_path / "header.csv"
    header_only.write_text("label,text\n")
    flags = [str(header_only) if f == "HEADER_ONLY" else str(tmp_path / "missing.csv") if f == "MISSING" else f for f in flags]
    test_flag = [] if "--test" in flags else ["--test", test]
    out = tmp_path / "M"
    result = cli_here("train", "--train", train, *test_flag, "--out", out, *SMALL, *flags)
    assert result.returncode == 2 and message in result.stderr and "internal error" not in result.stderr, result.stderr
    assert not out.exists()  # nothing was read, nothing written


def test_cache_dir_false_turns_the_cache_off(data, tmp_path):
    train, test, _, _ = data
    result = textpipe("train", "--train", train, "--test", test, "--out", tmp_path / "M", "--set", "data.cache_dir=false", *SMALL)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "M" / "config.json").read_text())["data"]["cache_dir"] is False


def test_a_same_size_edit_with_the_old_mtime_is_refused_by_resume(tmp_path):
    from textpipe.run.config import PipelineConfig
    from textpipe.run.phases import resume_run, train_files
    from textpipe.text.sources import DataError
    from textpipe.text.tokenizer import TokenizerConfig
    from textpipe.core.train import TrainConfig

    train = write_csv(tmp_path / "train.csv", make_rows(200, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(50, seed=3))
    config = PipelineConfig(tokenizer=TokenizerConfig("whitespace"), train=TrainConfig(epochs=1, checkpoint_every=1))
    config.model.ngram_buckets = 64
    with crash_after_step(2, KeyboardInterrupt(), after_checkpoint=2), pytest.raises(KeyboardInterrupt):
        train_files(train, test, tmp_path / "run", config=config, quiet=True)
    before = train.stat()
    data = train.read_bytes()
    train.write_bytes(data.replace(b"pos,", b"neg,", 1))  # same size
    os.utime(train, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(DataError, match="the training file changed since the run started"):
        resume_run(tmp_path / "run", quiet=True)


def test_resume_never_loads_a_checkpoint_the_run_did_not_record(tmp_path, monkeypatch, caplog):
    import torch

    from textpipe.core.checkpoint import CheckpointStore

    store = CheckpointStore(tmp_path, keep=2)
    store.save({"weights": torch.ones(3)}, step=1)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "step-000000009.pt", _use_new_zipfile_serialization=False)  # planted, legacy format
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kw: loads.append(str(path)) or real_load(path, **kw))
    with caplog.at_level("WARNING", logger="textpipe"):
        assert torch.equal(store.load_latest()["weights"], torch.ones(3))
    assert loads == [str(tmp_path / "step-000000001.pt")]
    assert "step-000000009.pt (not recorded as written by this run)" in caplog.text


def test_written_files_get_the_usual_permissions(data, tmp_path):
    _, _, _, model = data
    umask = os.umask(0o022)
    os.umask(umask)
    assert {oct((model / name).stat().st_mode & 0o777) for name in BUNDLE_AND_REPORT} == {oct(0o666 & ~umask)}
    with atomic_output(tmp_path / "out.txt") as f:
        f.write("x")
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_predict_into_a_missing_folder_is_a_usage_error(data, tmp_path):
    _, _, _, model = data
    result = cli_here("predict", "--model", model, "great", "--output", tmp_path / "nope" / "out.jsonl")
    assert result.returncode == 2
    assert result.stderr.startswith(f"textpipe predict: error: --output {tmp_path}/nope/out.jsonl: folder {tmp_path}/nope does not exist\n")


# Issue 30, item 1: never touch what is not the run's own.

def not_regular(kind: str, path: Path, victim: Path) -> Path:
    """Put ``kind`` at ``path``: a symlink to ``victim``, a FIFO, a folder, or a device (a null device of its own, never
    /dev/null itself: a textpipe that replaced devices would break the machine it is tested on)."""
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    return path


def test_a_symlinked_or_foreign_lock_is_refused_and_left_as_it_is(data, tmp_path):
    train, test, _, _ = data
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's own file\n")
    for kind, make in [("a symbolic link", lambda lock: lock.symlink_to(victim)), ("other content", lambda lock: lock.write_text("notes\n")),
                       ("a link to another file", lambda lock: os.link(victim, lock))]:
        out = tmp_path / kind.replace(" ", "-")
        out.mkdir()
        make(out / LOCK)
        before = os.lstat(out / LOCK)
        result = textpipe("train", "--train", train, "--test", test, "--out", out, *SMALL)
        assert result.returncode == 2 and f"{out / LOCK}" in result.stderr and kind.split()[-1] in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert victim.read_text() == "the user's own file\n" and os.lstat(out / LOCK).st_mtime_ns == before.st_mtime_ns
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / LOCK).write_text("99999999\n")  # left by a killed run: reused
    with RunLock(stale):
        assert (stale / LOCK).read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder", "device"])
def test_output_files_are_only_ever_regular_files(kind, data, tmp_path):
    _, test, _, model = data
    victim = tmp_path / "mine.txt"
    victim.write_text("keep me\n")
    target = not_regular(kind, tmp_path / "out.jsonl", victim)
    before = os.lstat(target)
    commands = [("predict", "--model", model, "great", "--output", target), ("embed", "--model", model, "great", "--output", target),
                ("vocab", "build", test, "--out", target)]
    if kind == "symlink":
        target.with_suffix(".npy").symlink_to(victim)
        commands.append(("embed", "--model", model, "great", "--output", target.with_suffix(".npy")))
    for command in commands:
        result = cli_here(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr and str(command[-1]) in result.stderr.splitlines()[0], result.stderr
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_mtime_ns) == (before.st_mode, before.st_ino, before.st_mtime_ns)
    assert victim.read_text() == "keep me\n"
    expected = {victim.name, target.name} | ({"out.npy"} if kind == "symlink" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected  # no temporary file left either


def test_output_dash_is_standard_output(data, tmp_path, monkeypatch):
    _, _, _, model = data
    monkeypatch.chdir(tmp_path)
    result = cli_here("predict", "--model", model, "great", "--output", "-")
    assert result.returncode == 0 and result.stdout.startswith('{"text": "great"')
    assert list(tmp_path.iterdir()) == []  # no file named "-"


def test_evaluate_out_must_be_a_folder(data, tmp_path):
    _, test, _, model = data
    for kind in ("file", "symlink to a file"):
        out = tmp_path / kind.replace(" ", "-")
        if kind == "file":
            out.write_text("mine\n")
        else:
            (tmp_path / "target").write_text("mine\n")
            out.symlink_to(tmp_path / "target")
        result = cli_here("evaluate", "--model", model, "--data", test, "--out", out)
        assert result.returncode == 2 and result.stderr.startswith(f"textpipe evaluate: error: {out} is a "), result.stderr
        assert "not a folder" in result.stderr and "Traceback" not in result.stderr


def test_a_symlinked_staging_folder_is_refused_never_followed(data, tmp_path):
    train, test, _, model = data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.json").write_text("{}")
    out = tmp_path / "M"
    shutil.copytree(model, out)
    (out / STAGE).symlink_to(elsewhere, target_is_directory=True)
    for args in (["--train", train, "--test", test, "--out", out, "--overwrite", *SMALL], ["--resume", out]):
        result = textpipe("train", *args)
        assert result.returncode == 2 and f"{out / STAGE} is a symbolic link, not textpipe's staging folder" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert [p.name for p in elsewhere.iterdir()] == ["run.json"] and (out / STAGE).is_symlink()


def test_atomic_writes_replace_regular_files_only(tmp_path):
    from textpipe.core.files import OutputError, atomic_write_text

    victim = tmp_path / "victim"
    victim.write_text("mine")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(OutputError, match="link is a symbolic link, not a regular file"):
        atomic_write_text(tmp_path / "link", "new")
    atomic_write_text(victim, "replaced")  # a regular file: replaced as ever
    assert victim.read_text() == "replaced" and sorted(p.name for p in tmp_path.iterdir()) == ["link", "victim"]
