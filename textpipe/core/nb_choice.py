"""How the bag's NB-weighted linear path is chosen on dev: its L2 strength C and the bag's share alpha of the mix.

:func:`choose_single_label` picks C by the linear path's own dev accuracy and alpha by
the mix's dev log loss (each mix at its own temperature, as the run ships it);
:func:`choose_multi_label` does the same for label sets with micro-F1 and binary
cross-entropy. The record they return is what ``metrics.json`` and the report say of the
choice (:func:`mixed_dev_accuracy`, :func:`dev_score_name`, :func:`not_learned_line`).
Part of the tensor core: torch only; :mod:`textpipe.core.nb_linear` fits what is chosen here.

Example:
    >>> C, alpha, record = choose_single_label(dev, {c: probabilities_of(c) for c in C_CHOICES}, num_classes=2)
"""

from __future__ import annotations

import torch

from .calibration import calibrated_log_loss, chance, did_not_learn
from .multilabel import bce_log_loss, fit_temperature_multilabel, multilabel_report

C_CHOICES = (1.0, 3.0, 10.0)  # inverse L2 strength, as scikit-learn's LogisticRegression(C=...)
ALPHAS = tuple(a / 10 for a in range(11))  # the bag's share of the mixed probabilities


def mixed_dev_accuracy(record: dict) -> float:
    """The dev accuracy of the mix :func:`textpipe.core.nb_linear.fit_nb_linear` chose (from a record with ``"dev"``); multi-label: its dev micro-F1 at 0.5."""
    return record["dev"]["mixed_by_alpha"][str(record["alpha"])]


def dev_score_name(record: dict) -> str:
    """What the record's dev scores (``bag``, ``linear_by_C``, ``mixed_by_alpha``) are: accuracy, or multi-label's micro-F1 at 0.5."""
    return "micro-F1 at 0.5" if record.get("dev", {}).get("score") == "micro_f1" else "accuracy"


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probabilities.argmax(1) == labels).double().mean())


def micro_f1(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """Micro-F1 of the labels whose probability reaches 0.5, against 0/1 ``targets`` (both (n, labels))."""
    return multilabel_report(probabilities >= 0.5, targets.bool(), [str(j) for j in range(targets.shape[1])])["micro"]["f1"]


def calibrated_bce(probabilities: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean binary cross-entropy of per-label ``probabilities`` once their own temperature is fit (as :func:`calibrated_log_loss`)."""
    log_odds = torch.logit(probabilities.double(), eps=1e-12)
    return bce_log_loss(log_odds / fit_temperature_multilabel(log_odds, targets), targets)


def prior_bce(targets: torch.Tensor) -> float:
    """The binary cross-entropy of answering each label's frequency in ``targets`` for every row: what a model that learned nothing reaches."""
    rates = torch.logit(targets.double().mean(0), eps=1e-12)
    return bce_log_loss(rates.expand_as(targets), targets)


def choose_single_label(dev, linear: dict, num_classes: int) -> tuple[float, float, dict]:
    """C by the linear path's dev accuracy (ties: the smaller), alpha by the mix's dev log loss; and the dev record.
    ``dev``: the dev rows' ``nb_linear.Presence``, with the bag's probabilities; ``linear``: each C's probabilities of them."""
    bag = dev.bag
    scores = {c: accuracy(p, dev.labels) for c, p in linear.items()}
    C = min(c for c in C_CHOICES if scores[c] == max(scores.values()))
    mixed = {a: accuracy(a * bag + (1 - a) * linear[C], dev.labels) for a in ALPHAS}
    losses = {a: calibrated_log_loss(a * bag + (1 - a) * linear[C], dev.labels) for a in ALPHAS}
    learned = not did_not_learn(bag, dev.labels)
    # The share by dev log loss (each mix at its own temperature, as the run ships it): the probabilities are what a
    # user reads; accuracy breaks ties, then the bag's share.
    alpha = min(ALPHAS, key=lambda a: (losses[a], -mixed[a], -a)) if learned else 0.0
    return C, alpha, {"bag": accuracy(bag, dev.labels), "chance": chance(dev.labels, num_classes), "bag_learned": learned,
                      "linear_by_C": {str(c): v for c, v in scores.items()}, "mixed_by_alpha": {str(a): v for a, v in mixed.items()},
                      "log_loss_by_alpha": {str(a): round(v, 6) for a, v in losses.items()}}


def choose_multi_label(dev, linear: dict, num_labels: int) -> tuple[float, float, dict]:
    """:func:`choose_single_label` for label sets: C by the linear path's dev micro-F1 at 0.5, alpha by the dev binary
    cross-entropy of the mixed per-label probabilities (each mix at its own temperature; ties: the better micro-F1, then
    the alpha nearest 1). The bag learned when its dev loss beats answering each label's dev frequency."""
    targets, bag = dev.targets(num_labels), dev.bag
    scores = {c: micro_f1(p, targets) for c, p in linear.items()}
    C = min(c for c in C_CHOICES if scores[c] == max(scores.values()))
    mixes = {a: a * bag + (1 - a) * linear[C] for a in ALPHAS}
    mixed = {a: micro_f1(p, targets) for a, p in mixes.items()}
    losses = {a: calibrated_bce(p, targets) for a, p in mixes.items()}
    prior = prior_bce(targets)
    learned = losses[1.0] < prior
    alpha = min(ALPHAS, key=lambda a: (losses[a], -mixed[a], -a)) if learned else 0.0
    return C, alpha, {"score": "micro_f1", "bag": mixed[1.0], "bag_loss": round(losses[1.0], 6), "prior_loss": round(prior, 6),
                      "bag_learned": learned, "linear_by_C": {str(c): v for c, v in scores.items()},
                      "mixed_by_alpha": {str(a): v for a, v in mixed.items()}, "log_loss_by_alpha": {str(a): round(v, 6) for a, v in losses.items()}}


def not_learned_line(record: dict) -> str:
    """Why a record's bag counts as not learned: its dev score against what answering without reading the text reaches."""
    dev = record["dev"]
    if dev.get("score") == "micro_f1":
        return f"dev log loss {dev['bag_loss']:.4f}, no better than answering each label's dev frequency: {dev['prior_loss']:.4f}"
    return f"dev accuracy {dev['bag']:.4f}, no better than always answering the most common label: {dev['chance']:.4f}"
