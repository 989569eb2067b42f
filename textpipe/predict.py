"""Stage 8: texts -> labels and class probabilities, from a saved bundle.

The bulk path: all texts are tokenized in one batched pass (spaCy's ``pipe``),
numericalized into one flat tensor with offsets, sorted by length (so a batch
holds texts of similar length and carries little padding), cut into large
batches by :func:`~textpipe.collate.collate_flat` (one gather per batch, no
per-text Python) and scored under ``torch.inference_mode()``; the rows are put
back in input order afterwards, so output order is input order. :meth:`Predictor.embed`
returns the model's pooled sentence vectors, captured with a forward hook
(:func:`textpipe.models.capture_pooled`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from .bundle import Bundle, load_bundle
from .collate import Batch, collate_flat
from .explain import Explanation, explain
from .vocab import UNK_ID
from .models import capture_pooled
from .metrics import predict_logits


class LengthSortedSampler(Sampler[int]):
    """The indices of a list of texts, longest text (in characters) first; ties keep input order.

    A ``DataLoader`` given this sampler makes batches of similar lengths, so the
    padding ``collate_fn`` adds few ``<pad>`` positions (what a CNN, GRU or
    Transformer would otherwise compute over). Undo the order with :meth:`restore`.

    Example:
        >>> sampler = LengthSortedSampler(["a", "a longer text", "mid text"])
        >>> list(sampler)
        [1, 2, 0]
    """

    def __init__(self, texts: Sequence[str]):
        self.order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def restore(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows that came out in sampler order, put back in input order."""
        restored = torch.empty_like(rows)
        restored[torch.tensor(self.order, dtype=torch.long)] = rows
        return restored


class Predictor:
    """Loads a bundle once and predicts many texts.

    Example:
        >>> predictor = Predictor.load("runs/default")
        >>> predictor.predict(["a gorgeous, witty, seductive movie."])[0]["label"]
        'fresh'
    """

    def __init__(self, bundle: Bundle, device: str = "cpu"):
        self.bundle = bundle
        self.device = torch.device(device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Predictor":
        return cls(load_bundle(path, device), device)

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def probabilities(self, texts: Sequence[str], batch_size: int = 2048) -> torch.Tensor:
        """Class probabilities, shape ``(len(texts), num_classes)``, columns in ``self.labels`` order."""
        if not texts:
            return torch.empty(0, len(self.labels))
        order, batches = self.batches(texts, batch_size)
        logits, _ = predict_logits(self.bundle.model, batches, self.device)
        return _restore(order, logits).softmax(-1)

    def batches(self, texts: Sequence[str], batch_size: int) -> tuple[torch.Tensor, Iterator[Batch]]:
        """The texts numericalized in one pass, as batches of similar lengths, and the order they come in."""
        tokenizer, vocab = self.bundle.tokenizer, self.bundle.vocab
        ids = [vocab(tokens) or [UNK_ID] for tokens in tokenizer.pipe(texts)]
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        order = torch.argsort(lengths, descending=True, stable=True)
        return order, (collate_flat(flat, offsets, order[i : i + batch_size]) for i in range(0, len(order), batch_size))

    def predict(self, texts: Sequence[str], top_k: int | None = None, batch_size: int = 2048) -> list[dict]:
        """One ``{"text", "label", "probs"}`` dict per text; ``probs`` keeps the ``top_k`` best (all by default)."""
        return top_labels(texts, self.probabilities(texts, batch_size), self.labels, top_k)

    def explain(self, texts: Sequence[str]) -> list[Explanation]:
        """Why each text got its label: per-feature contributions (exact for the bag model), see :mod:`textpipe.explain`.

        Example:
            >>> predictor.explain(["a dull film"])[0].method
            'exact'
        """
        return explain(self.bundle, texts)

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Sentence vectors, shape ``(len(texts), D)``: the output of ``model.pool``, caught by a forward hook.

        Example:
            >>> Predictor.load("runs/default").embed(["a gorgeous movie", "a dull one"]).shape
            torch.Size([2, 64])
        """
        if not texts:
            raise ValueError("no texts to embed")
        order, batches = self.batches(texts, batch_size)
        with capture_pooled(self.bundle.model) as vectors:
            predict_logits(self.bundle.model, batches, self.device)
        return _restore(order, torch.cat(vectors).cpu())


def top_labels(texts: Sequence[str], probs: torch.Tensor, labels: Sequence[str], top_k: int | None = None) -> list[dict]:
    """One ``{"text", "label", "probs"}`` dict per row of ``probs``, keeping the ``top_k`` best labels (all by default)."""
    k = len(labels) if top_k is None else max(1, min(top_k, len(labels)))
    results = []
    for text, row in zip(texts, probs):
        values, indices = row.topk(k)
        ranked = {labels[i]: round(v, 6) for v, i in zip(values.tolist(), indices.tolist())}
        results.append({"text": text, "label": labels[int(indices[0])], "probs": ranked})
    return results


def _restore(order: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows that came out in ``order``, put back in input order."""
    restored = torch.empty_like(rows)
    restored[order] = rows
    return restored
