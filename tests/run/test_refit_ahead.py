"""textpipe.run.refit_ahead: the refit trained in a child beside the train phase ships the weights the refit in the parent would."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_rows, write_csv
from textpipe.core.files import file_sha256
from textpipe.core.runtime import Placement
from textpipe.core.train import TrainConfig
from textpipe.run import refit_ahead
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.run.phases import train_files
from textpipe.run.refit_ahead import RefitAhead, may_run_ahead
from textpipe.text.tokenizer import TokenizerConfig

# Early stopping needs a few epochs to pick one, and the refit ahead must pass the pick: patience 2, at most 8 epochs.
CONFIG = PipelineConfig(tokenizer=TokenizerConfig("whitespace"), data=DataConfig(shuffle_buffer=100),
                        train=TrainConfig(epochs=8, lr=0.003, patience=2, keep_checkpoints=0))


TAKE = RefitAhead.take


@pytest.fixture
def files(tmp_path):
    return write_csv(tmp_path / "train.csv", make_rows(600, seed=4)), write_csv(tmp_path / "test.csv", make_rows(100, seed=5))


def run(files, out: Path, ahead: bool, monkeypatch) -> tuple[dict, list]:
    """Train with the refit ahead (or in the parent); the metrics and what each RefitAhead.take returned."""
    monkeypatch.setattr(refit_ahead, "other_core_free", lambda: ahead)
    taken = []
    monkeypatch.setattr(RefitAhead, "take", lambda self, model: taken.append(TAKE(self, model)) or taken[-1])
    return train_files(*files, out, config=CONFIG, quiet=True), taken


def test_the_refit_trained_ahead_ships_the_same_weights_bit_for_bit(files, tmp_path, monkeypatch):
    here, taken_here = run(files, tmp_path / "here", False, monkeypatch)
    ahead, taken = run(files, tmp_path / "ahead", True, monkeypatch)
    assert taken_here == [] and len(taken) == 1 and taken[0] is not None, "the second run's refit came from the child"
    assert here["refit"]["epochs"] == ahead["refit"]["epochs"] >= 2
    assert file_sha256(tmp_path / "here" / "weights.safetensors") == file_sha256(tmp_path / "ahead" / "weights.safetensors")
    assert here["refit"] == ahead["refit"] and here["test"] == ahead["test"]
    drawn = sorted(p.name for p in (tmp_path / "ahead").glob("*.png"))
    assert len(drawn) == 4, "the child drew the report's PNGs"
    assert all((tmp_path / "here" / name).read_bytes() == (tmp_path / "ahead" / name).read_bytes() for name in drawn)
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob(f"textpipe-refit-ahead-*/{refit_ahead.WEIGHTS}")), "its folder is removed"


def test_a_child_that_fails_leaves_the_refit_to_the_parent(files, tmp_path, monkeypatch, caplog):
    here, _ = run(files, tmp_path / "here", False, monkeypatch)

    def fail(self, **_):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(refit_ahead._Keeper, "epoch_done", fail)  # in the child only: the parent never keeps epochs
    failed, taken = run(files, tmp_path / "failed", True, monkeypatch)
    assert taken == [None] and "RuntimeError: out of memory, say" in caplog.text and "the run does its part itself" in caplog.text
    assert file_sha256(tmp_path / "here" / "weights.safetensors") == file_sha256(tmp_path / "failed" / "weights.safetensors")
    assert here["refit"] == failed["refit"] and len(list((tmp_path / "failed").glob("*.png"))) == 4, "the parent drew the PNGs"


@pytest.mark.parametrize("change", [dict(schedule="linear"), dict(warmup=0.1), dict(checkpoint_every=5)])
def test_no_refit_ahead_where_its_weights_or_checkpoints_would_differ(change, monkeypatch):
    monkeypatch.setattr(refit_ahead, "other_core_free", lambda: True)
    assert may_run_ahead("bag", TrainConfig(), Placement(), workers=0)
    assert not may_run_ahead("bag", TrainConfig(**change), Placement(), workers=0)
    assert not may_run_ahead("bag", TrainConfig(), Placement(rank=0, world=2), workers=0)
    assert not may_run_ahead("bag", TrainConfig(), Placement(), workers=2) and not may_run_ahead("cnn", TrainConfig(), Placement(), workers=0)


KILLED_RUN = """
import os, signal, sys
from textpipe.core.events import listen
from textpipe.run import refit_ahead
from textpipe.run.config import PipelineConfig
from textpipe.run.phases import train_files
sys.path[:0] = [sys.argv[4], sys.argv[5]]
from test_refit_ahead import CONFIG
refit_ahead.other_core_free = lambda: True
parent = os.getpid()

def die(epoch, **_):
    if os.getpid() == parent and epoch == 2:  # the train phase's second epoch, its refit ahead running in the child
        children = open(f"/proc/{parent}/task/{parent}/children").read().split()
        open(sys.argv[3], "w").write(" ".join(children))
        os.kill(parent, signal.SIGKILL)

listen("epoch_done", die)
train_files(sys.argv[1], sys.argv[2], sys.argv[3] + ".run", config=CONFIG, quiet=True)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's children from /proc (Linux)")
def test_a_run_killed_with_9_takes_its_refit_ahead_with_it(files, tmp_path):
    pids = tmp_path / "children"
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, *map(str, files), str(pids), str(Path(__file__).parent), str(Path(__file__).parents[1])],
                          cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(tmp_path)})  # the killed child's scratch folder stays in tmp_path
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    children = [int(pid) for pid in pids.read_text().split()]
    assert children, "the child was running when the parent was killed"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children), "the child outlived its killed parent"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] not in "ZX"
    except FileNotFoundError:
        return False


def test_the_refit_is_recorded_alike_either_way(files, tmp_path, monkeypatch):
    run(files, tmp_path / "ahead", True, monkeypatch)
    state = json.loads((tmp_path / "ahead" / "run.json").read_text())
    assert state["phase"] == "done" and state["refit"]["epochs"] >= 2
