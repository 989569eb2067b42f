"""How good a model is on labelled data: the confusion matrix, precision / recall / F1, accuracy, macro-F1.

Every score textpipe reports is computed here, once: the training loop's dev scores
(:func:`evaluate`), the report's per-class table (``textpipe.bundle.report.summarize``) and
``metrics.json`` all come from :func:`confusion_matrix` and :func:`precision_recall_f1`.
:func:`predict_logits` runs a model over a loader of batches (inference mode, in order).

Part of the tensor core: imports torch only (and ``collate`` for the batch type).

Example:
    >>> classification_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), num_classes=2)
    {'accuracy': 0.666667, 'macro_f1': 0.666667, 'n': 3}
    >>> evaluate(model, dev_loader, num_classes=2)["macro_f1"]
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from .collate import Batch
from .multilabel import bce_log_loss, multi_hot, multilabel_report


def confusion_matrix(predicted: torch.Tensor, gold: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts: row = gold label index, column = predicted label index."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((gold, predicted), torch.ones_like(gold), accumulate=True)
    return confusion


def precision_recall_f1(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class precision, recall and F1 (float64, ``(C,)`` each) of a confusion matrix; 0.0 where undefined."""
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).double().clamp(min=1)
    recall = tp / confusion.sum(1).double().clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    return precision, recall, f1


def classification_metrics(predicted: torch.Tensor, gold: torch.Tensor, num_classes: int) -> dict:
    """Accuracy and macro-F1 of predicted against gold label indices; see :func:`overall_metrics`."""
    return overall_metrics(confusion_matrix(predicted, gold, num_classes))


def overall_metrics(confusion: torch.Tensor) -> dict:
    """Accuracy, macro-F1 and row count of a confusion matrix (classes absent from both gold
    and predictions are left out of the macro-F1 mean)."""
    _, _, f1 = precision_recall_f1(confusion)
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    n = int(confusion.sum())
    return {
        "accuracy": round(confusion.diag().double().sum().item() / max(n, 1), 6),
        "macro_f1": round(f1[present].mean().item(), 6),
        "n": n,
    }


def per_class_metrics(confusion: torch.Tensor, labels: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support (gold count) of each label, rounded to 6 places."""
    precision, recall, f1 = precision_recall_f1(confusion)
    support = confusion.sum(1)
    return {
        label: {"precision": round(p, 6), "recall": round(r, 6), "f1": round(f, 6), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist())
    }


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


def evaluate(model: nn.Module, loader: Iterable[Batch], num_classes: int, device: torch.device | str = "cpu") -> dict:
    """Accuracy, macro-F1, mean cross-entropy and row count of ``model`` on a labelled loader;
    for multi-label batches :func:`multilabel_metrics` (at probability 0.5)."""
    logits, labels = predict_logits(model, loader, torch.device(device))
    if labels is None:
        raise ValueError("evaluate needs labelled batches")
    if labels.dim() == 2:
        return multilabel_metrics(logits, multi_hot(labels, num_classes), logits.new_zeros(num_classes))
    metrics = classification_metrics(logits.argmax(1), labels, num_classes)
    metrics["loss"] = round(nn.functional.cross_entropy(logits, labels).item(), 6)
    return metrics


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, cutoffs: torch.Tensor) -> dict:
    """The training loop's multi-label dev scores: subset accuracy (as ``accuracy``), micro- and macro-F1,
    Hamming loss and mean binary cross-entropy, a label predicted where its logit is over its ``cutoffs`` entry."""
    report = multilabel_report(logits > cutoffs, targets.bool(), [str(i) for i in range(logits.shape[1])])
    return {"accuracy": report["subset_accuracy"], "micro_f1": report["micro"]["f1"], "macro_f1": report["macro"]["f1"],
            "hamming_loss": report["hamming_loss"], "loss": round(bce_log_loss(logits, targets), 6), "n": report["rows"]}


def selection_score(dev: dict) -> float:
    """What picks the best epoch and the mix on dev: accuracy, or micro-F1 for multi-label scores."""
    return dev.get("micro_f1", dev["accuracy"])
