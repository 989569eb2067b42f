"""Probabilities a user can threshold on: one temperature fit on dev, and the numbers that say how well it worked.

A trained model's shipped scores (the bag's mix with its NB path, and the sentence
head's, as logs of probabilities) are often over- or under-confident. Temperature
scaling (Guo et al., 2017) divides them by one number ``T`` before the softmax: it
never changes which label wins, only how sure the model says it is. :func:`fit_temperature`
chooses ``T`` by L-BFGS on the dev rows' log loss; the bundle records it, and
``predict``, ``evaluate``, ``serve``, ``explain`` and the Python API apply it.

How well the probabilities match what happens, on any labelled rows:

- :func:`expected_calibration_error` (ECE): the rows put in 15 equal-width bins by
  their top probability; per bin, |mean confidence - accuracy|, weighted by the
  bin's share of the rows. 0 is perfect; 0.02 means the confidence is off by 2
  points on average.
- :func:`brier_score`: the mean over rows of ``sum_c (p_c - [c is gold])^2``; 0 is
  perfect, a uniform guess over ``C`` classes scores ``1 - 1/C``.
- :func:`coverage_curve`: for each threshold, the share of rows whose top probability
  reaches it (coverage) and the accuracy on them: what ``predict --threshold`` buys.

:func:`did_not_learn` says when a model's dev accuracy is no better than always
answering the most common dev label. Part of the tensor core: torch only.

Example:
    >>> T = fit_temperature(dev_logits, dev_gold)
    >>> probs = (test_logits / T).softmax(1)
    >>> expected_calibration_error(probs, test_gold), brier_score(probs, test_gold)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .no_dynamo import LBFGS

BINS = 15  # equal-width confidence bins of the ECE, as Guo et al. (2017) report it
T_RANGE = (0.05, 20.0)  # a temperature outside this is refused in a bundle and never fit: dev rows that few or that separable say nothing finer
THRESHOLDS = tuple(t / 20 for t in range(21))  # the accuracy/coverage curve's points: 0, 0.05, ..., 1


def fit_temperature(logits: torch.Tensor, gold: torch.Tensor) -> float:
    """The ``T`` in :data:`T_RANGE` that minimizes the mean log loss of ``softmax(logits / T)`` on ``gold``.

    ``logits`` may be any scores whose softmax is the model's probabilities (logs of
    probabilities included). 1.0 without rows. Convex in ``1/T``: L-BFGS from 1 finds it.
    """
    if not len(gold):
        return 1.0
    logits, gold = logits.double().clone(), gold.clone()  # clones: predict_logits gives inference tensors, which autograd refuses
    return fit_scale(lambda t: torch.nn.functional.cross_entropy(logits / t, gold))


def fit_scale(loss_at: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """The ``T`` in :data:`T_RANGE` minimizing ``loss_at(T)`` (a loss convex in ``1/T``): L-BFGS on ``log T`` from 0,
    rounded to 6 places. The one fit of :func:`fit_temperature` and the multi-label temperature."""
    low, high = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = LBFGS([log_t], lr=1, max_iter=100, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_at(log_t.clamp(low, high).exp())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return round(float(log_t.detach().clamp(low, high).exp()), 6)


def calibrated_log_loss(probs: torch.Tensor, gold: torch.Tensor) -> float:
    """The dev log loss of ``probs`` once their own temperature is fit: how a mix is chosen (nb_linear's alpha,
    sentence_head's beta), so the choice rewards how well a mix ranks the rows, not how sure it happens to sound."""
    logits = probs.double().clamp_min(1e-300).log()
    return float(torch.nn.functional.cross_entropy(logits / fit_temperature(logits, gold), gold)) if len(gold) else 0.0


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: the calibrated scores (``logits`` themselves, untouched, at 1)."""
    return logits if temperature == 1 else logits / temperature


def temperature_problem(value) -> str | None:
    """Why ``value`` cannot be a bundle's temperature (a number in :data:`T_RANGE`), or None when it can."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and T_RANGE[0] <= value <= T_RANGE[1]
    return None if ok else f"must be a number from {T_RANGE[0]:g} to {T_RANGE[1]:g}, got {str(value)[:40]!r}"


def expected_calibration_error(probs: torch.Tensor, gold: torch.Tensor, bins: int = BINS) -> float:
    """ECE of ``probs`` (N, C) against gold indices (N,): top-probability bins ``(k/bins, (k+1)/bins]``."""
    confidence, predicted = probs.double().max(1)
    return calibration_gap(confidence, (predicted == gold).double(), bins)


def confidence_bins(confidence: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Each row's bin index: bin k holds confidences in ``(k/bins, (k+1)/bins]`` (0 goes to the first)."""
    return (confidence * bins).ceil().clamp(1, bins).long() - 1


def calibration_gap(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> float:
    """The ECE of rows with these top probabilities and these 0/1 outcomes: per bin, |mean confidence - accuracy|,
    weighted by the bin's share of the rows."""
    which = confidence_bins(confidence, bins)
    total = 0.0
    for k in range(bins):
        rows = which == k
        if rows.any():
            total += float(rows.double().mean() * (confidence[rows].mean() - correct[rows].mean()).abs())
    return total


def brier_score(probs: torch.Tensor, gold: torch.Tensor) -> float:
    """Mean over rows of the squared distance between ``probs`` and the gold label's one-hot row."""
    if not len(gold):
        return 0.0
    onehot = torch.nn.functional.one_hot(gold, probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(1).mean())


def reliability(probs: torch.Tensor, gold: torch.Tensor, bins: int = BINS) -> list[dict]:
    """Per non-empty bin: its range, rows, mean confidence and accuracy (the reliability diagram's bars)."""
    confidence, predicted = probs.double().max(1)
    correct = (predicted == gold).double()
    which = confidence_bins(confidence, bins)
    return [{"low": round(k / bins, 6), "high": round((k + 1) / bins, 6), "rows": int((which == k).sum()),
             "confidence": round(float(confidence[which == k].mean()), 6), "accuracy": round(float(correct[which == k].mean()), 6)}
            for k in range(bins) if (which == k).any()]


def at_threshold(probs: torch.Tensor, gold: torch.Tensor, threshold: float) -> dict:
    """``{"threshold", "coverage", "accuracy", "n"}``: the rows whose top probability is at least ``threshold``
    (the ones ``predict --threshold`` labels), their share and their accuracy (None when there are none)."""
    confidence, predicted = probs.double().max(1)
    kept = confidence >= threshold
    n = int(kept.sum())
    accuracy = round(float((predicted[kept] == gold[kept]).double().mean()), 6) if n else None
    return {"threshold": threshold, "coverage": round(n / max(len(gold), 1), 6), "accuracy": accuracy, "n": n}


def coverage_curve(probs: torch.Tensor, gold: torch.Tensor, thresholds=THRESHOLDS) -> list[dict]:
    """:func:`at_threshold` at each of ``thresholds``: the accuracy/coverage curve."""
    return [at_threshold(probs, gold, t) for t in thresholds]


def calibration_summary(probs: torch.Tensor, gold: torch.Tensor) -> dict:
    """What the report and ``metrics.json`` give: ECE, Brier score, the reliability bins and the coverage curve."""
    return {"ece": round(expected_calibration_error(probs, gold), 6), "brier": round(brier_score(probs, gold), 6), "bins": BINS,
            "reliability": reliability(probs, gold), "coverage_curve": coverage_curve(probs, gold)}


def chance(gold: torch.Tensor, num_classes: int) -> float:
    """The accuracy of always answering the most common label of ``gold``."""
    return float(torch.bincount(gold, minlength=num_classes).max()) / max(len(gold), 1)


def did_not_learn(probs: torch.Tensor, gold: torch.Tensor) -> bool:
    """True when the predictions ``probs`` (N, C) do no better on ``gold`` than :func:`chance`."""
    accuracy = float((probs.argmax(1) == gold).double().mean()) if len(gold) else 0.0
    return len(gold) > 0 and accuracy <= chance(gold, probs.shape[1])
