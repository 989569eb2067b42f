"""Multi-label accuracy benchmark: textpipe --multi-label vs scikit-learn one-vs-rest LR and fastText -loss ova.

    pip install -e .[bench] && python bench/accuracy_multilabel.py     # or: make bench-accuracy

On the dataset ``bench/multilabel_data.py`` builds (rebuilt first, seed 0: data/multilabel/), every
system sees the same rows: it trains on data/multilabel/train.csv and is scored once on test.csv.

- **TF-IDF 1-2 grams + OvR LR**: ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`` (as the
  single-label baseline of ``bench/accuracy.py``) and ``OneVsRestClassifier(LogisticRegression)``
  over ``MultiLabelBinarizer`` columns. C is chosen from C_GRID by dev micro F1, dev being every
  10th training row (textpipe holds out the same share); the chosen C is then refit on every
  training row. Two rows: threshold 0.5 on each label's probability, and per-label thresholds
  chosen on dev (each label's best dev F1 over THRESHOLDS, the model fit without dev) applied to
  the refit model.
- **fastText ova bigrams**: ``-loss ova -wordNgrams 2 -lr 0.5``, 5 and 25 epochs, one thread,
  predicting ``k=-1, threshold=0.5``. fastText skips a training line with no label, so a row with
  an empty label set gets the label ``__label__NONE_``, dropped from its predictions.
- **textpipe --multi-label**: ``python -m textpipe train --multi-label`` at its defaults, its scores
  read from metrics.json (``textpipe_metrics``). Until that flag exists the row says "not available".

Scores on test (sklearn.metrics on the binarized label sets): micro F1, macro F1 (over the labels
of train and test), subset accuracy (the exact label set) and Hamming loss. ``--systems`` runs
some of the systems and keeps the others' rows from the last results file. Writes
``bench/results/accuracy_multilabel.json`` and ``accuracy_multilabel.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import multilabel_data  # noqa: E402

RESULTS = ROOT / "bench" / "results"
METRICS = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
C_GRID = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)  # dev micro F1 still rose at 3e4 on this dataset
# Ties go to the threshold nearest 0.5: a label dev cannot tell about keeps the default.
THRESHOLDS = sorted((round(0.05 * i, 2) for i in range(1, 20)), key=lambda t: abs(t - 0.5))
NONE_LABEL = "NONE_"
FASTTEXT_TOKEN = re.compile(r"\w+|[^\w\s]")  # bench/accuracy.py's tokens for fastText
TFIDF = "TF-IDF 1-2 grams + OvR LR, threshold 0.5"
TFIDF_TUNED = "TF-IDF 1-2 grams + OvR LR, per-label thresholds (dev)"
FASTTEXT = "fastText -loss ova bigrams, lr 0.5, {epoch} epochs"
TEXTPIPE = "textpipe --multi-label (defaults)"
BASELINES = (TFIDF, TFIDF_TUNED, FASTTEXT.format(epoch=5), FASTTEXT.format(epoch=25))


def read_multilabel(path: Path, sep: str = multilabel_data.SEP) -> tuple[list[list[str]], list[str]]:
    """Label sets and texts of a ``label,text`` file whose label cell joins labels with ``sep``."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [[label for label in row["label"].split(sep) if label] for row in rows], [row["text"] for row in rows]


def scores(labels: list[str], gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """The four multi-label scores of ``predicted`` against ``gold``, over the label list ``labels``."""
    from sklearn.metrics import f1_score, hamming_loss
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer(classes=labels).fit([])
    y_true, y_pred = binarizer.transform(gold), binarizer.transform(predicted)
    subset = sum(set(g) == set(p) for g, p in zip(gold, predicted)) / len(gold)
    return {
        "micro_f1": round(float(f1_score(y_true, y_pred, average="micro", zero_division=0)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
        "subset_accuracy": round(subset, 4),
        "hamming_loss": round(float(hamming_loss(y_true, y_pred)), 4),
    }


def load(files: dict) -> dict:
    """Train and test label sets and texts, dev (every 10th training row) apart, and every label seen."""
    train_y, train_x = read_multilabel(files["train"])
    test_y, test_x = read_multilabel(files["test"])
    dev = set(range(9, len(train_x), 10))
    part = lambda seq, keep: [v for i, v in enumerate(seq) if (i in dev) == keep]  # noqa: E731
    return {
        "train": (train_y, train_x), "test": (test_y, test_x),
        "fit": (part(train_y, False), part(train_x, False)), "dev": (part(train_y, True), part(train_x, True)),
        "labels": sorted({label for labels in train_y + test_y for label in labels}),
    }


def fit_ovr(data: dict, part: str, c: float):
    """TF-IDF + one-vs-rest LR fitted on ``data[part]``; returns the pipeline and its binarizer."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer(classes=data["labels"]).fit([])
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear", max_iter=1000)))
    labels, texts = data[part]
    return model.fit(texts, binarizer.transform(labels)), binarizer


def decide(probabilities, labels: list[str], thresholds: list[float]) -> list[list[str]]:
    return [[label for label, p, t in zip(labels, row, thresholds) if p >= t] for row in probabilities]


def best_thresholds(probabilities, gold: list[list[str]], labels: list[str]) -> list[float]:
    """Per label, the threshold of THRESHOLDS with the best F1 on ``gold`` (nearest 0.5 on ties)."""
    from sklearn.metrics import f1_score

    chosen = []
    for j, label in enumerate(labels):
        truth = [label in g for g in gold]
        f1 = {t: f1_score(truth, probabilities[:, j] >= t, zero_division=0) for t in THRESHOLDS}
        chosen.append(max(THRESHOLDS, key=lambda t: f1[t]))  # max keeps the first of equals: the nearest 0.5
    return chosen


def run_tfidf_ovr(data: dict) -> dict:
    """The two TF-IDF + OvR LR rows: threshold 0.5, and per-label thresholds chosen on dev."""
    labels, half = data["labels"], [0.5] * len(data["labels"])
    dev_y, dev_x = data["dev"]
    by_c = {}
    for c in C_GRID:
        model, _ = fit_ovr(data, "fit", c)
        by_c[c] = (scores(labels, dev_y, decide(model.predict_proba(dev_x), labels, half))["micro_f1"], model)
    c = max(C_GRID, key=lambda c: by_c[c][0])
    thresholds = best_thresholds(by_c[c][1].predict_proba(dev_x), dev_y, labels)
    start = time.perf_counter()
    model, _ = fit_ovr(data, "train", c)
    seconds = round(time.perf_counter() - start, 1)
    test_y, test_x = data["test"]
    probabilities = model.predict_proba(test_x)
    common = {"train_seconds": seconds, "C": c, "dev_micro_f1_by_C": {str(k): v for k, (v, _) in by_c.items()}}
    return {
        TFIDF: {**scores(labels, test_y, decide(probabilities, labels, half)), **common},
        TFIDF_TUNED: {**scores(labels, test_y, decide(probabilities, labels, thresholds)), **common,
                      "thresholds": dict(zip(labels, thresholds))},
    }


def fasttext_lines(label_sets: list[list[str]], texts: list[str]) -> str:
    """fastText's training lines; an empty label set becomes NONE_ (fastText skips lines with no label)."""
    tokens = (" ".join(FASTTEXT_TOKEN.findall(text.lower())) for text in texts)
    return "".join(" ".join(f"__label__{label}" for label in (labels or [NONE_LABEL])) + f" {line}\n"
                   for labels, line in zip(label_sets, tokens))


def run_fasttext_ova(data: dict, epoch: int, tmp: Path) -> dict:
    import fasttext

    train_file = tmp / "fasttext_multilabel.txt"
    train_file.write_text(fasttext_lines(*data["train"]), encoding="utf-8")
    start = time.perf_counter()
    # One thread: fastText's multi-threaded SGD is not reproducible run to run.
    model = fasttext.train_supervised(str(train_file), loss="ova", wordNgrams=2, lr=0.5, epoch=epoch, verbose=0, thread=1)
    seconds = round(time.perf_counter() - start, 1)
    test_y, test_x = data["test"]
    found = model.predict([" ".join(FASTTEXT_TOKEN.findall(t.lower())) for t in test_x], k=-1, threshold=0.5)[0]
    predicted = [[p.removeprefix("__label__") for p in labels if p != f"__label__{NONE_LABEL}"] for labels in found]
    return {**scores(data["labels"], test_y, predicted), "train_seconds": seconds}


def textpipe_metrics(metrics: dict) -> dict | None:
    """The four scores from a textpipe metrics.json: at its top level, or under ``test``; None if absent.
    Adapt here if textpipe names or nests them otherwise."""
    for place in (metrics, metrics.get("test") or {}):
        if all(isinstance(place.get(key), (int, float)) for key in METRICS):
            return {key: round(float(place[key]), 4) for key in METRICS}
    return None


def textpipe_command(files: dict, out: Path) -> list[str]:
    return [sys.executable, "-m", "textpipe", "train", "--multi-label", "--train", str(files["train"]),
            "--test", str(files["test"]), "--out", str(out), "--quiet"]


def run_textpipe(command: list[str], out: Path, timeout: float = 3600) -> dict:
    """``command`` (a textpipe training into ``out``) and its scores, or why they are not available."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"available": False, "reason": f"no result within {timeout:.0f} s"}
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"available": False, "reason": f"textpipe train exited {done.returncode}: {last[:300]}"}
    path = out / "metrics.json"
    found = textpipe_metrics(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
    if found is None:
        return {"available": False, "reason": f"{path.name} has no {', '.join(METRICS)} (top level or under test)"}
    return {**found, "train_seconds": seconds}


SYSTEMS = {
    "tfidf": lambda data, files, tmp: run_tfidf_ovr(data),
    "fasttext": lambda data, files, tmp: {FASTTEXT.format(epoch=e): run_fasttext_ova(data, e, tmp) for e in (5, 25)},
    "textpipe": lambda data, files, tmp: {TEXTPIPE: run_textpipe(textpipe_command(files, tmp / "textpipe"), tmp / "textpipe")},
}


def dataset_summary(data: dict) -> dict:
    summary = {"labels": data["labels"]}
    for split in ("train", "test"):
        label_sets = data[split][0]
        sizes = [len(labels) for labels in label_sets]
        summary[split] = {"rows": len(sizes), **{f"rows_with_{n}_labels": sizes.count(n) for n in (0, 1, 2)},
                          "labels_per_row": round(sum(sizes) / len(sizes), 3)}
    return summary


def run_all(files: dict, systems: list[str]) -> dict:
    data = load(files)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in systems:
            print(f"== {name}", file=sys.stderr, flush=True)
            results.update(SYSTEMS[name](data, files, Path(tmp)))
    return {"dataset": dataset_summary(data), "results": results}


def acceptance(results: dict) -> dict:
    """The issue's line: textpipe's micro F1 at or above the better baseline's."""
    best = max((results[b]["micro_f1"] for b in BASELINES if b in results), default=None)
    row = results.get(TEXTPIPE, {})
    checks = {"best_baseline_micro_f1": best}
    if best is not None and "micro_f1" in row:
        checks["textpipe micro_f1 >= best baseline"] = row["micro_f1"] >= best
    return checks


def cell(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    return f"{row[key]:.1f}" if key == "train_seconds" else f"{row[key]:.4f}"


def markdown(payload: dict) -> str:
    results, dataset = payload["results"], payload["dataset"]
    train, test = dataset["train"], dataset["test"]
    lines = [
        "# Multi-label accuracy benchmark (test split; written by `make bench-accuracy`)",
        "",
        f"Dataset: `bench/multilabel_data.py` (seed 0): {train['rows']} train / {test['rows']} test rows, "
        f"{len(dataset['labels'])} labels; test rows with 0 / 1 / 2 labels: {test['rows_with_0_labels']} / "
        f"{test['rows_with_1_labels']} / {test['rows_with_2_labels']}. Python {platform.python_version()}.",
        "",
        "| system | micro F1 | macro F1 | subset accuracy | Hamming loss | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for system, row in results.items():
        if row.get("available") is False:
            lines.append(f"| {system} | not available: {row['reason'].replace('|', '/')} | | | | |")
            continue
        lines.append(f"| {system} | " + " | ".join(cell(row, k) for k in (*METRICS, "train_seconds")) + " |")
    tuned = results.get(TFIDF_TUNED, {})
    if "C" in tuned:
        lines += ["", f"LR's C chosen on dev: {tuned['C']:g}; per-label thresholds: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in tuned["thresholds"].items()) + "."]
    checks = payload["acceptance"]
    if "textpipe micro_f1 >= best baseline" in checks:
        lines += ["", f"textpipe's micro F1 at or above the better baseline's ({checks['best_baseline_micro_f1']:.4f}): "
                  + ("met" if checks["textpipe micro_f1 >= best baseline"] else "**not met**") + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="*", choices=list(SYSTEMS), help="only these (default: all); "
                        "the other systems' rows are kept from the last results file")
    parser.add_argument("--datasets", type=Path, default=multilabel_data.SHARED, help="the folder holding trec6/, mr/ and subj/")
    args = parser.parse_args()
    files = multilabel_data.build(args.datasets)
    payload = run_all(files, args.systems or list(SYSTEMS))
    previous = RESULTS / "accuracy_multilabel.json"
    if args.systems and previous.is_file():
        payload["results"] = {**json.loads(previous.read_text(encoding="utf-8"))["results"], **payload["results"]}
    payload["acceptance"] = acceptance(payload["results"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "accuracy_multilabel.md").write_text(markdown(payload), encoding="utf-8")
    print(markdown(payload))


if __name__ == "__main__":
    main()
