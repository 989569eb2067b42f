"""The evidence for ``train.batch_size = "auto"`` (config.batch_choice): dev accuracy by batch size on tiled files.

    .venv/bin/python bench/batch_rule.py            # about 15-25 minutes on 2 cores -> bench/results/batch_rule.json

Never on a test file: each dataset's training rows are split first (``bench/tile.py --dev 0.1``,
seeded), the other 90% tiled and shuffled to the row counts below, and every run trains on the
tiling with the carved-off rows as its dev file (``--dev``: early stopping on them, no refit),
``--epochs 5``. The score is the best dev accuracy (``metrics["dev"]``), the time the whole process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from tile import build  # noqa: E402

WORK = ROOT / "runs" / "bench_batch_rule"
RESULTS = ROOT / "bench" / "results" / "batch_rule.json"
# (dataset, rows, [(batch size, lr), ...]); lr 0.001 is the default's
ARMS = [
    ("mr", 200_000, [(32, 0.001), (256, 0.001), (1024, 0.001), (256, 0.003)]),
    ("subj", 200_000, [(32, 0.001), (256, 0.001)]),
    ("trec6", 50_000, [(32, 0.001), (64, 0.001)]),
]


def run(train: Path, dev: Path, batch: int, lr: float) -> dict:
    out = WORK / f"{train.stem}-b{batch}-lr{lr:g}"
    cmd = [sys.executable, "-m", "textpipe", "train", "--train", str(train), "--dev", str(dev), "--out", str(out), "--overwrite", "--quiet",
           "--epochs", "5", "--batch-size", str(batch), "--lr", str(lr), "--keep-checkpoints", "0", "--set", f"data.cache_dir={WORK / 'cache'}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    metrics = json.loads((out / "metrics.json").read_text())
    return {"batch": batch, "lr": lr, "dev_accuracy": round(metrics["dev"]["accuracy"], 4), "best_epoch": metrics["best_epoch"],
            "epochs": len(metrics["history"]), "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for dataset, rows, arms in ARMS:
        train, dev = build(dataset, rows, dev=0.1)
        entry = results.setdefault(f"{dataset}-{rows}", [])
        for batch, lr in arms:
            if any(r["batch"] == batch and r["lr"] == lr for r in entry):
                continue  # measured in an earlier run of this script
            entry.append(run(train, dev, batch, lr))
            print(dataset, rows, entry[-1], file=sys.stderr, flush=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
