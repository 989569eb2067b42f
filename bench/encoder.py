"""Speed of the minilm-l6 sentence encoder: load (with the sha256 checks) and texts/s on mr's test texts.

    python bench/encoder.py [--rows 1066] [--bundle runs/mr-accurate] [--train]   # writes bench/results/encoder.json

Encodes the first ``--rows`` texts of ``$TEXTPIPE_DATASETS/mr/test.csv`` (labels are
not read) with the float32 encoder and with its Linear layers quantized
(``minilm.quantize_linear``: int8, float16), batches sorted by length, and records
texts/s and how close each quantized vector stays to the float32 one (the smallest
and the mean cosine), each the best of ``--rounds`` rounds taken in turn, and the
multiply-adds a text costs in the Linear layers (what a rate asks of the machine).

``--bundle`` (a run trained with ``configs/accurate.toml``) also times a whole
``textpipe predict`` process on the first 1,000 texts, load included, with an empty
sentence cache, as trained and quantized to int8. ``--train`` times whole
``textpipe train`` processes on mr, default and ``configs/accurate.toml``, each with
empty caches. The machine's load average is recorded beside the figures: on a
shared machine they are lower bounds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textpipe.core.minilm import quantize_linear  # noqa: E402
from textpipe.text.sentence import SentenceEncoder, encode_ids  # noqa: E402

SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1066)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bundle", type=Path, help="a run trained with configs/accurate.toml: time predict processes on 1,000 texts")
    parser.add_argument("--train", action="store_true", help="time textpipe train on mr, default and configs/accurate.toml")
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder.json")
    args = parser.parse_args()
    with open(SHARED / "mr" / "test.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)][: args.rows]
    start = time.perf_counter()
    encoder = SentenceEncoder("minilm-l6", ROOT / "data")
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = encoder.token_ids(texts)
    tokenize_s = time.perf_counter() - start
    result = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_average_before": os.getloadavg(),
              "rows": len(texts), "wordpieces": sum(map(len, ids)), "load_s": round(load_s, 2),
              "tokenize_texts_per_s": round(len(texts) / tokenize_s, 1), "batch_size": args.batch_size}
    result["encode"] = encode_rates(encoder, ids, args.batch_size, args.rounds)
    result["linear_gflop_per_text"] = linear_gflop_per_text(encoder.model.config, ids)
    if args.bundle:
        result["predict_1000"] = predict_processes(args.bundle, texts[:1000])
    if args.train:
        result["train_mr"] = train_processes()
    result["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def encode_rates(encoder: SentenceEncoder, ids: list[list[int]], batch_size: int, rounds: int) -> dict:
    """texts/s (best of ``rounds``, kinds taken in turn) and each kind's cosine to the float32 vectors."""
    models = {"float32": encoder.model, "int8": quantize_linear(copy.deepcopy(encoder.model), "int8"), "float16": quantize_linear(copy.deepcopy(encoder.model), "float16")}
    best = {kind: 0.0 for kind in models}
    cosines = {}
    reference = encode_ids(encoder.model, ids, batch_size)
    for _ in range(rounds):
        for kind, model in models.items():
            start = time.perf_counter()
            vectors = encode_ids(model, ids, batch_size)
            best[kind] = max(best[kind], len(ids) / (time.perf_counter() - start))
            cosine = (vectors * reference).sum(1)
            cosines[kind] = {"cosine_min": round(float(cosine.min()), 4), "cosine_mean": round(float(cosine.mean()), 4)}
    out = {kind: {"texts_per_s": round(best[kind], 1), **cosines[kind]} for kind in models}
    print(json.dumps(out), flush=True)
    return out


def linear_gflop_per_text(config, ids: list[list[int]]) -> float:
    """What one average text costs in the encoder's Linear layers (2 flops per multiply-add); attention is extra."""
    per_token = 2 * config.layers * (4 * config.dim * config.dim + 2 * config.dim * config.ffn_dim)
    return round(per_token * sum(map(len, ids)) / len(ids) / 1e9, 3)


def textpipe_process(args: list, cache: Path) -> float:
    """Seconds of a whole ``python -m textpipe`` process (imports, loading, work), with ``cache`` as its cache folder."""
    env = {**os.environ, "TEXTPIPE_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "textpipe", *map(str, args)], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 2)


def predict_processes(bundle: Path, texts: list[str]) -> dict:
    """A predict process on ``texts`` (one per line), empty caches, the bundle as trained and quantized to int8."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = tmp / "texts.txt"
        lines.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
        textpipe_process(["quantize", "--model", bundle, "--out", tmp / "int8", "--encoder-precision", "int8"], tmp / "q")
        out = {"texts": len(texts)}
        for name, model in (("as trained (float32)", bundle), ("quantized (int8)", tmp / "int8")):
            out[name + " seconds"] = textpipe_process(["predict", "--model", model, "--input", lines, "--output", tmp / "out.json"], tmp / name.split()[0])
    print(json.dumps(out), flush=True)
    return out


def train_processes() -> dict:
    """Whole ``textpipe train`` processes on mr, default and configs/accurate.toml, each with empty caches."""
    mr = SHARED / "mr"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, extra in (("default", []), ("accurate.toml (--encoder minilm-l6)", ["--config", ROOT / "configs" / "accurate.toml"])):
            run = ["train", "--train", mr / "train.csv", "--test", mr / "test.csv", "--out", tmp / "run", "--overwrite", "--quiet", *extra]
            out[name + " seconds"] = textpipe_process(run, tmp / f"cache-{len(out)}")
    out["ratio"] = round(out["accurate.toml (--encoder minilm-l6) seconds"] / out["default seconds"], 2)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
