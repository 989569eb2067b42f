"""Stage 6: the training loop and evaluation, on padded batches only (no text, no torchtext).

One step is the classic five lines::

    optimizer.zero_grad()
    logits = model(batch.ids, batch.mask)
    loss = loss_fn(logits, batch.labels)
    loss.backward()
    optimizer.step()

Embedding tables built with ``sparse=True`` are stepped by ``torch.optim.SparseAdam``
(only the rows a batch used are touched); every other parameter by ``AdamW``.
After each epoch the model is scored on the dev loader; training stops when dev
accuracy (ties broken by dev loss) has not improved for ``patience`` epochs, and
the best weights are restored.
"""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .collate import Batch


@dataclass
class TrainConfig:
    epochs: int = 20  # the learning rate decays linearly over this many epochs
    batch_size: int = 32
    lr: float = 1e-3  # AdamW for dense layers, SparseAdam for sparse embedding tables
    weight_decay: float = 0.0
    schedule: str = "linear"  # or "constant"
    patience: int = 3  # epochs without dev improvement before stopping
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be 'linear' or 'constant', got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and patience must be >= 1 and lr > 0: {self}")

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


def make_optimizers(model: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}
    sparse = [p for p in model.parameters() if id(p) in sparse_ids and p.requires_grad]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay))
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=config.lr))
    return optimizers


def train_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizers: list[torch.optim.Optimizer],
    device: torch.device,
    progress: tqdm | None = None,
) -> dict:
    """One pass over ``loader``; returns the mean loss and training accuracy."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    for batch in loader:
        batch = batch.to(device)
        for opt in optimizers:
            opt.zero_grad()
        logits = model(batch.ids, batch.mask)
        loss = loss_fn(logits, batch.labels)
        loss.backward()
        for opt in optimizers:
            opt.step()
        n = len(batch)
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == batch.labels).sum().item()
        seen += n
        if progress is not None:
            progress.update(n)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    if seen == 0:
        raise ValueError("the training data yielded no batches")
    return {"loss": total_loss / seen, "accuracy": correct / seen}


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: Iterable[Batch], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits for every example of ``loader`` in order, and the labels if the batches have them."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        batch = batch.to(device)
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


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    dev_loader: Iterable[Batch],
    config: TrainConfig,
    num_classes: int,
    num_train: int | None = None,
    quiet: bool = False,
) -> FitResult:
    """Train with early stopping on dev accuracy; the model ends with its best weights.

    Example:
        >>> set_seed(0); model = build_model(ModelConfig(vocab_size=len(vocab), num_classes=2))
        >>> result = fit(model, train_loader, dev_loader, TrainConfig(epochs=5), num_classes=2)
        >>> result.best_dev["accuracy"]
    """
    device = torch.device(config.device)
    model.to(device)
    optimizers = make_optimizers(model, config)
    # "linear": decay per epoch from lr to lr / epochs, large steps early and fine ones late.
    factor = (lambda e: 1 - e / config.epochs) if config.schedule == "linear" else (lambda e: 1.0)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
    best_state, best_dev, best_epoch, history = None, None, 0, []
    for epoch in range(1, config.epochs + 1):
        dataset = getattr(train_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        # A bar on a terminal only (tqdm's disable=None); logs get the one line per epoch below.
        bar = tqdm(total=num_train, desc=f"epoch {epoch}/{config.epochs}", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)
        with bar:
            train_stats = train_epoch(model, train_loader, optimizers, device, bar)
        for scheduler in schedulers:
            scheduler.step()
        dev = evaluate(model, dev_loader, num_classes, device)
        history.append({
            "epoch": epoch,
            "train_loss": round(train_stats["loss"], 6),
            "train_accuracy": round(train_stats["accuracy"], 6),
            **{f"dev_{k}": dev[k] for k in ("accuracy", "macro_f1", "loss")},
        })
        # Ties in accuracy go to the lower loss, so a plateau (common in the first
        # epochs on small data) does not trigger early stopping while the model still learns.
        improved = best_dev is None or (dev["accuracy"], -dev["loss"]) > (best_dev["accuracy"], -best_dev["loss"])
        if not quiet:
            mark = " *" if improved else ""
            print(f"epoch {epoch}: train loss {train_stats['loss']:.4f} acc {train_stats['accuracy']:.4f} | dev acc {dev['accuracy']:.4f} f1 {dev['macro_f1']:.4f}{mark}", file=sys.stderr)
        if improved:
            best_state, best_dev, best_epoch = copy.deepcopy(model.state_dict()), dev, epoch
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_dev, history)
