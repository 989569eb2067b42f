"""Pretrained word vectors (GloVe / word2vec text format) for the embedding's word rows.

A text-side stage: it reads a local file through ``torchtext.vocab.Vectors`` and
matches its words against the vocabulary; nothing is downloaded. torchtext 0.18's
``Vectors(name=path, cache=folder)`` reads the file once and saves the parsed
table as ``folder/<file name>.pt``, loading that instead on later calls. We pass
the file's own folder as the cache, and delete a ``.pt`` older than the file it
came from, since torchtext would otherwise keep serving the stale table.

Format: one word per line followed by its numbers, separated by single spaces; a
word2vec header line (``count dim``) is skipped. A vocabulary token missing from
the file is looked up lower-cased before it counts as not found; rows not found
keep the model's own random initialisation.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import _torchtext  # noqa: F401  (silences torchtext's import warning)
from torchtext.vocab import Vectors, Vocab

SPECIALS = ("<pad>", "<unk>")


@dataclass
class Coverage:
    """How much of a vocabulary a vectors file covers.

    Example:
        >>> Coverage(found=900, total=1000, dim=50, path="glove.txt").describe()
        'vectors glove.txt (50-d): 900 of 1000 vocabulary tokens found (90.0 %)'
    """

    found: int
    total: int  # vocabulary tokens besides <pad> and <unk>
    dim: int
    path: str

    def describe(self) -> str:
        share = 100 * self.found / max(self.total, 1)
        return f"vectors {self.path} ({self.dim}-d): {self.found} of {self.total} vocabulary tokens found ({share:.1f} %)"

    def to_dict(self) -> dict:
        return asdict(self)


def load_vectors(path: str | Path) -> Vectors:
    """Read a local vectors file (cached as ``<path>.pt`` beside it); never downloads.

    Example:
        >>> vectors = load_vectors("glove.6B.50d.txt")
        >>> vectors.dim
        50
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vectors file (textpipe reads local GloVe / word2vec text files only)")
    cached = Path(str(path) + ".pt")
    if cached.is_file() and cached.stat().st_mtime_ns < path.stat().st_mtime_ns:
        cached.unlink()  # torchtext keys its cache by file name only
    try:
        vectors = Vectors(name=str(path), cache=str(path.parent))
    except RuntimeError as err:  # torchtext's message for ragged rows
        raise ValueError(f"{path}: {err}") from None
    if vectors.dim is None or len(vectors.itos) == 0:
        raise ValueError(f"{path}: no word vectors found (expected lines of 'word x1 x2 ...')")
    return vectors


def vectors_for_vocab(vocab: Vocab, vectors: Vectors) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(len(vocab), dim)`` table of the file's vectors in vocabulary order and a
    boolean mask of the rows found (never <pad> or <unk>)."""
    table = torch.zeros(len(vocab), vectors.dim)
    found = torch.zeros(len(vocab), dtype=torch.bool)
    for i, token in enumerate(vocab.get_itos()):
        if token in SPECIALS:
            continue
        key = token if token in vectors.stoi else token.lower()
        if key in vectors.stoi:
            table[i] = vectors.vectors[vectors.stoi[key]]
            found[i] = True
    return table, found


@torch.no_grad()
def load_into_embedding(embedding: nn.Embedding, vocab: Vocab, path: str | Path) -> Coverage:
    """Overwrite the word rows of ``embedding`` (rows ``0 .. len(vocab)-1``) that the
    vectors file has; return the coverage. Extra rows (hashed n-grams) are left alone.

    Example:
        >>> coverage = load_into_embedding(model.embedding, vocab, "glove.6B.50d.txt")
        >>> print(coverage.describe())
    """
    vectors = load_vectors(path)
    if vectors.dim != embedding.embedding_dim:
        raise ValueError(f"{path}: vectors have {vectors.dim} dimensions but the model's embed_dim is {embedding.embedding_dim}; set model.embed_dim = {vectors.dim}")
    table, found = vectors_for_vocab(vocab, vectors)
    rows = embedding.weight[: len(vocab)]
    rows[found] = table[found].to(rows.dtype)
    total = sum(1 for token in vocab.get_itos() if token not in SPECIALS)
    return Coverage(int(found.sum()), total, vectors.dim, os.fspath(path))
