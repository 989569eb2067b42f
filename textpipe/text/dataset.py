"""Rows -> token ids: ``(ids, label_index)``, or ``ids`` alone without labels.

Multi-label data (the source's ``label_sep`` set) carries each row's label set packed
as int64 words (:func:`textpipe.core.multilabel.pack_label_set`) where one label index would be.

:class:`TextClassificationDataset` is an iterable-style dataset
(``torch.utils.data.IterableDataset``): it reads its file row by row on every pass
(or the file's token-id cache, :mod:`textpipe.text.cache`), so an epoch never holds the
whole file in memory. It checks labels and picks its part of the file (train or
held-out dev); the order, the sharding and the grouping into batches are the
batching unit's (:class:`~textpipe.core.batching.Batches`). Iterated alone (or by a
``DataLoader`` with workers), it yields each example of its part once, in file order.

:class:`TextListDataset` is the map-style counterpart (``__len__`` and
``__getitem__``) for texts already in memory, such as a list to predict.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..core.batching import Batches, BatchStream
from .cache import NumericCache, cache_key, tokens_sha256, write_cache
from .token_stream import TokenStream
from ..core.collate import FlatRows
from ..core.multilabel import pack_label_set, words_per_row
from .encoder import TextEncoder
from .sources import DataError, Example, Position, SourceConfig, read_examples
from .tokenizer import Tokenizer
from .vocab import UNK_ID, Vocab

UNSEEN_LABEL = "label not seen in training"


def numericalize(tokenizer: Tokenizer, vocab: Vocab, text: str) -> torch.Tensor:
    """Token ids of one text as a 1-D long tensor; a text with no tokens becomes ``[<unk>]``."""
    return torch.tensor(vocab(tokenizer(text)) or [UNK_ID], dtype=torch.long)


def is_held_out(row: int, holdout_every: int) -> bool:
    """Whether row number ``row`` belongs to the held-out part: about one row in ``holdout_every``.

    A hash of the row number rather than ``row % k``, so a file whose labels repeat
    with a period (pos, neg, pos, ...) still gets a dev part with every label.
    """
    return zlib.crc32(row.to_bytes(8, "little")) % holdout_every == 0


def select_part(examples: Iterable[Example], part: str, holdout_every: int, first_row: int = 0) -> Iterator[Example]:
    """The ``"dev"`` part (about one row in ``holdout_every``), the ``"train"`` rest, or ``"all"``.

    ``first_row`` is the row number of the first example (not 0 when a stream resumes).
    """
    for i, example in enumerate(examples, start=first_row):
        if part == "all" or is_held_out(i, holdout_every) == (part == "dev"):
            yield example


class TextClassificationDataset(IterableDataset):
    """Streams ``(ids, label_index)`` from a CSV/TSV/JSONL/folder source; just ``ids`` when ``labels`` is None.

    ``holdout_every=k`` splits the file without writing anything: about one row in
    k (chosen by a hash of its row number) forms the ``"dev"`` part, the others the
    ``"train"`` part. ``cache_dir`` tokenizes the part once into a
    :class:`~textpipe.text.cache.NumericCache` there (or reuses the one that is there),
    and every pass reads token ids from it: no text, no tokenizer.

    ``source`` says how to read the file (:class:`~textpipe.text.sources.SourceConfig`).
    With ``on_bad_row="skip"``, bad rows and rows whose label is not in ``labels``
    are skipped; the rows are read in DataLoader workers, where a count cannot
    reach the caller, so :meth:`count_skipped` counts them in a pass of its own.

    For shuffled, sharded, length-bucketed training batches wrap it in
    :class:`~textpipe.core.batching.Batches`, or let :func:`textpipe.text.loader.make_loader` do it.

    Example:
        >>> ds = TextClassificationDataset("train.csv", Tokenizer(), vocab, labels=["fresh", "rotten"])
        >>> loader = DataLoader(ds, batch_size=32, collate_fn=pad_collate, num_workers=2)
        >>> batch = next(iter(loader))
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer,
        vocab: Vocab,
        labels: Sequence[str] | None = None,
        *,
        holdout_every: int = 0,
        part: str = "all",
        source: SourceConfig | None = None,
        cache_dir: str | Path | None = None,
        stream: TokenStream | None = None,
    ):
        if part not in ("all", "train", "dev"):
            raise ValueError(f"part must be 'all', 'train' or 'dev', got {part!r}")
        if part != "all" and holdout_every < 2:
            raise ValueError("part='train'/'dev' needs holdout_every >= 2")
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.labels = list(labels) if labels is not None else None
        self.label_index = {label: i for i, label in enumerate(self.labels or [])}
        self.source = source or SourceConfig()
        self.multi_label = self.source.label_sep is not None
        self.holdout_every, self.part = holdout_every, part
        self.cache = self._load_or_build_cache(cache_dir, stream) if cache_dir is not None and self.path.is_file() else None

    def _load_or_build_cache(self, root: str | Path, stream: TokenStream | None) -> NumericCache:
        parts = {
            "tokenizer": asdict(self.tokenizer.config),
            "vocab": tokens_sha256(self.vocab.get_itos()),
            "labels": self.labels,
            "part": self.part,
            "holdout_every": self.holdout_every,
            "source": asdict(self.source),
        }
        key = cache_key(self.path, parts)
        cache = NumericCache.load(root, key)
        if cache is None:
            skipped: dict[str, int] = {}
            # write_cache reads the rows to the end before writing meta.json, so `skipped` is complete there
            words = words_per_row(len(self.labels)) if self.multi_label and self.labels is not None else 0
            meta = {"file": str(self.path), **parts, "vocab_size": len(self.vocab), "skipped": skipped, "label_words": words}
            cache = self._from_stream(stream, root, key, meta) or write_cache(root, key, self._encoded_rows(skipped), meta)
        return cache

    def _from_stream(self, stream: TokenStream | None, root: str | Path, key: str, meta: dict) -> NumericCache | None:
        """The cache written from the count pass's token stream (the rows tokenized once), when it holds this
        dataset's rows: this file as it is, this part, one label a row, every label one of the model's; else None."""
        if stream is None or self.multi_label or self.labels is None or not stream.usable_for(self.path, self.part, self.holdout_every):
            return None
        if any(label not in self.label_index for label in stream.label_index):
            return None  # the text path skips or refuses such rows
        remap = np.asarray([UNK_ID] + self.vocab(stream.tokens[1:]), dtype=np.int32)
        label_map = np.asarray([self.label_index[label] for label in stream.label_index], dtype=np.int64)
        return stream.write_part(root, key, remap, label_map, {**meta, "skipped": dict(stream.skipped)}, part=self.part)

    def examples(self, skipped: dict[str, int] | None = None, start: Position | None = None) -> Iterator[Example]:
        """The examples of this dataset's part of the file, unsharded and unshuffled.

        Bad rows are skipped and added to ``skipped`` (reason -> count) when the
        source says ``on_bad_row="skip"``, else they raise :class:`DataError`.
        ``start`` (an example's ``after``) continues the stream after that example.
        """
        skipped = {} if skipped is None else skipped
        rows = read_examples(self.path, self.labels is not None, self.source, skipped, start=start)
        for example in select_part(rows, self.part, self.holdout_every, first_row=start.index if start else 0):
            unknown = self._unknown_label(example.label)
            if unknown is None:
                yield example
            elif self.source.on_bad_row == "skip":
                skipped[UNSEEN_LABEL] = skipped.get(UNSEEN_LABEL, 0) + 1
            else:
                known = ", ".join(map(repr, self.labels))
                raise DataError(example.file or self.path, example.line, f"label {unknown!r} is not one of the model's labels ({known})")

    def _unknown_label(self, label) -> str | None:
        """The example's first label the model does not know, if any."""
        if self.labels is None:
            return None
        return next((one for one in (label if self.multi_label else (label,)) if one not in self.label_index), None)

    def target(self, label: str | tuple[str, ...]) -> int | list[int]:
        """The label's index, or a multi-label row's label set packed as int64 words."""
        if self.multi_label:
            return pack_label_set([self.label_index[one] for one in label], len(self.labels))
        return self.label_index[label]

    def _encoded_rows(self, skipped: dict[str, int], chunk: int = 1000) -> Iterator[tuple[list[int], int | list[int]]]:
        """``(ids, label_index or -1)`` of every row of the part, tokenized a chunk at a time (spaCy's batched pipe)."""
        examples = self.examples(skipped)
        while block := list(itertools.islice(examples, chunk)):
            for example, tokens in zip(block, self.tokenizer.pipe([ex.text for ex in block])):
                label = self.target(example.label) if self.labels is not None else -1
                yield self.vocab(tokens) or [UNK_ID], label

    def count_skipped(self) -> dict[str, int]:
        """Read this dataset's part once and count the rows an epoch skips, by reason."""
        if self.cache is not None:
            return dict(self.cache.meta["skipped"])
        skipped: dict[str, int] = {}
        for _ in self.examples(skipped):
            pass
        return skipped

    def __iter__(self) -> BatchStream:
        """Each example of the part once, in file order, split among the DataLoader's workers."""
        return iter(Batches(self))

    def encode(self, example: Example) -> torch.Tensor | tuple[torch.Tensor, int]:
        """``(ids, label_index)`` of one example, or ``ids`` alone when the dataset has no labels."""
        ids = numericalize(self.tokenizer, self.vocab, example.text)
        # examples() has already stopped at, or skipped, a label the model does not know.
        return ids if self.labels is None else (ids, self.target(example.label))

    # What the batching unit (textpipe.core.batching.RowSource) asks of a dataset. A row is an
    # Example of the file, or a row number of the cache; a prepared item is an encoded
    # example, or still a cache row number (its ids are gathered a whole group at a time).

    def rows(self, start: int = 0, after: Sequence[int] | None = None) -> Iterator[tuple[int, Example | int]]:
        """``(row number, row)`` from row number ``start`` on; ``after`` (the reader's position
        before that row, from :meth:`position_after`) seeks there instead of reading past."""
        if after is not None:
            return enumerate(self.examples(start=Position(*after)), start=start)
        if self.cache is not None:  # cache row numbers: nothing to read past
            return enumerate(range(start, len(self.cache)), start=start)
        return itertools.islice(enumerate(self.examples()), start, None)

    def position_after(self, row: Example | int) -> Position | None:
        return row.after if isinstance(row, Example) else None

    def numbered(self) -> int | None:
        """The cache's row count: its rows are row numbers, batched as tensors. None when reading the file."""
        return len(self.cache) if self.cache is not None else None

    def prepare(self, rows: list) -> list:
        """A block of rows ready to be ordered and grouped: encoded, unless they come from the cache."""
        return rows if self.cache is not None else [self.encode(row) for row in rows]

    def lengths(self, items: list | torch.Tensor) -> list[int] | torch.Tensor:
        """Tokens in each prepared item (the bucketing key); a tensor for a tensor of cache rows."""
        if self.cache is not None:  # one vectorized lookup for the block
            rows = torch.as_tensor(items, dtype=torch.long)
            found = self.cache.offsets[rows + 1] - self.cache.offsets[rows]
            return found if isinstance(items, torch.Tensor) else found.tolist()
        return [len(item[0] if isinstance(item, tuple) else item) for item in items]

    def example(self, item) -> torch.Tensor | tuple[torch.Tensor, int]:
        """One prepared item as an example."""
        if self.cache is None:
            return item
        ids = self.cache.ids_of(item).long()
        if self.labels is None:
            return ids
        label = self.cache.labels[item]
        return ids, (label.tolist() if self.multi_label else int(label))

    def group(self, items: list | torch.Tensor) -> list | FlatRows:
        """Prepared items (or a tensor of cache rows) as one group for :func:`~textpipe.core.collate.pad_collate`."""
        if self.cache is None:
            return items
        labels = self.cache.labels if self.labels is not None else None
        return FlatRows(self.cache.ids, self.cache.offsets, torch.as_tensor(items, dtype=torch.long), labels)

    def release(self) -> None:
        """Drop the cache pages a finished block read (the OS keeps them in its file cache)."""
        if self.cache is not None:
            self.cache.release()


class TextListDataset(Dataset):
    """Map-style dataset over texts in memory: ``ds[i]`` is the token ids of ``texts[i]``.

    The texts are numericalized in one pass by a :class:`~textpipe.text.encoder.TextEncoder`
    (which remembers each spaCy chunk's ids, so keep one for many calls) into one
    flat tensor with offsets; ``lengths`` holds each text's token count, for a
    :class:`~textpipe.core.batching.LengthSortedSampler`. A ``DataLoader`` fetching a
    batch asks :meth:`__getitems__`, which hands the batch's rows to
    :func:`~textpipe.core.collate.pad_collate` as one :class:`~textpipe.core.collate.FlatRows`
    group: one gather per batch, no per-text Python.

    Example:
        >>> ds = TextListDataset(["great fun", "a bore"], TextEncoder(Tokenizer(), vocab))
        >>> len(ds), ds[0]
        (2, tensor([57, 311]))
    """

    def __init__(self, texts: Sequence[str], encoder: TextEncoder):
        self.texts = texts
        self.ids, self.lengths = encoder(texts)
        self.offsets = torch.zeros(len(texts) + 1, dtype=torch.long)
        torch.cumsum(self.lengths, 0, out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.ids[int(self.offsets[index]) : int(self.offsets[index + 1])]

    def __getitems__(self, indices: list[int]) -> FlatRows:
        return FlatRows(self.ids, self.offsets, torch.tensor(indices, dtype=torch.long), None)
