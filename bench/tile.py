"""Build a large training file by tiling and shuffling a visible dataset's training rows (seeded).

    .venv/bin/python bench/tile.py --dataset mr --rows 1000000            # -> data/bench/scale/mr-1000000.csv
    .venv/bin/python bench/tile.py --dataset mr --rows 200000 --dev 0.1   # a dev split carved off first

The file is ``label,text`` like the datasets themselves: the training rows repeated until
there are ``rows`` of them (the last copy cut short), then shuffled with ``random.Random(seed)``.
With ``--dev F``, a seeded fraction F of the training rows is set aside first as
``...-dev.csv`` and only the rest is tiled: a dev split no tiled row repeats, for choosing
settings without the test file. Files go under ``data/`` (git-ignored) and are reused when
they already exist (same name = same content: the name holds every setting).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
OUT = ROOT / "data" / "bench" / "scale"


def read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["label"], r["text"]) for r in csv.DictReader(f)]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def tiled(rows: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """``rows`` repeated to ``n`` rows and shuffled (seeded)."""
    copies = rows * (n // len(rows)) + rows[: n % len(rows)]
    random.Random(seed).shuffle(copies)
    return copies


def build(dataset: str, rows: int, seed: int = 0, dev: float = 0.0) -> tuple[Path, Path | None]:
    """The tiled training file (and the dev file carved off before tiling, with ``dev`` > 0); reused when present."""
    name = f"{dataset}-{rows}" + (f"-s{seed}" if seed else "") + (f"-dev{dev:g}" if dev else "")
    train_path, dev_path = OUT / f"{name}.csv", (OUT / f"{name}-dev.csv" if dev else None)
    if train_path.is_file() and (dev_path is None or dev_path.is_file()):
        return train_path, dev_path
    source = read_rows(SHARED / dataset / "train.csv")
    if dev:
        order = list(range(len(source)))
        random.Random(seed + 1).shuffle(order)
        cut = int(len(source) * dev)
        write_rows(dev_path, [source[i] for i in sorted(order[:cut])])
        source = [source[i] for i in sorted(order[cut:])]
    write_rows(train_path, tiled(source, rows, seed))
    return train_path, dev_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mr", help="a folder of $TEXTPIPE_DATASETS with train.csv (default: mr)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev", type=float, default=0.0, help="fraction of the training rows set aside as a dev file before tiling")
    args = parser.parse_args()
    train, dev = build(args.dataset, args.rows, args.seed, args.dev)
    print(train if dev is None else f"{train}\n{dev}")


if __name__ == "__main__":
    main()
