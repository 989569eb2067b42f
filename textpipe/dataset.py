"""Stage 3: examples -> a stream of ``(token_ids, label_index)``.

:class:`TextClassificationDataset` is an iterable-style dataset
(``torch.utils.data.IterableDataset``): it reads its file row by row on every pass,
so an epoch never holds the whole file in memory. Each row is given to exactly one
DataLoader worker of exactly one distributed rank. Built without labels (for
prediction) it yields the ids alone.

:class:`TextListDataset` is the map-style counterpart (``__len__`` and
``__getitem__``) for texts already in memory, such as a list to predict.
"""

from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .cache import NumericCache, cache_key, tokens_sha256, write_cache
from .collate import collate_flat, pad_collate
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
    """Streams ``(ids, label_index)`` from a CSV/TSV/JSONL file; just ``ids`` when ``labels`` is None.

    ``holdout_every=k`` splits the file without writing anything: about one row in
    k (chosen by a hash of its row number) forms the ``"dev"`` part, the others the
    ``"train"`` part. ``shuffle_buffer=n``
    shuffles the stream in blocks of n rows (one block holds a whole file of up to
    n rows), in an order fixed by ``seed`` and the epoch (:meth:`set_epoch`); the
    pass can be saved and resumed mid-epoch (see :class:`ShardStream`). ``rank`` / ``world_size`` shard across processes.

    ``batch_size=b`` makes it yield whole padded batches (:class:`~textpipe.collate.Batch`)
    (give the DataLoader ``batch_size=None``): each block is cut into batches of b
    rows, and with ``bucket=True`` the block is first sorted by length, so a batch
    holds rows of similar length and little padding; the batches of a block are
    then shuffled. ``cache_dir`` tokenizes the part once into a
    :class:`~textpipe.cache.NumericCache` there (or reuses the one that is there),
    and every pass reads token ids from it: no text, no tokenizer.

    ``source`` says how to read the file (:class:`~textpipe.sources.SourceConfig`).
    With ``on_bad_row="skip"``, bad rows and rows whose label is not in ``labels``
    are skipped; the rows are read in DataLoader workers, where a count cannot
    reach the caller, so :meth:`count_skipped` counts them in a pass of its own.

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
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        source: SourceConfig | None = None,
        batch_size: int = 0,
        bucket: bool = False,
        cache_dir: str | Path | None = None,
    ):
        if part not in ("all", "train", "dev"):
            raise ValueError(f"part must be 'all', 'train' or 'dev', got {part!r}")
        if part != "all" and holdout_every < 2:
            raise ValueError("part='train'/'dev' needs holdout_every >= 2")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.labels = list(labels) if labels is not None else None
        self.label_index = {label: i for i, label in enumerate(self.labels or [])}
        self.holdout_every, self.part = holdout_every, part
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, 0
        self.rank, self.world_size = rank, world_size
        self.source = source or SourceConfig()
        if bucket and not batch_size:
            raise ValueError("bucket=True needs batch_size (the dataset then yields whole batches)")
        self.batch_size, self.bucket = batch_size, bucket
        self.cache = self._load_or_build_cache(cache_dir) if cache_dir is not None and self.path.is_file() else None

    def _load_or_build_cache(self, root: str | Path) -> NumericCache:
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
            cache = write_cache(root, key, self._encoded_rows(skipped), {"file": str(self.path), **parts, "vocab_size": len(self.vocab), "skipped": skipped})
        return cache

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order; call before each epoch (as with ``DistributedSampler``)."""
        self.epoch = epoch

    def examples(self, skipped: dict[str, int] | None = None, start: Position | None = None) -> Iterator[Example]:
        """The examples of this dataset's part of the file, unsharded and unshuffled.

        Bad rows are skipped and added to ``skipped`` (reason -> count) when the
        source says ``on_bad_row="skip"``, else they raise :class:`DataError`.
        ``start`` (an example's ``after``) continues the stream after that example.
        """
        skipped = {} if skipped is None else skipped
        rows = read_examples(self.path, self.labels is not None, self.source, skipped, start=start)
        for example in select_part(rows, self.part, self.holdout_every, first_row=start.index if start else 0):
            if self.labels is None or example.label in self.label_index:
                yield example
            elif self.source.on_bad_row == "skip":
                skipped[UNSEEN_LABEL] = skipped.get(UNSEEN_LABEL, 0) + 1
            else:
                known = ", ".join(map(repr, self.labels))
                raise DataError(example.file or self.path, example.line, f"label {example.label!r} is not one of the model's labels ({known})")

    def _encoded_rows(self, skipped: dict[str, int], chunk: int = 1000) -> Iterator[tuple[list[int], int]]:
        """``(ids, label_index or -1)`` of every row of the part, tokenized a chunk at a time (spaCy's batched pipe)."""
        examples = self.examples(skipped)
        while block := list(itertools.islice(examples, chunk)):
            for example, tokens in zip(block, self.tokenizer.pipe([ex.text for ex in block])):
                label = self.label_index[example.label] if self.labels is not None else -1
                yield self.vocab(tokens) or [UNK_ID], label

    def count_skipped(self) -> dict[str, int]:
        """Read this dataset's part once and count the rows an epoch skips, by reason."""
        if self.cache is not None:
            return dict(self.cache.meta["skipped"])
        skipped: dict[str, int] = {}
        for _ in self.examples(skipped):
            pass
        return skipped

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]

    def __iter__(self) -> "ShardStream":
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        return ShardStream(self, shard=self.rank * num_workers + worker_id, shards=self.world_size * num_workers)

    def rows(self) -> Iterator:
        """What a pass enumerates: row numbers of the cache, or the examples of the file."""
        return iter(range(len(self.cache))) if self.cache is not None else self.examples()

    def encode_row(self, row) -> torch.Tensor | tuple[torch.Tensor, int]:
        """:meth:`encode` of an item of :meth:`rows`."""
        if self.cache is None:
            return self.encode(row)
        ids = self.cache.ids_of(row).long()
        return ids if self.labels is None else (ids, int(self.cache.labels[row]))

    def batches_of_block(self, block: list, rng: random.Random | None) -> list:
        """A block of :meth:`rows` items cut into batches (lists), bucketed by length and shuffled by ``rng``."""
        if self.cache is None:
            block = [self.encode(ex) for ex in block]
        if self.bucket:
            length = (lambda r: int(self.cache.offsets[r + 1] - self.cache.offsets[r])) if self.cache is not None else (lambda e: len(e[0] if isinstance(e, tuple) else e))
            block = sorted(block, key=length)
        elif rng is not None:
            rng.shuffle(block)
        batches = [block[i : i + self.batch_size] for i in range(0, len(block), self.batch_size)]
        if self.bucket and rng is not None:
            rng.shuffle(batches)
        return batches

    def collate(self, batch: list):
        """One padded :class:`Batch` of a list made by :meth:`batches_of_block`."""
        if self.cache is None:
            return pad_collate(batch)
        labels = self.cache.labels if self.labels is not None else None
        return collate_flat(self.cache.ids, self.cache.offsets, torch.tensor(batch, dtype=torch.long), labels)

    def encode(self, example: Example) -> torch.Tensor | tuple[torch.Tensor, int]:
        """``(ids, label_index)`` of one example, or ``ids`` alone when the dataset has no labels."""
        ids = numericalize(self.tokenizer, self.vocab, example.text)
        # examples() has already stopped at, or skipped, a label the model does not know.
        return ids if self.labels is None else (ids, self.label_index[example.label])


class ShardStream:
    """One shard's pass over a :class:`TextClassificationDataset`, resumable mid-epoch.

    The shard's rows are read in blocks of ``shuffle_buffer`` rows; each block is
    shuffled by a generator seeded with (seed, epoch, shard, block), then yielded
    (with ``batch_size``, cut into length-bucketed batches first). So the position
    in the pass is a few small numbers (where the block starts in the file, which
    block, how many of its items were yielded), which is what :meth:`state_dict`
    returns and what torchdata's ``StatefulDataLoader`` saves in a checkpoint: a
    resume seeks to the block's start (or indexes the cache) and re-reads that one
    block, not the epoch, and yields exactly what an uninterrupted pass would have.
    (A folder or torchtext source cannot seek; it reads past the rows before the block.)

    Example:
        >>> stream = iter(dataset); first = next(stream); state = stream.state_dict()
        >>> again = iter(dataset); again.load_state_dict(state)
        >>> assert torch.equal(next(again)[0], next(stream)[0])
    """

    def __init__(self, dataset: TextClassificationDataset, shard: int, shards: int):
        self.dataset, self.shard, self.shards = dataset, shard, shards
        self.block_start, self.block, self.taken = 0, 0, 0
        self.reader_at: Position | None = None  # where the file reader stands before the block
        self._examples: Iterator | None = None

    def state_dict(self) -> dict:
        reader_at = list(self.reader_at) if self.reader_at else None
        return {"block_start": self.block_start, "block": self.block, "taken": self.taken, "reader_at": reader_at}

    def load_state_dict(self, state: dict) -> None:
        self.block_start, self.block, self.taken = state["block_start"], state["block"], state["taken"]
        self.reader_at = Position(*state["reader_at"]) if state["reader_at"] else None
        self._examples = None

    def __iter__(self) -> "ShardStream":
        return self

    def __next__(self):
        if self._examples is None:
            self._examples = self._blocks()
        unit = next(self._examples)
        return self.dataset.collate(unit) if self.dataset.batch_size else self.dataset.encode_row(unit)

    def _blocks(self) -> Iterator:
        """The shard's examples (or, with ``batch_size``, its batches), block by block."""
        ds = self.dataset
        size = max(1, ds.shuffle_buffer) if ds.shuffle_buffer or not ds.batch_size else ds.batch_size
        if self.reader_at is not None:  # seek straight to the block
            rows = enumerate(ds.examples(start=self.reader_at), start=self.block_start)
        elif ds.cache is not None:  # cache row numbers: nothing to read past
            rows = enumerate(range(self.block_start, len(ds.cache)), start=self.block_start)
        else:
            rows = itertools.islice(enumerate(ds.rows()), self.block_start, None)
        # Shard before tokenizing, so each worker tokenizes only its own rows.
        mine = ((i, row) for i, row in rows if i % self.shards == self.shard)
        while block := list(itertools.islice(mine, size)):
            next_start, next_reader_at = block[-1][0] + 1, getattr(block[-1][1], "after", None)
            rng = random.Random(f"{ds.seed}/{ds.epoch}/{self.shard}/{self.block}") if ds.shuffle_buffer > 1 else None
            items = [row for _, row in block]
            if ds.batch_size:
                units = ds.batches_of_block(items, rng)
            else:
                units = items
                if rng is not None:
                    rng.shuffle(units)
            for unit in units[self.taken :]:
                self.taken += 1
                yield unit
            self.block_start, self.block, self.taken, self.reader_at = next_start, self.block + 1, 0, next_reader_at
            if ds.cache is not None:
                ds.cache.release()  # memory stays one block's worth, however long the file


class TextListDataset(Dataset):
    """Map-style dataset over texts in memory: ``ds[i]`` is the token ids of ``texts[i]``.

    Example:
        >>> ds = TextListDataset(["great fun", "a bore"], Tokenizer(), vocab)
        >>> len(ds), ds[0]
        (2, tensor([57, 311]))
    """

    def __init__(self, texts: Sequence[str], tokenizer: Tokenizer, vocab: Vocab):
        self.texts, self.tokenizer, self.vocab = texts, tokenizer, vocab

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> torch.Tensor:
        return numericalize(self.tokenizer, self.vocab, self.texts[index])
