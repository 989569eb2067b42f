"""Stage 6: the training loop and evaluation, on padded batches only (no text, no torchtext).

One step is the classic five lines::

    optimizer.zero_grad()
    # Mixed precision on a GPU: bf16 needs no loss scaling; on cpu autocast stays off (exact, resumable results).
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.ids.is_cuda):
        logits = model(batch.ids, batch.mask)
        loss = loss_fn(logits.float(), batch.labels)
    loss.backward()
    optimizer.step()

(:func:`train_step` clears the gradients with ``model.zero_grad(set_to_none=True)``,
which does the same as the optimizers' ``zero_grad`` with less overhead per call.)
Embedding tables built with ``sparse=True`` are stepped by :class:`RowAdam` (lazy
Adam, as ``torch.optim.SparseAdam``: only the rows a batch used are touched);
every other parameter by ``AdamW``.
After each epoch the model is scored on the dev loader and the best weights so far
are kept: the best epoch has the highest dev accuracy, ties going to the lower dev
loss. Training stops (and the best weights are restored) when either

- the best epoch is ``patience`` epochs old, or
- dev accuracy has not risen by more than ``min_delta`` for ``2 * patience`` epochs:
  a falling dev loss alone (accuracy tied) keeps training going for at most
  ``patience`` epochs more, so a plateau, e.g. at 1.0 on easy data, stops it.

Given a :class:`~textpipe.checkpoint.CheckpointStore`, :func:`fit` saves the whole
training state (weights, optimizer moments, RNG states, the DataLoader's position)
at the end of every epoch and every ``checkpoint_every`` steps, written in the
background while training goes on, and can resume from it mid-epoch to
bit-identical weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointStore
from .collate import Batch

log = logging.getLogger("textpipe")  # the CLI sends it to stderr; a library caller decides for itself


SCHEDULES = ("linear", "constant", "linear_steps")


@dataclass
class TrainConfig:
    # Defaults chosen on dev splits (README, "How good is the default"): a small constant lr
    # and early stopping train small data sets (trec6) long enough without overfitting large ones.
    epochs: int = 60  # at most; with "linear" the learning rate decays over this many epochs
    batch_size: int = 32
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
    deterministic: bool = False  # torch.use_deterministic_algorithms(True): error on an op with no deterministic kernel
    # Without a dev file: once early stopping has picked the epoch count on the held-out rows,
    # train a fresh model on every training row for that many epochs (what the pipeline ships).
    refit: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1 or self.grad_clip < 0:
            raise ValueError(f"need 0 <= warmup < 1, 0 <= label_smoothing < 1 and grad_clip >= 0: {self}")
        if self.class_weights not in ("none", "balanced"):
            raise ValueError(f"class_weights must be 'none' or 'balanced', got {self.class_weights!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and patience must be >= 1 and lr > 0: {self}")
        if self.min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {self.min_delta}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 0:
            raise ValueError(f"checkpoint_every and keep_checkpoints must be >= 0: {self}")
        if not self.checkpoint_seconds > 0:
            raise ValueError(f"checkpoint_seconds must be > 0, got {self.checkpoint_seconds}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        if not math.isfinite(self.lr) or not math.isfinite(self.weight_decay):
            raise ValueError(f"lr and weight_decay must be finite numbers: {self}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown train config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_epoch: int
    best_dev: dict
    history: list[dict] = field(default_factory=list)


def set_seed(seed: int) -> None:
    """Seed Python's and torch's generators (the DataLoader order is seeded by the dataset)."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def distributed_wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when a process group is running (torchrun), else ``model`` itself."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _uneven_inputs(model: nn.Module):
    # Ranks may get one batch more or fewer in an epoch; Join lets the ranks that ran
    # out shadow the gradient all-reduce of the others instead of hanging.
    if isinstance(model, nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.join import Join

        return Join([model])
    return contextlib.nullcontext()


class RowAdam(torch.optim.Optimizer):
    """Adam for ``sparse=True`` embedding tables: only the rows a batch used are updated.

    The same "lazy" Adam as ``torch.optim.SparseAdam`` (each used row's moments
    and weights step as in Adam; unused rows stay as they are), computed with
    dense ``index_select`` / ``index_copy_`` / ``index_add_`` on the used rows
    instead of sparse-tensor arithmetic, which made ``SparseAdam`` three quarters
    of a batch-512 training step.

    Example:
        >>> table = nn.Embedding(1000, 16, sparse=True)
        >>> optimizer = RowAdam(table.parameters(), lr=1e-3)
        >>> table(torch.tensor([[1, 2, 3]])).sum().backward(); optimizer.step()
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._scratch: dict[torch.Tensor, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """The optimizer state with each table's moments kept for its used rows only.

        A row no batch has used has zero moments; a checkpoint need not store them.
        On ``mr`` that is over half the table, so the default model's checkpoint
        shrinks from 215 MB to 121 MB. :meth:`load_state_dict` puts the zeros back.
        """
        saved = super().state_dict()  # its per-parameter dicts are the live ones: build new ones
        saved["state"] = {k: _used_rows_only(v) for k, v in saved["state"].items()}
        return saved

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = {**state_dict, "state": {k: _dense_moments(v) for k, v in state_dict["state"].items()}}
        super().load_state_dict(state_dict)

    @staticmethod
    def coalesced(grad: torch.Tensor) -> torch.Tensor:
        """``grad.coalesce()``, free when its rows already come sorted and unique.

        The bag model's closed-form backward (``textpipe.models.bag_mean_table_grad``)
        builds its gradient that way, but autograd's accumulation into ``.grad`` drops
        the tensor's coalesced flag; checking the order, O(rows), spares a sort.
        """
        if not grad.is_coalesced() and grad.sparse_dim() == 1:
            rows = grad._indices()[0]
            if bool((rows[1:] > rows[:-1]).all()):
                grad._coalesced_(True)
        return grad.coalesce()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError("RowAdam steps sparse gradients only (an nn.Embedding with sparse=True); use AdamW for the rest")
                grad = self.coalesced(param.grad)  # a row used twice in the batch becomes one row, its gradients summed
                rows, values = grad.indices()[0], grad.values()
                state = self.state[param]
                if not state:
                    state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, torch.zeros_like(param), torch.zeros_like(param)
                    # Marks the rows any step used, so a checkpoint finds them without scanning both
                    # moment tables. A float, not a bool: Optimizer.load_state_dict casts state
                    # tensors to the parameter's dtype.
                    state["used"] = param.new_zeros(param.shape[0])
                state["step"] += 1
                state["used"].index_fill_(0, rows, 1.0)
                # Each moment moves by a delta added back with index_add_, which on a CPU is about
                # twice as fast as index_copy_ of the new rows; the same holds for an update
                # scaled beforehand rather than through index_add_'s alpha.
                exp_avg, exp_avg_sq, d_avg, d_avg_sq = self._workspace(param, len(rows))
                torch.index_select(state["exp_avg"], 0, rows, out=exp_avg)
                torch.index_select(state["exp_avg_sq"], 0, rows, out=exp_avg_sq)
                torch.sub(values, exp_avg, out=d_avg).mul_(1 - beta1)
                torch.mul(values, values, out=d_avg_sq).sub_(exp_avg_sq).mul_(1 - beta2)
                state["exp_avg"].index_add_(0, rows, d_avg)
                state["exp_avg_sq"].index_add_(0, rows, d_avg_sq)
                exp_avg.add_(d_avg)
                exp_avg_sq.add_(d_avg_sq)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                denominator = exp_avg_sq.clamp_(min=_sqrt_floor(group["eps"], param.dtype)).sqrt_().add_(group["eps"])
                param.index_add_(0, rows, exp_avg.div_(denominator).mul_(-step_size))

    def _workspace(self, param: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, ...]:
        # Four (rows, D) scratch tensors kept from step to step: fresh megabyte-sized tensors
        # each step cost the allocator about 2,000 page faults a step at batch 512, more
        # than the arithmetic done in them. Not optimizer state: never saved.
        held = self._scratch.get(param)
        if held is None or held.shape[1] < num_rows:
            size = min(max(num_rows, 2 * (0 if held is None else held.shape[1])), param.shape[0])
            held = self._scratch[param] = param.new_empty((4, size, *param.shape[1:]))
        return tuple(held[:, :num_rows].unbind(0))


def _sqrt_floor(eps: float, dtype: torch.dtype) -> float:
    """A floor for ``exp_avg_sq`` that leaves every ``sqrt(exp_avg_sq) + eps`` bit for bit as it was.

    ``torch.sqrt`` on a CPU (MKL's vsSqrt) is 7-8x slower on exact zeros than on other
    values, and a quarter of a batch's moment entries are zeros (dimensions dropout
    zeroed in every step so far). The square root of anything up to ``(eps / 2**26)**2``
    is under half a float32 ulp of ``eps``, so adding ``eps`` rounds it away either way.
    """
    return (eps / 2**26) ** 2 if dtype == torch.float32 else 0.0


def _used_rows_only(state: dict) -> dict:
    if "exp_avg" not in state:
        return state
    used = state["used"].nonzero().squeeze(1)
    kept = {k: v for k, v in state.items() if k != "used"}
    return {**kept, "rows": used, "num_rows": state["exp_avg"].shape[0],
            "exp_avg": state["exp_avg"][used], "exp_avg_sq": state["exp_avg_sq"][used]}


def _dense_moments(state: dict) -> dict:
    """A RowAdam state saved with used rows only, back to full-size moments and the used-rows marker."""
    if "rows" not in state:
        return state
    state = dict(state)
    rows, num_rows = state.pop("rows"), state.pop("num_rows")
    for key in ("exp_avg", "exp_avg_sq"):
        full = state[key].new_zeros((num_rows, *state[key].shape[1:]))
        full[rows] = state[key]
        state[key] = full
    state["used"] = state["exp_avg"].new_zeros(num_rows).index_fill_(0, rows, 1.0)
    return state


def make_optimizers(model: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}
    sparse = [p for p in model.parameters() if id(p) in sparse_ids and p.requires_grad]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay))
    if sparse:
        optimizers.append(RowAdam(sparse, lr=config.lr))
    return optimizers


def train_step(
    model: nn.Module, batch: Batch, optimizers: list[torch.optim.Optimizer], loss_fn: nn.Module, grad_clip: float = 0.0
) -> tuple[float, int]:
    """One optimizer step on one batch; returns the batch's summed loss and correct count."""
    # The module's zero_grad, not each optimizer's: torch.optim wraps its zero_grad in a
    # torch._dynamo guard that costs about a tenth of a batch-32 step on a CPU.
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
    return loss.item() * len(batch), (logits.argmax(1) == batch.labels).sum().item()


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale all gradients so that their total L2 norm is at most ``max_norm``; returns the norm before.

    ``torch.nn.utils.clip_grad_norm_`` rejects sparse gradients; here a sparse
    embedding gradient counts with the norm of its coalesced rows (a row a batch
    used twice is one row), which is what RowAdam then applies.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norms = [(RowAdam.coalesced(g).values() if g.is_sparse else g).norm() for g in grads]
    total = torch.stack(norms).norm().item()
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p_grad in grads:
            if p_grad.is_sparse:
                p_grad.copy_(RowAdam.coalesced(p_grad) * scale)
            else:
                p_grad.mul_(scale)
    return total


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> "Callable[[int], float]":
    """The multiplier of the base lr as a function of the scheduler's count.

    Without warmup and for "linear" / "constant" the count is epochs (the scheduler
    steps once per epoch); with ``warmup > 0`` or "linear_steps" it is optimizer
    steps: a linear rise over the first ``warmup`` fraction of all steps, then
    "linear" / "linear_steps" fall linearly to 0 at the last step.
    """
    if not per_step_schedule(config):
        return (lambda e: 1 - e / config.epochs) if config.schedule == "linear" else (lambda e: 1.0)
    total = config.epochs * steps_per_epoch
    warm = int(config.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if config.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def per_step_schedule(config: TrainConfig) -> bool:
    return config.warmup > 0 or config.schedule == "linear_steps"


def class_weight_tensor(counts: list[int], mode: str) -> torch.Tensor | None:
    """"balanced": weight ``n / (k * count_c)`` per class (sklearn's rule), None for "none".

    Example:
        >>> class_weight_tensor([30, 10], "balanced")
        tensor([0.6667, 2.0000])
    """
    if mode == "none":
        return None
    if not counts or min(counts) < 1:
        raise ValueError(f"balanced class weights need every class in the training data, got counts {counts}")
    n, k = sum(counts), len(counts)
    return torch.tensor([n / (k * c) for c in counts], dtype=torch.float32)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: Iterable[Batch], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits for every example of ``loader`` in order, and the labels if the batches have them."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits.append(model(batch.ids, batch.mask).float().cpu())
        if batch.labels is not None:
            labels.append(batch.labels.cpu())
    if not logits:
        raise ValueError("the evaluation data yielded no batches")
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def classification_metrics(predicted: torch.Tensor, gold: torch.Tensor, num_classes: int) -> dict:
    """Accuracy and macro-F1 (classes absent from both gold and predictions are left out of the mean)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((gold, predicted), torch.ones_like(gold), accumulate=True)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).double().clamp(min=1)
    recall = tp / confusion.sum(1).double().clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    return {
        "accuracy": round(tp.sum().item() / max(len(gold), 1), 6),
        "macro_f1": round(f1[present].mean().item(), 6),
        "n": len(gold),
    }


def evaluate(model: nn.Module, loader: Iterable[Batch], num_classes: int, device: torch.device | str = "cpu") -> dict:
    """Accuracy, macro-F1, mean cross-entropy and row count of ``model`` on a labelled loader."""
    logits, labels = predict_logits(model, loader, torch.device(device))
    if labels is None:
        raise ValueError("evaluate needs labelled batches")
    metrics = classification_metrics(logits.argmax(1), labels, num_classes)
    metrics["loss"] = round(nn.functional.cross_entropy(logits, labels).item(), 6)
    return metrics


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


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, signal_name: str, checkpoint: str | None):
        self.signal_name, self.checkpoint = signal_name, checkpoint
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint (checkpoints are off)"
        super().__init__(f"{signal_name}: training stopped, {saved}")


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    dev_loader: Iterable[Batch] | None,
    config: TrainConfig,
    num_classes: int,
    num_train: int | None = None,
    quiet: bool = False,
    checkpoints: CheckpointStore | None = None,
    resume: dict | None = None,
    class_counts: list[int] | None = None,
) -> FitResult:
    """Train with early stopping on dev accuracy; the model ends with its best weights.

    With ``dev_loader=None`` it trains exactly ``config.epochs`` epochs and keeps the
    last weights (a refit, once the epoch count is known).

    With ``checkpoints``, the full training state is saved every ``config.checkpoint_seconds``
    seconds and every ``config.checkpoint_every`` steps; ``resume`` (a state read back
    by :meth:`CheckpointStore.load_latest`) continues from it, mid-epoch included,
    to exactly the weights an uninterrupted run reaches. ``class_counts`` (training
    rows per class, in label order) is needed for ``config.class_weights="balanced"``. Mid-epoch resumes need a
    ``train_loader`` with ``state_dict`` (torchdata's ``StatefulDataLoader``).
    SIGINT / SIGTERM save a
    checkpoint at the next step and raise :class:`TrainingInterrupted`. A NaN or infinite
    loss raises :class:`TrainingDiverged` before the step's weights reach any checkpoint.

    Example:
        >>> set_seed(0); model = build_model(ModelConfig(vocab_size=len(vocab), num_classes=2))
        >>> result = fit(model, train_loader, dev_loader, TrainConfig(epochs=5), num_classes=2)
        >>> result.best_dev["accuracy"]
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        return _fit(model, train_loader, dev_loader, config, num_classes, num_train, quiet, checkpoints, resume, class_counts)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _fit(model, train_loader, dev_loader, config: TrainConfig, num_classes: int, num_train, quiet, checkpoints, resume, class_counts) -> FitResult:
    device = resolve_device(config.device)
    model.to(device)
    train_model = distributed_wrap(model, device)  # the same parameters; evaluation uses `model` directly
    optimizers = make_optimizers(model, config)
    # "linear": decay per epoch from lr to lr / epochs, large steps early and fine ones late.
    factor = lr_factor(config, _steps_per_epoch(train_loader, num_train, config) if per_step_schedule(config) else 0)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
    step_each_batch = per_step_schedule(config)
    state, best_state = TrainState(), None
    if resume is not None:
        state = _restore(resume, model, optimizers, schedulers, train_loader)
        best_state = resume.get("best_model")

    stateful_loader = hasattr(train_loader, "state_dict")
    if config.checkpoint_every and not stateful_loader:
        raise ValueError("checkpoint_every needs a train_loader with state_dict (torchdata's StatefulDataLoader)")

    last_save = time.monotonic()

    def save_checkpoint(mid_epoch: bool, wait: bool = False) -> str | None:
        # Written in the background while training goes on, unless `wait` (the run is about to stop).
        nonlocal last_save
        if checkpoints is None or (mid_epoch and not stateful_loader):
            return None
        loader_state = train_loader.state_dict() if mid_epoch else None
        path = checkpoints.save_async(_snapshot(state, model, optimizers, schedulers, loader_state, best_state), state.step)
        last_save = time.monotonic()
        if wait:
            checkpoints.wait()
        return str(path)

    def checkpoint_due() -> bool:
        # By time, not by epoch: a checkpoint costs the same whatever the epoch's length.
        if checkpoints is None:
            return False
        by_steps = config.checkpoint_every and state.step % config.checkpoint_every == 0
        return bool(by_steps) or time.monotonic() - last_save >= config.checkpoint_seconds

    weights = class_weight_tensor(class_counts or [], config.class_weights)
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), reduction="mean", label_smoothing=config.label_smoothing
    )
    dataset = getattr(train_loader, "dataset", None)
    with _StopOnSignal() as stop:
        while not state.finished:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(state.epoch)
            model.train()
            # A bar on a terminal only (tqdm's disable=None); logs get the one line per epoch below.
            epoch_start, seen_before = time.perf_counter(), state.seen  # for the log line's rows/s (not saved: it varies run to run)
            bar = tqdm(total=num_train, initial=state.seen, desc=f"epoch {state.epoch}/{config.epochs}", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)
            with bar, _uneven_inputs(train_model):
                for batch in train_loader:
                    loss_sum, correct = train_step(train_model, batch.to(device, non_blocking=True), optimizers, loss_fn, config.grad_clip)
                    if not math.isfinite(loss_sum):
                        raise _diverged(state, config, loss_sum, checkpoints)
                    if step_each_batch:
                        for scheduler in schedulers:
                            scheduler.step()
                    state.step += 1
                    state.loss_sum += loss_sum
                    state.correct += correct
                    state.seen += len(batch)
                    bar.update(len(batch))
                    bar.set_postfix(loss=f"{state.loss_sum / state.seen:.4f}", acc=f"{state.correct / state.seen:.3f}", refresh=False)
                    if stop.signal_name:
                        raise TrainingInterrupted(stop.signal_name, save_checkpoint(mid_epoch=True, wait=True))
                    if checkpoint_due():
                        save_checkpoint(mid_epoch=True)
            if state.seen == 0:
                raise ValueError("the training data yielded no batches")
            for scheduler in schedulers if not step_each_batch else ():
                scheduler.step()
            rows_per_s = (state.seen - seen_before) / max(time.perf_counter() - epoch_start, 1e-9)
            improved = _end_epoch(state, model, dev_loader, config, num_classes, device, quiet, rows_per_s)
            if improved:  # in memory, and in every later checkpoint, so a resumed run ends with the same weights
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if stop.signal_name:
                raise TrainingInterrupted(stop.signal_name, save_checkpoint(mid_epoch=False, wait=True))
    if checkpoints is not None:
        checkpoints.wait()
    if dev_loader is not None:
        model.load_state_dict(best_state)
    return FitResult(state.best_epoch, state.best_dev, state.history)


def _steps_per_epoch(train_loader, num_train: int | None, config: TrainConfig) -> int:
    if num_train:
        return -(-num_train // config.batch_size)
    try:
        return len(train_loader)
    except TypeError:
        raise ValueError("a per-step schedule (warmup, 'linear_steps') needs num_train or a train_loader with a length") from None


def _end_epoch(state: TrainState, model: nn.Module, dev_loader, config: TrainConfig, num_classes: int, device, quiet: bool, rows_per_s: float = 0.0) -> bool:
    """Score dev (when there is one), record the epoch and decide whether to stop; True when dev improved."""
    dev = evaluate(model, dev_loader, num_classes, device) if dev_loader is not None else None
    state.history.append({
        "epoch": state.epoch,
        "train_loss": round(state.loss_sum / state.seen, 6),
        "train_accuracy": round(state.correct / state.seen, 6),
        **({f"dev_{k}": dev[k] for k in ("accuracy", "macro_f1", "loss")} if dev else {}),
    })
    # Ties in accuracy go to the lower loss, so a plateau in the first epochs on small data
    # does not stop a model that still learns; but only for `patience` extra epochs.
    best = state.best_dev
    improved = dev is not None and (best is None or (dev["accuracy"], -dev["loss"]) > (best["accuracy"], -best["loss"]))
    if dev is not None and dev["accuracy"] > state.progress_accuracy + config.min_delta:
        state.progress_epoch, state.progress_accuracy = state.epoch, dev["accuracy"]
    if not quiet:
        last = state.history[-1]
        scored = f" | dev acc {dev['accuracy']:.4f} f1 {dev['macro_f1']:.4f} loss {dev['loss']:.4f}{' *' if improved else ''}" if dev else ""
        log.info(f"epoch {state.epoch}: train loss {last['train_loss']:.4f} acc {last['train_accuracy']:.4f} ({rows_per_s:,.0f} rows/s){scored}")
    if improved:
        state.best_dev, state.best_epoch = dev, state.epoch
    stalled = dev is not None and (
        state.epoch - state.best_epoch >= config.patience or state.epoch - state.progress_epoch >= 2 * config.patience
    )
    state.finished = state.epoch >= config.epochs or stalled
    state.epoch += 1
    state.loss_sum, state.correct, state.seen = 0.0, 0, 0
    return improved


def _diverged(state: TrainState, config: TrainConfig, loss: float, checkpoints: CheckpointStore | None) -> TrainingDiverged:
    if checkpoints is not None:
        checkpoints.wait()
    kept = checkpoints.paths()[-1:] if checkpoints is not None else []
    where = f"; the last good checkpoint, {kept[0]}, is kept" if kept else ""
    return TrainingDiverged(
        f"training diverged: the loss became {loss} at step {state.step + 1} (epoch {state.epoch}) with lr {config.lr}{where}; "
        "try a smaller --lr (or --grad-clip 1.0)"
    )


def _snapshot(state: TrainState, model, optimizers, schedulers, loader_state: dict | None, best_model: dict | None = None) -> dict:
    return {
        "state": state.to_dict(),
        "model": model.state_dict(),
        "best_model": best_model,
        "optimizers": [opt.state_dict() for opt in optimizers],
        "schedulers": [sched.state_dict() for sched in schedulers],
        "loader": loader_state,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }


def _restore(checkpoint: dict, model, optimizers, schedulers, train_loader) -> TrainState:
    state = TrainState(**checkpoint["state"])
    model.load_state_dict(checkpoint["model"])
    for opt, saved in zip(optimizers, checkpoint["optimizers"], strict=True):
        opt.load_state_dict(saved)
    for sched, saved in zip(schedulers, checkpoint["schedulers"], strict=True):
        sched.load_state_dict(saved)
    if checkpoint["loader"] is not None:
        train_loader.load_state_dict(checkpoint["loader"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    random.setstate(_as_random_state(checkpoint["rng"]["python"]))
    return state


def _as_random_state(saved) -> tuple:
    # random.setstate wants (version, tuple of ints, gauss_next); a saved state may come back with lists.
    version, internal, gauss = saved
    return version, tuple(internal), gauss


class _StopOnSignal:
    """While active, the first SIGINT or SIGTERM is noted (training stops at the next
    step boundary, after a checkpoint); a second one interrupts at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
