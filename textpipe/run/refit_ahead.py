"""The refit's epochs on the other core, beside the train phase: the same weights, bit for bit, sooner.

A refit (``train.refit``) trains a fresh model on every training row for as many epochs as the
train phase's early stopping picks. With a constant learning rate (the default schedule, no
warmup) its first k epochs do not depend on k: a refit of k epochs is the first k epochs of a
longer one. So once the train phase's vocabulary exists, :meth:`RefitAhead.start` forks a
child that trains the refit epoch by epoch while the parent trains the train phase on the other
core. The parent tells it each epoch's verdict (:meth:`RefitAhead.judged`); the child keeps the
weights of each epoch that may still be the one picked, and once told the pick
(:meth:`RefitAhead.pick`) it writes that epoch's weights and history to a file and exits. The
parent's refit phase loads them (:meth:`RefitAhead.take`) instead of training. Before its epochs the child fits
the train phase's NB linear candidates (they read only the training rows); after them it loads matplotlib and
draws the report's PNGs while the parent writes the bundle.

Only where it pays and cannot change a weight: a second core that is free, one CPU process
(no torchrun, no GPU, no DataLoader workers), a fresh train phase, a per-epoch constant learning
rate, no step checkpoints asked for (the child writes none: a run killed in its refit trains
the refit again on resume, to the same weights). Anything amiss (the child failed, died, or
its file is not whole) and the refit trains in the parent, as it always did. The child dies
with its parent (``PR_SET_PDEATHSIG`` on Linux; elsewhere at its next epoch, when the pipe closes).

Example:
    >>> ahead = RefitAhead.start(lambda: run_refit_for(max_epochs), max_epochs=60, folder=scratch)
    >>> stop = listen("epoch_done", ahead.judged)   # the train phase's epochs
    >>> ...; ahead.pick(best_epoch)
    >>> history = ahead.take(refit_model)   # None: train the refit here
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ..bundle.report import load_plotting, write_plots
from ..core.events import listen
from ..core.nb_linear import Candidates
from ..core.runtime import Placement
from ..core.train import FitResult, TrainConfig

log = logging.getLogger("textpipe")

WEIGHTS = "refit.pt"


def may_run_ahead(model: str, train: TrainConfig, placement: Placement, workers: int) -> bool:
    """Whether a refit trained ahead gets the weights the refit would (the bag, whose ops give the same bits on one thread; a
    constant per-epoch learning rate; no step checkpoints, which the child would not write; one CPU process, no DataLoader
    workers), and a core is free for it."""
    exact = model == "bag" and train.schedule == "constant" and not train.warmup and not train.checkpoint_every
    return exact and placement.world == 1 and placement.device.type == "cpu" and workers == 0 and other_core_free()


def other_core_free() -> bool:
    """Whether a second core is idle now: two or more this process may run on, and no more runnable tasks than this one
    on them (Linux's count of the tasks runnable right now; elsewhere the 1-minute load average). On a busy machine the
    child would only slow the train phase down."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        others = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1  # "runnable/all" tasks, this one included
    except (OSError, ValueError, IndexError):
        others = os.getloadavg()[0]
    return cores >= 2 and others <= cores - 2


class _Picked(Exception):
    """Raised in the child at the end of the epoch the parent picked: its refit's epochs are over."""


class Job(NamedTuple):
    """What the child does, in order, as the run's own calls: the train phase's NB linear fits (every C, from its training
    rows alone; None: the model has no NB path), then the refit (for ``max_epochs`` at most, emitting ``epoch_done``)."""

    train_candidates: Callable[[], Candidates | None] | None
    refit: Callable[[], object]
    max_epochs: int


class RefitAhead:
    """The parent's handle on a refit training ahead in a child process. Each of its calls, in the run's order, is one
    step of the conversation; any failure of the child makes the rest return None and the run does that step itself.

    Example:
        >>> ahead = RefitAhead.start(Job(train_candidates, refit, max_epochs=60), folder=scratch)
        >>> result = ahead.follow(train)            # the train phase's epochs; the child is told each verdict, then the pick
        >>> record = ahead.fit_nb(fit_nb)           # the train phase's NB fit, from the candidates the child fit
        >>> history = ahead.take(refit_model)       # the picked epoch's weights, loaded
    """

    def __init__(self, process, conn, folder: Path):
        self.process, self.conn, self.folder = process, conn, folder
        self.picked: int | None = None
        self.failed: str | None = None

    @classmethod
    def start(cls, job: Job, folder: Path) -> "RefitAhead | None":
        """Fork a child that does ``job``, its files going to ``folder``; None where fork is not there."""
        if "fork" not in multiprocessing.get_all_start_methods():
            return None
        parent_end, child_end = multiprocessing.Pipe()
        process = multiprocessing.get_context("fork").Process(target=_child, args=(child_end, parent_end, job, folder), daemon=True)
        process.start()
        child_end.close()
        return cls(process, parent_end, folder)

    def judged(self, epoch: int, best_epoch: int, **_) -> None:
        """The train phase finished ``epoch``; its best so far is ``best_epoch`` (an ``epoch_done`` listener)."""
        self._send(("epoch", epoch, best_epoch))

    def follow(self, train: Callable[[], FitResult]) -> FitResult:
        """Run ``train`` (the train phase's fit), telling the child each epoch's verdict, then the epoch it picked; on one
        thread, as the child: the other core is the child's (two threads here, each waiting for the other at every parallel
        op, made the train phase of mr 9x slower), and the bag's training ops give the same bits on one thread."""
        stop, threads = listen("epoch_done", self.judged), torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = train()
        finally:
            stop()
            torch.set_num_threads(threads)
        self.picked = result.best_epoch
        self._send(("pick", self.picked))
        return result

    def fit_nb(self, fit_nb: Callable[[Candidates | None], dict | None]) -> dict | None:
        """``fit_nb(candidates)``, the train phase's NB fit, with the candidates the child fit (None: it fits them itself)."""
        found = self._receive("nb")
        return fit_nb(Candidates(**torch.load(self.folder / found[1], weights_only=True)) if found and found[1] else None)

    def take(self, model: torch.nn.Module) -> list[dict] | None:
        """Wait for the refit's epochs, load their weights into ``model`` (the refit's, freshly built) and return the
        refit's history; None (``model`` untouched) when the child could not finish: the caller trains the refit itself."""
        if self._receive("done") is None:
            return None
        try:
            saved = torch.load(self.folder / WEIGHTS, weights_only=True, mmap=True)
            if saved["epoch"] != self.picked or len(saved["history"]) != self.picked:
                raise RuntimeError(f"its file holds epoch {saved['epoch']} of a refit of {self.picked}")
            model.load_state_dict(saved["weights"])
            return saved["history"]
        except (OSError, RuntimeError, KeyError, TypeError) as err:
            self._fail(f"its weights could not be read: {err}")
            return None

    def draw(self, out: Path, summary: dict, history: list[dict] | None) -> bool:
        """Ask the child to draw the report's PNGs into ``out`` (it loaded matplotlib while the run scored); False if it cannot."""
        if self.failed is None:
            self._send(("plots", out, summary, history))
        return self.failed is None

    def drawn(self) -> bool:
        """Wait for the PNGs :meth:`draw` asked for; False (the caller draws them) if the child could not."""
        return self._receive("plotted") is not None

    def close(self) -> None:
        """Stop the child (if it still runs) and remove its folder; safe to call twice."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _receive(self, kind: str) -> tuple | None:
        """The child's next message, which should be ``kind``; None once the child has failed (said once, as a warning)."""
        if self.failed is None:
            try:
                message = self.conn.recv()
                if message[0] == kind:
                    return message
                self._fail(message[1] if message[0] == "failed" else f"it sent {message!r} where {kind!r} was due")
            except (EOFError, OSError) as err:
                self._fail(f"it stopped: {err or type(err).__name__}")
        return None

    def _fail(self, why: str) -> None:
        self.failed = why
        log.warning(f"the process on the other core failed ({why}); the run does its part itself")
        self.close()

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the child is gone: the next _receive says so
            pass


def scratch_folder() -> Path:
    """A folder for the child's files (its run.json and vocabulary, the weights it sends): outside the run's staging folder,
    so nothing of it is ever committed."""
    return Path(tempfile.mkdtemp(prefix="textpipe-refit-ahead-"))


class _Keeper:
    """The child's side: the parent's verdicts, and the weights of each epoch that may still be picked."""

    def __init__(self, conn, max_epochs: int):
        self.conn, self.max_epochs = conn, max_epochs
        self.judged, self.best, self.picked = 0, 0, None
        self.kept: dict[int, tuple[dict, list]] = {}

    def read(self, until_picked: bool = False) -> None:
        """The parent's messages so far (``until_picked``: and on until the pick); EOFError when the parent is gone."""
        while self.conn.poll() or (until_picked and self.picked is None):
            kind, *values = self.conn.recv()
            if kind == "epoch":
                self.judged, self.best = values
            else:
                self.picked = values[0]

    def may_be_picked(self, epoch: int) -> bool:
        """Whether ``epoch`` is, or may still become, the one early stopping picks (only a new best moves the best)."""
        return epoch == self.picked if self.picked is not None else epoch > self.judged or epoch == self.best

    def epoch_done(self, epoch: int, model: torch.nn.Module, history: list[dict], **_) -> None:
        self.read()
        if self.may_be_picked(epoch):
            self.kept[epoch] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, [dict(h) for h in history])
        self.kept = {e: kept for e, kept in self.kept.items() if self.may_be_picked(e)}
        if epoch >= self.max_epochs:
            self.read(until_picked=True)
        if self.picked is not None and epoch >= self.picked:
            raise _Picked


def _child(conn, parent_end, job: Job, folder: Path) -> None:
    _die_with_parent()
    parent_end.close()  # the parent's end, copied by the fork: closed, so the parent's exit closes the pipe
    # The parent's OpenMP threads did not come along with the fork: a parallel region would wait for them forever. The bag's
    # training ops split their work by rows or not at all, so one thread reaches the same bits (a DataLoader worker does the same).
    torch.set_num_threads(1)
    keeper = _Keeper(conn, job.max_epochs)
    try:
        if job.train_candidates is not None:
            conn.send(("nb", _saved(job.train_candidates(), folder / "train_nb.pt")))
        listen("epoch_done", keeper.epoch_done)
        try:
            job.refit()
        except _Picked:
            pass
        weights, history = keeper.kept[keeper.picked]
        torch.save({"epoch": keeper.picked, "weights": weights, "history": history[:keeper.picked]}, folder / WEIGHTS)
        conn.send(("done", keeper.picked))
        load_plotting()  # while the parent scores: then the report's PNGs, drawn here beside its bundle write
        kind, *args = conn.recv()
        if kind == "plots":
            write_plots(*args)
            conn.send(("plotted",))
    except EOFError:  # the parent is gone
        os._exit(0)
    except BaseException as err:  # noqa: BLE001 (any failure: the parent does the rest itself)
        try:
            conn.send(("failed", f"{type(err).__name__}: {err}"))
        except OSError:
            pass


def _saved(candidates: Candidates | None, path: Path) -> str | None:
    """``candidates`` in a file of the scratch folder (its name, for the parent), or None."""
    if candidates is None:
        return None
    torch.save(candidates._asdict(), path)
    return path.name


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a kill -9 of the run takes the child with it)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
