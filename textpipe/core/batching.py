"""The batching unit: which rows go to which worker and rank, in what order, in which groups.

:class:`Batches` wraps a dataset that turns rows into ids (a
:class:`~textpipe.text.dataset.TextClassificationDataset`) and does the rest: it
shards the rows across DataLoader workers and distributed ranks, shuffles them
in seeded blocks, sorts a block by length (bucketing) and cuts it into groups of
``batch_size`` rows. It yields the groups; the DataLoader's ``collate_fn``
(:func:`~textpipe.core.collate.pad_collate`) pads each into a :class:`~textpipe.core.collate.Batch`.
Its position in a pass is a few numbers (:meth:`BatchStream.state_dict`), which
torchdata's ``StatefulDataLoader`` saves and restores, so a resumed epoch yields
exactly what an uninterrupted one would have.

:class:`LengthSortedSampler` is the map-style counterpart for prediction:
texts in memory, longest first, put back in input order afterwards.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch.utils.data import IterableDataset, Sampler, get_worker_info


class RowSource(Protocol):
    """What :class:`Batches` needs of a dataset: rows by number, and how to turn rows into examples or groups."""

    def rows(self, start: int = 0, after: Any = None) -> Iterator[tuple[int, Any]]: ...
    def position_after(self, row: Any) -> Any: ...
    def numbered(self) -> int | None: ...
    def prepare(self, rows: list) -> list: ...
    def lengths(self, items: list | torch.Tensor) -> list[int] | torch.Tensor: ...
    def example(self, item: Any) -> Any: ...
    def group(self, items: list) -> Any: ...
    def release(self) -> None: ...


class Batches(IterableDataset):
    """Seeded, sharded, shuffled, bucketed groups of a dataset's rows, resumable mid-epoch.

    ``batch_size=b`` yields groups of b rows (the last one of a block smaller),
    which the DataLoader's ``collate_fn`` pads (give it ``batch_size=None``);
    ``batch_size=0`` yields single examples. ``shuffle_buffer=n`` shuffles in
    blocks of n rows, in an order fixed by ``seed`` and the epoch (:meth:`set_epoch`);
    ``bucket=True`` sorts each block by length before cutting it, so a group
    holds rows of similar length, then shuffles the groups. Each row goes to
    exactly one DataLoader worker of exactly one of ``world_size`` ranks.

    Example:
        >>> batches = Batches(dataset, batch_size=32, shuffle_buffer=10_000, bucket=True, seed=0)
        >>> loader = StatefulDataLoader(batches, batch_size=None, collate_fn=pad_collate, num_workers=2)
        >>> batches.set_epoch(1); batch = next(iter(loader))
    """

    def __init__(self, dataset: RowSource, *, batch_size: int = 0, shuffle_buffer: int = 0, bucket: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if bucket and not batch_size:
            raise ValueError("bucket=True needs batch_size (it sorts rows into groups of that size)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.dataset = dataset
        self.batch_size, self.shuffle_buffer, self.bucket = batch_size, shuffle_buffer, bucket
        self.seed, self.epoch, self.rank, self.world_size = seed, 0, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order; call before each epoch (as with ``DistributedSampler``)."""
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]

    def __iter__(self) -> "BatchStream":
        worker = get_worker_info()
        num_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        return BatchStream(self, shard=self.rank * num_workers + worker_id, shards=self.world_size * num_workers)

    # The wrapped dataset's, so code holding a DataLoader (``loader.dataset``) reaches them.
    def examples(self, *args, **kwargs) -> Iterator:
        return self.dataset.examples(*args, **kwargs)

    def count_skipped(self) -> dict[str, int]:
        return self.dataset.count_skipped()

    def block_size(self) -> int:
        """Rows read (and shuffled) at a time: the shuffle buffer, else one group."""
        if self.shuffle_buffer or not self.batch_size:
            return max(1, self.shuffle_buffer)
        return self.batch_size

    def units_of_block(self, items: list | torch.Tensor, rng: random.Random | None) -> list:
        """A block's prepared items in yield order: single items, or groups (lists) cut after bucketing/shuffling.

        A tensor of row numbers (a :meth:`RowSource.numbered` source) is ordered and cut
        with tensor ops into tensor groups; the same rng draws give the same order as a list.
        """
        if isinstance(items, torch.Tensor):
            return self._units_of_numbers(items, rng)
        if not self.batch_size:
            if rng is not None:
                rng.shuffle(items)
            return items
        if self.bucket:  # a stable sort by length
            lengths = self.dataset.lengths(items)
            items = [items[i] for i in sorted(range(len(items)), key=lengths.__getitem__)]
        elif rng is not None:
            rng.shuffle(items)
        groups = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if self.bucket and rng is not None:
            rng.shuffle(groups)
        return groups

    def _units_of_numbers(self, rows: torch.Tensor, rng: random.Random | None) -> list:
        if self.bucket:  # torch's stable sort orders ties as Python's sorted does
            rows = rows[torch.sort(self.dataset.lengths(rows), stable=True).indices]
        elif rng is not None:  # shuffle the positions: random.shuffle's swaps depend on the length alone
            rows = rows[torch.tensor(_shuffled(range(len(rows)), rng))]
        if not self.batch_size:
            return rows.tolist()
        groups = list(rows.split(self.batch_size))
        return _shuffled(groups, rng) if self.bucket and rng is not None else groups


def _shuffled(items, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


class BatchStream:
    """One shard's pass over :class:`Batches`, resumable mid-epoch.

    The shard's rows are read in blocks; each block is shuffled by a generator
    seeded with (seed, epoch, shard, block), then yielded. So the position in the
    pass is a few small numbers (where the block starts, which block, how many of
    its units were yielded, and where the file reader stood before it), which is
    what :meth:`state_dict` returns: a resume seeks to the block's start and
    re-reads that one block, not the epoch. (A folder or torchtext source cannot
    seek; it reads past the rows before the block.)

    Example:
        >>> stream = iter(batches); first = next(stream); state = stream.state_dict()
        >>> again = iter(batches); again.load_state_dict(state)
        >>> assert torch.equal(next(again)[0], next(stream)[0])
    """

    def __init__(self, batches: Batches, shard: int, shards: int):
        self.batches, self.shard, self.shards = batches, shard, shards
        self.block_start, self.block, self.taken = 0, 0, 0
        self.reader_at: Any = None  # where the dataset's reader stands before the block (a tuple, or None)
        self._units: Iterator | None = None

    def state_dict(self) -> dict:
        reader_at = list(self.reader_at) if self.reader_at else None
        return {"block_start": self.block_start, "block": self.block, "taken": self.taken, "reader_at": reader_at}

    def load_state_dict(self, state: dict) -> None:
        self.block_start, self.block, self.taken = state["block_start"], state["block"], state["taken"]
        self.reader_at = state["reader_at"]
        self._units = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self):
        if self._units is None:
            self._units = self._blocks()
        unit = next(self._units)
        dataset = self.batches.dataset
        return dataset.group(unit) if self.batches.batch_size else dataset.example(unit)

    def _blocks(self) -> Iterator:
        """The shard's units (examples, or groups of rows), block by block."""
        plan, dataset = self.batches, self.batches.dataset
        for items, next_start, next_reader_at in self._prepared_blocks():
            rng = random.Random(f"{plan.seed}/{plan.epoch}/{self.shard}/{self.block}") if plan.shuffle_buffer > 1 else None
            units = plan.units_of_block(items, rng)
            for unit in units[self.taken :]:
                self.taken += 1
                yield unit
            self.block_start, self.block, self.taken, self.reader_at = next_start, self.block + 1, 0, next_reader_at
            dataset.release()  # memory stays one block's worth, however long the file

    def _prepared_blocks(self) -> Iterator[tuple[list | torch.Tensor, int, Any]]:
        """Each block of the shard's rows, prepared; the row number after it; the reader's position after it."""
        dataset, size = self.batches.dataset, self.batches.block_size()
        count = dataset.numbered() if self.reader_at is None else None
        if count is not None:
            yield from self._numbered_blocks(count, size)
            return
        rows = dataset.rows(self.block_start, self.reader_at)
        # Shard before preparing, so each worker tokenizes only its own rows.
        mine = ((i, row) for i, row in rows if i % self.shards == self.shard)
        while block := list(itertools.islice(mine, size)):
            yield dataset.prepare([row for _, row in block]), block[-1][0] + 1, dataset.position_after(block[-1][1])

    def _numbered_blocks(self, count: int, size: int) -> Iterator[tuple[torch.Tensor, int, None]]:
        # Rows are their numbers: a block is one arange, where a per-row loop would cost
        # more than a small model's training step takes.
        start = self.block_start
        while (first := start + (self.shard - start) % self.shards) < count:
            rows = torch.arange(first, min(count, first + size * self.shards), self.shards)
            start = int(rows[-1]) + 1
            yield rows, start, None


class LengthSortedSampler(Sampler[int]):
    """Indices longest first (by the ``lengths`` given, in tokens); ties keep input order.

    A ``DataLoader`` given this sampler makes batches of similar lengths, so the
    padding ``collate_fn`` adds few ``<pad>`` positions (what a CNN, GRU or
    Transformer would otherwise compute over). :meth:`restore` puts rows that
    came out in sampler order back in input order.

    Example:
        >>> sampler = LengthSortedSampler([1, 3, 2])
        >>> list(sampler)
        [1, 2, 0]
    """

    def __init__(self, lengths: Sequence[int] | torch.Tensor):
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.order = torch.argsort(lengths, descending=True, stable=True)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)

    def restore(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows that came out in sampler order, put back in input order."""
        restored = torch.empty_like(rows)
        restored[self.order] = rows
        return restored
