"""Builds the multi-label benchmark dataset from the visible ones: data/multilabel/{train,test}.csv.

    python bench/multilabel_data.py            # seed 0; bench/accuracy_multilabel.py calls it too

Two facets, each from one source dataset under ``$TEXTPIPE_DATASETS`` (mr, subj, trec6):

- the **question type** of a trec6 question, labelled ``q:ABBR`` ... ``q:NUM`` (6 labels);
- the **sentiment** of an mr review sentence, labelled ``m:positive`` or ``m:negative`` (2 labels).

Each row is one of (the shares, before rounding):

- 0.5: a question and a review sentence, concatenated in random order, with both labels;
- 0.2: a question alone (its one label);
- 0.2: a review sentence alone (its one label);
- 0.1: an *objective* subj sentence (a line of a plot summary) alone, with an EMPTY label set:
  neither a question nor an opinion, so none of the labels.

Why not subj's labels for the second facet and mr for the empty set: 3,403 of subj's 4,522
subjective training sentences are mr sentences word for word (both come from Rotten Tomatoes
snippets), so "an mr sentence has no label" and "a subjective sentence is labelled subjective"
would contradict each other on the same texts (a TF-IDF + LR model tells them apart below chance).
subj's objective sentences share no text with mr, and subj's accuracy (0.92-0.94) says they are
easy to tell from review snippets: the empty set is learnable.

Train rows come from the train files only, test rows from the test files only; every source row is
used at most once per split. trec6 runs out first: the split has ``len(trec6) / 0.7`` rows (about
7,800 train, 710 test). The label cell joins the labels with ``|`` (``q:DESC|m:positive``), empty
for the empty set. Deterministic for a seed (a ``random.Random`` per split; default seed 0).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TEXTPIPE_DATASETS", ROOT.parent / "shared" / "datasets"))
OUT = ROOT / "data" / "multilabel"
SEP = "|"
# Share of each kind of row; a question is in "both" and "question" rows, so trec6 bounds the size.
SHARES = {"both": 0.5, "question": 0.2, "sentence": 0.2, "none": 0.1}


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(label, text) rows of a ``label,text`` CSV file."""
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["label"], row["text"].strip()) for row in csv.DictReader(f)]


def kinds_for(questions: int) -> list[str]:
    """The kinds of rows a split gets, in SHARES' proportions, using each of ``questions`` once."""
    total = round(questions / (SHARES["both"] + SHARES["question"]))
    both = round(total * SHARES["both"])
    counts = {"both": both, "question": questions - both, "sentence": round(total * SHARES["sentence"])}
    counts["none"] = total - sum(counts.values())
    return [kind for kind, n in counts.items() for _ in range(n)]


def build_split(questions: list[tuple[str, str]], sentences: list[tuple[str, str]], plain: list[tuple[str, str]],
                rng: random.Random) -> list[tuple[list[str], str]]:
    """(labels, text) rows of one split: trec6 ``questions``, mr ``sentences`` and label-less ``plain`` sentences."""
    kinds = kinds_for(len(questions))
    rng.shuffle(kinds)
    pools = {name: rng.sample(rows, len(rows)) for name, rows in (("q", questions), ("m", sentences), ("none", plain))}
    needed = {"m": sum(k in ("both", "sentence") for k in kinds), "none": kinds.count("none")}
    for name, n in needed.items():
        if n > len(pools[name]):
            raise ValueError(f"{n} {name} rows needed, {len(pools[name])} available")
    rows = []
    for kind in kinds:
        if kind == "none":
            rows.append(([], pools["none"].pop()[1]))
            continue
        parts = [("q", pools["q"].pop())] if kind in ("both", "question") else []
        parts += [("m", pools["m"].pop())] if kind in ("both", "sentence") else []
        rng.shuffle(parts)  # the question first or the sentence first, at random
        rows.append(([f"{prefix}:{label}" for prefix, (label, _) in parts], " ".join(text for _, (_, text) in parts)))
    return rows


def write_split(rows: list[tuple[list[str], str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows([SEP.join(sorted(labels)), text] for labels, text in rows)


def build(datasets: Path = SHARED, out: Path = OUT, seed: int = 0) -> dict[str, Path]:
    """Writes ``out/train.csv`` and ``out/test.csv`` from ``datasets/{trec6,mr,subj}``; returns the paths.

    >>> build(Path("/work/shared/datasets"), Path("data/multilabel"))["train"]  # doctest: +SKIP
    """
    paths = {}
    for index, split in enumerate(("train", "test")):
        questions = read_rows(datasets / "trec6" / f"{split}.csv")
        sentences = read_rows(datasets / "mr" / f"{split}.csv")
        plain = [("", text) for label, text in read_rows(datasets / "subj" / f"{split}.csv") if label == "objective"]
        rows = build_split(questions, sentences, plain, random.Random(seed * 2 + index))
        paths[split] = out / f"{split}.csv"
        write_split(rows, paths[split])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=SHARED, help="the folder holding trec6/, mr/ and subj/ (default: $TEXTPIPE_DATASETS)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, path in build(args.datasets, args.out, args.seed).items():
        print(f"{split}: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
