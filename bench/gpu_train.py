"""Rows/s of each model's training step on a GPU, from a pre-numericalized tensor file; no torchtext, no spaCy.

torchtext 0.18 loads only with torch 2.3, while GPU machines often carry a newer
torch, so this script needs torch and ``textpipe.core.models`` / ``textpipe.core.collate``
alone (it never imports the text stages). Write the tensor file where textpipe is
installed, from the numericalized cache a training run left (see ``--write``),
copy it and this repository to the GPU machine, and run:

    python bench/gpu_train.py --write data/mr.pt data/cache/<key>     # from a cache folder
    python bench/gpu_train.py data/mr.pt --repeat 10 --out gpu.json    # every model, batch 512 and 4096

The tensor file holds ``ids`` (flat int32), ``offsets``, ``labels``, ``vocab_size``
and ``num_classes``; ``--repeat K`` tiles its rows K times, so a small dataset
gives epochs long enough to time. Batches are cut from length-sorted, shuffled
chunks, as the pipeline's bucketed loader does; on cuda the step runs under bf16
autocast. Each model and batch size is timed two ways:

- ``pipeline``: each batch collated on the CPU, pinned and copied, as training does;
- ``prebuilt``: every batch collated and copied to the device before the clock
  starts, so only the steps are timed: the limit a faster data path could reach.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textpipe.core.collate import Batch, collate_flat  # noqa: E402
from textpipe.core.models import MODELS, ModelConfig, build_model  # noqa: E402
from textpipe.core.optim import make_optimizers  # noqa: E402
from textpipe.core.train import TrainConfig, train_step  # noqa: E402


def write_tensor_file(out: str | Path, cache_folder: str | Path) -> None:
    """A tensor file from a cache folder written by :mod:`textpipe.text.cache` (read with numpy, no textpipe.text.cache import)."""
    folder = Path(cache_folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    n = meta["rows"]
    offsets = torch.from_numpy(np.fromfile(folder / "offsets.i64", dtype=np.int64, count=n + 1))
    torch.save({
        "ids": torch.from_numpy(np.fromfile(folder / "ids.i32", dtype=np.int32)),
        "offsets": offsets,
        "labels": torch.from_numpy(np.fromfile(folder / "labels.i64", dtype=np.int64, count=n)),
        "vocab_size": meta["vocab_size"],
        "num_classes": len(meta["labels"]),
    }, out)


def tiled(data: dict, times: int) -> dict:
    """The tensor file's rows repeated ``times`` times, for epochs long enough to time."""
    if times <= 1:
        return data
    lengths = data["offsets"].diff().repeat(times)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    return {**data, "ids": data["ids"].repeat(times), "offsets": offsets, "labels": data["labels"].repeat(times)}


def bucketed_batches(offsets: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices: a random permutation, sorted by length inside chunks of 100 batches, batches shuffled."""
    lengths = offsets[1:] - offsets[:-1]
    rows = torch.randperm(len(lengths), generator=generator)
    chunk = 100 * batch_size
    batches = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches += list(part.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def to_device(batch: Batch, device: torch.device) -> Batch:
    return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(model_name: str, data: dict, device: torch.device, epochs: int, batch_size: int, prebuilt: bool) -> dict:
    """Train ``epochs`` epochs of one model; the first warms up (allocator, kernels, autotuning) and is reported apart."""
    torch.manual_seed(0)
    config = ModelConfig(name=model_name, vocab_size=data["vocab_size"], num_classes=data["num_classes"], nb_linear=False)
    model = build_model(config).to(device)
    optimizers = make_optimizers(model, TrainConfig(batch_size=batch_size))
    loss_fn = torch.nn.CrossEntropyLoss()
    ids, offsets, labels = data["ids"], data["offsets"], data["labels"]
    generator = torch.Generator().manual_seed(0)
    model.train()
    per_epoch = []
    for epoch in range(epochs):
        batches = bucketed_batches(offsets, batch_size, generator)
        if prebuilt:
            batches = [to_device(collate_flat(ids, offsets, rows, labels), device) for rows in batches]
            synchronize(device)
        start, correct = time.perf_counter(), 0
        for batch in batches:
            if not prebuilt:
                batch = to_device(collate_flat(ids, offsets, batch, labels), device)
            correct += train_step(model, batch, optimizers, loss_fn)[1]
        synchronize(device)
        seconds = time.perf_counter() - start
        per_epoch.append({"seconds": round(seconds, 3), "rows_per_s": round(len(labels) / seconds), "train_accuracy": round(correct / len(labels), 4)})
    warm = [e["rows_per_s"] for e in per_epoch[1:]] or [per_epoch[0]["rows_per_s"]]
    return {"model": model_name, "batch_size": batch_size, "data_path": "prebuilt" if prebuilt else "pipeline",
            "rows_per_s": round(float(np.median(warm))), "epochs": per_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="tensor file (or, with --write, the output path)")
    parser.add_argument("cache", nargs="?", help="with --write: the cache folder to read")
    parser.add_argument("--write", action="store_true", help="write the tensor file from a cache folder and stop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names (default: all)")
    parser.add_argument("--batch-sizes", default="512,4096")
    parser.add_argument("--epochs", type=int, default=3, help="per model, batch size and data path; the first is a warm-up")
    parser.add_argument("--repeat", type=int, default=1, help="tile the file's rows this many times")
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args()
    if args.write:
        write_tensor_file(args.data, args.cache)
        return
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    data = tiled(torch.load(args.data), args.repeat)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "rows": len(data["labels"]), "runs": []}
    for name in args.models.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            for prebuilt in (False, True):
                run = time_epochs(name, data, device, args.epochs, batch_size, prebuilt)
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
