"""Stage 5: a padded batch of ids -> class logits.

Pure ``nn.Module``s and a config dataclass; tensors in, tensors out, no text.
Every model has the same call: ``model(ids, mask) -> logits`` with ``ids`` and
``mask`` of shape ``(B, T)`` as made by :func:`textpipe.collate.pad_collate`.

The pooled sentence vector passes through ``model.pool``, an ``nn.Module`` of its
own, so a forward hook on it captures sentence embeddings
(:func:`capture_pooled`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator

import torch
from torch import nn


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved inside each bundle."""

    name: str = "bag"
    vocab_size: int = 0  # from the vocabulary
    num_classes: int = 0  # from the labels
    embed_dim: int = 64
    ngram_buckets: int = 2**18  # hashed word-bigram rows added to the table; 0 = unigrams only
    dropout: float = 0.3  # on the pooled vector
    token_dropout: float = 0.3  # training only: each word / bigram is left out of the mean with this probability

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedMeanPool(nn.Module):
    """Mean of the vectors at the positions where ``mask`` is True."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D), mask: (B, T)
        mask = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)


class BagOfNgrams(nn.Module):
    """fastText-style classifier: mean of word and hashed word-bigram embeddings, then a linear layer.

    Bigram ``(a, b)`` of token ids is hashed into one of ``ngram_buckets`` extra rows
    of the embedding table, so the table's size does not grow with the data. The
    table is sparse: only the rows a batch touches get a gradient, which is what
    makes a 2^18-row table cheap to train (pair it with ``torch.optim.SparseAdam``).

    Example:
        >>> model = BagOfNgrams(ModelConfig(vocab_size=1000, num_classes=2))
        >>> batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
        >>> model(batch.ids, batch.mask).shape
        torch.Size([2, 2])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 2 or config.num_classes < 2:
            raise ValueError(f"need vocab_size >= 2 and num_classes >= 2, got {config.vocab_size}, {config.num_classes}")
        self.config = config
        rows = config.vocab_size + config.ngram_buckets
        self.embedding = nn.Embedding(rows, config.embed_dim, padding_idx=0, sparse=True)
        self.pool = MaskedMeanPool()
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        bound = 1.0 / config.embed_dim  # fastText's initialization
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, mask = self.add_bigrams(ids, mask)  # (B, T') with T' = 2T - 1
        if self.training and self.config.token_dropout > 0:
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= self.config.token_dropout)
        x = self.embedding(ids.masked_fill(~mask, 0))  # (B, T', D)
        pooled = self.pool(x, mask)  # (B, D)
        return self.head(self.dropout(pooled))  # (B, C)

    def add_bigrams(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        buckets = self.config.ngram_buckets
        if buckets == 0 or ids.shape[1] < 2:
            return ids, mask
        left, right = ids[:, :-1], ids[:, 1:]
        bigrams = self.config.vocab_size + (left * 1_000_003 + right) % buckets  # (B, T-1)
        both = mask[:, :-1] & mask[:, 1:]
        return torch.cat([ids, bigrams], 1), torch.cat([mask, both], 1)


MODELS: dict[str, type[nn.Module]] = {"bag": BagOfNgrams}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model named by ``config.name``."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[config.name](config)


@contextmanager
def capture_pooled(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the pooled sentence vectors of every forward pass inside the block.

    Example:
        >>> with capture_pooled(model) as vectors:
        ...     model(batch.ids, batch.mask)
        >>> vectors[0].shape  # (B, D)
    """
    captured: list[torch.Tensor] = []
    handle = model.pool.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        handle.remove()
