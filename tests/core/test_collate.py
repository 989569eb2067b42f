import torch
from torch.utils.data import DataLoader

from textpipe.core.collate import Batch, pad_collate


def test_pads_to_the_longest_with_lengths_and_mask():
    batch = pad_collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 0), (torch.tensor([9, 10]), 1)])
    assert batch.ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert batch.labels.tolist() == [1, 0, 1]
    assert batch.ids.dtype == torch.long and batch.mask.dtype == torch.bool


def test_unlabelled_examples_give_no_labels():
    batch = pad_collate([torch.tensor([3]), torch.tensor([4, 5])])
    assert batch.labels is None
    assert batch.ids.tolist() == [[3, 0], [4, 5]]


def test_last_smaller_batch_through_a_dataloader():
    seqs = [torch.arange(1, n + 1) for n in (4, 1, 3, 2, 5, 2, 1)]
    data = [(s, i % 2) for i, s in enumerate(seqs)]
    batches = list(DataLoader(data, batch_size=3, collate_fn=pad_collate))
    assert [len(b) for b in batches] == [3, 3, 1]
    last = batches[-1]
    assert last.ids.tolist() == [[1]] and last.lengths.tolist() == [1] and last.labels.tolist() == [0]
    assert batches[1].ids.shape == (3, 5)
    # Every real id survives, in order, and nothing but padding was added.
    for batch, chunk in zip(batches, (seqs[0:3], seqs[3:6], seqs[6:])):
        assert [row[:n].tolist() for row, n in zip(batch.ids, batch.lengths)] == [s.tolist() for s in chunk]
        assert (batch.ids[~batch.mask] == 0).all()


def test_batch_moves_between_devices():
    batch = pad_collate([(torch.tensor([1, 2]), 0)]).to("cpu")
    assert isinstance(batch, Batch) and batch.ids.device.type == "cpu"
