"""How small ``textpipe quantize`` makes the default model, and what it costs in test accuracy.

    make bench-quantize                # or: .venv/bin/python bench/quantize.py  (about 2 minutes on 2 cores)

For rotten_tomatoes (the default dataset), mr and trec6 (``$TEXTPIPE_DATASETS``):
train the default model, quantize it with the default settings, and score both on
the test split. Writes ``bench/results/quantize.json``: bundle bytes (weights.safetensors +
vocab.json + bundle.json) before and after, their ratio, the rows kept, and test
accuracy before and after. Models are kept under ``data/bench/quantize/`` and
reused by the next run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textpipe.catalogue import rotten_tomatoes  # noqa: E402
from textpipe.pipeline import report_file  # noqa: E402
from textpipe.run import train_files  # noqa: E402
from textpipe.quantize import QuantizeConfig, quantize_bundle  # noqa: E402

# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
WORK = ROOT / "data" / "bench" / "quantize"
RESULTS = ROOT / "bench" / "results" / "quantize.json"


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


def main() -> None:
    results = {"config": {"cutoff": QuantizeConfig().cutoff, "bits": QuantizeConfig().bits}}
    for name, (train, test, dev) in splits().items():
        results[name] = measure(name, train, test, dev)
        print(name, results[name], file=sys.stderr)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
