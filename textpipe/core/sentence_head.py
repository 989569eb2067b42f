"""The sentence encoder's member of the mix: a logistic regression on frozen sentence vectors.

A trained model's probabilities (after its own NB mix) are mixed with those of
:class:`SentenceHead`, one ``Linear(384, classes)`` on the L2-normalised sentence
vector of each text: ``p = (1 - beta) * p_model + beta * p_head``. :func:`fit_head`
fits the head by L-BFGS on every training row at once (multinomial logistic
regression, L2 penalty ``1 / C``, convex: the same weights every run) and, given dev
vectors and the model's dev probabilities, chooses ``C`` (dev accuracy, ties by log
loss) and ``beta`` (dev log loss of the mix, ties by accuracy, then to the smaller share) on them; a
refit passes both back in. Part of the tensor core: torch only.

Example:
    >>> head, record = fit_head(train_x, train_y, 2, dev=(dev_x, dev_y, dev_model_probs))
    >>> head.mix(model_probs, vectors).shape
    torch.Size([n, 2])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .calibration import calibrated_log_loss
from .no_dynamo import LBFGS

C_CHOICES = (0.3, 1.0, 3.0, 10.0, 30.0)  # inverse L2 strength, as scikit-learn's LogisticRegression(C=...)
BETAS = tuple(b / 10 for b in range(10))  # the head's share of the mixed probabilities


class SentenceHead(nn.Module):
    """``Linear(dim, classes)`` on unit sentence vectors, and ``beta``, its share of the mixed probabilities.

    Example:
        >>> head = SentenceHead(384, 2)
        >>> head.mix(torch.tensor([[0.3, 0.7]]), torch.randn(1, 384))   # beta 0: the model's probabilities
        tensor([[0.3000, 0.7000]])
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("beta", torch.zeros((), dtype=torch.float64))  # float64: exactly the share chosen (0.1, not 0.10000000149)

    def probabilities(self, vectors: torch.Tensor) -> torch.Tensor:
        """(n, classes) from (n, dim) sentence vectors, normalised to unit length first."""
        with torch.no_grad():
            return self.linear(nn.functional.normalize(vectors.float(), dim=1)).softmax(1)

    def mix(self, model_probs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``(1 - beta) * model_probs + beta * p_head``; ``model_probs`` itself, untouched, while ``beta`` is 0."""
        beta = float(self.beta)
        if beta == 0:
            return model_probs
        return (1 - beta) * model_probs + beta * self.probabilities(vectors).to(model_probs.dtype)


def fit_weights(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: mean cross-entropy + ``|W|^2 / (2 C n)``; (W, b) in float64."""
    x = nn.functional.normalize(x.double(), dim=1)
    n = x.shape[0]
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = LBFGS([w, b], lr=1, max_iter=200, history_size=10, tolerance_grad=1e-6, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def fit_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, dev: tuple | None = None,
             C: float | None = None, beta: float | None = None) -> tuple[SentenceHead, dict]:
    """The head fit on training vectors ``x`` (n, dim) and labels ``y``; C and beta chosen on
    ``dev`` = (vectors, labels, the model's probabilities), or (a refit) given. Returns the head and its record."""
    if dev is None and (C is None or beta is None):
        raise ValueError("fit_head needs dev rows to choose C and beta, or both given")
    record: dict = {}
    if C is None:
        head, C, record["dev_by_C"] = _choose_C(x, y, num_classes, dev)
    else:
        head = _head(x, y, num_classes, C)
    if beta is None:
        dev_x, dev_y, model_probs = dev
        beta, record["dev"] = _choose_beta(model_probs, head.probabilities(dev_x), dev_y)
    head.beta.fill_(beta)
    return head, {"C": C, "beta": beta, **record}


def _head(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float) -> SentenceHead:
    w, b = fit_weights(x, y, num_classes, C)
    head = SentenceHead(x.shape[1], num_classes)
    with torch.no_grad():
        head.linear.weight.copy_(w)
        head.linear.bias.copy_(b)
    return head


def _choose_C(x: torch.Tensor, y: torch.Tensor, num_classes: int, dev: tuple) -> tuple[SentenceHead, float, dict]:
    """The head whose C scores best on dev alone (accuracy first, then the lower log loss), its C, every C's scores."""
    dev_x, dev_y, _ = dev
    heads, scores = {}, {}
    for C in C_CHOICES:
        heads[C] = _head(x, y, num_classes, C)
        probs = heads[C].probabilities(dev_x)
        scores[C] = (accuracy(probs, dev_y), -log_loss(probs, dev_y))
    best = max(C_CHOICES, key=lambda C: scores[C])  # max keeps the first of equals: the smaller C
    return heads[best], best, {f"{C:g}": {"accuracy": s[0], "log_loss": -s[1]} for C, s in scores.items()}


def _choose_beta(model_probs: torch.Tensor, head_probs: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
    """The share of the head in the mix with the lowest dev log loss at its own temperature (the probabilities are what a user reads);
    ties go to the better dev accuracy, then to the smaller share."""
    model_probs = model_probs.double()
    mixes = {beta: (1 - beta) * model_probs + beta * head_probs.double() for beta in BETAS}
    mixed = {beta: accuracy(p, y) for beta, p in mixes.items()}
    losses = {beta: calibrated_log_loss(p, y) for beta, p in mixes.items()}
    best = min(BETAS, key=lambda beta: (losses[beta], -mixed[beta]))  # min keeps the first of equals: the smaller share
    return best, {"model": mixed[0.0], "head": accuracy(head_probs, y), "mixed": mixed[best], "mixed_log_loss": round(losses[best], 6)}


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return float((probs.argmax(1) == y).double().mean()) if len(y) else 0.0


def log_loss(probs: torch.Tensor, y: torch.Tensor) -> float:
    if not len(y):
        return 0.0
    picked = probs.double()[torch.arange(len(y)), y].clamp_min(1e-15)
    return float(-picked.log().mean()) if math.isfinite(float(picked.sum())) else float("inf")
