"""The compiled row kernels give the torch ops' results bit for bit, and textpipe runs without them."""

import ctypes
import os
import shutil
from unittest import mock

import pytest
import torch

from textpipe.core import kernels
from textpipe.core.kernels import bag_mean_table_grad, row_kernels, torch_ops_only
from textpipe.core.optim import DenseAdamW, RowAdam

needs_kernels = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler: the torch ops run instead")


@needs_kernels
def test_the_kernels_build_where_there_is_a_compiler():
    assert row_kernels() is not None
    with torch_ops_only():
        assert row_kernels() is None
    assert row_kernels() is not None


@needs_kernels
@pytest.mark.parametrize("dim", [1, 5, 16, 64])
def test_row_adam_with_the_kernels_steps_exactly_as_with_torch_ops(dim):
    if torch.backends.mkl.is_available():  # else torch's sqrt is not MKL's, and both sides run torch ops
        assert kernels.torch_sqrt() is not None
    torch.manual_seed(dim)
    tables = [torch.nn.Embedding(300, dim, sparse=True) for _ in range(2)]
    tables[1].load_state_dict(tables[0].state_dict())
    optimizers = [RowAdam(t.parameters(), lr=0.01) for t in tables]
    for _ in range(50):
        ids = torch.randint(0, 300, (8, 20))  # rows repeat within and across the batch's rows
        target = torch.randn(8, dim)
        for table, optimizer, reference in zip(tables, optimizers, (False, True)):
            with torch_ops_only() if reference else torch.enable_grad():
                optimizer.zero_grad()
                ((table(ids).mean(1) - target) ** 2).sum().backward()
                optimizer.step()
    assert torch.equal(tables[0].weight, tables[1].weight)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizers[0].state[tables[0].weight][key], optimizers[1].state[tables[1].weight][key]), key


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch built without MKL: RowAdam's torch ops run")
def test_torch_sqrt_is_the_square_root_torch_takes():
    address = kernels.torch_sqrt()
    assert address is not None
    x = torch.cat([torch.rand(10_000) * 1e-6, torch.rand(10_000), torch.zeros(3), torch.tensor([float("nan"), 1e-44])])
    roots = torch.empty_like(x)
    sqrt = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong)(address)
    sqrt(len(x), x.data_ptr(), roots.data_ptr(), kernels.SQRT_MODE)
    assert torch.equal(roots.view(torch.int32), x.sqrt().view(torch.int32))  # NaN's bits too


@needs_kernels
@pytest.mark.parametrize("seed", range(5))
def test_bag_gradient_with_the_kernels_equals_the_torch_ops(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 30, (40,), generator=g)  # empty bags included
    flat_ids = torch.randint(0, 130, (int(lengths.sum()),), generator=g)  # 130: rows past a multiple of 64
    grad_pooled = torch.randn(40, 7, generator=g)
    ours = bag_mean_table_grad(flat_ids, lengths, grad_pooled, 130)
    with torch_ops_only():
        theirs = bag_mean_table_grad(flat_ids, lengths, grad_pooled, 130)
    assert torch.equal(ours._indices(), theirs._indices())
    assert torch.equal(ours._values(), theirs._values())
    again = bag_mean_table_grad(flat_ids, lengths, grad_pooled, 130)  # the scratch left as it was found
    assert torch.equal(again._values(), ours._values())


@needs_kernels
@pytest.mark.parametrize("ids, lengths", [([0, 5, 10], [3]), ([-1, 2], [2]), ([1, 2, 3], [1, 1])])
def test_bag_gradient_refuses_ids_outside_the_table_before_any_c_runs(ids, lengths):
    with pytest.raises(IndexError, match="bag ids"):
        bag_mean_table_grad(torch.tensor(ids), torch.tensor(lengths), torch.ones(len(lengths), 2), 10)


def test_without_a_compiler_the_torch_ops_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TEXTPIPE_CACHE", str(tmp_path / "cache"))
    kernels._load_kernels.cache_clear()
    try:
        assert row_kernels() is None
        table = torch.nn.Embedding(10, 3, sparse=True)
        optimizer = RowAdam(table.parameters(), lr=0.1)
        before = table.weight.detach().clone()
        table(torch.tensor([[1, 2]])).sum().backward()
        optimizer.step()
        assert not torch.equal(table.weight[1:3], before[1:3]) and torch.equal(table.weight[3:], before[3:])
    finally:
        kernels._load_kernels.cache_clear()


@needs_kernels
@pytest.mark.parametrize("settings", [{}, {"max_ngram": 5}, {"ngram_buckets": 0}, {"max_ngram": 3, "ngram_buckets": 7}])
@pytest.mark.parametrize("dropout", [False, True])
def test_bag_ngram_ids_with_the_kernels_equal_add_ngrams_then_the_mask(settings, dropout):
    from textpipe.core.collate import pad_collate
    from textpipe.core.models import BagOfNgrams, ModelConfig

    g = torch.Generator().manual_seed(len(settings) + dropout)
    texts = [torch.randint(2, 300, (n,), generator=g) for n in (1, 7, 24, 3, 12, 2)]  # 5-grams of big ids wrap in int64
    batch = pad_collate(texts)
    model = BagOfNgrams(ModelConfig(vocab_size=300, num_classes=2, embed_dim=4, **{"ngram_buckets": 1000, "max_ngram": 2, **settings}))
    all_ids, all_mask = model.add_ngrams(batch.ids, batch.mask)
    keep = torch.rand(all_mask.shape, generator=g) >= 0.3 if dropout else None
    assert model.feature_width(batch.ids.shape[1]) == all_mask.shape[1]
    ours = model.flat_features(batch.ids, batch.mask, keep)
    with torch_ops_only():
        theirs = model.flat_features(batch.ids, batch.mask, keep)
    expected = all_mask if keep is None else all_mask & keep
    assert torch.equal(theirs[0], all_ids[expected]) and torch.equal(theirs[1], expected.sum(1))
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@needs_kernels
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_dense_adamw_steps_exactly_as_torch_adamw(weight_decay):
    if torch.backends.mkl.is_available():  # else both sides run torch.optim.AdamW's own step
        assert kernels.torch_sqrt() is not None
    torch.manual_seed(0)
    shapes = [(2, 64), (2,), (6, 50), (7,), (3, 11)]  # heads and biases: whole vectors of 16 floats and tails
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    optimizers = [DenseAdamW(ours, lr=0.01, weight_decay=weight_decay), torch.optim.AdamW(reference, lr=0.01, weight_decay=weight_decay)]
    for step in range(40):
        for p, q in zip(ours, reference):
            p.grad = torch.randn(p.shape) * 10.0 ** (step % 5 - 4)  # gradients from 1e-4 to 1
            q.grad = p.grad.clone()
        with mock.patch.object(torch.optim.AdamW, "step", side_effect=AssertionError("torch's step ran, not the kernel")):
            optimizers[0].step()
        optimizers[1].step()
    for p, q in zip(ours, reference):
        assert torch.equal(p, q)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizers[0].state[p][key], optimizers[1].state[q][key]), key


@needs_kernels
def test_present_ids_gives_nb_linears_distinct_ids_per_text():
    from textpipe.core.nb_linear import NBLinear

    generator = torch.Generator().manual_seed(0)
    for trial in range(100):  # short texts (insertion sort), long ones (qsort), empty ones, ids far apart
        lengths = torch.randint(0, 80 if trial % 2 else 4, (int(torch.randint(1, 40, (1,), generator=generator)),), generator=generator)
        flat = torch.randint(0, int(torch.randint(1, 300_000, (1,), generator=generator)), (int(lengths.sum()),), generator=generator)
        fast = kernels.present_ids(flat, lengths)
        with torch_ops_only():  # NBLinear.present's torch path
            reference = NBLinear.present(flat, lengths)
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(fast, reference))
    with pytest.raises(IndexError):
        kernels.present_ids(torch.tensor([1, -2]), torch.tensor([2]))
    with torch_ops_only():
        assert kernels.present_ids(torch.tensor([1]), torch.tensor([1])) is None
