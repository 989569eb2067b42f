"""Where the text stages meet the tensor core: the pieces that compose files into a trained bundle.

The checks made before the first token is read (:func:`check_settings`), the loaders
over a file (:class:`Loaders`), the vocabulary and label set from one pass over the training file,
scoring a model on a labelled file and writing the bundle, ``metrics.json``, the
effective config (``config.json``) and the report of :mod:`textpipe.bundle.report`
(:func:`save_outputs`). :func:`report_file` writes the same report for a saved bundle
on any labelled file.

A training run's phases, its ``run.json`` and its resume live in :mod:`textpipe.run.phases`,
which builds on this module.

Example:
    >>> from textpipe.run.phases import train_files
    >>> metrics = train_files("train.csv", "test.csv", "runs/mine")
    >>> report_file("runs/mine", "other.csv", "runs/mine/eval-other")["overall"]["accuracy"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm

from ..bundle.store import Bundle, BundleError, load_bundle, save_bundle
from ..bundle.describe import side_file
from ..text.cache import cache_key
from .config import DataConfig, PipelineConfig, SettingsError, toml_value
from ..text.dataset import TextClassificationDataset, is_held_out
from ..bundle.explain import strongest_features
from ..core.files import CONFIG, METRICS, VOCAB, atomic_write, cache_home, check_folder, make_folder, open_regular, read_json_file, write_json_atomic
from ..text.loader import make_loader
from ..core.models import ModelConfig
from ..bundle.predict import shipped_mixer
from ..bundle.report import misclassified, relative_path, summarize, write_report
from ..text.sources import TORCHTEXT_PREFIX, DataError, Example, SourceConfig, column_names, read_examples
from ..text.tokenizer import Tokenizer
from ..core.metrics import predict_logits
from ..core.runtime import Placement, resolve_device
from ..text.vocab import vocab_from_counts

COUNTS = "counts.json"  # a cache entry of count_training_file

log = logging.getLogger("textpipe")  # progress lines; the CLI sends them to stderr, a library caller chooses


def check_settings(config: PipelineConfig, data: dict) -> None:
    """What the world outside the config must hold before the first token is read: the device, the
    vectors, and each data file, with a first row (a first bad row is an error now when bad rows are)."""
    from ..text.vectors import NAMED_VECTORS

    device = resolve_device(config.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {config.train.device!r}: no CUDA GPU is available here", hint="use --device cpu, or auto")
    if config.data.vectors and config.data.vectors not in NAMED_VECTORS and not Path(config.data.vectors).is_file():
        raise SettingsError(f"vectors {config.data.vectors!r}: neither named vectors nor a file", hint=f"named vectors: {', '.join(NAMED_VECTORS)} (textpipe vectors list)")
    for part, path in data.items():
        if path is None or str(path).startswith(TORCHTEXT_PREFIX):
            continue  # torchtext: read (and checked) as it downloads
        if not Path(path).exists():
            raise DataError(path, None, "no such file")
        skipped: dict[str, int] = {}  # rows skipped here are counted again later, with their lines
        if next(read_examples(path, config=config.data.source, skipped=skipped), None) is None:
            raise DataError(path, None, f"the {part} file holds no usable row" + (f" ({sum(skipped.values())} bad)" if skipped else " (only a header?)"))


@dataclass(frozen=True)
class Loaders:
    """The loaders over one phase's files, all with the same tokenizer, vocabulary, labels and hold-out.

    ``holdout``: 1 row in ``holdout`` of the training file is a dev row (0: none are, the phase trains
    on every row). Only training batches are sharded by rank; every rank scores all of dev and test.

    Example:
        >>> loaders = Loaders(PipelineConfig(), Tokenizer(), vocab, ["neg", "pos"], holdout=10)
        >>> train, dev = loaders.of("train.csv", loaders.train_part, training=True), loaders.of("train.csv", "dev")
    """

    config: PipelineConfig
    tokenizer: Tokenizer
    vocab: object  # torchtext Vocab
    labels: list[str]
    holdout: int = 0
    placement: Placement = field(default_factory=Placement)
    workers: int = 0  # DataLoader workers; a scoring pass needs none, so its predictions come in file order

    @property
    def train_part(self) -> str:
        return "train" if self.holdout else "all"

    def of(self, path, part: str = "all", *, training: bool = False) -> StatefulDataLoader:
        """A loader over ``path``'s ``part`` ("all", "train" or "dev"): shuffled and bucketed by length when ``training``,
        read from the token cache when there is one."""
        config, placement = self.config, self.placement
        dataset = TextClassificationDataset(path, self.tokenizer, self.vocab, self.labels, holdout_every=self.holdout if part != "all" else 0,
                                            part=part, source=config.data.source, cache_dir=cache_folder(config.data.cache_dir))
        return make_loader(
            dataset, config.train.batch_size if training else config.data.eval_batch_size,
            shuffle_buffer=config.data.shuffle_buffer if training else 0, bucket=config.data.bucket and training, seed=config.train.seed,
            rank=placement.rank if training else 0, world_size=placement.world if training else 1,
            num_workers=self.workers, pin_memory=placement.device.type == "cuda",
        )

    def in_order(self) -> "Loaders":
        """The same loaders without workers, for a pass whose predictions must line up with the file's rows."""
        return replace(self, workers=0)


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
        counts.add(read_examples(train, config=data.source, skipped=counts.skipped), tokenizer, holdout, quiet, ngrams)
        if key:
            counts.save(folder / key, train)
    labels = label_order(counts.label_counts)
    if len(labels) < 2:
        raise DataError(train, None, f"training data needs at least 2 labels, found {labels}")
    _check_labels_look_like_labels(train, labels, data.max_labels)
    if not data.allow_many_labels:
        _check_labels_are_classes(train, counts.label_counts, data.source)
    counts.label_counts = {label: counts.label_counts[label] for label in labels}
    return counts


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


def config_summary(config: PipelineConfig) -> str:
    """The effective config, one line per section (``key=value`` as in TOML)."""
    lines = ["effective config (saved as config.json in the bundle):"]
    for section, values in config.to_dict().items():
        shown = (f"{k}={toml_value(v)}" for k, v in values.items() if v is not None and k not in ("vocab_size", "num_classes"))
        lines.append(f"  [{section}] {' '.join(shown)}")
    return "\n".join(lines)


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


HISTORY_KEYS = ("epoch", "train_loss", "train_accuracy", "dev_loss", "dev_accuracy", "dev_macro_f1")


def trained_history(file: Path) -> list[dict] | None:
    """The bundle's per-epoch history (``metrics.json``), for the report's curves; None without one, or for
    one that is not a list of epochs of numbers (a report is written without curves, not refused)."""
    try:
        history = side_file(file, {"history": list}).get("history")
    except BundleError:
        return None
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    fits = isinstance(history, list) and all(isinstance(h, dict) and all(number(h.get(k)) for k in HISTORY_KEYS) for h in history)
    return history if fits else None


def report_file(
    bundle_dir: str | Path, data: str | Path, out: str | Path, *, batch_size: int = 512, quiet: bool = True, source: SourceConfig | None = None,
    threshold: float | None = None,
) -> dict:
    """Score a saved bundle on a labelled file and write the report (``metrics.json`` and all) into ``out``.

    Returns ``{"overall", "per_class", "confusion"}``, and ``"skipped"`` (reason ->
    rows) when ``source.on_bad_row == "skip"``; the learning curves are the
    bundle's own, from its ``metrics.json``, when it has one. With ``threshold``, ``summary["calibration"]["at_threshold"]``
    holds the coverage and accuracy of the rows whose top probability reaches it.

    Example:
        >>> report_file("runs/mine", "other.csv", "runs/mine/eval-other")["overall"]["accuracy"]
    """
    check_folder(out)  # before the scoring, which may take long
    bundle = load_bundle(bundle_dir)
    ds = TextClassificationDataset(data, bundle.tokenizer, bundle.vocab, bundle.labels, source=source)
    skipped = ds.count_skipped()
    loader = make_loader(ds, batch_size)
    summary, mistakes = score_and_list_mistakes(bundle.model, loader, bundle.labels, "cpu", quiet=quiet, mix=shipped_mixer(bundle), threshold=threshold)
    if ds.source.on_bad_row == "skip":
        summary["skipped"] = skipped
    write_json_atomic(make_folder(out) / METRICS, summary)
    history = trained_history(Path(bundle_dir) / METRICS)
    write_report(out, summary, mistakes, history, title=f"textpipe report: {Path(data).name}", notes=[
        f"The model in `{relative_path(bundle_dir, out)}` scored on `{relative_path(data, out)}`."
        + (" The training curves are the model's own." if history else ""),
    ])
    return summary


def score_and_list_mistakes(model, loader: DataLoader, labels: list[str], device, *, quiet: bool = True, mix=None,
                            threshold: float | None = None) -> tuple[dict, list]:
    """The report's numbers and the misclassified rows of ``model`` on a labelled loader without workers;
    ``mix(logits, texts)``, when given, turns the model's logits into the shipped ones (the sentence encoder's mix, the temperature);
    with ``threshold``, the coverage and accuracy there too (``summary["calibration"]["at_threshold"]``)."""
    if loader.num_workers:
        raise ValueError("score_and_list_mistakes() needs a loader without workers, so that predictions come in file order")
    rows = _with_progress(loader, "evaluate", quiet)
    logits, gold = predict_logits(model, rows, torch.device(device))
    texts = (example.text for example in loader.dataset.examples())
    if mix is not None:
        texts = list(texts)
        logits = mix(logits, texts)
    summary = summarize(logits, gold, labels, threshold)
    return summary, misclassified(texts, logits, gold, labels)


@dataclass
class Outputs:
    """What a finished run writes beside its bundle: its config, ``metrics.json``, and the report's content.

    Example:
        >>> save_outputs(Path("runs/mine"), bundle, Outputs(config, metrics, summary, mistakes, history, title="textpipe report: mine"))
    """

    config: PipelineConfig
    metrics: dict
    summary: dict  # the report's numbers (summarize)
    mistakes: list  # the misclassified rows
    history: list[dict]  # per epoch, for the learning curves
    title: str = "textpipe report"
    notes: list[str] = field(default_factory=list)


def save_outputs(out: Path, bundle: Bundle, outputs: Outputs) -> None:
    """Write a trained model's bundle (with a sentence head, its weights and encoder record too), ``config.json``,
    ``metrics.json`` and the report into ``out``."""
    save_bundle(out, bundle)
    write_json_atomic(out / CONFIG, outputs.config.to_dict())
    write_json_atomic(out / METRICS, outputs.metrics)
    features = strongest_features(bundle.model, bundle.vocab, bundle.labels)
    write_report(out, outputs.summary, outputs.mistakes, outputs.history, title=outputs.title, features=features, notes=outputs.notes)


def _with_progress(batches: Iterable, desc: str, quiet: bool) -> Iterator:
    """The batches, counted in rows on a tqdm bar (on a terminal, and unless quiet)."""
    with tqdm(desc=desc, unit="row", disable=True if quiet else None, file=sys.stderr, leave=False) as bar:
        for batch in batches:
            bar.update(len(batch))
            yield batch


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

    def vocab(self, data: DataConfig):
        """The training part's vocabulary: what :func:`~textpipe.text.vocab.build_vocab` makes of its rows."""
        return vocab_from_counts(self.tokens, data.min_freq, data.max_size)

    def all_rows(self) -> "TrainingCounts":
        """The counts of the whole file, held-out rows in the training part."""
        return replace(self, tokens=self.tokens + self.held_out_tokens, held_out_tokens=Counter(), training_rows=sum(self.label_counts.values()))

    def add(self, rows: Iterable[Example], tokenizer: Tokenizer, holdout: int, quiet: bool, ngrams: tuple[int, int] = (1, 0)) -> None:
        """Count ``rows``, the whole file in order (a row's number decides whether it is held out); ``ngrams``:
        (max_ngram, limit): the different n-grams of 2 .. max_ngram words, up to ``limit`` of them."""
        rows = tqdm(rows, desc="vocab", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)
        (max_ngram, limit), seen = ngrams, set()
        for i, tokens in enumerate(tokenizer.pipe(self._texts(rows))):
            for n in range(2, max_ngram + 1) if len(seen) < limit else ():
                seen.update(zip(*(tokens[k:] for k in range(n))))
            if holdout and is_held_out(i, holdout):
                self.held_out_tokens.update(tokens)
            else:
                self.training_rows += 1
                self.tokens.update(tokens)
        self.ngrams = min(len(seen), limit)

    def _texts(self, rows: Iterable[Example]) -> Iterator[str]:
        """The rows' texts, their labels counted on the way: a label only held-out rows have is still the model's."""
        for example in rows:
            self.label_counts[example.label] = self.label_counts.get(example.label, 0) + 1
            yield example.text

    def save(self, folder: Path, train) -> None:
        """Into ``folder`` (a cache entry, so ``cache.prune`` ages it out with the token caches); meta.json last, marking it whole."""
        folder.mkdir(parents=True, exist_ok=True)
        # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
        saved = {"tokens": dict(self.tokens), "held_out_tokens": dict(self.held_out_tokens), "label_counts": self.label_counts,
                 "training_rows": self.training_rows, "skipped": self.skipped, "ngrams": self.ngrams}
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
                       saved["ngrams"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
