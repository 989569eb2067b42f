"""Issue 14's experiment: the bag alone mixed with a convex linear model, alpha chosen on textpipe's own held-out rows.

    OMP_NUM_THREADS=1 .venv/bin/python bench/nb_mix.py [--seeds 0 1]   # needs the bench extra (scikit-learn)

It ran at commit 7fb47be, before the NB linear path existed; "textpipe" here is the bag alone
(``nb_linear = false``). Results and probabilities go to runs/nb_mix/; the summary of the run
behind docs/benchmarks.md is bench/results/nb_mix_experiment.md.

Per dataset x size (full, first 2000 rows) x seed:
  phase 1: split the training part as textpipe does (row i held out iff crc32(i) % 10 == 0),
           textpipe default trained on the fit part, early stopping on held (--dev held, no refit);
           TF-IDF+LR and NB-LR (C chosen on held) trained on the fit part; alpha in {0,...,1}
           chosen on held (ties -> alpha nearest 1).
  phase 2: textpipe default with refit on the whole training part (holds out the same rows itself);
           linear models on the whole training part; everything scored on the dev part.
Results -> results.json (one entry per dataset/size/seed, saved as it goes), dev/held probabilities -> probs/.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textpipe.run.config import PipelineConfig  # noqa: E402
from textpipe.text.dataset import is_held_out  # noqa: E402
from textpipe.bundle.predict import Predictor  # noqa: E402
from textpipe.run.phases import train_files  # noqa: E402
from textpipe.text.sources import read_examples  # noqa: E402

HERE = ROOT / "runs" / "nb_mix"
DATA = ROOT / "data"
ALPHAS = [round(i / 10, 1) for i in range(11)]
NBLR_CS = [1.0, 3.0, 10.0]
HOLDOUT = 10


def datasets() -> dict[str, dict[str, Path]]:
    """name -> size -> training file; plus the dev file. Dev parts only; no test file is opened."""
    found = {}
    rt = DATA / "rotten_tomatoes"
    found["rotten_tomatoes"] = {"full": rt / "train.csv", "2000": DATA / "tune" / "rotten_tomatoes-2000" / "train.csv", "dev": rt / "dev.csv"}
    for name in ("mr", "subj", "trec6"):
        found[name] = {"full": DATA / "tune" / name / "train.csv", "2000": DATA / "tune" / f"{name}-2000" / "train.csv",
                       "dev": DATA / "tune" / name / "dev.csv"}
    return found


def read(path: Path) -> tuple[list[str], list[str]]:
    """labels, texts: read by textpipe's own reader, so row numbers are the ones it holds out by."""
    rows = list(read_examples(path))
    return [r.label for r in rows], [r.text for r in rows]


def write_csv(path: Path, labels: list[str], texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows(zip(labels, texts))


def split(train: Path, folder: Path) -> tuple[Path, Path]:
    """fit.csv (rows textpipe trains on) and held.csv (rows textpipe holds out: crc32 of the row number % 10 == 0)."""
    labels, texts = read(train)
    held = [is_held_out(i, HOLDOUT) for i in range(len(texts))]
    fit_p, held_p = folder / "fit.csv", folder / "held.csv"
    write_csv(fit_p, [l for l, h in zip(labels, held) if not h], [t for t, h in zip(texts, held) if not h])
    write_csv(held_p, [l for l, h in zip(labels, held) if h], [t for t, h in zip(texts, held) if h])
    return fit_p, held_p


# ---- linear members -------------------------------------------------------------------------------------


class TfidfLR:
    """The earlier baseline: TF-IDF (1-2 grams, sublinear tf, lower-cased) + LogisticRegression(C=10)."""

    def __init__(self, C: float = 10.0):
        self.C = C

    def fit(self, texts, labels):
        self.vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        self.lr = LogisticRegression(C=self.C, max_iter=1000).fit(self.vec.fit_transform(texts), labels)
        return self

    def proba(self, texts, label_order):
        p = self.lr.predict_proba(self.vec.transform(texts))
        cols = [list(self.lr.classes_).index(l) for l in label_order]
        return p[:, cols]


class NBLR:
    """NBSVM-style (Wang & Manning 2012) with LR: binarized 1-2 gram counts scaled by the log-count ratio r
    (smoothing 1); one-vs-rest with a per-class r for more than 2 classes, probabilities normalized to sum 1."""

    def __init__(self, C: float = 1.0):
        self.C = C

    @staticmethod
    def _ratio(X, positive):
        p = 1.0 + np.asarray(X[positive].sum(0)).ravel()
        q = 1.0 + np.asarray(X[~positive].sum(0)).ravel()
        return np.log((p / p.sum()) / (q / q.sum()))

    def fit(self, texts, labels):
        self.vec = CountVectorizer(ngram_range=(1, 2), binary=True, lowercase=True)
        X = self.vec.fit_transform(texts).astype(np.float64).tocsr()
        y = np.asarray(labels)
        self.classes = sorted(set(labels))
        targets = self.classes[1:] if len(self.classes) == 2 else self.classes
        self.members = []
        for c in targets:
            r = self._ratio(X, y == c)
            lr = LogisticRegression(C=self.C, max_iter=2000).fit(X.multiply(r).tocsr(), (y == c).astype(int))
            self.members.append((c, r, lr))
        return self

    def proba(self, texts, label_order):
        X = self.vec.transform(texts).astype(np.float64).tocsr()
        pos = {c: lr.predict_proba(X.multiply(r).tocsr())[:, 1] for c, r, lr in self.members}
        if len(self.classes) == 2:
            a, b = self.classes
            pos[a] = 1.0 - pos[b]
            p = np.stack([pos[l] for l in label_order], 1)
        else:
            p = np.stack([pos[l] for l in label_order], 1)
            p = p / p.sum(1, keepdims=True)
        return p


# ---- mixing ---------------------------------------------------------------------------------------------


def acc(p: np.ndarray, gold: np.ndarray) -> float:
    return float((p.argmax(1) == gold).mean())


def choose_alpha(p_tp, p_lin, gold) -> tuple[float, dict]:
    """alpha in ALPHAS maximizing held accuracy of alpha*p_tp + (1-alpha)*p_lin; ties -> the alpha nearest 1."""
    curve = {a: acc(a * p_tp + (1 - a) * p_lin, gold) for a in ALPHAS}
    best = max(curve.values())
    return max(a for a, v in curve.items() if v == best), curve


def textpipe_run(train: Path, test: Path | None, out: Path, seed: int, dev: Path | None = None) -> dict:
    config = PipelineConfig.from_dict({"model": {"nb_linear": False}})
    config = replace(config, train=replace(config.train, seed=seed))
    start = time.perf_counter()
    metrics = train_files(train, test, out, dev=dev, config=config, quiet=True, overwrite=True)
    metrics["_seconds"] = round(time.perf_counter() - start, 1)
    return metrics


def one(name: str, size: str, seed: int, files: dict, linear_cache: dict) -> dict:
    t0 = time.perf_counter()
    train, dev = files[size], files["dev"]
    tag = f"{name}-{size}"
    fit_p, held_p = split(train, HERE / "splits" / tag)
    fit_y, fit_x = read(fit_p)
    held_y, held_x = read(held_p)
    train_y, train_x = read(train)
    dev_y, dev_x = read(dev)
    rundir = HERE / "runs" / f"{tag}-s{seed}"

    # phase 1: on the fit part, scored on the held rows
    m1 = textpipe_run(fit_p, None, rundir / "phase1", seed, dev=held_p)
    pred1 = Predictor.load(rundir / "phase1")
    labels = pred1.labels
    gold_held = np.array([labels.index(l) for l in held_y])
    p_tp_held = pred1.probabilities(held_x).numpy().astype(np.float64)

    if tag not in linear_cache:  # the linear members do not depend on the seed
        lin = {}
        tf1 = TfidfLR().fit(fit_x, fit_y)
        lin["tfidf_held"] = tf1.proba(held_x, labels)
        nb_curve, nb_models = {}, {}
        for C in NBLR_CS:
            nb_models[C] = NBLR(C).fit(fit_x, fit_y)
            nb_curve[C] = acc(nb_models[C].proba(held_x, labels), gold_held)
        best = max(nb_curve.values())
        lin["nblr_C"] = min(C for C, v in nb_curve.items() if v == best)  # ties: the smaller C
        lin["nblr_C_curve"] = nb_curve
        lin["nblr_held"] = nb_models[lin["nblr_C"]].proba(held_x, labels)
        lin["tfidf_dev"] = TfidfLR().fit(train_x, train_y).proba(dev_x, labels)
        lin["nblr_dev"] = NBLR(lin["nblr_C"]).fit(train_x, train_y).proba(dev_x, labels)
        lin["labels"] = labels
        linear_cache[tag] = lin
    lin = linear_cache[tag]
    assert lin["labels"] == labels

    alpha_tf, curve_tf = choose_alpha(p_tp_held, lin["tfidf_held"], gold_held)
    alpha_nb, curve_nb = choose_alpha(p_tp_held, lin["nblr_held"], gold_held)

    # phase 2: what ships, refit on the whole training part, scored on the dev part
    m2 = textpipe_run(train, dev, rundir / "phase2", seed)
    pred2 = Predictor.load(rundir / "phase2")
    assert pred2.labels == labels
    gold_dev = np.array([labels.index(l) for l in dev_y])
    p_tp_dev = pred2.probabilities(dev_x).numpy().astype(np.float64)

    def mix(a, p_lin):
        return acc(a * p_tp_dev + (1 - a) * p_lin, gold_dev)

    dev_acc = {
        "textpipe": acc(p_tp_dev, gold_dev),
        "tfidf_lr": acc(lin["tfidf_dev"], gold_dev),
        "nblr": acc(lin["nblr_dev"], gold_dev),
        "mix50_tfidf": mix(0.5, lin["tfidf_dev"]),
        "mixalpha_tfidf": mix(alpha_tf, lin["tfidf_dev"]),
        "mix50_nblr": mix(0.5, lin["nblr_dev"]),
        "mixalpha_nblr": mix(alpha_nb, lin["nblr_dev"]),
    }
    # what every alpha would have given on dev (for the record, never used to choose)
    dev_curve = {"tfidf": {a: mix(a, lin["tfidf_dev"]) for a in ALPHAS}, "nblr": {a: mix(a, lin["nblr_dev"]) for a in ALPHAS}}

    probs = HERE / "probs"
    probs.mkdir(exist_ok=True)
    np.savez_compressed(probs / f"{tag}-s{seed}.npz", labels=np.array(labels), gold_held=gold_held, gold_dev=gold_dev,
                        tp_held=p_tp_held, tfidf_held=lin["tfidf_held"], nblr_held=lin["nblr_held"],
                        tp_dev=p_tp_dev, tfidf_dev=lin["tfidf_dev"], nblr_dev=lin["nblr_dev"])
    return {
        "dataset": name, "size": size, "seed": seed, "labels": labels,
        "rows": {"train": len(train_y), "fit": len(fit_y), "held": len(held_y), "dev": len(dev_y)},
        "dev_accuracy": dev_acc,
        "alpha": {"tfidf": alpha_tf, "nblr": alpha_nb},
        "nblr_C": lin["nblr_C"], "nblr_C_held_curve": {str(k): v for k, v in lin["nblr_C_curve"].items()},
        "held_accuracy": {"textpipe": acc(p_tp_held, gold_held), "tfidf_lr": acc(lin["tfidf_held"], gold_held),
                          "nblr": acc(lin["nblr_held"], gold_held)},
        "held_alpha_curve": {"tfidf": {str(k): v for k, v in curve_tf.items()}, "nblr": {str(k): v for k, v in curve_nb.items()}},
        "dev_alpha_curve_not_used": {k: {str(a): v for a, v in c.items()} for k, c in dev_curve.items()},
        "textpipe_phase1": {"best_epoch": m1["best_epoch"], "held_acc_reported": m1["dev"]["accuracy"], "seconds": m1["_seconds"]},
        "textpipe_phase2": {"best_epoch": m2["best_epoch"], "test_acc_reported": m2["test"]["accuracy"], "internal_held_acc": m2["dev"]["accuracy"],
                            "seconds": m2["_seconds"]},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="*", default=None, help="dataset names")
    ap.add_argument("--sizes", nargs="+", default=["full", "2000"])
    args = ap.parse_args()
    out = HERE / "results.json"
    results = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    done = {(r["dataset"], r["size"], r["seed"]) for r in results["runs"]}
    linear_cache: dict = {}
    for seed in args.seeds:
        for size in args.sizes:
            for name, files in datasets().items():
                if args.only and name not in args.only or (name, size, seed) in done:
                    continue
                r = one(name, size, seed, files, linear_cache)
                results["runs"].append(r)
                out.write_text(json.dumps(results, indent=1))
                d = r["dev_accuracy"]
                print(f"{name:16s} {size:5s} s{seed} tp={d['textpipe']:.4f} tf={d['tfidf_lr']:.4f} nb={d['nblr']:.4f} "
                      f"m50tf={d['mix50_tfidf']:.4f} mAtf={d['mixalpha_tfidf']:.4f}(a={r['alpha']['tfidf']}) "
                      f"m50nb={d['mix50_nblr']:.4f} mAnb={d['mixalpha_nblr']:.4f}(a={r['alpha']['nblr']}) C={r['nblr_C']} "
                      f"check={r['textpipe_phase2']['test_acc_reported']:.4f} {r['seconds']}s", flush=True)


if __name__ == "__main__":
    main()
