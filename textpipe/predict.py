"""Stage 8: texts -> labels and class probabilities, from a saved bundle.

Texts are numericalized through a map-style :class:`~textpipe.dataset.TextListDataset`,
batched by a ``DataLoader`` with the padding ``collate_fn``, and scored under
``torch.inference_mode()``. A :class:`LengthSortedSampler` feeds the texts longest
first, so each batch holds texts of similar length and carries little padding;
the rows are put back in input order afterwards, so output order is input order. :meth:`Predictor.embed`
returns the model's pooled sentence vectors, captured with a forward hook
(:func:`textpipe.models.capture_pooled`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from .bundle import Bundle, load_bundle
from .collate import pad_collate
from .dataset import TextListDataset
from .models import capture_pooled
from .train import predict_logits


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

    def probabilities(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Class probabilities, shape ``(len(texts), num_classes)``, columns in ``self.labels`` order."""
        if not texts:
            return torch.empty(0, len(self.labels))
        dataset = TextListDataset(texts, self.bundle.tokenizer, self.bundle.vocab)
        sampler = LengthSortedSampler(texts)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=pad_collate)
        logits, _ = predict_logits(self.bundle.model, loader, self.device)
        return sampler.restore(logits).softmax(-1)

    def predict(self, texts: Sequence[str], top_k: int | None = None, batch_size: int = 256) -> list[dict]:
        """One ``{"text", "label", "probs"}`` dict per text; ``probs`` keeps the ``top_k`` best (all by default)."""
        k = len(self.labels) if top_k is None else max(1, min(top_k, len(self.labels)))
        results = []
        for text, row in zip(texts, self.probabilities(texts, batch_size)):
            values, indices = row.topk(k)
            probs = {self.labels[i]: round(v, 6) for v, i in zip(values.tolist(), indices.tolist())}
            results.append({"text": text, "label": self.labels[int(indices[0])], "probs": probs})
        return results

    def embed(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Sentence vectors, shape ``(len(texts), D)``: the output of ``model.pool``, caught by a forward hook.

        Example:
            >>> Predictor.load("runs/default").embed(["a gorgeous movie", "a dull one"]).shape
            torch.Size([2, 64])
        """
        if not texts:
            raise ValueError("no texts to embed")
        dataset = TextListDataset(texts, self.bundle.tokenizer, self.bundle.vocab)
        sampler = LengthSortedSampler(texts)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=pad_collate)
        with capture_pooled(self.bundle.model) as vectors:
            predict_logits(self.bundle.model, loader, self.device)
        return sampler.restore(torch.cat(vectors).cpu())
