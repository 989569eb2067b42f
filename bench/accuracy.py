"""Accuracy benchmark: textpipe (default and best configs) vs fastText and TF-IDF + LR.

    pip install -e .[bench] && python bench/accuracy.py      # or: make bench-accuracy

``--autotune 120`` searches on the held-out rows of the train file only.
Every system sees the same rows: the train and test files of
the benchmark datasets (``$TEXTPIPE_DATASETS/{mr,subj,trec6}``) and of the default dataset, Rotten Tomatoes
(``textpipe.text.catalogue.rotten_tomatoes()``; its dev file is left to ``bench/tune.py``).
The baselines train on the whole train file; textpipe holds out every 10th
training row to pick the epoch count, then refits on the whole train file (its
default, ``TrainConfig.refit``). Test files are read only to score the finished
models. Writes ``bench/results/accuracy.json`` and ``bench/results/accuracy.md``.

``--dev`` runs the same systems on the dev splits instead (``bench/tune.py``'s:
each dataset's training part, scored on its dev part; no test file is opened) and
writes ``accuracy_dev.json`` and ``accuracy_dev.md``: a second sample of the same
comparison, on rows the test split's luck does not touch.

The textpipe configurations were chosen on dev splits only (see README.md, "Accuracy").
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textpipe.text.catalogue import rotten_tomatoes  # noqa: E402
from textpipe.run.autotune import autotune_files  # noqa: E402
from textpipe.run.config import PipelineConfig  # noqa: E402
from textpipe.run.phases import train_files  # noqa: E402

# The benchmark datasets (mr, subj, trec6): TEXTPIPE_DATASETS, or the project CI's folder beside the clone.
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
RESULTS = ROOT / "bench" / "results"

# textpipe's defaults, the default with pretrained vectors, and the default searched by
# --autotune for 120 s; PipelineConfig dicts and an autotune budget (None: plain train).
# Defaults chosen on dev splits carved from train, never on test (bench/tune.py; README).
TEXTPIPE_SYSTEMS = {
    "textpipe default": ({}, None),
    "textpipe default + glove-6b-50d": (tomllib.loads((ROOT / "configs" / "glove.toml").read_text(encoding="utf-8")), None),
    "textpipe --autotune 120": ({}, 120.0),
    "textpipe --encoder minilm-l6": (tomllib.loads((ROOT / "configs" / "accurate.toml").read_text(encoding="utf-8")), None),
}
AUTOTUNE = "textpipe --autotune 120"
ENCODER = "textpipe --encoder minilm-l6"

# Published random-init CNN (Kim 2014), test accuracy.
KIM_CNN_RAND = {"mr": 0.761, "subj": 0.896, "trec6": 0.912}
FASTTEXT_TOKEN = re.compile(r"\w+|[^\w\s]")


def datasets(dev: bool = False) -> dict[str, dict]:
    """name -> {"train", "test"}; the default dataset first. With ``dev``, tune.py's
    training and dev parts stand in for the train and test files."""
    if dev:
        from bench.tune import dev_splits

        return {name: {"train": train, "test": dev_part} for name, (train, dev_part) in dev_splits().items()}
    rt = rotten_tomatoes(ROOT / "data")
    found = {"rotten_tomatoes": {"train": rt.train, "test": rt.test}}
    for folder in sorted(SHARED.iterdir()) if SHARED.is_dir() else []:
        if (folder / "train.csv").is_file() and (folder / "test.csv").is_file():
            found[folder.name] = {"train": folder / "train.csv", "test": folder / "test.csv"}
    return found


def read_rows(path: Path) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["label"] for r in rows], [r["text"] for r in rows]


def scores(gold: list[str], predicted: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(accuracy_score(gold, predicted), 4), "macro_f1": round(f1_score(gold, predicted, average="macro"), 4)}


def run_textpipe(config: dict, budget: float | None, files: dict, out: Path) -> dict:
    cfg = PipelineConfig.from_dict(json.loads(json.dumps(config)))
    start = time.perf_counter()
    if budget is None:
        metrics = train_files(files["train"], files["test"], out, config=cfg, quiet=True, overwrite=True)
    else:
        metrics = autotune_files(files["train"], files["test"], out, config=cfg, budget=budget, quiet=True, overwrite=True)
    seconds = time.perf_counter() - start  # includes vocab building and scoring the test file
    test = metrics["test"]
    result = {
        "accuracy": round(test["accuracy"], 4), "macro_f1": round(test["macro_f1"], 4), "train_seconds": round(seconds, 1),
        "dev_accuracy": metrics["dev"]["accuracy"], "best_epoch": metrics["best_epoch"],
    }
    if budget is not None:
        result["autotune_chosen"] = metrics["autotune"]["chosen"]
        result["autotune_trials"] = len(metrics["autotune"]["trials"])
    return result


def fasttext_lines(labels: list[str], texts: list[str]) -> str:
    return "".join(f"__label__{label} {' '.join(FASTTEXT_TOKEN.findall(text.lower()))}\n" for label, text in zip(labels, texts))


def run_fasttext(params: dict, files: dict, tmp: Path) -> dict:
    import fasttext

    train_labels, train_texts = read_rows(files["train"])
    test_labels, test_texts = read_rows(files["test"])
    train_file = tmp / "fasttext_train.txt"
    train_file.write_text(fasttext_lines(train_labels, train_texts), encoding="utf-8")
    start = time.perf_counter()
    # One thread: fastText's multi-threaded SGD is not reproducible run to run.
    model = fasttext.train_supervised(str(train_file), verbose=0, thread=1, **params)
    seconds = time.perf_counter() - start
    tokens = [" ".join(FASTTEXT_TOKEN.findall(text.lower())) for text in test_texts]
    predicted = [labels[0].removeprefix("__label__") for labels in model.predict(tokens)[0]]
    return {**scores(test_labels, predicted), "train_seconds": round(seconds, 1)}


def run_tfidf_lr(files: dict) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train_labels, train_texts = read_rows(files["train"])
    test_labels, test_texts = read_rows(files["test"])
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=1000))
    start = time.perf_counter()
    model.fit(train_texts, train_labels)
    seconds = time.perf_counter() - start
    return {**scores(test_labels, list(model.predict(test_texts))), "train_seconds": round(seconds, 1)}


BASELINES = ("fastText defaults", "fastText bigrams (epoch=25 lr=0.5 wordNgrams=2)", "TF-IDF 1-2 grams + LR(C=10)")


def run_all(names: list[str] | None, dev: bool = False, systems: list[str] | None = None) -> dict:
    torch.set_num_threads(1)  # the sentence encoder sets its own threads (every core) while it encodes
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, files in datasets(dev).items():
            if names and name not in names:
                continue
            print(f"== {name}", file=sys.stderr, flush=True)
            row = {
                BASELINES[0]: run_fasttext({}, files, tmp),
                BASELINES[1]: run_fasttext({"epoch": 25, "lr": 0.5, "wordNgrams": 2}, files, tmp),
                BASELINES[2]: run_tfidf_lr(files),
            }
            for system, (config, budget) in TEXTPIPE_SYSTEMS.items():
                if systems and system not in systems:
                    continue
                row[system] = run_textpipe(config, budget, files, tmp / name / system.replace(" ", "_").replace("/", "_"))
            for system, r in row.items():
                print(f"  {system:50s} acc {r['accuracy']:.4f} f1 {r['macro_f1']:.4f} {r['train_seconds']:7.1f}s", file=sys.stderr, flush=True)
            results[name] = row
    return results


def acceptance(results: dict) -> dict:
    """The issues' lines: per dataset, the default >= the best baseline and the encoder >= the best
    baseline; on average over the datasets, --autotune 120 >= the best baseline + 1 point and the
    encoder >= the best baseline + 2 points."""
    checks = {}
    best = lambda row: max(row[b]["accuracy"] for b in BASELINES)  # noqa: E731
    for name, row in results.items():
        checks[name] = {"best_baseline": best(row)}
        for system, label in (("textpipe default", "default"), (ENCODER, "encoder")):
            if system in row:
                checks[name][f"{label} >= best baseline"] = row[system]["accuracy"] >= best(row)
    if results:
        mean = lambda f: sum(map(f, results.values())) / len(results)  # noqa: E731
        checks["mean"] = {"best_baseline": round(mean(best), 4)}
        for system, label, margin in ((AUTOTUNE, "autotune", 0.01), (ENCODER, "encoder", 0.02)):
            if all(system in row for row in results.values()):
                value = mean(lambda row: row[system]["accuracy"])
                checks["mean"][label] = round(value, 4)
                checks["mean"][f"{label} >= best baseline + {margin}"] = value >= mean(best) + margin - 1e-9
    return checks


def merged(results: dict, previous: Path) -> dict:
    """``results`` over the rows of an earlier run's file: a run of some systems keeps the others' figures."""
    if not previous.is_file():
        return results
    old = json.loads(previous.read_text(encoding="utf-8")).get("results", {})
    for name, row in results.items():
        old[name] = {**old.get(name, {}), **row}
    return old


def markdown(results: dict, checks: dict, dev: bool = False) -> str:
    names = list(results)
    systems = list(dict.fromkeys(system for row in results.values() for system in row))
    kim = {} if dev else KIM_CNN_RAND  # published on the test splits, not comparable on dev
    split = "dev splits: each dataset's training part, scored on its dev part (`bench/accuracy.py --dev`)" if dev else "test split; written by `make bench-accuracy`"
    lines = [
        f"# Accuracy benchmark ({split})",
        "",
        "Accuracy / macro-F1 / train seconds (textpipe's seconds include building the vocabulary and scoring test). "
        f"{torch.get_num_threads()} torch thread, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "| system | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for system in systems:
        cells = [f"{results[n][system]['accuracy']:.4f} / {results[n][system]['macro_f1']:.4f} / {results[n][system]['train_seconds']:.1f}s"
                 if system in results[n] else "-" for n in names]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    if kim:
        lines.append("| Kim 2014 CNN-rand (published) | " + " | ".join(f"{kim[n]:.3f}" if n in kim else "-" for n in names) + " |")
    lines += ["", "## Acceptance", "", "| dataset | best baseline | default - best | --autotune 120 - best | --encoder minilm-l6 - best |",
              "| --- | --- | --- | --- | --- |"]
    gap = lambda n, system: f"{100 * (results[n][system]['accuracy'] - checks[n]['best_baseline']):+.2f} pt" if system in results[n] else "-"  # noqa: E731
    for n in names:
        lines.append(f"| {n} | {checks[n]['best_baseline']:.4f} | {gap(n, 'textpipe default')} | {gap(n, AUTOTUNE)} | {gap(n, ENCODER)} |")
    m = checks["mean"]
    yes = {True: "met", False: "**not met**"}
    for label, margin in (("autotune", 0.01), ("encoder", 0.02)):
        if label in m:
            lines += ["", f"Mean over the datasets: best baseline {m['best_baseline']:.4f}, {label} {m[label]:.4f} "
                      f"({100 * (m[label] - m['best_baseline']):+.2f} pt; at least +{100 * margin:.0f} pt: {yes[m[f'{label} >= best baseline + {margin}']]})."]
    if all(AUTOTUNE in results[n] for n in names):
        lines += ["", "What --autotune 120 chose (changes to the default; trials tried):", ""]
        lines += [f"- {n}: `{json.dumps(results[n][AUTOTUNE].get('autotune_chosen'))}` ({results[n][AUTOTUNE].get('autotune_trials')} trials)" for n in names]
    lines += ["", "textpipe configurations:", ""]
    lines += [f"- {system}: `{json.dumps(config)}`" + (f", autotune {budget:.0f} s" if budget else "") for system, (config, budget) in TEXTPIPE_SYSTEMS.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", help="only these (default: all)")
    parser.add_argument("--dev", action="store_true", help="compare on the dev splits of bench/tune.py; no test file is opened")
    parser.add_argument("--systems", nargs="*", choices=list(TEXTPIPE_SYSTEMS), help="only these textpipe systems (the baselines always run); "
                        "the other systems' figures are kept from the last results file")
    args = parser.parse_args()
    name = "accuracy_dev" if args.dev else "accuracy"
    results = run_all(args.datasets, args.dev, args.systems)
    if args.systems or args.datasets:
        results = merged(results, RESULTS / f"{name}.json")
    checks = acceptance(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"results": results, "acceptance": checks, "systems": TEXTPIPE_SYSTEMS, "kim_2014_cnn_rand": KIM_CNN_RAND}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (RESULTS / f"{name}.md").write_text(markdown(results, checks, args.dev), encoding="utf-8")
    print(markdown(results, checks, args.dev))


if __name__ == "__main__":
    main()
