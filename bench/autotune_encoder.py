"""``textpipe train --autotune 120`` through the CLI, with the sentence encoder as its first knob: cold and warm sentence cache.

    python bench/autotune_encoder.py [--budget 120] [--logs DIR]

For each dataset (Rotten Tomatoes, the default, and ``$TEXTPIPE_DATASETS/{mr,subj,trec6}``)
the CLI runs twice in a fresh process: first with ``TEXTPIPE_CACHE`` pointing to a new
empty folder (cold: no sentence vector, token id or compiled kernel cached), then again
with the same folder (warm) once every train and test text's sentence vector is in it
(copied from the user's cache where it has them, else encoded, untimed); the folder is
deleted afterwards. Each line records the test
accuracy, the whole-process seconds, the load average when the run started and ended, the
configuration chosen on dev and what became of the encoder knob. The baselines are
``bench/results/accuracy.json``'s (fastText bigrams, TF-IDF + LR). Writes (updates, with ``--only``)
``bench/results/autotune_encoder.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import datasets  # noqa: E402

BASELINES = ("fastText bigrams (epoch=25 lr=0.5 wordNgrams=2)", "TF-IDF 1-2 grams + LR(C=10)")


def run_cli(files: dict, budget: float, cache: Path, out: Path, log: Path | None) -> dict:
    env = {**os.environ, "TEXTPIPE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "textpipe", "train", "--autotune", str(budget), "--train", str(files["train"]), "--test", str(files["test"]),
           "--out", str(out), "--overwrite"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if log is not None:
        log.write_text(done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    search = json.loads((out / "run.json").read_text(encoding="utf-8"))["autotune"]
    return {"budget": budget, "accuracy": round(metrics["test"]["accuracy"], 4), "seconds": round(seconds, 1), "load_at_start": round(load, 2),
            "load_at_end": round(os.getloadavg()[0], 2), "search_seconds": search["search_seconds"], "trials": len(search["trials"]),
            "chosen": search["chosen"], "encoder": search.get("encoder", {}).get("note")}


def warm_up(files: dict, cache: Path) -> float:
    """Every text of ``files`` into the sentence cache under ``cache`` (shards of the user's cache copied first, the rest
    encoded): seconds taken, not part of any figure."""
    from textpipe.core.files import cache_home
    from textpipe.text.sentence import SentenceEncoder
    from textpipe.text.sources import read_examples

    start = time.perf_counter()
    encoder = SentenceEncoder("minilm-l6", root=ROOT / "data")
    mine, theirs = cache / "sentences" / encoder.cache_key, cache_home() / "sentences" / encoder.cache_key
    if theirs.is_dir() and theirs.resolve() != mine.resolve():
        mine.mkdir(parents=True, exist_ok=True)
        for shard in theirs.iterdir():
            if not (mine / shard.name).exists():
                shutil.copy2(shard, mine / shard.name)
    texts = [example.text for split in ("train", "test") for example in read_examples(files[split])]
    encoder.encode_cached(texts, cache, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--logs", type=Path, help="keep each run's stderr here")
    parser.add_argument("--only", nargs="*", help="dataset names")
    parser.add_argument("--states", nargs="*", default=["cold", "warm"], choices=["cold", "warm"], help="which runs, in order")
    args = parser.parse_args()
    known = json.loads((ROOT / "bench" / "results" / "accuracy.json").read_text(encoding="utf-8"))["results"]
    path = ROOT / "bench" / "results" / "autotune_encoder.json"
    old = json.loads(path.read_text(encoding="utf-8"))["results"] if path.is_file() else {}  # --only / --states: the rest kept
    results = dict(old)
    for name, files in datasets().items():
        if args.only and name not in args.only:
            continue
        cache, outs = Path(tempfile.mkdtemp(prefix="textpipe-bench-cache-")), Path(tempfile.mkdtemp(prefix="textpipe-bench-run-"))
        try:
            row = {**old.get(name, {}), "baselines": {b: known[name][b]["accuracy"] for b in BASELINES}}
            row["best_baseline"] = max(row["baselines"].values())
            for state in args.states:
                log = args.logs / f"{name}-{state}.log" if args.logs else None
                if state == "warm":
                    row["warm_up_seconds"] = round(warm_up(files, cache), 1)
                row[state if args.budget == 120 else f"{state} {args.budget:g} s"] = run_cli(files, args.budget, cache, outs / state, log)
                print(name, state, args.budget, flush=True)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(outs, ignore_errors=True)
        results[name] = row
        path.write_text(json.dumps({"cores": os.cpu_count(), "results": results}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
