"""A group of examples -> one padded batch.

:func:`pad_collate` is the ``collate_fn`` of every ``DataLoader`` textpipe makes
(training, evaluation, prediction). It pads every sequence to the longest one in
the batch with ``<pad>`` (:data:`~textpipe.core.specials.PAD_ID`), and returns the
true lengths and a boolean mask alongside. A group is a list of examples, or
:class:`FlatRows` (rows of a flat id store: the token-id cache, or texts
numericalized in one pass), which it pads with one gather. It works with flat tensors (one
``torch.cat`` and one masked write) rather than Python lists, because a
per-element Python loop would cap throughput well below what a small model can
train at. It knows tensors only: no tokenizer, no vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .specials import PAD_ID


@dataclass
class Batch:
    """A padded batch. ``labels`` is None for prediction batches.

    Example:
        >>> batch = pad_collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0)])
        >>> batch.ids
        tensor([[5, 6, 7],
                [8, 0, 0]])
    """

    ids: torch.Tensor  # (B, T) long, PAD_ID after each sequence's end
    lengths: torch.Tensor  # (B,) long
    mask: torch.Tensor  # (B, T) bool, True on real tokens
    labels: torch.Tensor | None  # (B,) long

    def __len__(self) -> int:
        return self.ids.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.ids), move(self.lengths), move(self.mask), move(self.labels))

    def pin_memory(self) -> "Batch":
        # DataLoader(pin_memory=True) calls this on custom batch types.
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(pin(self.ids), pin(self.lengths), pin(self.mask), pin(self.labels))


class FlatRows(NamedTuple):
    """A group of rows of a flat id store, for :func:`pad_collate`: row ``r`` is ``ids[offsets[r]:offsets[r + 1]]``.

    Example:
        >>> group = FlatRows(torch.tensor([5, 6, 7, 8]), torch.tensor([0, 3, 4]), torch.tensor([1, 0]), None)
        >>> pad_collate(group).lengths
        tensor([1, 3])
    """

    ids: torch.Tensor  # (N,) every row's ids, end to end
    offsets: torch.Tensor  # (rows + 1,) long
    rows: torch.Tensor  # (B,) long: the group's rows, in batch order
    labels: torch.Tensor | None  # (rows,) the store's label column, or None


def pad_collate(examples: Sequence[torch.Tensor | tuple[torch.Tensor, int]] | FlatRows) -> Batch:
    """Collate ``ids`` tensors, or ``(ids, label)`` pairs, or a :class:`FlatRows` group, into a :class:`Batch`."""
    if isinstance(examples, FlatRows):
        return collate_flat(*examples)
    if not examples:
        raise ValueError("cannot collate an empty batch")
    labelled = isinstance(examples[0], tuple)
    seqs = [ex[0] for ex in examples] if labelled else list(examples)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    mask = torch.arange(int(lengths.max())) < lengths[:, None]  # (B, T)
    ids = torch.full(mask.shape, PAD_ID, dtype=torch.long)
    ids[mask] = torch.cat(seqs)  # row-major order of `mask` matches the concatenation order
    labels = torch.tensor([ex[1] for ex in examples], dtype=torch.long) if labelled else None
    return Batch(ids, lengths, mask, labels)


def collate_flat(ids: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor | None = None) -> Batch:
    """The :class:`Batch` of rows ``rows`` of a flat store (``ids[offsets[r]:offsets[r + 1]]`` is row ``r``).

    One gather for the whole batch, no per-row Python: the fast path for a
    numericalized cache. ``labels`` is the store's label column (indexed by ``rows``).

    Example:
        >>> flat, offsets = torch.tensor([5, 6, 7, 8]), torch.tensor([0, 3, 4])
        >>> collate_flat(flat, offsets, torch.tensor([1, 0])).ids
        tensor([[8, 0, 0],
                [5, 6, 7]])
    """
    if len(rows) == 0:
        raise ValueError("cannot collate an empty batch")
    # index_select, where and a kept arange: each op's fixed cost is a good part of a batch's at this size.
    starts = offsets.index_select(0, rows)
    lengths = offsets.index_select(0, rows + 1).sub_(starts)
    positions = _positions(int(lengths.max()))
    mask = positions < lengths[:, None]  # (B, T)
    index = (starts[:, None] + positions).clamp_(max=max(len(ids) - 1, 0))  # past a row's end: any id, masked below
    gathered = ids.index_select(0, index.view(-1)).view(index.shape)
    batch_ids = torch.where(mask, gathered, PAD_ID).long()
    return Batch(batch_ids, lengths, mask, None if labels is None else labels.index_select(0, rows).long())


_kept_positions = torch.arange(1024)


def _positions(length: int) -> torch.Tensor:
    """``torch.arange(length)``, sliced from a kept tensor (a fresh arange costs more than the slice)."""
    global _kept_positions
    if length > len(_kept_positions):
        _kept_positions = torch.arange(max(length, 2 * len(_kept_positions)))
    return _kept_positions[:length]


def pad_fraction(batches) -> float:
    """The share of ``<pad>`` positions among all positions of some batches (0 = no padding)."""
    real = total = 0
    for batch in batches:
        real += int(batch.lengths.sum())
        total += batch.ids.numel()
    return 1 - real / total if total else 0.0
