"""Peak memory of one training epoch does not grow with the number of rows.

Builds a 100,000-row and a 1,000,000-row training file by sampling the training
rows of ``$TEXTPIPE_DATASETS/mr`` and ``subj`` with replacement (seeded), then
trains one epoch on each in a fresh Python process and reads that process's peak
resident set size from ``os.wait4``. The vocabulary is the same for both files
(every row comes from the same 18,596 sentences), so anything that grew with the
rows would show as a difference. The child also samples its RSS every half
second, to tell a steady level from the peak of one batch's temporary tensors.
Results go to ``bench/results/memory.json``.

    make bench-memory                      # or: .venv/bin/python bench/memory.py

Config: whitespace tokenizer, ``bag`` model, 1 epoch, batch 256, no DataLoader
workers (one process, so its peak RSS is the whole run's), the default
100,000-row shuffle buffer; dev and test are the mr and subj test files together
(2,066 rows, the same four labels). ``test_accuracy`` only shows that the epoch
trained: the four labels overlap (subj's subjective sentences are movie-review
snippets, as all of mr is), so it is no benchmark score.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
DATA = ROOT / "data" / "bench"
RESULTS = ROOT / "bench" / "results" / "memory.json"
SIZES = (100_000, 1_000_000)
BATCH_SIZE = 256


def sample_rows() -> list[tuple[str, str]]:
    rows = []
    for name in ("mr", "subj"):
        with open(SHARED / name / "train.csv", encoding="utf-8", newline="") as f:
            rows += [(r["label"], r["text"]) for r in csv.DictReader(f)]
    return rows


def write_sample(path: Path, rows: list[tuple[str, str]], n: int, seed: int) -> Path:
    if path.is_file():
        return path
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        for _ in range(n):
            writer.writerow(rng.choice(rows))
    os.replace(tmp, path)
    return path


def write_test(path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["label", "text"])
        for name in ("mr", "subj"):
            with open(SHARED / name / "test.csv", encoding="utf-8", newline="") as f:
                writer.writerows((r["label"], r["text"]) for r in csv.DictReader(f))
    return path


def sample_rss(samples: list[int], every: float = 0.5) -> None:
    while True:
        with open("/proc/self/status") as f:
            samples += [int(line.split()[1]) for line in f if line.startswith("VmRSS:")]
        time.sleep(every)


def train_one_epoch(train: str, test: str, out: str) -> None:
    """Runs in the child process: one epoch with the benchmark's config."""
    import torch

    from textpipe.run.config import DataConfig, PipelineConfig
    from textpipe.run.phases import train_files
    from textpipe.text.tokenizer import TokenizerConfig
    from textpipe.core.train import TrainConfig

    torch.set_num_threads(1)
    samples: list[int] = []
    threading.Thread(target=sample_rss, args=(samples,), daemon=True).start()
    # A cache folder of its own, emptied: the epoch tokenizes the file into it, as a first run does.
    shutil.rmtree(Path(out) / "cache", ignore_errors=True)
    config = PipelineConfig(
        tokenizer=TokenizerConfig("whitespace"), data=DataConfig(cache_dir=str(Path(out) / "cache")),
        train=TrainConfig(epochs=1, batch_size=BATCH_SIZE),
    )
    metrics = train_files(train, test, out, dev=test, config=config, quiet=True, overwrite=True)  # out holds the cache folder
    during = sorted(samples[len(samples) // 4:])  # after the first quarter of the run: imports and the vocab pass
    print(json.dumps({
        "rss_median_mb": round(statistics.median(during) / 1024, 1), "rss_p95_mb": round(during[int(0.95 * (len(during) - 1))] / 1024, 1),
        "test_accuracy": metrics["test"]["accuracy"],
    }))


def measure(train: Path, rows: int, test: Path, out: Path) -> dict:
    """Peak RSS (MiB) and wall time of one epoch on ``train``, in a fresh process."""
    cmd = [sys.executable, __file__, "--child", str(train), str(test), str(out)]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"training on {train} failed with exit status {child.returncode}")
    return {
        "rows": rows,
        "file_mb": round(train.stat().st_size / 2**20, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "seconds": round(time.perf_counter() - start, 1),
        **json.loads(stdout.decode().strip().splitlines()[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("TRAIN", "TEST", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        train_one_epoch(*args.child)
        return
    if not (SHARED / "mr" / "train.csv").is_file():
        sys.exit(f"needs the benchmark datasets in {SHARED}")
    DATA.mkdir(parents=True, exist_ok=True)
    rows = sample_rows()
    runs = []
    for n in SIZES:
        train = write_sample(DATA / f"train_{n}.csv", rows, n, seed=n)
        print(f"training one epoch on {train} ...", file=sys.stderr)
        runs.append(measure(train, n, write_test(DATA / "test.csv"), ROOT / "runs" / "bench_memory" / str(n)))
        print(json.dumps(runs[-1]), file=sys.stderr)
    small, large = runs
    result = {
        "what": "peak RSS of one training epoch (vocab pass, 1 epoch, dev + test evaluation) in a fresh process",
        "config": {"tokenizer": "whitespace", "model": "bag", "epochs": 1, "batch_size": BATCH_SIZE, "num_workers": 0, "shuffle_buffer": 100_000, "cache": "built during the run, in an empty folder"},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "runs": runs,
        "ratio_1m_to_100k": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "within_10_percent": abs(large["peak_rss_mb"] / small["peak_rss_mb"] - 1) <= 0.10,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
