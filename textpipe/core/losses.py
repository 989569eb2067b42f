"""The training losses: cross-entropy (class weights, label smoothing), or one binary cross-entropy per label.

:func:`loss_function` picks the one a run trains with; :func:`correct_count` is what the
training log's accuracy counts. Part of the tensor core: torch only.

Example:
    >>> loss_fn = loss_function(num_classes=3, multi_label=True)
    >>> loss_fn(logits, batch.labels)
"""

from __future__ import annotations

import torch
from torch import nn

from .multilabel import multi_hot


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


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Rows predicted right: the top class, or (multi-label) every label's side of 0.5."""
    if labels.dim() == 2:
        return ((logits > 0) == multi_hot(labels, logits.shape[1]).bool()).all(1).sum().item()
    return (logits.argmax(1) == labels).sum().item()


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy of one sigmoid per label, on packed label sets (:mod:`textpipe.core.multilabel`).

    ``label_smoothing`` pulls each 0/1 target toward 0.5 by that much, as CrossEntropyLoss pulls toward uniform.

    Example:
        >>> MultiLabelLoss(3)(torch.zeros(2, 3), torch.tensor([[0b101], [0]]))
        tensor(0.6931)
    """

    def __init__(self, num_labels: int, label_smoothing: float = 0.0):
        super().__init__()
        self.num_labels, self.label_smoothing = num_labels, label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = multi_hot(labels, self.num_labels)
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)


def loss_function(num_classes: int, class_counts: list[int] | None = None, *, class_weights: str = "none", label_smoothing: float = 0.0,
                  multi_label: bool = False) -> nn.Module:
    """The training loss: cross-entropy (``class_weights``, see :func:`class_weight_tensor`), or one BCE per label for multi-label data."""
    if multi_label:
        if class_weights != "none":
            raise ValueError("class_weights='balanced' weighs the classes of single-label data; multi-label training takes none")
        return MultiLabelLoss(num_classes, label_smoothing)
    weights = class_weight_tensor(class_counts or [], class_weights)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
