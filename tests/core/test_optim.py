"""The optimizer's parts: RowAdam (sparse Adam over the rows a batch used) and the per-step learning-rate curve."""

import pytest
import torch

from textpipe.core.optim import RowAdam, lr_factor
from textpipe.core.train import TrainConfig


def test_warmup_rises_linearly_then_decays_to_zero_per_step():
    config = TrainConfig(epochs=4, warmup=0.25, schedule="linear_steps")
    f = lr_factor(config, steps_per_epoch=10)  # 40 steps, 10 of warmup
    curve = [f(s) for s in range(40)]
    assert curve[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert curve[10] == pytest.approx(1.0)
    assert curve[10:] == pytest.approx([(40 - s) / 30 for s in range(10, 40)])
    assert all(a > b for a, b in zip(curve[10:], curve[11:])), "decays at every step after warmup"
    constant = lr_factor(TrainConfig(epochs=4, warmup=0.25, schedule="constant"), 10)
    assert [constant(s) for s in (0, 9, 10, 39)] == pytest.approx([1 / 11, 10 / 11, 1.0, 1.0])



def test_row_adam_matches_torch_sparse_adam():
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(50, 8, sparse=True) for _ in range(2)]
    tables[1].load_state_dict(tables[0].state_dict())
    ours, theirs = RowAdam(tables[0].parameters(), lr=0.01), torch.optim.SparseAdam(tables[1].parameters(), lr=0.01)
    for step in range(20):
        ids = torch.randint(0, 50, (6, 5))  # repeated rows within a batch included
        target = torch.randn(6, 8)
        for table, optimizer in zip(tables, (ours, theirs)):
            optimizer.zero_grad()
            ((table(ids).mean(1) - target) ** 2).sum().backward()
            optimizer.step()
        assert torch.allclose(tables[0].weight, tables[1].weight, atol=1e-6), f"step {step}"



def test_row_adam_refuses_dense_gradients():
    layer = torch.nn.Linear(3, 1)
    optimizer = RowAdam(layer.parameters())
    layer(torch.ones(1, 3)).sum().backward()
    with pytest.raises(ValueError, match="sparse gradients only"):
        optimizer.step()



def test_row_adam_saves_used_rows_only_and_restores_exactly():
    torch.manual_seed(0)
    table = torch.nn.Embedding(1000, 8, sparse=True)
    optimizer = RowAdam(table.parameters(), lr=0.01)
    table(torch.tensor([[3, 5, 5, 900]])).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    assert saved["state"][0]["exp_avg"].shape == (3, 8)  # rows 3, 5 and 900 only
    assert optimizer.state[table.weight]["exp_avg"].shape == (1000, 8)  # the live state is left whole
    clone = torch.nn.Embedding(1000, 8, sparse=True)
    restored = RowAdam(clone.parameters(), lr=0.01)
    restored.load_state_dict(saved)
    assert saved["state"][0]["rows"].tolist() == [3, 5, 900]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(restored.state[clone.weight][key], optimizer.state[table.weight][key]), key
    assert restored.state[clone.weight]["step"] == 1
