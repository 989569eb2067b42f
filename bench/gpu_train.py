"""Train the default model from a pre-numericalized tensor file and print rows/s; no torchtext, no spaCy.

torchtext 0.18 loads only with torch 2.3, while GPU machines often carry a newer
torch, so this script needs torch and ``textpipe.models`` / ``textpipe.collate``
alone (it never imports the text stages). Write the tensor file where textpipe is
installed, from the numericalized cache a training run left (see ``--write``),
copy it and this repository to the GPU machine, and run:

    python bench/gpu_train.py data/mr.pt --device cuda --epochs 3 --batch-size 512
    python bench/gpu_train.py --write data/mr.pt data/cache/<key>   # from a cache folder

The tensor file holds ``ids`` (flat int32), ``offsets``, ``labels``, ``vocab_size``
and ``num_classes``. Batches are cut from length-sorted, shuffled chunks, as the
pipeline's bucketed loader does; on cuda the step runs under bf16 autocast.
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
from textpipe.collate import collate_flat  # noqa: E402
from textpipe.models import ModelConfig, build_model  # noqa: E402
from textpipe.optim import make_optimizers  # noqa: E402
from textpipe.train import TrainConfig, train_step  # noqa: E402


def write_tensor_file(out: str | Path, cache_folder: str | Path) -> None:
    """A tensor file from a cache folder written by :mod:`textpipe.cache` (read with numpy, no textpipe.cache import)."""
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


def train(data: dict, device: torch.device, epochs: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=data["vocab_size"], num_classes=data["num_classes"])).to(device)
    optimizers = make_optimizers(model, TrainConfig(batch_size=batch_size))
    loss_fn = torch.nn.CrossEntropyLoss()
    ids, offsets, labels = data["ids"], data["offsets"], data["labels"]
    generator = torch.Generator().manual_seed(0)
    model.train()
    seen, per_epoch = 0, []
    for epoch in range(epochs):
        start, correct = time.perf_counter(), 0
        for rows in bucketed_batches(offsets, batch_size, generator):
            batch = collate_flat(ids, offsets, rows, labels)
            if device.type == "cuda":
                batch = batch.pin_memory()
            _, ok = train_step(model, batch.to(device, non_blocking=True), optimizers, loss_fn)
            correct += ok
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        per_epoch.append({"epoch": epoch + 1, "seconds": round(seconds, 3), "rows_per_s": round(len(labels) / seconds), "train_accuracy": round(correct / len(labels), 4)})
        seen += len(labels)
    return {"device": str(device), "torch": torch.__version__, "rows": len(labels), "batch_size": batch_size, "epochs": per_epoch,
            "rows_per_s_after_first": round(np.mean([e["rows_per_s"] for e in per_epoch[1:]] or [per_epoch[0]["rows_per_s"]]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="tensor file (or, with --write, the output path)")
    parser.add_argument("cache", nargs="?", help="with --write: the cache folder to read")
    parser.add_argument("--write", action="store_true", help="write the tensor file from a cache folder and stop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    if args.write:
        write_tensor_file(args.data, args.cache)
        return
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    print(json.dumps(train(torch.load(args.data), device, args.epochs, args.batch_size)))


if __name__ == "__main__":
    main()
