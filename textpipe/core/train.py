"""The training loop, on padded batches only (no text, no torchtext).

One step (:func:`train_step`) is the classic ``zero_grad`` -> forward -> loss ->
``backward`` -> ``step``, with AdamW and, for sparse embedding tables, RowAdam
(:mod:`textpipe.core.optim`). :func:`fit` runs epochs of steps; after each epoch the model
is scored on dev (:func:`textpipe.core.metrics.evaluate`) and the best weights so far are
kept: the best epoch has the highest dev accuracy, ties going to the lower dev loss.
Training stops (and the best weights are restored) when either

- the best epoch is ``patience`` epochs old, or
- dev accuracy has not risen by more than ``min_delta`` for ``2 * patience`` epochs:
  a falling dev loss alone (accuracy tied) keeps training going for at most
  ``patience`` epochs more, so a plateau, e.g. at 1.0 on easy data, stops it.

How the run runs comes in once, as a :class:`~textpipe.core.runtime.RunContext`. With its
checkpoint store, the whole training state (weights, optimizer moments, RNG states, the
DataLoader's position) is saved every ``checkpoint_seconds`` and every ``checkpoint_every``
steps, in the background, and a resume from it reaches bit-identical weights. :func:`fit`
changes no process-wide setting; the caller enters :func:`~textpipe.core.runtime.run_scope`.
Named points (:mod:`textpipe.core.events`): ``step_done`` (``step``, ``epoch``; that step's checkpoint, if due,
begun), ``evaluated`` (``epoch``, ``dev``: scored, not yet recorded), ``epoch_done`` (``epoch``: recorded, the next not begun; ``best_epoch``, ``model``, ``history``).
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .collate import Batch
from .events import emit
from .metrics import evaluate, selection_score
from .losses import class_weight_tensor, correct_count, loss_function  # noqa: F401 (class_weight_tensor re-exported)
from .optim import SCHEDULES, clip_grad_norm, make_optimizers, make_schedulers, per_step_schedule
from .runtime import Interrupted, RunContext, distributed_wrap, join_uneven_inputs

log = logging.getLogger("textpipe")  # the CLI sends it to stderr; a library caller decides for itself


@dataclass
class TrainConfig:
    # Chosen on dev splits: a small constant lr with early stopping trains small files long enough, large ones without overfitting.
    epochs: int = 60  # at most; with "linear" the learning rate decays over this many epochs
    batch_size: int | Literal["auto"] = "auto"  # "auto": from the training rows (config.batch_choice): 32 up to 32,767 rows, up to 1024 past that
    lr: float = 1e-3  # AdamW for dense layers, RowAdam for sparse embedding tables
    weight_decay: float = 0.0
    schedule: str = "constant"  # "linear" (per epoch), "constant", or "linear_steps" (per step, to 0 at the last step)
    warmup: float = 0.0  # fraction of all steps over which lr rises linearly from 0; > 0 makes the schedule per step
    grad_clip: float = 0.0  # max total gradient norm (sparse rows included); 0 = off
    label_smoothing: float = 0.0  # CrossEntropyLoss(label_smoothing=...)
    class_weights: str = "none"  # "balanced": class c weighs n / (k * count_c) in the training loss
    patience: int = 3  # epochs without a new best dev epoch before stopping (see the module docstring)
    min_delta: float = 0.0  # dev accuracy must rise by more than this to count as progress
    seed: int = 0
    device: str = "cpu"  # "auto": cuda when there is a GPU; on cuda, bf16 autocast, pinned memory, non-blocking copies
    checkpoint_every: int = 0  # with a checkpoint folder: also save every N steps (0: by time only)
    checkpoint_seconds: float = 60.0  # with a checkpoint folder: save when this long has passed since the last save (and on SIGINT/SIGTERM)
    keep_checkpoints: int = 2  # newest checkpoints kept while the run goes on; 0 turns checkpoints off
    keep_checkpoints_after: bool = False  # keep the checkpoints once the run has finished (default: delete them)
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (runtime.run_scope): error on an op with no deterministic kernel
    # Without a dev file: once early stopping has picked the epoch count on the held-out rows, train a fresh model on every
    # training row for that many epochs (what the pipeline ships). "auto": under 100,000 rows (config.REFIT_MAX_ROWS) only.
    refit: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1 or self.grad_clip < 0:
            raise ValueError(f"need 0 <= warmup < 1, 0 <= label_smoothing < 1 and grad_clip >= 0: {self}")
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {self.class_weights!r}")
        if self.epochs < 1 or (self.batch_size != "auto" and self.batch_size < 1) or self.patience < 1 or self.lr <= 0 or self.min_delta < 0:
            raise ValueError(f"epochs, batch_size and patience must be >= 1, lr > 0 and min_delta >= 0: {self}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0 or not self.checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_every and keep_checkpoints must be >= 0, checkpoint_seconds > 0: {self}")
        if self.refit not in (True, False, "auto"):
            raise ValueError(f"refit must be true, false or \"auto\", got {self.refit!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if not math.isfinite(self.lr) or not math.isfinite(self.weight_decay):
            raise ValueError(f"lr and weight_decay must be finite numbers: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_epoch: int
    best_dev: dict
    history: list[dict] = field(default_factory=list)
    nb_linear: dict | None = None  # the bag's NB linear path, once fit (textpipe.core.nb_linear): its C, alpha and dev scores


@dataclass
class TrainState:
    """Where a run is: everything besides model and optimizers that a resume needs."""

    epoch: int = 1  # the epoch in progress
    step: int = 0  # optimizer steps since the start of the run
    loss_sum: float = 0.0  # this epoch's running totals, for its train loss and accuracy
    correct: int = 0
    seen: int = 0
    best_epoch: int = 0
    best_dev: dict | None = None
    progress_epoch: int = 0  # the last epoch whose dev accuracy rose by more than min_delta ...
    progress_accuracy: float = -1.0  # ... to this
    history: list[dict] = field(default_factory=list)
    finished: bool = False  # early stopping fired or the last epoch ended

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite; the weights are unusable from that step on."""


class TrainingInterrupted(Interrupted):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, signal_name: str, checkpoint: str | None):
        self.checkpoint = checkpoint
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint (checkpoints are off)"
        super().__init__(signal_name, f"{signal_name}: training stopped, {saved}")


def train_step(
    model: nn.Module, batch: Batch, optimizers: list[torch.optim.Optimizer], loss_fn: nn.Module, grad_clip: float = 0.0
) -> tuple[float, int]:
    """One optimizer step on one batch; returns the batch's summed loss and correct count."""
    # The module's zero_grad, not each optimizer's: torch.optim wraps its zero_grad in a
    # torch._dynamo guard whose cost shows on small CPU steps.
    model.zero_grad(set_to_none=True)
    # Mixed precision on a GPU: bf16 needs no loss scaling; on cpu autocast stays off (exact, resumable results).
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.ids.is_cuda):
        logits = model(batch.ids, batch.mask)
        loss = loss_fn(logits.float(), batch.labels)
    loss.backward()
    if grad_clip > 0:
        clip_grad_norm(model.parameters(), grad_clip)
    for opt in optimizers:
        opt.step()
    # With class weights the mean divides by the batch's weight total, so that times the mean is the summed loss optimized.
    total = len(batch) if getattr(loss_fn, "weight", None) is None else loss_fn.weight[batch.labels].sum().item()
    return loss.item() * total, correct_count(logits, batch.labels)


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    dev_loader: Iterable[Batch] | None,
    config: TrainConfig,
    num_classes: int,
    *,
    num_train: int | None = None,
    class_counts: list[int] | None = None,
    context: RunContext | None = None,
    multi_label: bool = False,
) -> FitResult:
    """Train with early stopping on dev accuracy; the model ends with its best weights.

    With ``dev_loader=None`` it trains exactly ``config.epochs`` epochs and keeps the
    last weights (a refit, once the epoch count is known). ``num_train`` (training rows)
    sizes the progress bar and per-step schedules; ``class_counts`` (rows per class, in
    label order) is needed for ``config.class_weights="balanced"``. ``context``
    (:class:`~textpipe.core.runtime.RunContext`, by default ``RunContext.resolve(config.device)``)
    brings the checkpoint store and the checkpoint to resume from (mid-epoch needs a
    ``train_loader`` with ``state_dict``, torchdata's ``StatefulDataLoader``); with its
    ``stop``, a SIGINT / SIGTERM saves a checkpoint at the next step and raises
    :class:`TrainingInterrupted`. A NaN or infinite loss raises :class:`TrainingDiverged`
    before the step's weights reach any checkpoint. ``multi_label`` trains one sigmoid per
    label (:class:`MultiLabelLoss`) on batches whose labels are packed label sets, and
    early stopping follows dev micro-F1 instead of accuracy.

    Example:
        >>> set_seed(0); model = build_model(ModelConfig(vocab_size=len(vocab), num_classes=2))
        >>> result = fit(model, train_loader, dev_loader, TrainConfig(epochs=5), num_classes=2)
        >>> result.best_dev["accuracy"]
    """
    context = context or RunContext.resolve(config.device)
    data = _Data(train_loader, dev_loader, num_classes, _steps_per_epoch(train_loader, num_train, config))
    loop = _Loop(model, data, config, context)
    loss_fn = loss_function(num_classes, class_counts, class_weights=config.class_weights, label_smoothing=config.label_smoothing,
                            multi_label=multi_label).to(context.device)
    while not loop.state.finished:
        loop.train_one_epoch(loss_fn, num_train)
        loop.end_epoch()
    return loop.finish()


class _Data(NamedTuple):
    """What :func:`fit` trains on and scores with: the loaders, the number of classes, the optimizer steps an epoch takes."""

    train: Iterable[Batch]
    dev: Iterable[Batch] | None
    num_classes: int
    steps_per_epoch: int


class _Loop:
    """The model, its optimizers and the run's state, between the steps of :func:`fit`."""

    def __init__(self, model, data: _Data, config: TrainConfig, context: RunContext):
        self.model, self.train_loader, self.dev_loader = model.to(context.device), data.train, data.dev
        self.config, self.num_classes, self.context = config, data.num_classes, context
        # DDP under torchrun: the same parameters; evaluation uses `model` directly.
        self.train_model = distributed_wrap(model, context.device) if context.world_size > 1 else model
        self.optimizers = make_optimizers(model, config)
        self.schedulers = make_schedulers(self.optimizers, config, data.steps_per_epoch)
        self.per_step = per_step_schedule(config)
        self.state, self.best_weights = TrainState(), None
        if context.resume is not None:
            self.state = self._resume_from(context.resume)
        self.stateful_loader = hasattr(data.train, "state_dict")
        if config.checkpoint_every and not self.stateful_loader:
            raise ValueError("checkpoint_every needs a train_loader with state_dict (torchdata's StatefulDataLoader)")
        self.last_save = time.monotonic()

    def train_one_epoch(self, loss_fn: nn.Module, num_train: int | None) -> None:
        state, config, device = self.state, self.config, self.context.device
        if hasattr(getattr(self.train_loader, "dataset", None), "set_epoch"):
            self.train_loader.dataset.set_epoch(state.epoch)
        self.model.train()
        # A bar on a terminal only (tqdm's disable=None); logs get the one line per epoch of end_epoch.
        self.epoch_start, self.seen_before = time.perf_counter(), state.seen  # for the rows/s of the log line (never saved)
        bar = tqdm(total=num_train, initial=state.seen, desc=f"epoch {state.epoch}/{config.epochs}", unit="row",
                   disable=True if self.context.quiet else None, file=sys.stderr, leave=False)
        with bar, join_uneven_inputs(self.train_model):
            for batch in self.train_loader:
                loss_sum, correct = train_step(self.train_model, batch.to(device, non_blocking=True), self.optimizers, loss_fn, config.grad_clip)
                if not math.isfinite(loss_sum):
                    raise self._diverged(loss_sum)
                for scheduler in self.schedulers if self.per_step else ():
                    scheduler.step()
                state.step += 1
                state.loss_sum += loss_sum
                state.correct += correct
                state.seen += len(batch)
                bar.update(len(batch))
                bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}", acc=f"{state.correct / state.seen:.3f}", refresh=False)
                self._stop_if_signalled(mid_epoch=True)
                if self._checkpoint_due():
                    self._save_checkpoint(mid_epoch=True)
                emit("step_done", step=state.step, epoch=state.epoch)
        if state.seen == 0:
            raise ValueError("the training data yielded no batches")

    def end_epoch(self) -> None:
        """Step a per-epoch schedule, score dev, record the epoch, keep the best weights; stop on a signal."""
        state = self.state
        for scheduler in self.schedulers if not self.per_step else ():
            scheduler.step()
        rows_per_s = (state.seen - self.seen_before) / max(time.perf_counter() - self.epoch_start, 1e-9)
        dev = evaluate(self.model, self.dev_loader, self.num_classes, self.context.device) if self.dev_loader is not None else None
        if dev is not None:
            emit("evaluated", epoch=state.epoch, dev=dev)
        epoch, improved = state.epoch, record_epoch(state, dev, self.config)
        if not self.context.quiet:
            log.info(epoch_line(state.history[-1], improved, rows_per_s))
        if improved:  # in memory, and in every later checkpoint, so a resumed run ends with the same weights
            weights = self.model.state_dict()
            # Into the same tensors each time: a new copy of a large table per improved epoch costs several times more (fresh pages).
            self.best_weights = self.best_weights or {k: torch.empty_like(v, device="cpu") for k, v in weights.items()}
            for k, v in weights.items():
                self.best_weights[k].copy_(v)
        emit("epoch_done", epoch=epoch, best_epoch=state.best_epoch, model=self.model, history=state.history)
        self._stop_if_signalled(mid_epoch=False)

    def finish(self) -> FitResult:
        if self.context.checkpoints is not None:
            self.context.checkpoints.wait()
        if self.dev_loader is not None:
            self.model.load_state_dict(self.best_weights)
        return FitResult(self.state.best_epoch, self.state.best_dev, self.state.history)

    def _stop_if_signalled(self, mid_epoch: bool) -> None:
        stop = self.context.stop
        if stop is not None and stop.signal_name:
            raise TrainingInterrupted(stop.acted_on(), self._save_checkpoint(mid_epoch, wait=True))

    def _checkpoint_due(self) -> bool:
        # By time, not by epoch: a checkpoint costs the same whatever the epoch's length.
        if self.context.checkpoints is None:
            return False
        by_steps = self.config.checkpoint_every and self.state.step % self.config.checkpoint_every == 0
        return bool(by_steps) or time.monotonic() - self.last_save >= self.config.checkpoint_seconds

    def _save_checkpoint(self, mid_epoch: bool, wait: bool = False) -> str | None:
        # Written in the background while training goes on, unless `wait` (the run is about to stop).
        store = self.context.checkpoints
        if store is None or (mid_epoch and not self.stateful_loader):
            return None
        loader_state = self.train_loader.state_dict() if mid_epoch else None
        path = store.save_async(self._snapshot(loader_state), self.state.step)
        self.last_save = time.monotonic()
        if wait:
            store.wait()
        return str(path)

    def _snapshot(self, loader_state: dict | None) -> dict:
        return {
            "state": self.state.to_dict(),
            "model": self.model.state_dict(),
            "best_model": self.best_weights,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [sched.state_dict() for sched in self.schedulers],
            "loader": loader_state,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def _resume_from(self, checkpoint: dict) -> TrainState:
        """Put the model, optimizers, schedulers, loader position and RNGs back as ``checkpoint`` holds them."""
        self.model.load_state_dict(checkpoint["model"])
        self.best_weights = checkpoint["best_model"]
        for opt, saved in zip(self.optimizers, checkpoint["optimizers"], strict=True):
            opt.load_state_dict(saved)
        for sched, saved in zip(self.schedulers, checkpoint["schedulers"], strict=True):
            sched.load_state_dict(saved)
        if checkpoint["loader"] is not None:
            self.train_loader.load_state_dict(checkpoint["loader"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        random.setstate(checkpoint["rng"]["python"])
        return TrainState(**checkpoint["state"])

    def _diverged(self, loss: float) -> TrainingDiverged:
        store = self.context.checkpoints
        if store is not None:
            store.wait()
        kept = store.paths()[-1:] if store is not None else []
        where = f"; the last good checkpoint, {kept[0]}, is kept" if kept else ""
        return TrainingDiverged(f"training diverged: the loss became {loss} at step {self.state.step + 1} (epoch {self.state.epoch}) "
                                f"with lr {self.config.lr}{where}; try a smaller --lr (or --grad-clip 1.0)")


def record_epoch(state: TrainState, dev: dict | None, config: TrainConfig) -> bool:
    """Record the finished epoch (its dev scores, if any) in ``state``, decide whether to stop,
    and move ``state`` to the next epoch; True when dev improved on the best epoch so far.

    Example:
        >>> state = TrainState(loss_sum=3.0, correct=20, seen=32)
        >>> record_epoch(state, {"accuracy": 0.8, "macro_f1": 0.79, "loss": 0.45}, TrainConfig())
        True
    """
    state.history.append({
        "epoch": state.epoch,
        "train_loss": round(state.loss_sum / state.seen, 6),
        "train_accuracy": round(state.correct / state.seen, 6),
        **({f"dev_{k}": dev[k] for k in ("accuracy", "macro_f1", "loss", "micro_f1") if k in dev} if dev else {}),
    })
    # Ties in accuracy go to the lower loss, so a plateau in the first epochs on small data
    # does not stop a model that still learns; but only for `patience` extra epochs.
    best = state.best_dev
    improved = dev is not None and (best is None or (selection_score(dev), -dev["loss"]) > (selection_score(best), -best["loss"]))
    if dev is not None and selection_score(dev) > state.progress_accuracy + config.min_delta:
        state.progress_epoch, state.progress_accuracy = state.epoch, selection_score(dev)
    if improved:
        state.best_dev, state.best_epoch = dev, state.epoch
    stalled = dev is not None and (state.epoch - state.best_epoch >= config.patience or state.epoch - state.progress_epoch >= 2 * config.patience)
    state.finished = state.epoch >= config.epochs or stalled
    state.epoch += 1
    state.loss_sum, state.correct, state.seen = 0.0, 0, 0
    return improved


def epoch_line(record: dict, improved: bool, rows_per_s: float = 0.0) -> str:
    """The log line of one epoch's ``history`` record; `` *`` marks a new best dev epoch."""
    f1 = f"micro-f1 {record['dev_micro_f1']:.4f} macro-f1" if "dev_micro_f1" in record else "f1"  # multi-label: micro-F1 picks the epoch
    dev = f" | dev acc {record['dev_accuracy']:.4f} {f1} {record['dev_macro_f1']:.4f} loss {record['dev_loss']:.4f}{' *' if improved else ''}" if "dev_accuracy" in record else ""
    return f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f} ({rows_per_s:,.0f} rows/s){dev}"


def _steps_per_epoch(train_loader, num_train: int | None, config: TrainConfig) -> int:
    """Optimizer steps in one epoch, for a per-step schedule (0 when the schedule steps per epoch)."""
    if not per_step_schedule(config):
        return 0
    if num_train and config.batch_size != "auto":
        return -(-num_train // config.batch_size)
    try:
        return len(train_loader)
    except TypeError:
        raise ValueError("a per-step schedule (warmup, 'linear_steps') needs num_train or a train_loader with a length") from None
