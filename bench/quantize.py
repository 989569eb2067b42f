"""How small ``textpipe quantize`` makes the default model, and what it costs in test accuracy.

    make bench-quantize                # or: .venv/bin/python bench/quantize.py  (about 2 minutes on 2 cores)

For rotten_tomatoes (the default dataset), mr and trec6 (``$TEXTPIPE_DATASETS``):
train the default model, quantize it with the default settings, and score both on
the test split. Writes ``bench/results/quantize.json``: bundle bytes (weights.safetensors +
vocab.json + bundle.json) before and after, their ratio, the rows kept, and test
accuracy before and after. Models are kept under ``data/bench/quantize/`` and
reused by the next run.

    .venv/bin/python bench/quantize.py --encoder [--model runs/mr-accurate]   # the sentence encoder's precision

The encoder arm (``bench/results/quantize_encoder.json``): mr trained once with
``configs/accurate.toml`` (or ``--model``, a bundle trained so), quantized with each
``--encoder-precision`` (float32, float16, int8) and each scored on mr's test file
(accuracy, bundle bytes, and the encoder's own bytes in memory: it is loaded by name,
not shipped in the bundle); then the three encoders, loaded in this one process,
encode mr's test texts in interleaved rounds (texts/s: the best and the median of
the rounds; the load average is recorded beside them), and float16 computed in
float16 itself (what a CPU without AVX512-FP16 does slowly) on the first 128 texts.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from textpipe.text.catalogue import rotten_tomatoes  # noqa: E402
from textpipe.run.pipeline import report_file  # noqa: E402
from textpipe.run.phases import train_files  # noqa: E402
from textpipe.bundle.quantize import QuantizeConfig, quantize_bundle  # noqa: E402
from textpipe.core.minilm import PRECISIONS  # noqa: E402

# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
WORK = ROOT / "data" / "bench" / "quantize"
RESULTS = ROOT / "bench" / "results" / "quantize.json"
ENCODER_RESULTS = ROOT / "bench" / "results" / "quantize_encoder.json"


def splits() -> dict[str, tuple[Path, Path, Path | None]]:
    """(train, test, dev) per dataset, as ``make train`` uses them (rotten_tomatoes has a dev split)."""
    rt = rotten_tomatoes(ROOT / "data")
    found = {"rotten_tomatoes": (rt.train, rt.test, rt.dev)}
    for name in ("mr", "trec6"):
        if (SHARED / name / "train.csv").is_file():
            found[name] = (SHARED / name / "train.csv", SHARED / name / "test.csv", None)
        else:
            print(f"skipping {name}: no {SHARED / name}", file=sys.stderr)
    return found


def measure(name: str, train: Path, test: Path, dev: Path | None) -> dict:
    model = WORK / name
    if not (model / "bundle.json").is_file():
        train_files(train, test, model, dev=dev, quiet=True)
    summary = quantize_bundle(model, WORK / f"{name}-quantized", QuantizeConfig())
    accuracy = lambda bundle: report_file(bundle, test, WORK / f"eval-{bundle.name}")["overall"]["accuracy"]  # noqa: E731
    before, after = accuracy(model), accuracy(WORK / f"{name}-quantized")
    return {
        "bytes": summary["original_bytes"], "quantized_bytes": summary["bytes"], "ratio": summary["ratio"],
        "rows": summary["rows"], "used_rows": summary["used_rows"], "kept_rows": summary["kept_rows"],
        "used_rows_from": summary["used_rows_from"],
        "test_accuracy": before, "quantized_test_accuracy": after, "delta_points": round(100 * (after - before), 2),
    }


def trained_with_encoder(model: Path | None) -> Path:
    """A bundle of mr trained with configs/accurate.toml: ``model``, or one trained now (once) under WORK."""
    if model is not None:
        return model
    model = WORK / "mr-encoder"
    if not (model / "bundle.json").is_file():
        subprocess.run([sys.executable, "-m", "textpipe", "train", "--config", str(ROOT / "configs" / "accurate.toml"), "--quiet",
                        "--train", str(SHARED / "mr" / "train.csv"), "--test", str(SHARED / "mr" / "test.csv"), "--out", str(model)],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return model


def bundle_bytes(folder: Path) -> int:
    """Every file of the bundle's manifest, bundle.json included (the sentence head too)."""
    return sum((folder / name).stat().st_size for name in json.loads((folder / "bundle.json").read_text())["files"])


def encoder_accuracy(model: Path, test: Path) -> dict:
    """Each precision's quantized bundle scored on ``test``, beside the bundle as trained."""
    accuracy = lambda bundle: report_file(bundle, test, WORK / f"eval-{bundle.name}")["overall"]["accuracy"]  # noqa: E731
    original = accuracy(model)
    found = {"trained": {"test_accuracy": original, "bundle_bytes": bundle_bytes(model)}}
    for precision in PRECISIONS:
        out = WORK / f"mr-encoder-{precision}"
        shutil.rmtree(out, ignore_errors=True)
        quantize_bundle(model, out, QuantizeConfig(encoder_precision=precision))
        score = accuracy(out)
        found[precision] = {"test_accuracy": score, "delta_points": round(100 * (score - original), 2), "bundle_bytes": bundle_bytes(out)}
        print(precision, found[precision], file=sys.stderr)
    return found


def encoding_speed(texts: list[str], rounds: int) -> dict:
    """texts/s of each precision's encoder on ``texts``, in interleaved rounds in this one process."""
    from textpipe.text.sentence import SentenceEncoder, encode_ids

    encoders = {p: SentenceEncoder("minilm-l6", ROOT / "data", precision=p) for p in PRECISIONS}
    ids = encoders["float32"].token_ids(texts)
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    vectors = {}
    for _ in range(rounds):
        for precision, encoder in encoders.items():
            start = time.perf_counter()
            vectors[precision] = encode_ids(encoder.model, ids, encoder.batch_size)
            seconds[precision].append(time.perf_counter() - start)
    found = {}
    for precision, encoder in encoders.items():
        cosine = (vectors[precision] * vectors["float32"]).sum(1)
        found[precision] = {"texts_per_s_best": round(len(texts) / min(seconds[precision]), 1),
                            "texts_per_s_median": round(len(texts) / statistics.median(seconds[precision]), 1),
                            "cosine_to_float32_min": round(float(cosine.min()), 4), "cosine_to_float32_mean": round(float(cosine.mean()), 4),
                            "encoder_state_bytes": state_bytes(encoder.model)}
    return found


def state_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # int8 weights are packed, not parameters: their saved size counts them
    return buffer.tell()


def half_compute_speed(texts: list[str]) -> dict:
    """float16 weights *and* arithmetic (the whole model ``.half()``) against float32, on the same texts."""
    from textpipe.text.sentence import SentenceEncoder, encode_ids

    encoder = SentenceEncoder("minilm-l6", ROOT / "data")
    ids, half = encoder.token_ids(texts), copy.deepcopy(encoder.model).half()
    found = {}
    for name, model in (("float32", encoder.model), ("float16_arithmetic", half)):
        start = time.perf_counter()
        encode_ids(model, ids, encoder.batch_size)
        found[name] = round(len(texts) / (time.perf_counter() - start), 1)
    return {"texts": len(texts), "texts_per_s": found}


def encoder_arm(model: Path | None, rounds: int) -> dict:
    model, test = trained_with_encoder(model), SHARED / "mr" / "test.csv"
    with open(test, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    results = {"dataset": "mr", "model": str(model), "cpu": cpu_flags(), "threads": os.cpu_count(), "load_average_before": os.getloadavg(),
               "accuracy": encoder_accuracy(model, test)}
    results["encode_mr_test"] = {"texts": len(texts), "rounds": rounds, **encoding_speed(texts, rounds)}
    results["float16_arithmetic"] = half_compute_speed(texts[:128])
    results["load_average_after"] = os.getloadavg()
    return results


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    return ", ".join(sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_fp16", "avx512_bf16", "amx_bf16", "amx_int8", "f16c"))) or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", action="store_true", help="the sentence encoder's precisions on mr (bench/results/quantize_encoder.json)")
    parser.add_argument("--model", type=Path, help="with --encoder: a bundle of mr trained with configs/accurate.toml (else trained once)")
    parser.add_argument("--rounds", type=int, default=3, help="with --encoder: encoding rounds per precision")
    args = parser.parse_args()
    if args.encoder:
        results = encoder_arm(args.model, args.rounds)
        ENCODER_RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return
    results = {"config": {"cutoff": QuantizeConfig().cutoff, "bits": QuantizeConfig().bits}}
    for name, (train, test, dev) in splits().items():
        results[name] = measure(name, train, test, dev)
        print(name, results[name], file=sys.stderr)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
