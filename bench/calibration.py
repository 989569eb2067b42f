"""How far the shipped probabilities are from calibrated, and how far 15-bin ECE can tell on a test file this size.

    python bench/calibration.py                      # or: make bench-calibration (about 10 min)
    python bench/calibration.py --runs data/bench_calibration   # score runs already trained there

Trains textpipe's default (and, for comparison, the default without its refit) on the
default dataset and on each benchmark dataset (``$TEXTPIPE_DATASETS``), then on each test
file measures:

- ``ece``: the expected calibration error of the shipped probabilities (15 bins), as
  ``metrics.json`` gives it.
- ``floor``: the ECE a *perfectly* calibrated model with exactly these confidences would
  show on a test file this size. Each row is drawn correct with probability equal to its
  confidence, 2,000 times; the mean, the 10th and 90th percentiles, and how often it comes
  out at or under 0.02. An ECE inside that range is sampling noise, not miscalibration.
- ``best_temperature_ece``: the lowest ECE any one temperature reaches, chosen on the test
  file itself (not a usable design: the bound of every one-temperature design), and the
  temperature that the test file's own log loss would pick, beside the one fit on dev.
- ``designs`` (runs without the refit, whose model has not seen the dev rows): other
  calibrators fit on the held-out dev rows, scored on test: the shipped temperature, vector
  scaling (a scale and a bias per class) and isotonic regression of the top probability.

Writes ``bench/results/calibration.{json,md}``. Read only: nothing here chooses a default.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import datasets  # noqa: E402
from textpipe.core.calibration import brier_score, calibration_gap, expected_calibration_error, fit_temperature  # noqa: E402
from textpipe.estimator import TextClassifier  # noqa: E402
from textpipe.run.config import PipelineConfig  # noqa: E402
from textpipe.run.phases import train_files  # noqa: E402
from textpipe.text.dataset import is_held_out  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SYSTEMS = {"default": {}, "default, no refit": {"train": {"refit": False}}}
DRAWS = 2000
TARGET = 0.02  # issue 33's line


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_run(run: Path) -> tuple[TextClassifier, float]:
    """The bundle in ``run`` and the temperature its training fit on dev."""
    return TextClassifier.load(run), json.loads((run / "metrics.json").read_text())["calibration"].get("temperature", 1.0)


def shipped_probabilities(model: TextClassifier, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped (calibrated) probabilities of ``model`` on ``rows`` and the rows' gold indices."""
    labels = list(model.labels_)
    probs = torch.tensor(model.predict_proba([r["text"] for r in rows])).double()
    return probs, torch.tensor([labels.index(r["label"]) for r in rows])


def vector_scaling(dev_logits: torch.Tensor, dev_gold: torch.Tensor, temperature: float):
    """A scale and a bias per class, fit on dev by L-BFGS (a little pull of each scale toward 1/T)."""
    w = torch.full((dev_logits.shape[1],), 1 / temperature, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(dev_logits.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(dev_logits * w + b, dev_gold) + 1e-3 * ((w - 1 / temperature) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda logits: (logits * w + b).detach().softmax(1)


def isotonic_top(dev_probs: torch.Tensor, dev_gold: torch.Tensor):
    """Isotonic regression of "the top label is right" on the top probability; the other labels share the rest as before."""
    from sklearn.isotonic import IsotonicRegression

    confidence, top = dev_probs.max(1)
    floor = 1 / dev_probs.shape[1]
    fit = IsotonicRegression(y_min=floor, y_max=1, out_of_bounds="clip").fit(confidence.numpy(), (top == dev_gold).double().numpy())

    def apply(probs: torch.Tensor) -> torch.Tensor:
        confidence, top = probs.max(1)
        new = torch.tensor(fit.predict(confidence.numpy())).clamp(floor + 1e-6, 1 - 1e-9)
        out = probs * ((1 - new) / (1 - confidence).clamp_min(1e-12)).unsqueeze(1)
        out[torch.arange(len(out)), top] = new
        return out

    return apply


def designs(model: TextClassifier, temperature: float, train: Path, test_probs: torch.Tensor, test_gold: torch.Tensor) -> dict:
    """Each calibrator fit on the dev rows the run held out (every 10th by crc32, as training does), scored on test."""
    dev_probs, dev_gold = shipped_probabilities(model, [r for i, r in enumerate(read_rows(train)) if is_held_out(i, 10)])
    dev_logits, test_logits = (p.clamp_min(1e-300).log() * temperature for p in (dev_probs, test_probs))
    shipped = {"temperature (shipped)": test_probs,
               "vector scaling": vector_scaling(dev_logits, dev_gold, temperature)(test_logits),
               "isotonic, top probability": isotonic_top(dev_probs, dev_gold)(test_probs)}
    return {name: {"accuracy": round(float((p.argmax(1) == test_gold).double().mean()), 4), "ece": round(expected_calibration_error(p, test_gold), 4),
                   "brier": round(brier_score(p, test_gold), 4), "log_loss": round(float(torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), test_gold)), 4),
                   "floor_mean": round(float(perfectly_calibrated_ece(p.max(1).values, 500).mean()), 4)}
            for name, p in shipped.items()}


def perfectly_calibrated_ece(confidence: torch.Tensor, draws: int = DRAWS, seed: int = 0) -> np.ndarray:
    """ECEs of a model right with probability exactly ``confidence`` on each row, over ``draws`` test files."""
    generator = torch.Generator().manual_seed(seed)
    return np.array([calibration_gap(confidence, torch.bernoulli(confidence, generator=generator)) for _ in range(draws)])


def measure(probs: torch.Tensor, gold: torch.Tensor, dev_temperature: float) -> dict:
    confidence = probs.max(1).values
    floor = perfectly_calibrated_ece(confidence)
    logits = probs.clamp_min(1e-300).log() * dev_temperature  # the uncalibrated scores, up to a constant per row
    by_t = {round(float(t), 2): expected_calibration_error((logits / t).softmax(1), gold) for t in np.arange(0.3, 3.0, 0.01)}
    best_t = min(by_t, key=by_t.get)
    return {"rows": len(gold), "accuracy": round(float((probs.argmax(1) == gold).double().mean()), 4),
            "ece": round(expected_calibration_error(probs, gold), 4),
            "floor": {"mean": round(float(floor.mean()), 4), "p10": round(float(np.percentile(floor, 10)), 4),
                      "p90": round(float(np.percentile(floor, 90)), 4), "share_at_or_under_target": round(float((floor <= TARGET).mean()), 3)},
            "temperature_dev": dev_temperature, "temperature_test_log_loss": fit_temperature(logits, gold),
            "best_temperature_ece": {"temperature": best_t, "ece": round(by_t[best_t], 4)}}


def train(system: str, files: dict, out: Path) -> None:
    if not (out / "metrics.json").is_file():
        train_files(files["train"], files["test"], out, config=PipelineConfig.from_dict(SYSTEMS[system]), quiet=True, overwrite=True)


def markdown(results: dict) -> str:
    lines = [f"# Calibration on test (bench/calibration.py)\n\nMachine: {platform.machine()}, Python {platform.python_version()}. "
             f"`floor`: the 15-bin ECE of a perfectly calibrated model with the same confidences on a test file this size "
             f"({DRAWS} draws). `best T`: the lowest ECE of any one temperature, chosen on test (a bound, not a design).\n",
             "| dataset | system | rows | accuracy | ECE | floor mean (p10-p90) | P(floor <= 0.02) | T dev / T test-NLL | best T: ECE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, by_system in results["datasets"].items():
        for system, m in by_system.items():
            f, b = m["floor"], m["best_temperature_ece"]
            lines.append(f"| {name} | {system} | {m['rows']} | {m['accuracy']:.4f} | {m['ece']:.4f} | {f['mean']:.4f} ({f['p10']:.4f}-{f['p90']:.4f}) "
                         f"| {f['share_at_or_under_target']:.2f} | {m['temperature_dev']:g} / {m['temperature_test_log_loss']:g} | {b['temperature']:g}: {b['ece']:.4f} |")
    lines += ["", "Calibrators fit on the dev rows of the runs without the refit, scored on test (`floor`: of a perfectly calibrated model with "
              "the same confidences):", "", "| dataset | calibrator | accuracy | ECE | Brier | log loss | floor mean |", "|---|---|---|---|---|---|---|"]
    for name, by_system in results["datasets"].items():
        for design, m in by_system.get("default, no refit", {}).get("designs", {}).items():
            lines.append(f"| {name} | {design} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} | {m['log_loss']:.4f} | {m['floor_mean']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "data" / "bench_calibration", help="where the runs are trained (and reused)")
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS), choices=list(SYSTEMS))
    args = parser.parse_args()
    results = {"datasets": {}}
    for name, files in datasets().items():
        results["datasets"][name] = {}
        for system in args.systems:
            out = args.runs / f"{name}-{system.replace(', ', '-').replace(' ', '-')}"
            train(system, files, out)
            model, temperature = load_run(out)
            probs, gold = shipped_probabilities(model, read_rows(Path(files["test"])))
            results["datasets"][name][system] = measure(probs, gold, temperature)
            if SYSTEMS[system]:  # the run without the refit: its model has not seen the dev rows the designs are fit on
                results["datasets"][name][system]["designs"] = designs(model, temperature, Path(files["train"]), probs, gold)
            print(name, system, results["datasets"][name][system], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "calibration.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
