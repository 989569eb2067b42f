"""How should minilm-l6's sentence vector join a linear classifier? Measured on dev splits only.

    python bench/encoder_designs.py mr trec6          # writes bench/results/encoder_designs.json

Each dataset's training part and dev part are ``bench/tune.py``'s (every 10th row
of ``$TEXTPIPE_DATASETS/*/train.csv``; the default dataset's own dev file); no test
file is opened. Sentence vectors come through the sentence cache (encoded once).
Every design is a logistic regression whose C is chosen on every 5th row of the
training part (fit on the other four fifths), refit on the whole training part with
that C, then scored once on the dev part:

- ``tfidf``: TF-IDF of 1-2-grams (the baseline the issue names);
- ``sentence``: the 384-d sentence vector alone;
- ``tfidf+w*sentence``: both, the vector scaled by ``w`` (its weight against the sparse part);
- ``nb+w*sentence``: NBSVM-style features (binary 1-2-grams scaled by the NB log-count
  ratio, as textpipe's NB path) with the scaled vector;
- ``default (mixed) + beta*LR(...)``: textpipe's default model (bag and NB path, trained
  with its own held-out rows, then refit) mixed with a logistic regression's
  probabilities, ``(1 - beta) * p_default + beta * p_lr``; ``beta`` chosen on one half
  of the dev part and scored on the other, both ways (no dev row scores the beta it chose).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tune import dev_splits  # noqa: E402
from textpipe.core.files import cache_home  # noqa: E402
from textpipe.text.sentence import SentenceEncoder  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WEIGHTS = (1.0, 2.0)
C_GRID = (1.0, 3.0, 10.0)


def read(path: Path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def fit_score(train_x, train_y, dev_x, dev_y) -> tuple[float, float]:
    """Dev accuracy of the logistic regression whose C won on every 5th training row; and that C."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(train_y)
    inner = np.arange(len(y)) % 5 == 4
    scores = {c: LogisticRegression(C=c, max_iter=1000).fit(train_x[~inner], y[~inner]).score(train_x[inner], y[inner]) for c in C_GRID}
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    model = LogisticRegression(C=best, max_iter=1000).fit(train_x, y)
    return float(model.score(dev_x, dev_y)), best, (list(model.classes_), model.predict_proba(dev_x))


def nb_features(train_texts, train_y, dev_texts):
    """Binary 1-2-gram presence scaled by the NB log-count ratio (one vs rest for many classes: the mean |r|)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(ngram_range=(1, 2), binary=True)
    xt, xd = vec.fit_transform(train_texts), vec.transform(dev_texts)
    y = np.asarray(train_y)
    ratios = []
    for label in np.unique(y):
        p = np.asarray(xt[y == label].sum(0)).ravel() + 1.0
        q = np.asarray(xt[y != label].sum(0)).ravel() + 1.0
        ratios.append(np.log((p / p.sum()) / (q / q.sum())))
    r = np.abs(np.stack(ratios)).mean(0) if len(ratios) > 2 else np.abs(ratios[0])
    return xt.multiply(r).tocsr(), xd.multiply(r).tocsr()


def designs(name: str, train: Path, dev: Path, encoder: SentenceEncoder, only: tuple[str, ...] = ()) -> list[dict]:
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    (tt, ty), (dt, dy) = read(train), read(dev)
    st = encoder.encode_cached(tt, cache_home()).numpy()
    sd = encoder.encode_cached(dt, cache_home()).numpy()
    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    ft, fd = tfidf.fit_transform(tt), tfidf.transform(dt)
    nt, nd = nb_features(tt, ty, dt)
    runs = {"tfidf": (ft, fd), "sentence": (st, sd)}
    for w in WEIGHTS:
        runs[f"tfidf+{w}*sentence"] = (hstack([ft, csr_matrix(w * st)]).tocsr(), hstack([fd, csr_matrix(w * sd)]).tocsr())
    runs["nb"] = (nt, nd)
    runs["nb+1.0*sentence"] = (hstack([nt, csr_matrix(st)]).tocsr(), hstack([nd, csr_matrix(sd)]).tocsr())
    out = []
    probabilities = {}
    for design, (x_train, x_dev) in runs.items():
        if only and design not in only:
            continue
        start = time.perf_counter()
        accuracy, c, probabilities[design] = fit_score(x_train, ty, x_dev, dy)
        out.append({"dataset": name, "design": design, "dev_accuracy": round(accuracy, 4), "C": c, "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(out[-1]), flush=True)
    return out + default_mixes(name, train, dev, dt, dy, {k: probabilities[k] for k in ("sentence", "tfidf+1.0*sentence")})


def default_mixes(name: str, train: Path, dev: Path, dev_texts: list[str], dev_y: list[str], members: dict) -> list[dict]:
    """textpipe's default alone on dev, and mixed with each member's probabilities (beta cross-fitted on dev halves)."""
    import tempfile

    import torch

    from textpipe.run.config import PipelineConfig
    from textpipe.bundle.predict import Predictor
    from textpipe.run.phases import train_files

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_files(train, dev, tmp, dev=None, config=PipelineConfig.from_dict({"train": {"keep_checkpoints": 0}}), quiet=True)
        predictor = Predictor.load(tmp)
        labels, p_default = predictor.labels, predictor.probabilities(dev_texts).numpy()
        seconds = time.perf_counter() - start
    truth = np.array([labels.index(y) for y in dev_y])
    out = [{"dataset": name, "design": "textpipe default", "dev_accuracy": round(float((p_default.argmax(1) == truth).mean()), 4), "seconds": round(seconds, 1)}]
    print(json.dumps(out[-1]), flush=True)
    halves = np.arange(len(truth)) % 2 == 0
    for member, (classes, p) in members.items():
        p = p[:, [classes.index(label) for label in labels]]  # the LR's columns in the bundle's label order
        correct, chosen = np.zeros(len(truth), bool), []
        for pick in (halves, ~halves):
            accuracy = lambda b, rows: (((1 - b) * p_default[rows] + b * p[rows]).argmax(1) == truth[rows]).mean()  # noqa: E731
            beta = max((b / 10 for b in range(11)), key=lambda b: (accuracy(b, pick), -abs(b - 0.5)))
            score = ~pick
            correct[score] = ((1 - beta) * p_default[score] + beta * p[score]).argmax(1) == truth[score]
            chosen.append(beta)
        out.append({"dataset": name, "design": f"default + beta*LR({member})", "dev_accuracy": round(float(correct.mean()), 4), "beta": chosen})
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=["trec6", "mr", "subj", "rotten_tomatoes"])
    parser.add_argument("--only", nargs="*", default=["sentence", "tfidf+1.0*sentence", *(f"tfidf+{w}*sentence" for w in WEIGHTS), "tfidf", "nb", "nb+1.0*sentence"],
                        help="the logistic-regression designs to run (the mixes need sentence and tfidf+1.0*sentence)")
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_designs.json")
    args = parser.parse_args()
    encoder, splits = SentenceEncoder("minilm-l6", ROOT / "data"), dev_splits()
    rows = [row for name in args.datasets for row in designs(name, *splits[name], encoder, tuple(args.only))]
    previous = json.loads(args.out.read_text()) if args.out.is_file() else []
    kept = [r for r in previous if r["dataset"] not in args.datasets]
    args.out.write_text(json.dumps(kept + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
