"""Trains the small run of tests/test_resume.py and, on request, dies at one chosen point.

    python tests/kill_runner.py TRAIN TEST OUT [KILL_POINT [SIGNAL]]
    python tests/kill_runner.py --cli EVENT[:KEY=VALUE][@N] SIGNAL ARGS...   # `textpipe ARGS`, SIGNAL sent at EVENT (once checkpoint N is on disk)

KILL_POINT is one of KILL_POINTS below; the process sends itself SIGNAL there
(default SIGKILL: no handler, no cleanup, exactly what a crash or `kill -9` does).
Each point is a named event of the run (textpipe.core.events), matched by step, epoch or
checkpoint number, never by counting calls of an internal function. A point meant
"after checkpoint N" waits until that checkpoint is on disk: checkpoints are written
by a background thread, and a kill that raced the write would resume from an older one.
"""

import os
import signal
import sys
from dataclasses import dataclass

from event_hooks import when
from textpipe.core.events import listen
from textpipe.core.models import ModelConfig
from textpipe.run.config import DataConfig, PipelineConfig
from textpipe.run.phases import train_files
from textpipe.text.tokenizer import TokenizerConfig
from textpipe.core.runtime import Interrupted
from textpipe.core.train import TrainConfig


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


def at(event: str, sig: int, after_checkpoint: int | None = None, **match) -> None:
    """Send ``sig`` at the first ``event`` whose info holds ``match``, after checkpoint ``after_checkpoint``."""
    when(event, lambda: die(sig), after_checkpoint, **match)


def half_written_checkpoint(sig: int, step: int) -> None:
    """While checkpoint ``step`` is written: leave half its bytes in the temporary file, then send ``sig``."""

    def cut_and_die(file, **info) -> None:
        if info["step"] == step:
            file.flush()
            os.ftruncate(file.fileno(), file.tell() // 2)
            die(sig)

    listen("checkpoint_temp_written", cut_and_die)


def in_refit(point):
    """``point``, armed only once run.json has recorded the refit (the second training phase)."""
    return lambda sig: listen("phase_start", lambda phase, **_: point(sig) if phase == "refit" else None)


KILL_POINTS = {
    # before any checkpoint: the resume starts the run from the beginning
    "early": lambda sig: at("step_done", sig, step=2),
    # mid-epoch, one step after the step-15 checkpoint (epoch 2 of 4)
    "mid-epoch": lambda sig: at("step_done", sig, after_checkpoint=15, step=16),
    # between epochs: epoch 2 recorded, epoch 3 not begun (the newest checkpoint is step 20's, in epoch 2)
    "between-epochs": lambda sig: at("epoch_done", sig, after_checkpoint=20, epoch=2),
    # dev of epoch 3 scored, the score not yet recorded
    "dev-scored": lambda sig: at("evaluated", sig, after_checkpoint=35, epoch=3),
    # during the write of the step-15 checkpoint: a half-written temporary file
    "during-checkpoint-write": lambda sig: half_written_checkpoint(sig, step=15),
    # after training, with the weights of the final bundle written but not its vocabulary or bundle.json
    "during-bundle-save": lambda sig: at("bundle_weights_written", sig),
    # every output in the staging folder, the move into OUT not begun
    "before-commit": lambda sig: at("commit_start", sig),
    # every output moved into OUT, the staging folder not yet removed
    "during-commit": lambda sig: at("commit_files_moved", sig),
    # between the phases: the first phase's checkpoints cleared, run.json not yet told about the refit
    "before-refit-recorded": lambda sig: at("phase_end", sig, phase="train"),
    # the refit recorded in run.json, its vocabulary not yet built
    "refit-vocab": lambda sig: at("phase_start", sig, phase="refit"),
    # mid-refit, one step after its step-15 checkpoint
    "mid-refit": in_refit(lambda sig: at("step_done", sig, after_checkpoint=15, step=16)),
}


def cli_with_signal(event: str, sig: str, argv: list[str]) -> int:
    """``textpipe ARGV`` in this process, sending itself ``sig`` at the first ``event`` ("phase_end:phase=train"; "step_done:step=16@15":
    at step 16, once the checkpoint of step 15 is on disk)."""
    from textpipe.cli import main

    event, _, after = event.partition("@")
    name, _, condition = event.partition(":")
    key, _, value = condition.partition("=")
    match = {key: int(value) if value.isdigit() else value} if condition else {}
    at(name, getattr(signal, sig), int(after) if after else None, **match)
    return main(argv)


if __name__ == "__main__" and sys.argv[1] == "--cli":
    sys.exit(cli_with_signal(sys.argv[2], sys.argv[3], sys.argv[4:]))
elif __name__ == "__main__":
    train, test, out, *rest = sys.argv[1:]
    if rest:
        sig = getattr(signal, rest[1]) if len(rest) > 1 else signal.SIGKILL
        KILL_POINTS[rest[0]](sig)
    try:
        train_files(train, test, out, config=CONFIG, quiet=True)
    except Interrupted as err:
        print(err)
        sys.exit(130)
