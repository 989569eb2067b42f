"""A scikit-learn-style estimator over the pipeline: lists of strings in, labels out.

:class:`TextClassifier` is the five-line way in. ``fit`` streams the texts and
labels into a temporary JSONL file and runs :func:`textpipe.run.train_files`
on it (so every stage, default and rule is the command line's), then keeps the
trained bundle in memory; ``save`` writes the same bundle folder ``textpipe train``
writes, which ``textpipe predict`` and :meth:`TextClassifier.load` read.

Labels are strings in a bundle, so they are strings here too: ``fit`` turns each
label into ``str(label)`` and ``predict`` returns those strings (integer labels
are ordered as numbers: ``"2"`` before ``"10"``).
"""

from __future__ import annotations

import itertools
import json
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .bundle import Bundle, load_bundle, save_bundle
from .files import read_json_file, write_json_atomic
from .models import ModelConfig
from .config import DataConfig, PipelineConfig, read_file
from .pipeline import CONFIG, METRICS
from .run import train_files
from .predict import Predictor
from .tokenizer import TokenizerConfig
from .train import TrainConfig

_CHUNK = 4096  # texts scored at a time, so predict streams an iterable of any length
_SECTIONS = {"tokenizer": TokenizerConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig}


class TextClassifier:
    """Train, apply, save and load a text classifier from Python lists.

    Keyword options set one config value each: ``arch`` (the model architecture, as
    ``textpipe train --arch``) or any field name of the config sections
    (``epochs``, ``lr``, ``embed_dim``, ``tokenizer``'s ``name`` is ``tokenizer``...).
    ``verbose=True`` shows progress bars; epoch lines go to the ``textpipe`` logger.

    Example:
        >>> from textpipe import TextClassifier
        >>> clf = TextClassifier(epochs=10).fit(["a great movie", "a dull movie"] * 50, ["pos", "neg"] * 50)
        >>> clf.predict(["a great film"])
        ['pos']
        >>> clf.predict_proba(["a great film"]).shape   # columns in clf.labels_ order
        (1, 2)
        >>> clf.save("runs/mine")                         # then: textpipe predict --model runs/mine "..."
    """

    def __init__(self, config: PipelineConfig | None = None, verbose: bool = False, **options):
        self.config = _with_options(config or PipelineConfig(), options)
        self.verbose = verbose
        self.bundle_: Bundle | None = None
        self.metrics_: dict | None = None

    @classmethod
    def from_config(cls, config: str | Path | dict | PipelineConfig, verbose: bool = False, **options) -> "TextClassifier":
        """An unfitted classifier from a TOML config file (as ``textpipe train --config``), a bundle's
        ``config.json``, a dict with ``[tokenizer] [data] [model] [train]`` sections, or a PipelineConfig.

        Example:
            >>> clf = TextClassifier.from_config("configs/cnn.toml", epochs=5)
        """
        if isinstance(config, (str, Path)):
            config = _read_config(Path(config))
        if isinstance(config, dict):
            config = PipelineConfig.from_dict(config)
        return cls(config, verbose=verbose, **options)

    @property
    def labels_(self) -> list[str]:
        """The labels, in the order of :meth:`predict_proba`'s columns."""
        return list(self._fitted().labels)

    def fit(self, texts: Iterable[str], labels: Iterable, dev: tuple[Iterable[str], Iterable] | None = None) -> "TextClassifier":
        """Train on ``texts`` and ``labels`` (any iterables of equal length, read once, streamed).

        ``dev=(texts, labels)`` picks the epoch on those rows; without it about 1 training
        row in 10 is held out for that, as ``textpipe train`` does without ``--dev``.
        ``metrics_`` then holds the dev scores. Returns ``self``.
        """
        with tempfile.TemporaryDirectory(prefix="textpipe-fit-") as tmp:
            folder = Path(tmp)
            train = _write_jsonl(folder / "train.jsonl", texts, labels, "texts", "labels")
            dev_file = _write_jsonl(folder / "dev.jsonl", *dev, "dev texts", "dev labels") if dev is not None else None
            config = _for_temporary_files(self.config, folder / "cache")
            self.metrics_ = train_files(train, None, folder / "run", dev=dev_file, config=config, quiet=not self.verbose)
            self.metrics_.pop("history", None)
            self.metrics_["scored_on"] = "the dev texts" if dev is not None else f"dev rows held out of the training texts (1 in {config.data.holdout_every})"
            self.config = replace(self.config, data=replace(self.config.data, source=config.data.source))
            self.bundle_ = load_bundle(folder / "run")
        return self

    def predict(self, texts: Iterable[str]) -> list[str]:
        """The most likely label of each text, in input order."""
        labels = self._fitted().labels
        return [labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def predict_proba(self, texts: Iterable[str]) -> np.ndarray:
        """Class probabilities, a float32 array of shape ``(n_texts, len(labels_))``."""
        predictor = Predictor(self._fitted())
        chunks = [predictor.probabilities(_checked_texts(chunk)).numpy() for chunk in _chunks(texts, _CHUNK)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, len(predictor.labels)), np.float32)

    def save(self, folder: str | Path) -> Path:
        """Write the bundle (and ``config.json``, ``metrics.json``) into ``folder``, as ``textpipe train --out`` does."""
        bundle, folder = self._fitted(), Path(folder)
        save_bundle(folder, bundle.model, bundle.vocab, bundle.tokenizer, bundle.labels, bundle.model_config, bundle.train_config)
        write_json_atomic(folder / CONFIG, self.config.to_dict())
        if self.metrics_ is not None:
            write_json_atomic(folder / METRICS, self.metrics_)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "TextClassifier":
        """A fitted classifier from a bundle folder written by :meth:`save` or ``textpipe train``."""
        folder = Path(folder)
        config_file = folder / CONFIG
        config = PipelineConfig.from_dict(read_json_file(config_file, what="config file")) if config_file.exists() else None
        clf = cls(config)
        clf.bundle_ = load_bundle(folder)
        metrics = folder / METRICS
        clf.metrics_ = read_json_file(metrics, what="metrics file") if metrics.exists() else None
        return clf

    def _fitted(self) -> Bundle:
        if self.bundle_ is None:
            raise RuntimeError("this TextClassifier is not fitted yet: call fit(texts, labels) or TextClassifier.load(folder)")
        return self.bundle_


def _with_options(config: PipelineConfig, options: dict) -> PipelineConfig:
    """``config`` with keyword options applied: ``arch`` and ``tokenizer`` name a section's ``name``, other keys a field."""
    sections = {name: getattr(config, name) for name in _SECTIONS}
    for key, value in options.items():
        section, field = {"arch": ("model", "name"), "tokenizer": ("tokenizer", "name")}.get(key, (None, key))
        section = section or next((name for name, kind in _SECTIONS.items() if field in {f.name for f in fields(kind)}), None)
        if section is None:
            raise TypeError(f"unknown option {key!r}: use arch, tokenizer or a field of TokenizerConfig, DataConfig, ModelConfig or TrainConfig")
        sections[section] = replace(sections[section], **{field: value})
    return PipelineConfig(**sections)


def _for_temporary_files(config: PipelineConfig, cache: Path) -> PipelineConfig:
    """The config for a run on our own JSONL files: their columns, a cache that goes with them, no checkpoints."""
    source = replace(config.data.source, text_columns=["text"], label_column="label", header=True, on_bad_row="error")
    data = replace(config.data, source=source, cache_dir=str(cache) if config.data.cache_dir else None)
    return replace(config, data=data, train=replace(config.train, keep_checkpoints=0))


def _write_jsonl(path: Path, texts: Iterable[str], labels: Iterable, what: str, what_labels: str) -> Path:
    """Stream ``(text, label)`` pairs into a JSONL file; a bad pair is a ValueError naming its index."""
    if isinstance(texts, str) or isinstance(labels, str):
        raise TypeError(f"{what} and {what_labels} must be iterables of items, not one string")
    with open(path, "w", encoding="utf-8") as f:
        for i, (text, label) in enumerate(itertools.zip_longest(texts, labels, fillvalue=_MISSING)):
            if text is _MISSING or label is _MISSING:
                raise ValueError(f"{what} and {what_labels} differ in length (one ends at item {i})")
            _check_text(text, f"{what}[{i}]")
            if label is None or not str(label).strip():
                raise ValueError(f"{what_labels}[{i}]: missing label")
            f.write(json.dumps({"text": text, "label": str(label)}, ensure_ascii=False) + "\n")
    return path


_MISSING = object()


def _check_text(text, where: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{where}: expected a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where}: empty text")


def _checked_texts(texts: Sequence[str]) -> Sequence[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a str, got {type(text).__name__}")
    return texts


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    if isinstance(items, str):
        raise TypeError("texts must be an iterable of strings, not one string (wrap it in a list)")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config file")
    return read_file(path)  # the config loader's own reader: size, type and nesting checked
