"""More than one label per text: packed label sets, per-label thresholds, the multi-label scores.

A row's label set travels as ``W = words_per_row(n_labels)`` int64 words: bit ``i % 63`` of
word ``i // 63`` is set when label ``i`` is in the set. 63 bits, not 64, so every word is
non-negative (no sign bit to trip a shift or a comparison). Single-label data keeps its one
int64 label index; multi-label data carries a ``(rows, W)`` int64 tensor, which
:func:`multi_hot` turns into the ``(rows, n_labels)`` 0/1 targets of a binary cross-entropy.

After training, one sigmoid per label gives a probability; :func:`choose_thresholds` picks
each label's threshold on dev (its F1's best), :func:`decide` turns probabilities into label
sets (fastText's ``-k`` with ``-threshold``), and :func:`multilabel_report` scores them with
scikit-learn's conventions (micro and macro F1, per-label precision/recall/F1, subset accuracy,
Hamming loss; 0.0 where a ratio is undefined). :func:`fit_temperature_multilabel` is
``calibration.fit_temperature`` for sigmoids. Part of the tensor core: torch only.

Example:
    >>> words = torch.tensor([pack_label_set([0, 2], n_labels=3), pack_label_set([], n_labels=3)])
    >>> multi_hot(words, 3)
    tensor([[1., 0., 1.],
            [0., 0., 0.]])
    >>> thresholds = choose_thresholds(dev_probs, dev_targets)
    >>> decide(test_probs, thresholds, top_k=2)
    [[2, 0], []]
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from .calibration import fit_scale

BITS = 63  # label bits per int64 word: the sign bit stays clear, so every word is non-negative
THRESHOLD_RANGE = (0.05, 0.95)  # a dev threshold outside this says more about a few dev rows than about the label
DEFAULT_THRESHOLD = 0.5  # a label with too few dev positives to choose from


def words_per_row(n_labels: int) -> int:
    """How many int64 words hold a set of ``n_labels`` labels: ``ceil(n_labels / 63)``.

    Example:
        >>> words_per_row(63), words_per_row(64), words_per_row(130)
        (1, 2, 3)
    """
    if n_labels < 1:
        raise ValueError(f"n_labels must be at least 1, got {n_labels}")
    return -(-n_labels // BITS)


def pack_label_set(indices: Iterable[int], n_labels: int) -> list[int]:
    """The ``words_per_row(n_labels)`` words of the label set ``indices`` (repeats are harmless).

    Example:
        >>> pack_label_set([0, 62, 63], n_labels=130)
        [4611686018427387905, 1, 0]
    """
    words = [0] * words_per_row(n_labels)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_labels:
            raise ValueError(f"label index {index!r} is not in 0..{n_labels - 1}")
        words[index // BITS] |= 1 << (index % BITS)
    return words


def unpack_label_set(words: torch.Tensor | Sequence[int], n_labels: int) -> list[int]:
    """The sorted label indices of one row's packed ``words`` (the inverse of :func:`pack_label_set`).

    Example:
        >>> unpack_label_set(pack_label_set([129, 0, 63], 130), 130)
        [0, 63, 129]
    """
    words = words.tolist() if isinstance(words, torch.Tensor) else list(words)
    if len(words) != words_per_row(n_labels):
        raise ValueError(f"{len(words)} words for {n_labels} labels, expected {words_per_row(n_labels)}")
    return [i for i in range(n_labels) if (words[i // BITS] >> (i % BITS)) & 1]


def multi_hot(words: torch.Tensor, n_labels: int) -> torch.Tensor:
    """``(B, W)`` packed label sets -> ``(B, n_labels)`` float32 0/1 rows (a ``(B,)`` tensor is fine when W is 1).

    Vectorised: every word is shifted by 0..62 at once, on the words' device.

    Example:
        >>> multi_hot(torch.tensor([[5]]), 3)
        tensor([[1., 0., 1.]])
    """
    width = words_per_row(n_labels)
    if words.dim() == 1 and width == 1:
        words = words.unsqueeze(1)
    if words.dim() != 2 or words.shape[1] != width:
        raise ValueError(f"packed label sets of shape {tuple(words.shape)}, expected (rows, {width}) for {n_labels} labels")
    shifts = torch.arange(BITS, dtype=torch.int64, device=words.device)
    bits = (words.long().unsqueeze(2) >> shifts) & 1  # (B, W, 63): bit j of word w is label 63 w + j
    return bits.reshape(len(words), width * BITS)[:, :n_labels].float()


def choose_thresholds(probs: torch.Tensor, targets: torch.Tensor, min_positives: int = 5) -> torch.Tensor:
    """Per label, the threshold (``p >= t`` is a yes) that maximizes the label's F1 on these dev rows: ``(L,)`` float64.

    The candidates are the midpoints between consecutive distinct dev probabilities, the
    smallest one (everything a yes) and 0.5, each clamped to :data:`THRESHOLD_RANGE`;
    each is scored as clamped. Ties go to the candidate closest to 0.5 (then the lower one).
    A label with fewer than ``min_positives`` dev positives keeps 0.5.

    Example:
        >>> choose_thresholds(torch.tensor([[0.1], [0.3], [0.7], [0.9]]), torch.tensor([[0], [0], [1], [1]]), min_positives=2)
        tensor([0.5000], dtype=torch.float64)
    """
    if probs.shape != targets.shape or probs.dim() != 2:
        raise ValueError(f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} must both be (rows, labels)")
    probs, targets = probs.detach().double().cpu(), targets.detach().bool().cpu()
    chosen = [_best_threshold(probs[:, j], targets[:, j]) if int(targets[:, j].sum()) >= min_positives else DEFAULT_THRESHOLD
              for j in range(probs.shape[1])]
    return torch.tensor(chosen, dtype=torch.float64)


def _best_threshold(probs: torch.Tensor, positive: torch.Tensor) -> float:
    """:func:`choose_thresholds` for one label: ``probs`` (N,) float64, ``positive`` (N,) bool."""
    values = probs.unique()  # sorted ascending
    midpoints = (values[1:] + values[:-1]) / 2
    extra = torch.tensor([DEFAULT_THRESHOLD], dtype=torch.float64)
    candidates = torch.cat([values[:1], midpoints, extra]).clamp(*THRESHOLD_RANGE).unique()
    f1 = _f1_at(probs, positive, candidates)
    distance = torch.where(f1 == f1.max(), (candidates - DEFAULT_THRESHOLD).abs(), torch.full_like(f1, math.inf))
    return float(candidates[int(distance.argmin())])  # argmin takes the first minimum: the lower of two equally close


def _f1_at(probs: torch.Tensor, positive: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """F1 of ``probs >= t`` against ``positive`` for each ``t`` of ``thresholds``, by counting in sorted probabilities."""
    all_sorted, positives_sorted = probs.sort().values, probs[positive].sort().values
    predicted = len(all_sorted) - torch.searchsorted(all_sorted, thresholds)  # side left: how many p >= t
    true_positive = len(positives_sorted) - torch.searchsorted(positives_sorted, thresholds)
    denominator = (predicted + len(positives_sorted)).double()
    return torch.where(denominator > 0, 2 * true_positive.double() / denominator.clamp_min(1), torch.zeros_like(denominator))


def decide(probs: torch.Tensor, thresholds: torch.Tensor | float, top_k: int | None = None) -> list[list[int]]:
    """Each row's predicted label indices: probability >= its label's threshold, most probable first, at most ``top_k``.

    ``thresholds`` is one number or one per label; an empty list is a valid prediction
    (none of the labels). Equal probabilities keep label order.

    Example:
        >>> decide(torch.tensor([[0.2, 0.9, 0.6], [0.1, 0.2, 0.3]]), 0.5)
        [[1, 2], []]
        >>> decide(torch.tensor([[0.2, 0.9, 0.6]]), torch.tensor([0.1, 0.5, 0.5]), top_k=1)
        [[1]]
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (None for no limit), got {top_k}")
    thresholds = torch.as_tensor(thresholds, dtype=torch.float64, device=probs.device)
    if thresholds.dim() > 1 or (thresholds.dim() == 1 and thresholds.shape[0] != probs.shape[1]):
        raise ValueError(f"{tuple(thresholds.shape)} thresholds for {probs.shape[1]} labels")
    probs = probs.detach()
    order = probs.argsort(dim=1, descending=True, stable=True)
    kept = (probs.double() >= thresholds).gather(1, order)
    return [[label for label, keep in zip(row, keeps) if keep][:top_k] for row, keeps in zip(order.tolist(), kept.tolist())]


def multilabel_report(predicted: torch.Tensor, targets: torch.Tensor, labels: Sequence[str]) -> dict:
    """The multi-label scores of ``predicted`` against ``targets`` (both ``(N, L)`` bool), as plain floats for JSON.

    Keys: ``micro`` and ``macro`` (each ``{precision, recall, f1}``), ``per_label``
    (label name -> ``{precision, recall, f1, support}``), ``subset_accuracy`` (rows whose
    whole set is right), ``hamming_loss`` (share of wrong cells) and ``rows``. Undefined
    ratios are 0.0, and macro averages every label, as scikit-learn's ``zero_division=0``.

    Example:
        >>> multilabel_report(torch.tensor([[True, False]]), torch.tensor([[True, True]]), ["a", "b"])["micro"]
        {'precision': 1.0, 'recall': 0.5, 'f1': 0.666667}
    """
    if predicted.shape != targets.shape or predicted.dim() != 2 or predicted.shape[1] != len(labels):
        raise ValueError(f"predicted {tuple(predicted.shape)} and targets {tuple(targets.shape)} must be (rows, {len(labels)})")
    predicted, targets = predicted.detach().bool().cpu(), targets.detach().bool().cpu()
    tp, fp, fn = (predicted & targets).sum(0), (predicted & ~targets).sum(0), (~predicted & targets).sum(0)
    precision, recall, f1 = _ratios(tp, fp, fn)
    micro = [float(x) for x in _ratios(tp.sum(), fp.sum(), fn.sum())]
    rows = predicted.shape[0]
    return {
        "micro": _scores(*micro),
        "macro": _scores(*(float(x.mean()) if len(labels) else 0.0 for x in (precision, recall, f1))),
        "per_label": {name: {**_scores(float(precision[j]), float(recall[j]), float(f1[j])), "support": int(tp[j] + fn[j])}
                      for j, name in enumerate(labels)},
        "subset_accuracy": round(float((predicted == targets).all(1).double().mean()), 6) if rows else 0.0,
        "hamming_loss": round(float((predicted != targets).double().mean()), 6) if predicted.numel() else 0.0,
        "rows": rows,
    }


def _ratios(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall and F1 (float64) from counts; 0.0 where a denominator is 0."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    return tp / (tp + fp).clamp_min(1), tp / (tp + fn).clamp_min(1), 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def _scores(precision: float, recall: float, f1: float) -> dict:
    return {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6)}


def prior_log_odds(label_counts: Sequence[int], rows: int) -> torch.Tensor:
    """Each label's log-odds among ``rows`` rows, ``log(p / (1 - p))`` with ``p = (count + 0.5) / (rows + 1)``.

    Example:
        >>> prior_log_odds([1, 3], 4)
        tensor([-0.8473,  0.8473])
    """
    rates = (torch.tensor(label_counts, dtype=torch.float64) + 0.5) / (rows + 1)
    return (rates / (1 - rates)).log().float()


def start_at_label_rates(head: torch.nn.Linear, label_counts: Sequence[int], rows: int) -> None:
    """Set the output layer's biases to :func:`prior_log_odds`: each sigmoid starts at its label's rate instead of 0.5,
    so the first epochs learn from the text rather than each label's frequency (on the benchmark's 8 labels, 28 epochs
    to the best dev micro-F1 became 20)."""
    with torch.no_grad():
        head.bias.copy_(prior_log_odds(label_counts, rows))


def bce_log_loss(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against 0/1 ``targets`` over all cells (0.0 without cells).

    Example:
        >>> round(bce_log_loss(torch.zeros(2, 3), torch.ones(2, 3)), 4)  # log 2
        0.6931
    """
    if not targets.numel():
        return 0.0
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.detach().double(), targets.detach().double()))


def fit_temperature_multilabel(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The ``T`` in ``calibration.T_RANGE`` minimizing :func:`bce_log_loss` of ``logits / T`` on these (dev) rows.

    One temperature for every label's sigmoid; 1.0 without rows. Like
    ``calibration.fit_temperature``: L-BFGS on ``log T`` from 0 (BCE is convex in ``1/T``).

    Example:
        >>> T = fit_temperature_multilabel(dev_logits, dev_targets)
        >>> probs = (test_logits / T).sigmoid()
    """
    if not targets.numel():
        return 1.0
    logits, targets = logits.detach().double().clone(), targets.detach().double().clone()  # clones: inference tensors refuse autograd
    return fit_scale(lambda t: torch.nn.functional.binary_cross_entropy_with_logits(logits / t, targets))


def multi_label_problem(record, n_labels: int) -> str | None:
    """What is wrong with a bundle's ``multi_label`` record (``{"label_sep", "thresholds"}``), or None."""
    if not isinstance(record, dict) or set(record) != {"label_sep", "thresholds"}:
        return "must be an object with label_sep and thresholds"
    if not isinstance(record["label_sep"], str) or not record["label_sep"].strip():
        return "label_sep must be a non-blank string"
    thresholds = record["thresholds"]
    if not isinstance(thresholds, list) or len(thresholds) != n_labels or \
            not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1 for t in thresholds):
        return f"thresholds must be a list of {n_labels} numbers between 0 and 1 (one per label)"
    return None
