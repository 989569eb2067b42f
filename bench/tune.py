"""Dev-split tuning: score textpipe configurations on dev data only (never on a test file).

    python bench/tune.py '{"train": {"lr": 0.001}}' '{"train": {"batch_size": 64}}'

Each configuration (a PipelineConfig dict, merged over the defaults) is trained
on every dataset's training part and scored on its dev part: every 10th row of
``$TEXTPIPE_DATASETS/*/train.csv`` (the same rows textpipe holds out for early
stopping) and the default dataset's ``dev.csv``. The test files are not opened.
By default the dev part also picks the epoch (early stopping), so its score is
optimistic; with ``--carve`` textpipe holds out its own early-stopping rows from
the training part (and refits, where the config says so) and the dev part is
only scored. Prints one line per run and writes ``bench/results/tune.json``
(or ``--out``).

    python bench/tune.py --carve --seeds 0 1 2 '{"train": {"refit": false}}' '{}'
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textpipe.text.catalogue import rotten_tomatoes  # noqa: E402
from textpipe.run.config import PipelineConfig  # noqa: E402
from textpipe.run.phases import train_files  # noqa: E402

# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
SPLITS = ROOT / "data" / "tune"


def dev_splits() -> dict[str, tuple[Path, Path]]:
    """name -> (training part, dev part); written once under data/tune/."""
    rt = rotten_tomatoes(ROOT / "data")
    found = {"rotten_tomatoes": (Path(rt.train), Path(rt.dev))}
    for folder in sorted(SHARED.iterdir()) if SHARED.is_dir() else []:
        if not (folder / "train.csv").is_file():
            continue
        out = SPLITS / folder.name
        if not (out / "dev.csv").is_file():
            out.mkdir(parents=True, exist_ok=True)
            with open(folder / "train.csv", encoding="utf-8", newline="") as f:
                rows = list(csv.reader(f))
            for name, part in (("train.csv", [r for i, r in enumerate(rows[1:]) if i % 10 != 9]), ("dev.csv", rows[10::10])):
                with open(out / name, "w", encoding="utf-8", newline="") as f:
                    csv.writer(f).writerows([rows[0], *part])
        found[folder.name] = (out / "train.csv", out / "dev.csv")
    return found


def first_rows(train: Path, rows: int) -> Path:
    """The first ``rows`` rows of a training part, written once beside it: a smaller data set, same dev part."""
    out = SPLITS / f"{train.parent.name}-{rows}" / "train.csv"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(train, encoding="utf-8", newline="") as f:
            kept = list(csv.reader(f))[: rows + 1]
        with open(out, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(kept)
    return out


def merged(base: dict, extra: dict) -> dict:
    return {k: {**base.get(k, {}), **v} if isinstance(v, dict) else v for k, v in {**base, **extra}.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="PipelineConfig dicts as JSON, e.g. '{\"train\": {\"lr\": 0.001}}'")
    parser.add_argument("--datasets", nargs="*", help="only these datasets")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--carve", action="store_true", help="early stopping on rows held out of the training part; dev is only scored")
    parser.add_argument("--rows", type=int, help="train on the first ROWS rows of each training part only (small-data regime)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tune.json")
    args = parser.parse_args()
    results = []
    for name, (train, dev) in dev_splits().items():
        if args.datasets and name not in args.datasets:
            continue
        if args.rows:
            train = first_rows(train, args.rows)
        for text in args.configs:
            for seed in args.seeds:
                config = PipelineConfig.from_dict(merged(json.loads(text), {"train": {"seed": seed, "keep_checkpoints": 0}}))
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    metrics = train_files(train, dev, tmp, dev=None if args.carve else dev, config=config, quiet=True)
                    seconds = time.perf_counter() - start
                dev_accuracy = metrics["test"]["accuracy"] if args.carve else metrics["dev"]["accuracy"]
                row = {"dataset": name, "rows": args.rows, "config": json.loads(text), "carve": args.carve, "seed": seed, "dev_accuracy": dev_accuracy,
                       "nb": {k: v for k, v in (metrics.get("nb_linear") or {}).items() if k in ("C", "alpha")}, "best_epoch": metrics["best_epoch"], "epochs": len(metrics["history"]), "seconds": round(seconds, 1)}
                print(json.dumps(row), flush=True)
                results.append(row)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
