"""Speed of the minilm-l6 sentence encoder: load (with the sha256 checks) and texts/s on mr's test texts.

    python bench/encoder.py [--rows 1066] [--threads 2]     # writes bench/results/encoder.json

Encodes the first ``--rows`` texts of ``$TEXTPIPE_DATASETS/mr/test.csv`` (labels are
not read) with the float32 encoder and with its Linear layers quantized
(``minilm.quantize_linear``: int8, float16), batches sorted by length, and records
texts/s and how close each quantized vector stays to the float32 one (the smallest
and the mean cosine). The machine's load average is recorded beside the figures:
on a shared machine they are lower bounds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textpipe.minilm import quantize_linear  # noqa: E402
from textpipe.sentence import SentenceEncoder, encode_ids  # noqa: E402

SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1066)
    parser.add_argument("--batch-size", type=int, default=64)
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
    reference = None
    for kind in ("float32", "int8", "float16"):
        model = encoder.model if kind == "float32" else quantize_linear(copy.deepcopy(encoder.model), kind)
        start = time.perf_counter()
        vectors = encode_ids(model, ids, args.batch_size)
        seconds = time.perf_counter() - start
        reference = vectors if reference is None else reference
        cosine = (vectors * reference).sum(1)
        result[kind] = {"texts_per_s": round(len(texts) / seconds, 1), "cosine_min": round(float(cosine.min()), 4), "cosine_mean": round(float(cosine.mean()), 4)}
        print(kind, result[kind], flush=True)
    result["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
