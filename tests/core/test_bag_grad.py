"""The bag model's closed-form backward: the same gradients as autograd's sparse path, built coalesced."""

import pytest
import torch
from torch import nn

from textpipe.core.collate import pad_collate
from textpipe.core.kernels import bag_mean_table_grad
from textpipe.core.models import BagOfNgrams, ModelConfig
from textpipe.core.optim import RowAdam, _sqrt_floor, make_optimizers
from textpipe.core.train import TrainConfig, train_step


def autograd_table_grad(flat_ids: torch.Tensor, lengths: torch.Tensor, grad_pooled: torch.Tensor, num_rows: int) -> torch.Tensor:
    table = nn.Parameter(torch.zeros(num_rows, grad_pooled.shape[1]))
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
    nn.functional.embedding_bag(flat_ids, table, offsets, mode="mean", sparse=True).backward(grad_pooled)
    return table.grad.coalesce()


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_table_gradient_matches_autograd(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 12, (16,), generator=g)  # empty bags included
    flat_ids = torch.randint(0, 40, (int(lengths.sum()),), generator=g)  # many rows repeat, within and across bags
    grad_pooled = torch.randn(16, 5, generator=g)
    ours = bag_mean_table_grad(flat_ids, lengths, grad_pooled, 50)
    theirs = autograd_table_grad(flat_ids, lengths, grad_pooled, 50)
    assert ours.is_coalesced() and ours.shape == (50, 5)
    assert torch.equal(ours._indices(), theirs.indices()), "the used rows, each once, sorted"
    assert torch.allclose(ours._values(), theirs.values(), atol=1e-6)


def test_no_ids_gives_an_empty_gradient():
    grad = bag_mean_table_grad(torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.ones(3, 4), 10)
    assert grad._nnz() == 0 and grad.shape == (10, 4)


def batch_of(rows: list[list[int]]):
    return pad_collate([(torch.tensor(r), i % 2) for i, r in enumerate(rows)])


@pytest.mark.parametrize("frozen_dim", [0, 3])
def test_model_gradients_match_the_autograd_path(frozen_dim):
    config = ModelConfig(vocab_size=30, num_classes=2, embed_dim=8, ngram_buckets=64, max_ngram=3, frozen_dim=frozen_dim)
    batch = batch_of([[2, 3, 4, 2, 3], [5], [6, 7, 6, 7, 6, 7, 8], [2, 9]])
    grads = []
    for closed_form in (True, False):
        torch.manual_seed(0)
        model = BagOfNgrams(config)
        if frozen_dim:
            model.frozen.normal_()
        model.pool.closed_form = closed_form
        torch.manual_seed(1)  # the same token and pooled-vector dropout for both
        nn.functional.cross_entropy(model(batch.ids, batch.mask), batch.labels).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    ours, theirs = grads
    assert ours["embedding.weight"].is_sparse
    for name in theirs:
        assert torch.allclose(ours[name].to_dense(), theirs[name].to_dense(), atol=1e-7), name


def test_row_adam_takes_a_sorted_gradient_as_coalesced_without_copying():
    rows, values = torch.tensor([[1, 4, 7]]), torch.randn(3, 2)
    grad = torch.sparse_coo_tensor(rows, values, (10, 2))  # as .grad holds it: the flag is lost
    assert not grad.is_coalesced()
    coalesced = RowAdam.coalesced(grad)
    assert coalesced.is_coalesced() and coalesced.values().data_ptr() == values.data_ptr()
    unsorted = torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), torch.ones(3, 2), (10, 2))
    assert RowAdam.coalesced(unsorted).indices().tolist() == [[1, 4]]
    assert RowAdam.coalesced(unsorted).values().tolist() == [[1.0, 1.0], [2.0, 2.0]]


def test_the_sqrt_floor_changes_no_adam_denominator():
    eps = 1e-8
    floor = _sqrt_floor(eps, torch.float32)
    assert floor > 0
    v = torch.cat([torch.zeros(10), torch.rand(100_000) * floor, torch.tensor([floor]), torch.rand(1000) * 1e-6])
    assert torch.equal(v.clamp(min=floor).sqrt() + eps, v.sqrt() + eps)


def test_closed_form_training_is_bit_identical_run_to_run():
    config = ModelConfig(vocab_size=30, num_classes=2, embed_dim=8, ngram_buckets=64)
    g = torch.Generator().manual_seed(0)
    batches = [batch_of([torch.randint(2, 30, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(8)]) for _ in range(6)]
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = BagOfNgrams(config)
        optimizers = make_optimizers(model, TrainConfig(lr=0.05))
        for batch in batches:
            train_step(model, batch, optimizers, nn.CrossEntropyLoss())
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    torch.manual_seed(0)
    assert not torch.equal(weights[0]["embedding.weight"], BagOfNgrams(config).embedding.weight.detach()), "it trained"
