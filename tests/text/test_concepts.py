"""The DataLoader concepts docs/concepts.md points at that no other test shows: a map-style
dataset with ``shuffle=True``, and a ``sampler``."""

import torch
from torch.utils.data import DataLoader

from textpipe.core.collate import pad_collate
from textpipe.text.dataset import TextListDataset
from textpipe.text.encoder import TextEncoder
from textpipe.core.batching import LengthSortedSampler
from textpipe.text.tokenizer import Tokenizer
from textpipe.text.vocab import build_vocab

TEXTS = ["one", "two words", "three words here", "four words are here", "and five words are here", "six"]


def dataset() -> TextListDataset:
    tokenizer = Tokenizer("whitespace")
    return TextListDataset(TEXTS, TextEncoder(tokenizer, build_vocab(tokenizer(t) for t in TEXTS)))


def first_ids(loader) -> list[list[int]]:
    return [batch.ids[:, 0].tolist() for batch in loader]


def test_map_style_dataset_with_shuffle_true():
    ds = dataset()
    shuffled = lambda seed: DataLoader(ds, batch_size=4, shuffle=True, collate_fn=pad_collate, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    batches = first_ids(shuffled(0))
    assert [len(b) for b in batches] == [4, 2]  # the last, smaller batch included
    in_order = [ids for batch in first_ids(DataLoader(ds, batch_size=4, collate_fn=pad_collate)) for ids in batch]
    assert sorted(sum(batches, [])) == sorted(in_order)  # every text exactly once
    assert batches == first_ids(shuffled(0)) and sum(batches, []) != in_order  # seeded; not input order


def test_length_sorted_sampler_batches_similar_lengths_and_restores_order():
    ds = dataset()
    sampler = LengthSortedSampler(ds.lengths)  # tokens per text
    assert list(sampler) == [4, 3, 2, 1, 0, 5] and len(sampler) == 6
    batches = list(DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=pad_collate))
    assert [b.ids.shape[1] for b in batches] == [5, 3, 1]  # little padding: each batch is of one length
    rows = torch.cat([b.lengths for b in batches])
    assert sampler.restore(rows).tolist() == [len(t.split()) for t in TEXTS]
