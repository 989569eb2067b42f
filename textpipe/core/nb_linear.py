"""The bag model's NB-weighted linear path: fit after the bag has trained, and mixed in by a weight chosen on dev.

:class:`NBLinear` is NBSVM's recipe (Wang & Manning, 2012) with logistic
regression: which word and n-gram ids a text holds (once each), each scaled by its
naive-Bayes log-count ratio. It is strong where a mean of embeddings is weak (small
files, sentiment, rare but telling bigrams), and mixing the two models' probabilities
raised the default's mean dev accuracy (``docs/benchmarks.md``).
:func:`fit_nb_linear` reads the training rows once, in the bag's own ids (no dropout),
fits each member's weights by L-BFGS (convex: the same weights every run), and, given
dev rows, chooses the L2 strength ``C`` and the bag's share ``alpha`` (by dev log loss) on them; the refit
then reuses both. Before ``models.py`` in the stage order: the bag holds an
:class:`NBLinear`. Part of the tensor core: torch only.

Multi-label data (labels packed as :mod:`textpipe.core.multilabel` packs them) gets one
member per label, one-vs-rest: "label j or not" on features scaled by label j's ratios,
its probability the member's own sigmoid. There C is chosen by the linear path's dev
micro-F1 at 0.5 and alpha by the dev binary cross-entropy of the mixed per-label
probabilities, and the mix is of sigmoids: the bag's logits become the log-odds of
``alpha`` x sigmoid(bag) + (1 - ``alpha``) x sigmoid(linear).

Example:
    >>> model = BagOfNgrams(ModelConfig(vocab_size=1000, num_classes=2))  # its .nb is an NBLinear
    >>> record = fit_nb_linear(model, train_batches, dev_batches)   # after fit(model, ...)
    >>> record["alpha"], record["C"]
    (0.5, 10.0)
"""

from __future__ import annotations

import logging
from typing import Iterable, NamedTuple

import torch
from torch import nn

from .collate import Batch
from .kernels import present_ids
from .multilabel import multi_hot
from .nb_choice import C_CHOICES, choose_multi_label, choose_single_label, dev_score_name, mixed_dev_accuracy, not_learned_line
from .no_dynamo import LBFGS

log = logging.getLogger(__name__)

MAX_ROWS = 300_000  # the fit holds every training row's ids; past this the bag is on its own (and needs no help)
FIT_ROWS = 25_000  # past this many training rows the fit reads every k-th batch (about this many rows): its cost stops growing with the file


class Presence:
    """Which (compacted) features each row holds, as a sparse 0/1 matrix, and the rows' labels ((n,) indices, or (n, W) packed label sets)."""

    def __init__(self, ids: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor | None = None):
        self.columns = torch.unique(ids) if columns is None else columns  # the table rows the matrix's columns stand for
        position = torch.searchsorted(self.columns, ids).clamp(max=max(len(self.columns) - 1, 0))
        known = self.columns[position] == ids  # a dev row's feature that no training row had: dropped
        self.rows = torch.arange(len(counts)).repeat_interleave(counts)[known]
        self.cols = position[known]
        self.labels = labels
        self.shape = (len(counts), len(self.columns))
        self.bag: torch.Tensor | None = None  # (rows, C) the bag's probabilities (multi-label: its sigmoids), when :func:`presence` was asked for them
        self._matrices: dict[bool, torch.Tensor] = {}

    def matrix(self, transpose: bool = False) -> torch.Tensor:
        """The 0/1 matrix (rows, features), or its transpose, sparse, in float64; built once (every C's fit reads it)."""
        if transpose not in self._matrices:
            indices = torch.stack([self.cols, self.rows] if transpose else [self.rows, self.cols])
            ones = torch.ones(len(self.cols), dtype=torch.float64)
            self._matrices[transpose] = torch.sparse_coo_tensor(indices, ones, self.shape[::-1] if transpose else self.shape).coalesce()
        return self._matrices[transpose]

    def class_counts(self, num_classes: int) -> torch.Tensor:
        """(classes, features): in how many rows of each class each feature appears."""
        keys = self.labels[self.rows] * self.shape[1] + self.cols
        return torch.bincount(keys, minlength=num_classes * self.shape[1]).view(num_classes, self.shape[1]).double()

    @property
    def multi_label(self) -> bool:
        return self.labels.dim() == 2

    def targets(self, num_labels: int) -> torch.Tensor:
        """(rows, labels) float64 0/1: the multi-hot label sets of multi-label rows."""
        return multi_hot(self.labels, num_labels).double()

    def label_set_counts(self, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, features): in how many rows holding each label each feature appears (X^T Y); and (features,): in how many rows at all."""
        counts = torch.sparse.mm(self.matrix(transpose=True), self.targets(num_labels)).T
        return counts, torch.bincount(self.cols, minlength=self.shape[1]).double()


class NBLinear(nn.Module):
    """A linear model on which words and n-grams a text holds, each weighted by its naive-Bayes log-count ratio.

    NBSVM's recipe (Wang & Manning, 2012, with logistic regression): a feature present
    in the text counts once, scaled by ``r = log(p / q)``, how much more often it appears
    in one class's texts than in the others'. With two classes one member scores class 1
    against class 0; with more, one member per class against the rest, their
    probabilities normalized. With ``multi_label`` one member per label (even for two),
    each probability its own sigmoid, not normalized. The products ``r * w`` sit in ``table`` (one column per
    member, one row per row of the bag's embedding table), so a text's score is the sum
    of its rows. ``alpha`` is the bag's share when :meth:`mix` mixes the two models'
    probabilities (1: the bag alone, until :func:`fit_nb_linear` fits it). All three are
    buffers: fit by L-BFGS, not by the training loop's optimizer.

    Example:
        >>> nb = NBLinear(rows=100, num_classes=2)
        >>> nb.probabilities(torch.tensor([3, 5, 3, 7]), torch.tensor([3, 1])).shape
        torch.Size([2, 2])
    """

    def __init__(self, rows: int, num_classes: int, multi_label: bool = False):
        super().__init__()
        self.multi_label = multi_label
        members = len(member_targets(num_classes, multi_label))
        # nn.init.zeros_ of empty, not torch.zeros, for the meta-device skeleton (see model_skeleton).
        self.register_buffer("table", nn.init.zeros_(torch.empty(rows, members)))
        self.register_buffer("bias", nn.init.zeros_(torch.empty(members)))
        self.register_buffer("alpha", nn.init.ones_(torch.empty(())))

    @staticmethod
    def present(flat_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's distinct ids (ascending) and their count: a feature counts once, however often it occurs.

        In one pass of compiled C where it can (:func:`textpipe.core.kernels.present_ids`): ``torch.unique`` sorts every key of the batch.
        """
        fast = present_ids(flat_ids, lengths)
        if fast is not None:
            return fast
        text = torch.arange(len(lengths), device=flat_ids.device).repeat_interleave(lengths, output_size=flat_ids.numel())
        width = int(flat_ids.max()) + 1 if flat_ids.numel() else 1
        keys = torch.unique(text * width + flat_ids)  # sorted: by text, then by id
        return keys % width, torch.bincount(keys // width, minlength=len(lengths))

    def scores(self, flat_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, members) linear scores of the texts whose ids ``flat_ids`` holds end to end."""
        ids, counts = self.present(flat_ids, lengths)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        return nn.functional.embedding_bag(ids, self.table, offsets, mode="sum") + self.bias

    def probabilities(self, flat_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C) class probabilities: the members' sigmoids, as two classes or normalized over more (multi-label: as they are)."""
        scores = self.scores(flat_ids, lengths)
        return torch.sigmoid(scores) if self.multi_label else class_probabilities(scores)

    def mix(self, logits: torch.Tensor, flat_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The log of ``alpha`` x softmax(``logits``) + (1 - ``alpha``) x :meth:`probabilities`: what softmax,
        argmax and the loss read as logits (multi-label: the log-odds of the mixed sigmoids, what a sigmoid reads).
        ``logits`` unchanged while ``alpha`` is 1."""
        if float(self.alpha) >= 1:
            return logits
        if self.multi_label:
            return mixed_log_odds(self.alpha, logits, self.scores(flat_ids, lengths))
        mixed = self.alpha * logits.softmax(1) + (1 - self.alpha) * self.probabilities(flat_ids, lengths)
        return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()  # (B, C)


def member_targets(num_classes: int, multi_label: bool = False) -> list[int]:
    """The class (or label) each member scores against the rest: class 1 alone for two classes, else every one."""
    return [1] if num_classes == 2 and not multi_label else list(range(num_classes))


def mixed_log_odds(alpha: torch.Tensor | float, logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(B, L) log(p / (1 - p)) of p = ``alpha`` x sigmoid(``logits``) + (1 - ``alpha``) x sigmoid(``scores``), label by label.
    1 - p is mixed from the sigmoids of the negatives, so a p near 1 keeps its precision; both sides clamped above 0."""
    p = alpha * torch.sigmoid(logits) + (1 - alpha) * torch.sigmoid(scores)
    q = alpha * torch.sigmoid(-logits) + (1 - alpha) * torch.sigmoid(-scores)
    tiny = torch.finfo(p.dtype).tiny
    return p.clamp_min(tiny).log() - q.clamp_min(tiny).log()


def class_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """(n, C) from the members' (n, members) scores: their sigmoids, as two classes or normalized over more."""
    members = torch.sigmoid(scores)
    if members.shape[1] == 1:
        return torch.cat([1 - members, members], 1)
    return members / members.sum(1, keepdim=True)


def presence(model: torch.nn.Module, batches: Iterable[Batch], *, columns: torch.Tensor | None = None,
             max_rows: int | None = None, bag: bool = False, every: int = 1) -> Presence | None:
    """The rows of ``batches`` (every ``every``-th batch) as :class:`Presence`, in the bag's ids (None past ``max_rows``);
    with ``bag``, the bag's own probabilities of them too (the model with ``alpha`` still 1; multi-label: its sigmoids), from the same pass."""
    ids, counts, labels, probabilities, rows = [], [], [], [], 0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if i % every:
                continue
            rows += len(batch)
            if max_rows is not None and rows > max_rows:
                return None
            flat, lengths = model.flat_features(batch.ids, batch.mask)
            present, count = NBLinear.present(flat, lengths)
            ids.append(present.cpu())
            counts.append(count.cpu())
            labels.append(batch.labels.cpu())
            if bag and batch.labels.dim() == 2:
                probabilities.append(model(batch.ids, batch.mask).double().sigmoid().cpu())
            elif bag:
                probabilities.append(model(batch.ids, batch.mask).softmax(1).double().cpu())
    data = Presence(torch.cat(ids), torch.cat(counts), torch.cat(labels), columns)
    data.bag = torch.cat(probabilities) if bag else None
    return data


def log_count_ratios(data: Presence, targets: list[int], num_classes: int) -> torch.Tensor:
    """(members, features): r = log((p / |p|) / (q / |q|)), p and q a feature's row counts (+1) in the target class and the rest
    (multi-label: in the rows holding the target label and in those without it)."""
    if data.multi_label:
        counts, rows = data.label_set_counts(num_classes)
    else:
        counts = data.class_counts(num_classes)
        rows = counts.sum(0)
    ratios = []
    for target in targets:
        p = counts[target] + 1
        q = rows - counts[target] + 1
        ratios.append((p / p.sum()).log() - (q / q.sum()).log())
    return torch.stack(ratios)


def fit_members(data: Presence, num_classes: int, C: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's logistic regression on the ratio-scaled features: ``r * w`` (features, members) and biases.

    Member ``m`` is "class ``targets[m]`` or not" (multi-label: "label ``m`` or not") on features scaled by its own ratios. Each
    minimizes its mean log loss plus ``|w|^2 / (2 C n)`` (scikit-learn's objective divided
    by ``C n``; biases not penalized). The members' objectives are independent, so one
    L-BFGS run minimizes their sum: one sparse product a step for all of them. In float64,
    to scikit-learn's default tolerance (largest gradient entry 1e-4) or 100 iterations.
    """
    targets = member_targets(num_classes, data.multi_label)
    ratios = log_count_ratios(data, targets, num_classes).T  # (features, members)
    X, Xt = data.matrix(), data.matrix(transpose=True)
    if data.multi_label:
        t = data.targets(num_classes)  # (n, labels): one member per label
    else:
        t = (data.labels.unsqueeze(1) == torch.tensor(targets)).double()  # (n, members)
    n = data.shape[0]
    w = torch.zeros(data.shape[1], len(targets), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(targets), dtype=torch.float64, requires_grad=True)
    optimizer = LBFGS([w, b], lr=1, max_iter=100, history_size=10, tolerance_grad=1e-4, tolerance_change=1e-9,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        with torch.no_grad():  # the gradient in closed form: (sigmoid(s) - t) / n back through X, then the ratios
            s = torch.sparse.mm(X, ratios * w) + b  # (n, members)
            loss = (torch.nn.functional.softplus(s) - t * s).mean(0).sum() + (w * w).sum() / (2 * C * n)
            g = (torch.sigmoid(s) - t) / n
            w.grad = (ratios * torch.sparse.mm(Xt, g) + w / (C * n)).contiguous()
            b.grad = g.sum(0)
        return loss

    optimizer.step(closure)
    return (ratios * w).detach(), b.detach()


def member_probabilities(data: Presence, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(n, C) class probabilities of the rows of ``data`` (as :meth:`NBLinear.probabilities`)."""
    scores = torch.sparse.mm(data.matrix(), weights) + bias
    return torch.sigmoid(scores) if data.multi_label else class_probabilities(scores)


class Candidates(NamedTuple):
    """What :func:`fit_nb_linear` reads off the training rows alone, before any dev row or the bag: the table rows the
    features stand for, the rows and features counted, and each C's fit of the members (weights as ``r * w``, biases)."""

    columns: torch.Tensor
    shape: tuple[int, int]
    fits: dict[float, tuple[torch.Tensor, torch.Tensor]]


def fit_candidates(model: torch.nn.Module, train_batches: Iterable[Batch], Cs: Iterable[float] = C_CHOICES, *,
                   max_rows: int = MAX_ROWS, every: int = 1) -> Candidates | None:
    """The members fit for each of ``Cs`` on the rows of ``train_batches`` (only ``model``'s config is read: a skeleton will
    do); None past ``max_rows`` rows. On one thread, so the weights are the same bits whatever the thread count, in this
    process or in a refit's trained ahead (``textpipe.run.refit_ahead``)."""
    data = presence(model, train_batches, max_rows=max_rows, every=every)
    if data is None:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Candidates(data.columns, data.shape, {c: fit_members(data, int(model.head.out_features), c) for c in Cs})
    finally:
        torch.set_num_threads(threads)


def fit_nb_linear(model: torch.nn.Module, train_batches: Iterable[Batch], dev_batches: Iterable[Batch] | None = None, *,
                  C: float | None = None, alpha: float | None = None, max_rows: int = MAX_ROWS, every: int = 1,
                  candidates: Candidates | None = None) -> dict | None:
    """Fit ``model.nb`` on the rows of ``train_batches`` and set its ``alpha``; returns what was chosen, or None.

    Without ``C`` and ``alpha`` both are chosen on ``dev_batches``: C by the linear
    model's own dev accuracy (ties: the smaller C), then alpha by the mixture's dev log
    loss, each mix at its own temperature (ties: the better accuracy, then the alpha nearest 1, the bag alone). A bag no
    better than chance on dev (``record["dev"]["bag_learned"]`` false) is not mixed in:
    alpha 0, the linear path alone. Multi-label batches: :func:`choose_multi_label`. None, with the bag left alone, past ``max_rows``
    training rows. ``every``: fit on every ``every``-th training batch only (a large file's subsample). ``candidates``: the
    :func:`fit_candidates` of these rows, when already fit elsewhere.
    """
    nb, was_training, choose = model.nb, model.training, C is None or alpha is None
    model.eval()
    try:
        fitted = candidates or fit_candidates(model, train_batches, C_CHOICES if choose else (C,), max_rows=max_rows, every=every)
        if fitted is None:
            log.info(f"more than {max_rows:,} training rows: the NB linear path is left out (alpha = 1, the bag alone)")
            return None
        num_classes = int(model.head.out_features)
        record = {"rows": fitted.shape[0], "features": fitted.shape[1], **({"every": every} if every > 1 else {})}
        if choose:
            nb.alpha.fill_(1.0)
            dev = presence(model, dev_batches, columns=fitted.columns, bag=True)
            linear = {c: member_probabilities(dev, w, b) for c, (w, b) in fitted.fits.items()}
            C, alpha, record["dev"] = (choose_multi_label if dev.multi_label else choose_single_label)(dev, linear, num_classes)
        weights, bias = fitted.fits[C]
        with torch.no_grad():
            nb.table.zero_()
            nb.table[fitted.columns.to(nb.table.device)] = weights.to(nb.table)
            nb.bias.copy_(bias)
            nb.alpha.fill_(alpha)
        return {**record, "C": C, "alpha": alpha}
    finally:
        model.train(was_training)


def phase_every(num_train: int) -> int:
    """A phase's fit reads every k-th training batch: 1 up to FIT_ROWS rows (small files are fit on every row)."""
    return -(-num_train // FIT_ROWS)


def fit_nb_for_phase(model: torch.nn.Module, train_rows, dev_rows, chosen: dict | None, num_train: int, *, quiet: bool = True,
                     candidates: Candidates | None = None) -> dict | None:
    """Fit ``model``'s NB linear path on a training phase's rows: C and alpha chosen on dev, or (a refit) ``chosen``'s;
    None (the bag alone) over MAX_ROWS training rows or with nothing to choose them on. ``candidates``: fit elsewhere."""
    # Every rank fits it alike on all the rows (these loaders are not sharded), so the ranks' models stay the same.
    too_many = num_train > MAX_ROWS  # known from the vocabulary pass, before a read of the rows
    if too_many or (chosen is None and dev_rows is None):
        if too_many and not quiet:
            log.info(f"{num_train:,} training rows (over {MAX_ROWS:,}): the NB linear path is left out, the model is the bag alone")
        return None
    every = phase_every(num_train)
    record = fit_nb_linear(model, train_rows, dev_rows, every=every, candidates=candidates,
                           **({"C": chosen["C"], "alpha": chosen["alpha"]} if chosen else {}))
    if record is not None and not record.get("dev", {}).get("bag_learned", True):  # said even when quiet: the model is not what was asked for
        log.warning(f"the bag did not learn ({not_learned_line(record)}): it is left out of the mix, the model is the NB linear path alone")
    if record is not None and not quiet:
        log.info(f"NB linear path: C {record['C']:g}, the bag's share of the mix {record['alpha']:g}"
                 + (f", fit on every {every}th batch ({record['rows']:,} of {num_train:,} rows)" if every > 1 else "")
                 + (f" (dev {dev_score_name(record)}: bag {record['dev']['bag']:.4f}, mixed {mixed_dev_accuracy(record):.4f})" if "dev" in record else ""))
    return record
