"""Where the text stages meet the tensor core: the pieces that compose files into a trained bundle.

The checks made before the first token is read (:func:`check_settings`), the loaders
over a file (:func:`_loader`), the vocabulary and label set from one pass over the training file,
scoring a model on a labelled file and writing the bundle, ``metrics.json``, the
effective config (``config.json``) and the report of :mod:`textpipe.report`
(:func:`save_outputs`). :func:`report_file` writes the same report for a saved bundle
on any labelled file.

A training run's phases, its ``run.json`` and its resume live in :mod:`textpipe.run`,
which builds on this module.

Example:
    >>> from textpipe.run import train_files
    >>> metrics = train_files("train.csv", "test.csv", "runs/mine")
    >>> report_file("runs/mine", "other.csv", "runs/mine/eval-other")["overall"]["accuracy"]
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm

from .bundle import load_bundle, save_bundle
from .cache import cache_key
from .config import DataConfig, PipelineConfig, toml_value
from .dataset import TextClassificationDataset, is_held_out
from .explain import strongest_features
from .files import cache_home, check_folder, make_folder, write_json_atomic
from .loader import make_loader
from .models import ModelConfig
from .predict import sentence_mixer
from .report import misclassified, summarize, write_report
from .sources import TORCHTEXT_PREFIX, DataError, Example, SourceConfig, read_examples
from .tokenizer import Tokenizer
from .metrics import predict_logits
from .runtime import resolve_device
from .vocab import vocab_from_counts

METRICS, CONFIG, VOCAB = "metrics.json", "config.json", "vocab.json"
COUNTS = "counts.json"  # a cache entry of count_training_file

log = logging.getLogger("textpipe")  # progress lines; the CLI sends them to stderr, a library caller chooses


def check_settings(config: PipelineConfig, data: dict) -> None:
    """Everything that can be checked before the first token is read: the model config,
    the device, and that each data file exists and holds a row."""
    from .bundle import check_model_config

    check_model_config(config.model.to_dict())
    if config.model.frozen_dim and not config.data.vectors:
        raise ValueError("model.frozen_dim needs pretrained vectors to fill the frozen table: set data.vectors (e.g. --vectors glove-6b-50d)")
    device = resolve_device(config.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.train.device!r}: no CUDA GPU is available here (use --device cpu, or auto)")
    for part, path in data.items():
        if path is None or str(path).startswith(TORCHTEXT_PREFIX):
            continue
        skipped: dict[str, int] = {}
        source = replace(config.data.source, on_bad_row="skip")  # the first good row; bad ones are found later, with their lines
        if next(read_examples(path, config=source, skipped=skipped), None) is None:
            raise DataError(path, None, f"the {part} file holds no usable row" + (f" ({sum(skipped.values())} bad)" if skipped else " (only a header?)"))


def _loader(path, config: PipelineConfig, tokenizer: Tokenizer, vocab, labels, device, part="all", holdout=0, training=False, rank=0, world=1, num_workers=0) -> StatefulDataLoader:
    # Batches bucketed by length when training, read from the cache when there is one.
    dataset = TextClassificationDataset(path, tokenizer, vocab, labels, holdout_every=holdout, part=part, source=config.data.source,
                                        cache_dir=cache_folder(config.data.cache_dir))
    return make_loader(
        dataset, config.train.batch_size if training else config.data.eval_batch_size,
        shuffle_buffer=config.data.shuffle_buffer if training else 0, bucket=config.data.bucket and training, seed=config.train.seed,
        rank=rank if training else 0, world_size=world if training else 1,  # each rank evaluates all of dev and test
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )


def count_training_file(train, holdout: int, tokenizer: Tokenizer, data: DataConfig, quiet: bool) -> TrainingCounts:
    """One streaming pass over the training file: the token counts of its training part and of
    the rows held out of it (1 in ``holdout``; 0 holds none out), the rows per label, and the rows skipped by reason.

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
        key = cache_key(train, {"counts": asdict(tokenizer.config), "holdout": holdout, "source": asdict(data.source)})
    counts = TrainingCounts.load(folder / key) if key else None
    if counts is None:
        counts = TrainingCounts()
        counts.add(read_examples(train, config=data.source, skipped=counts.skipped), tokenizer, holdout, quiet)
        if key:
            counts.save(folder / key, train)
    labels = label_order(counts.label_counts)
    if len(labels) < 2:
        raise DataError(train, None, f"training data needs at least 2 labels, found {labels}")
    _check_labels_look_like_labels(train, labels, data.max_labels)
    counts.label_counts = {label: counts.label_counts[label] for label in labels}
    return counts


def _check_labels_look_like_labels(train, labels: list[str], max_labels: int) -> None:
    longest = max(labels, key=len)
    if len(labels) > max_labels or len(longest) > 100:
        raise DataError(train, None, (
            f"{len(labels):,} different labels, the longest {len(longest):,} characters ({longest[:40]!r}...): the label column looks like text; "
            f"are the label and text columns swapped? (--label-column, --text-columns; data.max_labels={max_labels} allows more labels)"
        ))


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


def report_file(
    bundle_dir: str | Path, data: str | Path, out: str | Path, batch_size: int = 512, quiet: bool = True, source: SourceConfig | None = None
) -> dict:
    """Score a saved bundle on a labelled file and write the report (``metrics.json`` and all) into ``out``.

    Returns ``{"overall", "per_class", "confusion"}``, and ``"skipped"`` (reason ->
    rows) when ``source.on_bad_row == "skip"``; the learning curves are the
    bundle's own, from its ``metrics.json``, when it has one.

    Example:
        >>> report_file("runs/mine", "other.csv", "runs/mine/eval-other")["overall"]["accuracy"]
    """
    check_folder(out)  # before the scoring, which may take long
    bundle = load_bundle(bundle_dir)
    ds = TextClassificationDataset(data, bundle.tokenizer, bundle.vocab, bundle.labels, source=source)
    skipped = ds.count_skipped()
    loader = make_loader(ds, batch_size)
    summary, mistakes = score_and_list_mistakes(bundle.model, loader, bundle.labels, "cpu", quiet, sentence_mixer(bundle))
    if ds.source.on_bad_row == "skip":
        summary["skipped"] = skipped
    write_json_atomic(make_folder(out) / METRICS, summary)
    trained = Path(bundle_dir) / METRICS
    history = json.loads(trained.read_text(encoding="utf-8")).get("history") if trained.is_file() else None
    write_report(out, summary, mistakes, history, title=f"textpipe report: {Path(data).name}", notes=[
        f"The model in `{bundle_dir}` scored on `{data}`." + (" The training curves are the model's own." if history else ""),
    ])
    return summary


def score_and_list_mistakes(model, loader: DataLoader, labels: list[str], device, quiet: bool = True, mix=None) -> tuple[dict, list]:
    """The report's numbers and the misclassified rows of ``model`` on a labelled loader without workers;
    ``mix(logits, texts)``, when given, turns the model's logits into the shipped ones (the sentence encoder's mix)."""
    if loader.num_workers:
        raise ValueError("score_and_list_mistakes() needs a loader without workers, so that predictions come in file order")
    rows = _with_progress(loader, "evaluate", quiet)
    logits, gold = predict_logits(model, rows, torch.device(device))
    texts = (example.text for example in loader.dataset.examples())
    if mix is not None:
        texts = list(texts)
        logits = mix(logits, texts)
    summary = summarize(logits, gold, labels)
    return summary, misclassified(texts, logits, gold, labels)


def save_outputs(out: Path, model: torch.nn.Module, vocab, tokenizer: Tokenizer, labels: list[str], config: PipelineConfig, metrics: dict,
                 summary: dict, mistakes: list, history: list[dict], title: str, notes: list[str], head=None, encoder: dict | None = None) -> None:
    """Write a trained model's bundle, ``config.json``, ``metrics.json`` and report into ``out``; with a sentence
    ``head``, its weights and the ``encoder`` record in the bundle too."""
    model_config = ModelConfig(**{**config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(labels)})
    save_bundle(out, model, vocab, tokenizer, labels, model_config, config.train.to_dict(), head=head,
                extra={"encoder": encoder} if encoder else None)
    write_json_atomic(out / CONFIG, config.to_dict())
    write_json_atomic(out / METRICS, metrics)
    features = strongest_features(model, vocab, labels)
    write_report(out, summary, mistakes, history, title=title, features=features, notes=notes)


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

    def vocab(self, data: DataConfig):
        """The training part's vocabulary: what :func:`~textpipe.vocab.build_vocab` makes of its rows."""
        return vocab_from_counts(self.tokens, data.min_freq, data.max_size)

    def all_rows(self) -> "TrainingCounts":
        """The counts of the whole file, held-out rows in the training part."""
        return replace(self, tokens=self.tokens + self.held_out_tokens, held_out_tokens=Counter(), training_rows=sum(self.label_counts.values()))

    def add(self, rows: Iterable[Example], tokenizer: Tokenizer, holdout: int, quiet: bool) -> None:
        """Count ``rows``, the whole file in order (a row's number decides whether it is held out)."""
        rows = tqdm(rows, desc="vocab", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)
        for i, tokens in enumerate(tokenizer.pipe(self._texts(rows))):
            if holdout and is_held_out(i, holdout):
                self.held_out_tokens.update(tokens)
            else:
                self.training_rows += 1
                self.tokens.update(tokens)

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
                 "training_rows": self.training_rows, "skipped": self.skipped}
        write_json_atomic(folder / COUNTS, saved, indent=None)
        write_json_atomic(folder / "meta.json", {"file": str(train), "counts": COUNTS})

    @classmethod
    def load(cls, folder: Path) -> "TrainingCounts | None":
        """What :meth:`save` wrote, or None when there is no whole entry (or an unreadable one: count again)."""
        try:
            if not (folder / "meta.json").is_file():
                return None
            saved = json.loads((folder / COUNTS).read_text(encoding="utf-8"))
            os.utime(folder / "meta.json")  # last use, for cache.prune, as the token caches mark theirs
            return cls(Counter(saved["tokens"]), Counter(saved["held_out_tokens"]), saved["label_counts"], saved["training_rows"], saved["skipped"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
