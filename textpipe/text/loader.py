"""The one loader factory: a dataset -> a ``DataLoader`` of padded :class:`~textpipe.core.collate.Batch` es.

Training, evaluation (dev, test) and prediction batches all come from
:func:`make_loader`, and on every path the DataLoader's ``collate_fn``
(:func:`~textpipe.core.collate.pad_collate`) is what pads:

- a file (:class:`~textpipe.text.dataset.TextClassificationDataset`): the batching
  unit (:class:`~textpipe.core.batching.Batches`) shards, shuffles, buckets and groups
  its rows; a torchdata ``StatefulDataLoader`` (``batch_size=None``: the groups
  are the batches) pads each group, and its ``state_dict`` resumes mid-epoch;
- texts in memory (:class:`~textpipe.text.dataset.TextListDataset`): a plain
  ``DataLoader`` with ``batch_size`` and a :class:`~textpipe.core.batching.LengthSortedSampler`
  (longest first); ``loader.sampler.restore`` puts outputs back in input order.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from ..core.batching import Batches, LengthSortedSampler
from ..core.collate import pad_collate
from .dataset import TextClassificationDataset, TextListDataset


def make_loader(
    dataset: TextClassificationDataset | TextListDataset,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    bucket: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> StatefulDataLoader | DataLoader:
    """Batches of ``batch_size`` rows of ``dataset``, padded by ``pad_collate``.

    ``shuffle_buffer``, ``bucket``, ``seed``, ``rank`` and ``world_size`` are the
    batching unit's (see :class:`~textpipe.core.batching.Batches`); a list of texts is
    always batched longest first, so those do not apply to it.

    Example:
        >>> train = make_loader(TextClassificationDataset("train.csv", tok, vocab, labels), 32, shuffle_buffer=10_000, bucket=True)
        >>> predict = make_loader(TextListDataset(texts, TextEncoder(tok, vocab)), 2048)
        >>> probs = predict.sampler.restore(torch.cat([model(b.ids, b.mask) for b in predict]))
    """
    if isinstance(dataset, TextListDataset):
        if shuffle_buffer or bucket or world_size != 1:
            raise ValueError("a list of texts is batched longest first: shuffle_buffer, bucket and world_size do not apply")
        sampler = LengthSortedSampler(dataset.lengths)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=pad_collate,
                          num_workers=num_workers, pin_memory=pin_memory)
    batches = Batches(dataset, batch_size=batch_size, shuffle_buffer=shuffle_buffer, bucket=bucket,
                      seed=seed, rank=rank, world_size=world_size)
    # Its own generator, so creating a loader's iterator never draws from torch's global
    # generator (which dropout uses): a resumed run sees the same random numbers.
    return StatefulDataLoader(batches, batch_size=None, collate_fn=pad_collate, num_workers=num_workers,
                              pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
