"""Stage 8: texts -> labels and class probabilities, from a saved bundle.

Texts are numericalized through a map-style :class:`~textpipe.dataset.TextListDataset`,
batched by a ``DataLoader`` with the padding ``collate_fn``, and scored under
``torch.inference_mode()``. Output order is input order. :meth:`Predictor.embed`
returns the model's pooled sentence vectors, captured with a forward hook
(:func:`textpipe.models.capture_pooled`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from .bundle import Bundle, load_bundle
from .collate import pad_collate
from .dataset import TextListDataset
from .models import capture_pooled
from .train import predict_logits


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
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate)
        logits, _ = predict_logits(self.bundle.model, loader, self.device)
        return logits.softmax(-1)

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
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate)
        with capture_pooled(self.bundle.model) as vectors:
            predict_logits(self.bundle.model, loader, self.device)
        return torch.cat(vectors).cpu()
