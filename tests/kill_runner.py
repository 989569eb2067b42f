"""Trains the small run of tests/test_resume.py and, on request, dies at one chosen point.

    python tests/kill_runner.py TRAIN TEST OUT [KILL_POINT [SIGNAL]]

KILL_POINT is one of KILL_POINTS below; the process sends itself SIGNAL there
(default SIGKILL: no handler, no cleanup, exactly what a crash or `kill -9` does).
"""

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import textpipe.bundle
import textpipe.checkpoint
import textpipe.runfolder
import textpipe.train
from textpipe.events import listen
from textpipe.models import ModelConfig
from textpipe.pipeline import DataConfig, PipelineConfig, train_files
from textpipe.tokenizer import TokenizerConfig
from textpipe.train import TrainConfig


@dataclass
class SmallModel(ModelConfig):
    ngram_buckets: int = 1024  # small checkpoints, fast test


# 400 toy rows, 1 in 10 held out, batch 32: 12 steps per epoch; a checkpoint every 5 steps.
# Dev accuracy peaks at epoch 4, so the refit then trains 4 epochs of 13 steps on all 400 rows.
CONFIG = PipelineConfig(
    tokenizer=TokenizerConfig("whitespace"),
    data=DataConfig(shuffle_buffer=100),
    model=SmallModel(),
    train=TrainConfig(epochs=4, lr=0.02, checkpoint_every=5),
)


def die(sig: int) -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), sig)


def on_call(module, name: str, nth: int, sig: int, before=None) -> None:
    """Replace ``module.name`` with a wrapper that signals on its ``nth`` call (after running ``before``)."""
    real, calls = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            if before:
                before(*args, **kwargs)
            die(sig)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def on_event(name: str, sig: int, **match) -> None:
    """Signal at the first ``emit(name, ...)`` whose info includes ``match``."""
    listen(name, lambda **info: die(sig) if match.items() <= info.items() else None)


def half_written_checkpoint(path, write, *_):
    """Leave what a crash mid-write leaves: half the bytes in the temporary file."""
    if Path(path).name.startswith("step-"):
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        with open(tmp, "wb") as f:
            write(f)
        tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])


KILL_POINTS = {
    # before any checkpoint: the resume starts the run from the beginning
    "early": lambda sig: on_call(textpipe.train, "train_step", 3, sig),
    # mid-epoch, two steps after the step-15 checkpoint (epoch 2 of 4)
    "mid-epoch": lambda sig: on_call(textpipe.train, "train_step", 17, sig),
    # between epochs: at epoch 3's first step (the newest checkpoint is step 20's, in epoch 2)
    "between-epochs": lambda sig: on_call(textpipe.train, "train_step", 25, sig),
    # while dev is scored at the end of epoch 3
    "during-evaluation": lambda sig: on_call(textpipe.train, "evaluate", 3, sig),
    # during the write of the third step checkpoint: a half-written temporary file
    "during-checkpoint-write": lambda sig: on_call(textpipe.checkpoint, "atomic_write", 5, sig, before=half_written_checkpoint),  # each checkpoint: its file, then digests.json
    # after training, with the weights of the final bundle written but not its vocabulary or bundle.json
    "during-bundle-save": lambda sig: on_call(textpipe.bundle, "save_vocab", 1, sig),
    # every output in the staging folder, the move into OUT not begun
    "before-commit": lambda sig: on_event("commit_start", sig),
    # every output moved into OUT, the staging folder not yet removed
    "during-commit": lambda sig: on_call(textpipe.runfolder.shutil, "rmtree", 1, sig),
    # between the phases: the first phase's checkpoints cleared, run.json not yet told about the refit
    "before-refit-recorded": lambda sig: on_event("phase_end", sig, phase="train"),
    # the refit recorded in run.json, its vocabulary not yet built
    "refit-vocab": lambda sig: on_event("phase_start", sig, phase="refit"),
    # mid-refit, two steps after its step-15 checkpoint (48 steps of the first phase before it)
    "mid-refit": lambda sig: on_call(textpipe.train, "train_step", 48 + 17, sig),
}


if __name__ == "__main__":
    train, test, out, *rest = sys.argv[1:]
    if rest:
        sig = getattr(signal, rest[1]) if len(rest) > 1 else signal.SIGKILL
        KILL_POINTS[rest[0]](sig)
    try:
        train_files(train, test, out, config=CONFIG, quiet=True)
    except textpipe.train.TrainingInterrupted as err:
        print(err)
        sys.exit(130)
