"""Looking at data before training on it: a labelled file's rows, labels and text lengths, and how
much of a file's text a vocabulary covers (``textpipe datasets stats``, ``textpipe vocab show``).

Example:
    >>> file_stats("train.csv")["labels"]
    {'fresh': 5187, 'rotten': 5187}
    >>> vocab_coverage(load_vocab("vocab.json").get_itos(), Tokenizer(), "test.csv", top=5)["oov_rate"]
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from .sources import DataError, SourceConfig, read_examples, read_texts


def file_stats(path: str | Path, source: SourceConfig | None = None) -> dict:
    """Row count, label counts (most common first) and words per text of a labelled file, in one streaming pass."""
    labels: Counter[str] = Counter()
    lengths: list[int] = []
    skipped: dict[str, int] = {}
    for example in read_examples(path, config=source, skipped=skipped):
        labels[example.label] += 1
        lengths.append(len(example.text.split()))
    if not lengths:
        raise DataError(path, None, "no rows")
    return {
        "rows": len(lengths),
        "labels": dict(labels.most_common()),
        "words_mean": round(statistics.fmean(lengths), 1),
        "words_median": statistics.median(lengths),
        "words_max": max(lengths),
    }


def vocab_coverage(tokens: list[str], tokenizer, data: str | Path, top: int, source: SourceConfig | None = None) -> dict:
    """How much of ``data``'s text a vocabulary (its tokens in id order) covers: by token occurrences and by distinct tokens."""
    known = set(tokens[2:])  # <pad> and <unk> never occur as real tokens
    counts: Counter[str] = Counter()
    for toks in tokenizer.pipe(read_texts(data, source)):
        counts.update(toks)
    total = sum(counts.values())
    oov = Counter({t: n for t, n in counts.items() if t not in known})
    oov_total = sum(oov.values())
    return {
        "tokens": total,
        "types": len(counts),
        "coverage": round(1 - oov_total / total, 6) if total else 0.0,
        "type_coverage": round(1 - len(oov) / len(counts), 6) if counts else 0.0,
        "oov_rate": round(oov_total / total, 6) if total else 0.0,
        "oov_tokens": oov_total,
        "top_oov": oov.most_common(top),
    }
