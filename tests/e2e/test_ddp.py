"""Two training processes under torchrun (DistributedDataParallel, gloo on cpu): rank 0 alone writes the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_rows, write_csv

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
def test_two_processes_train_the_toy_task(tmp_path):
    if not TORCHRUN.is_file():
        pytest.skip("needs torchrun next to the Python interpreter")
    # 401 rows: the two ranks get different numbers of rows (and of batches), which Join must absorb
    train = write_csv(tmp_path / "train.csv", make_rows(401, seed=1))
    test = write_csv(tmp_path / "test.csv", make_rows(100, seed=3))
    out = tmp_path / "run"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "textpipe", "train", "--train", str(train), "--test", str(test),
           "--out", str(out), "--epochs", "4", "--lr", "0.02", "--batch-size", "16", "--keep-checkpoints", "0", "--quiet",
           "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9
    assert (out / "weights.safetensors").is_file() and not (out / "checkpoints").exists()


def _ranks_agree(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from textpipe.core.collate import pad_collate
    from textpipe.core.models import ModelConfig, build_model
    from textpipe.core.optim import make_optimizers
    from textpipe.core.runtime import distributed_wrap, join_uneven_inputs
    from textpipe.core.train import TrainConfig, train_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different initial weights: DDP must start both ranks from rank 0's
    model = build_model(ModelConfig(vocab_size=50, num_classes=2, ngram_buckets=64))  # sparse embedding table
    ddp = distributed_wrap(model, torch.device("cpu"))
    optimizers, loss_fn = make_optimizers(model, TrainConfig(lr=0.05)), torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(100 + rank)
    with join_uneven_inputs(ddp):
        for _ in range(5 + 2 * rank):  # rank 1 runs two batches more
            rows = [(torch.randint(2, 50, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g), int(torch.randint(0, 2, (1,), generator=g))) for _ in range(8)]
            train_step(ddp, pad_collate(rows), optimizers, loss_fn)
    results[rank] = [p.detach().clone() for p in model.parameters()]
    dist.destroy_process_group()


def test_ddp_keeps_ranks_identical_with_sparse_gradients_and_uneven_batches():
    import socket

    import torch.multiprocessing as mp
    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ranks_agree, args=(port, results), nprocs=2)
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1]))
