"""One pass over the training file: its labels, the token counts of both phases' vocabularies, the n-gram table's size.

:func:`count_training_file` reads the training file once (or its counts from the cache folder)
into :class:`TrainingCounts`; the label checks that stop a run whose label column looks like
another column, :func:`label_order`, and the bag's hashed n-gram table sized by the count
(:func:`ngram_table`) are here too. Multi-label rows count once in ``rows`` and once per label.

Example:
    >>> counts = count_training_file("train.csv", 10, Tokenizer(), DataConfig(), quiet=True)
    >>> label_order(counts.label_counts), counts.rows
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from ..core.files import atomic_write, cache_home, open_regular, read_json_file, write_json_atomic
from ..core.models import ModelConfig
from ..text.cache import cache_key
from ..text.dataset import is_held_out
from ..text.sources import DataError, Example, SourceConfig, column_names, read_examples
from ..text.token_stream import TokenStream
from ..text.tokenizer import Tokenizer
from ..text.vocab import vocab_from_counts
from .config import DataConfig

COUNTS = "counts.json"  # a cache entry of count_training_file

log = logging.getLogger("textpipe")


NGRAM_ROWS_PER_NGRAM = 8  # the bag's hashed table sized to the data: at most 1 in 8 of its rows taken, so few n-grams share one


def ngram_table(model: ModelConfig, distinct_ngrams: int) -> dict:
    """The bag's hashed n-gram table for a training file with ``distinct_ngrams`` different n-grams (2 ..
    ``max_ngram`` words): the smallest power of two of at least 8 rows per n-gram, at most ``model.ngram_buckets``
    (the cap; 0: none). A small file gets a small bundle; mr, trec6 and rotten_tomatoes keep the cap.
    Recorded in ``run.json``; the bundle's model config holds the rows.

    Example:
        >>> ngram_table(ModelConfig(), 60)["rows"], ngram_table(ModelConfig(), 103_520)["rows"]
        (512, 262144)
    """
    cap = model.ngram_buckets
    rows = min(cap, 1 << (NGRAM_ROWS_PER_NGRAM * max(1, distinct_ngrams) - 1).bit_length()) if cap > 0 else 0
    counted = f"{distinct_ngrams:,}" + (" or more" if distinct_ngrams >= ngram_count_limit(model)[1] else "")
    return {"rows": rows, "distinct_ngrams": distinct_ngrams, "cap": cap,
            "rule": f"smallest power of two >= {NGRAM_ROWS_PER_NGRAM} x the {counted} different n-grams of the training file, at most model.ngram_buckets"}


def ngram_count_limit(model: ModelConfig) -> tuple[int, int]:
    """What :func:`count_training_file` counts for :func:`ngram_table`: (max_ngram, how many n-grams decide the size)."""
    if model.name != "bag" or model.ngram_buckets <= 0:
        return (1, 0)
    return (model.max_ngram, model.ngram_buckets // NGRAM_ROWS_PER_NGRAM + 1)  # past that many the cap is the size


def count_training_file(train, holdout: int, tokenizer: Tokenizer, data: DataConfig, *, quiet: bool = True,
                        ngrams: tuple[int, int] = (1, 0)) -> TrainingCounts:
    """One streaming pass over the training file: the token counts of its training part and of
    the rows held out of it (1 in ``holdout``; 0 holds none out), the rows per label, the rows skipped by reason,
    and, with ``ngrams`` = (max_ngram, limit), how many different n-grams it has (up to ``limit``).

    With a cache folder (``data.cache_dir``) the counts are kept there, keyed by the file's
    content and the settings, so counting the same file again (a second run, each trial of
    ``--autotune``) reads them instead of tokenizing every row.

    Example:
        >>> counts = count_training_file("train.csv", 10, Tokenizer(), DataConfig(), quiet=True)
        >>> len(counts.vocab(DataConfig())), len(counts.all_rows().vocab(DataConfig()))   # the refit's is larger
    """
    folder = cache_folder(data.cache_dir)
    key = None
    if folder is not None and Path(train).is_file():
        key = cache_key(train, {"counts": asdict(tokenizer.config), "holdout": holdout, "source": asdict(data.source), "ngrams": list(ngrams)})
    counts = TrainingCounts.load(folder / key) if key else None
    if counts is None:
        counts = TrainingCounts()
        # The rows' tokens kept as they are counted, so the token caches of this file are written without tokenizing it again.
        stream = TokenStream(folder, holdout, train) if key and data.source.label_sep is None else None
        try:
            counts.add(read_examples(train, config=data.source, skipped=counts.skipped), tokenizer, holdout, quiet, ngrams, stream=stream)
        except BaseException:
            if stream is not None:
                stream.discard()
            raise
        counts.stream = stream
        if key:
            counts.save(folder / key, train)
    labels = label_order(counts.label_counts)
    if len(labels) < 2:
        raise DataError(train, None, f"training data needs at least 2 labels, found {labels}")
    _check_labels_look_like_labels(train, labels, data.max_labels)
    if not data.allow_many_labels:
        _check_labels_are_classes(train, counts.label_counts, data.source)
    counts.label_counts = {label: counts.label_counts[label] for label in labels}
    _hint_multi_label(train, labels, data.source)
    return counts


def _hint_multi_label(train, labels: list[str], source: SourceConfig) -> None:
    """Say so when one-label-a-row labels look like label sets ("news|sports"): said even when quiet, the run goes on."""
    sets = [label for label in labels if "|" in label.strip("|")]
    if source.label_sep is None and sets and len(sets) * 4 >= len(labels):
        log.warning(f"{train}: {len(sets)} of the {len(labels)} labels look like sets of labels ({sets[0]!r}); each is trained as one class. "
                    f"If a text can have several labels, train with --multi-label (labels split on '|', --label-sep sets another)")


def _check_labels_look_like_labels(train, labels: list[str], max_labels: int) -> None:
    longest = max(labels, key=len)
    if len(labels) > max_labels or len(longest) > 100:
        raise DataError(train, None, (
            f"{len(labels):,} different labels, the longest {len(longest):,} characters ({longest[:40]!r}...): the label column looks like text; "
            f"are the label and text columns swapped? (--label-column, --text-columns; data.max_labels={max_labels} allows more labels)"
        ))


def _check_labels_are_classes(train, label_counts: dict[str, int], source: SourceConfig) -> None:
    """Stop when the labels look like another column (an id, a score, a text): more than half as many
    labels as rows, or numbers with fractions. ``data.allow_many_labels`` (``--allow-many-labels``) accepts them."""
    rows, labels = sum(label_counts.values()), list(label_counts)
    many = len(labels) > max(4, rows / 2)  # a handful of classes in a handful of rows is a small file, not a wrong column
    fractions = all(_FLOAT.match(label) for label in labels) and any(not float(label).is_integer() for label in labels)
    if many or fractions:
        what = f"{len(labels):,} different labels in {rows:,} rows" if many else f"fractional labels ({', '.join(labels[:3])}, ...)"
        columns = column_names(train, source)
        raise DataError(train, None, f"{what}: the labels of column {source.label_column!r} look like another column"
                        + (f" (columns: {', '.join(columns)})" if columns else ""))


_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)$")  # 0.5, .5, 1e-3: a float, not an integer


def label_order(labels: Iterable[str]) -> list[str]:
    """The labels sorted as numbers when all of them are integers ("2" before "10"), else as strings."""
    labels = list(labels)
    if labels and all(label.strip().lstrip("+-").isdigit() for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def cache_folder(setting: str | None) -> Path | None:
    """Where the token-id caches go: ``"auto"`` is ``$TEXTPIPE_CACHE``, else ``$XDG_CACHE_HOME/textpipe``,
    else ``~/.cache/textpipe``; any other path is used as given; None or "" turns caching off."""
    if not setting:
        return None
    return cache_home() if setting == "auto" else Path(setting)


@dataclass
class TrainingCounts:
    """What one pass over the training file saw. The held-out rows' tokens are counted apart,
    so the vocabulary of every row (a refit's) needs no second pass: :meth:`all_rows`."""

    tokens: Counter = field(default_factory=Counter)  # of the training part
    held_out_tokens: Counter = field(default_factory=Counter)
    label_counts: dict[str, int] = field(default_factory=dict)  # rows per label, held-out rows included
    training_rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    ngrams: int = 0  # different word n-grams (2 .. max_ngram words) in the whole file, counted up to a limit
    rows: int = 0  # every row, held-out ones included (a multi-label row counts once here, once per label in label_counts)
    # The count pass's rows as provisional token ids (a cold count with a cache folder): the token caches are written from it.
    stream: TokenStream | None = field(default=None, repr=False, compare=False)

    def vocab(self, data: DataConfig):
        """The training part's vocabulary: what :func:`~textpipe.text.vocab.build_vocab` makes of its rows."""
        return vocab_from_counts(self.tokens, data.min_freq, data.max_size)

    def all_rows(self) -> "TrainingCounts":
        """The counts of the whole file, held-out rows in the training part."""
        return replace(self, tokens=self.tokens + self.held_out_tokens, held_out_tokens=Counter(), training_rows=self.rows)

    def add(self, rows: Iterable[Example], tokenizer: Tokenizer, holdout: int, quiet: bool, ngrams: tuple[int, int] = (1, 0), *,
            stream: TokenStream | None = None) -> None:
        """Count ``rows``, the whole file in order (a row's number decides whether it is held out); ``ngrams``:
        (max_ngram, limit): the different n-grams of 2 .. max_ngram words, up to ``limit`` of them; each row's
        tokens and label also go to ``stream`` when given."""
        rows = tqdm(rows, desc="vocab", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)
        (max_ngram, limit), seen = ngrams, set()
        labels: deque | None = deque() if stream is not None else None  # the labels of the rows the tokenizer has read ahead
        for i, tokens in enumerate(tokenizer.pipe(self._texts(rows, labels))):
            for n in range(2, max_ngram + 1) if len(seen) < limit else ():
                seen.update(zip(*(tokens[k:] for k in range(n))))
            held = bool(holdout) and is_held_out(i, holdout)
            if held:
                self.held_out_tokens.update(tokens)
            else:
                self.training_rows += 1
                self.tokens.update(tokens)
            if stream is not None:
                stream.add(tokens, labels.popleft(), held)
        self.ngrams = min(len(seen), limit)
        if stream is not None:
            stream.finish(self.skipped)

    def _texts(self, rows: Iterable[Example], labels: deque | None = None) -> Iterator[str]:
        """The rows' texts, their labels counted on the way (and queued on ``labels``): a label only held-out rows have is still the model's."""
        for example in rows:
            self.rows += 1
            for label in example.label if isinstance(example.label, tuple) else (example.label,):
                self.label_counts[label] = self.label_counts.get(label, 0) + 1
            if labels is not None:
                labels.append(example.label)
            yield example.text

    def save(self, folder: Path, train) -> None:
        """Into ``folder`` (a cache entry, so ``cache.prune`` ages it out with the token caches); meta.json last, marking it whole."""
        folder.mkdir(parents=True, exist_ok=True)
        # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
        saved = {"tokens": dict(self.tokens), "held_out_tokens": dict(self.held_out_tokens), "label_counts": self.label_counts,
                 "training_rows": self.training_rows, "skipped": self.skipped, "ngrams": self.ngrams, "rows": self.rows}
        data = json.dumps(saved, ensure_ascii=False).encode("utf-8")
        atomic_write(folder / COUNTS, lambda f: f.write(data))
        write_json_atomic(folder / "meta.json", {"file": str(train), "counts": COUNTS, "sha256": hashlib.sha256(data).hexdigest()})

    @classmethod
    def load(cls, folder: Path) -> "TrainingCounts | None":
        """What :meth:`save` wrote, or None when there is no whole entry, or a damaged one (count again: a
        one-line notice says so when its counts no longer match their recorded sha256)."""
        try:
            if not (folder / "meta.json").is_file():
                return None
            with open_regular(folder / COUNTS) as f:  # a FIFO in its place is refused, not waited on
                recorded, data = read_json_file(folder / "meta.json").get("sha256"), f.read()
            if hashlib.sha256(data).hexdigest() != recorded:
                log.warning(f"counts cache {folder} is damaged (its counts do not match their recorded sha256); counting again")
                return None
            saved = json.loads(data)
            os.utime(folder / "meta.json")  # last use, for cache.prune, as the token caches mark theirs
            return cls(Counter(saved["tokens"]), Counter(saved["held_out_tokens"]), saved["label_counts"], saved["training_rows"], saved["skipped"],
                       saved["ngrams"], saved["rows"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
