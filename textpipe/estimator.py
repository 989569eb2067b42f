"""A scikit-learn estimator over the pipeline: texts in, labels out.

:class:`TextClassifier` is the five-line way in. ``fit`` streams the texts and
labels into a temporary JSONL file and runs :func:`textpipe.run.phases.train_files`
on it (so every stage, default and rule is the command line's), then keeps the
trained bundle in memory; ``save`` writes the same bundle folder ``textpipe train``
writes, which ``textpipe predict`` and :meth:`TextClassifier.load` read.

With scikit-learn installed (``pip install -e ".[sklearn]"``) the class is one of its
classifiers (``BaseEstimator``, ``ClassifierMixin``): ``clone``, ``GridSearchCV``,
``cross_val_score`` and ``Pipeline`` take it. Without scikit-learn the same class
works, with ``get_params``, ``set_params``, ``score`` and its ``repr`` from the small
stand-ins below.

A bundle stores each label as a string (``str(label)``); ``classes_`` keeps the labels
as they were given (integers stay integers), sorted as ``numpy.unique`` sorts them,
and ``predict`` returns those.

Multi-label: ``y`` whose items are collections of labels (lists, tuples or sets; an empty one is
a text with none of the labels) trains one sigmoid per label (``textpipe train --multi-label``).
``predict`` then returns a 0/1 array of shape ``(n_texts, len(classes_))``, as scikit-learn's
``MultiLabelBinarizer`` lays it out (a label is 1 where its probability reaches the bundle's
threshold for it), ``predict_proba`` each label's probability, and ``score`` the subset accuracy
(scikit-learn's ``accuracy_score`` of label sets), ``y`` given as label lists or as such an array.
"""

from __future__ import annotations

import inspect
import itertools
import json
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .bundle.store import Bundle, load_bundle, save_bundle
from .core.files import read_json_file, write_json_atomic
from .core.models import ModelConfig
from .run.config import DataConfig, PipelineConfig, load, read_file
from .run.pipeline import CONFIG, METRICS
from .run.phases import train_files
from .bundle.predict import Predictor
from .text.tokenizer import TokenizerConfig
from .core.train import TrainConfig

_CHUNK = 4096  # texts scored at a time, so predict streams an iterable of any length
_SECTIONS = {"tokenizer": TokenizerConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_RENAMED = {"arch": ("model", "name"), "tokenizer": ("tokenizer", "name")}  # parameter -> (section, field)
CLASSES = "classes.json"  # beside a saved bundle: the labels as fit was given them, so load gives back integers


class _Params:
    """scikit-learn's get_params, set_params and repr, for when scikit-learn is not installed."""

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in _parameter_names(type(self))}

    def set_params(self, **params) -> "_Params":
        names = _parameter_names(type(self))
        for key, value in params.items():
            if key not in names:
                raise ValueError(f"Invalid parameter {key!r} for estimator {type(self).__name__}. Valid parameters are: {names!r}.")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v is not defaults[k]]
        return f"{type(self).__name__}({', '.join(changed)})"


class _Accuracy:
    """scikit-learn's ClassifierMixin.score, for when scikit-learn is not installed."""

    def score(self, X: Iterable[str], y: Iterable, sample_weight=None) -> float:
        """The share of ``X`` whose predicted label is the one in ``y`` (weighted by ``sample_weight``)."""
        return float(np.average(self.predict(X) == np.asarray(list(y)), weights=sample_weight))


class _NotFitted(ValueError, AttributeError):
    """What scikit-learn's NotFittedError is, for when scikit-learn is not installed."""


try:  # an optional extra: textpipe works without it
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import NotFittedError
except ImportError:
    BaseEstimator, ClassifierMixin, NotFittedError = _Params, _Accuracy, _NotFitted


class TextClassifier(ClassifierMixin, BaseEstimator):
    """Train, apply, save and load a text classifier from Python lists; a scikit-learn classifier.

    ``X`` is an iterable of texts (str), ``y`` an iterable of labels (str, int, or any one
    kind of number). Each parameter left at ``None`` keeps the value in ``config`` (a
    :class:`~textpipe.run.config.PipelineConfig` or its dict; textpipe's defaults without it):
    ``arch`` is the model architecture (``textpipe train --arch``), ``tokenizer`` the
    tokenizer's name, the others the config field of that name. Any other field is set
    through ``config`` or :meth:`from_config`. ``verbose=True`` shows progress bars;
    epoch lines go to the ``textpipe`` logger. Parameters are checked by ``fit``.

    Example:
        >>> from textpipe import TextClassifier
        >>> clf = TextClassifier(epochs=10).fit(["a great movie", "a dull movie"] * 50, [1, 0] * 50)
        >>> clf.predict(["a great film"]), clf.classes_
        (array([1]), array([0, 1]))
        >>> clf.predict_proba(["a great film"]).shape   # columns in classes_ order
        (1, 2)
        >>> clf.save("runs/mine")                         # then: textpipe predict --model runs/mine "..."
        >>> tags = TextClassifier().fit(texts, [["sports"], ["news", "sports"], []] * 100)  # label sets: multi-label
        >>> tags.predict(["a match report"])            # columns in classes_ order
        array([[0, 1]])
    """

    def __init__(self, *, arch: str | None = None, tokenizer: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, weight_decay: float | None = None, patience: int | None = None, embed_dim: int | None = None,
                 hidden_dim: int | None = None, ngram_buckets: int | None = None, max_ngram: int | None = None, dropout: float | None = None,
                 min_freq: int | None = None, max_size: int | None = None, class_weights: str | None = None, seed: int | None = None,
                 device: str | None = None, config: PipelineConfig | dict | None = None, verbose: bool = False):
        # scikit-learn's rule: parameters stored as given, checked in fit (clone and set_params rely on it)
        self.arch, self.tokenizer, self.epochs, self.batch_size, self.lr = arch, tokenizer, epochs, batch_size, lr
        self.weight_decay, self.patience, self.embed_dim, self.hidden_dim = weight_decay, patience, embed_dim, hidden_dim
        self.ngram_buckets, self.max_ngram, self.dropout, self.min_freq, self.max_size = ngram_buckets, max_ngram, dropout, min_freq, max_size
        self.class_weights, self.seed, self.device, self.config, self.verbose = class_weights, seed, device, config, verbose

    @classmethod
    def from_config(cls, config: str | Path | dict | PipelineConfig, verbose: bool = False, **options) -> "TextClassifier":
        """An unfitted classifier from a TOML config file (as ``textpipe train --config``), a bundle's
        ``config.json``, a dict with ``[tokenizer] [data] [model] [train]`` sections, or a PipelineConfig.
        ``options`` set one value each: a parameter of the class, or any field of the config sections.

        Example:
            >>> clf = TextClassifier.from_config("configs/cnn.toml", epochs=5, patience=2)
        """
        if isinstance(config, (str, Path)):
            config = read_file(Path(config))
        if isinstance(config, dict):
            config = PipelineConfig.from_dict(config)
        params = {key: options.pop(key) for key in list(options) if key in _parameter_names(cls)}
        return cls(config=_with_options(config, options, "TextClassifier.from_config"), verbose=verbose, **params)

    def pipeline_config(self) -> PipelineConfig:
        """The config ``fit`` trains with: ``config`` with the parameters that are not ``None`` applied."""
        base = self.config if self.config is not None else PipelineConfig()
        if isinstance(base, dict):
            base = PipelineConfig.from_dict(base)
        if not isinstance(base, PipelineConfig):
            raise TypeError(f"TextClassifier: config must be a PipelineConfig or a dict of its sections, got {type(base).__name__}")
        options = {key: value for key, value in self.get_params().items() if key not in ("config", "verbose") and value is not None}
        return _with_options(base, options, "TextClassifier")

    @property
    def labels_(self) -> list[str]:
        """The labels as the bundle stores them (strings), in the order of ``classes_`` and of :meth:`predict_proba`'s columns."""
        labels = self._fitted().labels
        return [labels[i] for i in self._columns]

    def fit(self, X: Iterable[str], y: Iterable, dev: tuple[Iterable[str], Iterable] | None = None) -> "TextClassifier":
        """Train on texts ``X`` and labels ``y`` (any iterables of equal length, read once, streamed).

        ``dev=(texts, labels)`` picks the epoch on those rows; without it about 1 training
        row in 10 is held out for that, as ``textpipe train`` does without ``--dev``.
        ``metrics_`` then holds the dev scores. Returns ``self``.
        """
        config = self.pipeline_config()
        with tempfile.TemporaryDirectory(prefix="textpipe-fit-") as tmp:
            folder = Path(tmp)
            train, given, multi = _write_jsonl(folder / "train.jsonl", X, y)
            _sorted_classes(given)  # too few classes, or labels of several kinds, stop here, before training
            dev_file = _write_jsonl(folder / "dev.jsonl", *dev, "dev ", multi)[0] if dev is not None else None
            run_config = _for_temporary_files(config, folder / "cache", multi)
            metrics = train_files(train, None, folder / "run", dev=dev_file, config=run_config, quiet=not self.verbose)
            bundle = load_bundle(folder / "run")
        metrics.pop("history", None)
        metrics["scored_on"] = "the dev texts" if dev is not None else f"dev rows held out of the training texts (1 in {config.data.holdout_every})"
        self.config_ = replace(config, data=replace(config.data, source=run_config.data.source))
        self._set_fitted(bundle, metrics, given)
        return self

    @property
    def multi_label_(self) -> bool:
        """Whether the model gives each text a set of labels (``fit`` was given label sets)."""
        return self._fitted().multi_label is not None

    def predict(self, X: Iterable[str]) -> np.ndarray:
        """The most likely label of each text, in input order: an array of ``classes_``' values. Multi-label: an
        ``(n_texts, len(classes_))`` int64 0/1 array, 1 where a label's probability reaches its threshold."""
        proba = self.predict_proba(X)  # first: on an unfitted classifier it raises NotFittedError
        if self.multi_label_:
            thresholds = np.asarray(self.bundle_.multi_label["thresholds"], dtype=np.float64)[self._columns]
            return (proba.astype(np.float64) >= thresholds).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X: Iterable[str], y: Iterable, sample_weight=None) -> float:
        """scikit-learn's ``accuracy_score`` of :meth:`predict`: the share of texts whose label (or, multi-label, whole
        label set: ``y`` as label lists or a 0/1 array in ``classes_`` order) is right, weighted by ``sample_weight``."""
        if not self.multi_label_:
            return super().score(X, y, sample_weight)
        predicted = self.predict(X)
        expected = np.asarray(y) if isinstance(y, np.ndarray) and y.ndim == 2 else self._binarized(y)
        if expected.shape != predicted.shape:
            raise ValueError(f"y has shape {expected.shape}, the predictions {predicted.shape}: one row per text, one column per class")
        return float(np.average((predicted == expected).all(axis=1), weights=sample_weight))

    def _binarized(self, y: Iterable) -> np.ndarray:
        """Label sets as a 0/1 array in ``classes_`` order (as ``MultiLabelBinarizer``); an unknown label is an error."""
        column = {value: j for j, value in enumerate(self.classes_.tolist())}
        rows = list(y)
        out = np.zeros((len(rows), len(column)), dtype=np.int64)
        for i, labels in enumerate(rows):
            for label in labels:
                if label not in column:
                    raise ValueError(f"y[{i}]: unknown label {label!r}; the classes are {self.classes_.tolist()}")
                out[i, column[label]] = 1
        return out

    def predict_proba(self, X: Iterable[str]) -> np.ndarray:
        """Class probabilities, a float32 array of shape ``(n_texts, len(classes_))``, columns in ``classes_`` order
        (multi-label: each label's own probability, so a row need not sum to 1)."""
        predictor = Predictor(self._fitted())
        chunks = [predictor.probabilities(_checked_texts(chunk)).numpy() for chunk in _chunks(X, _CHUNK)]
        proba = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, len(predictor.labels)), np.float32)
        return proba[:, self._columns]

    def save(self, folder: str | Path) -> Path:
        """Write the bundle (and ``config.json``, ``metrics.json``) into ``folder``, as ``textpipe train --out`` does."""
        bundle, folder = self._fitted(), Path(folder)
        save_bundle(folder, bundle)
        write_json_atomic(folder / CONFIG, self.config_.to_dict())
        if self.metrics_ is not None:
            write_json_atomic(folder / METRICS, self.metrics_)
        given = dict(zip(self.labels_, self.classes_.tolist()))
        if any(given[label] != label for label in given):  # not all strings: keep their kind for load
            write_json_atomic(folder / CLASSES, given)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "TextClassifier":
        """A fitted classifier from a bundle folder written by :meth:`save` or ``textpipe train``."""
        folder = Path(folder)
        config = PipelineConfig.from_dict(_read_json(folder / CONFIG)) if (folder / CONFIG).is_file() else PipelineConfig()
        clf = cls(config=config)
        clf.config_ = config
        bundle = load_bundle(folder)
        given = _read_json(folder / CLASSES) if (folder / CLASSES).is_file() else {label: label for label in bundle.labels}
        clf._set_fitted(bundle, _read_json(folder / METRICS) if (folder / METRICS).is_file() else None, given)
        return clf

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "bundle_")

    def __sklearn_tags__(self):
        """scikit-learn >= 1.6: texts in (a list or 1-d array of str), not a 2-d array of numbers."""
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def _more_tags(self) -> dict:
        """The same, for scikit-learn < 1.6."""
        return {"X_types": ["string"], "requires_y": True}

    def _set_fitted(self, bundle: Bundle, metrics: dict | None, given: dict) -> None:
        """The fitted attributes: ``classes_`` sorted as numpy.unique sorts them, ``_columns`` the bundle's column of each."""
        classes = _sorted_classes(given)
        self.bundle_, self.metrics_ = bundle, metrics
        self.classes_ = np.asarray(classes)
        label_of = {value: key for key, value in given.items()}
        self._columns = np.asarray([bundle.labels.index(label_of[value]) for value in classes], dtype=np.int64)

    def _fitted(self) -> Bundle:
        if not hasattr(self, "bundle_"):
            raise NotFittedError("this TextClassifier is not fitted yet: call fit(texts, labels) or TextClassifier.load(folder)")
        return self.bundle_


def _parameter_names(cls: type) -> list[str]:
    return sorted(p.name for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self")


def _with_options(config: PipelineConfig, options: dict, where: str) -> PipelineConfig:
    """``config`` with options applied (``arch`` and ``tokenizer`` name a section's ``name``, other keys a field),
    checked as a config file is: a wrong type or an unknown key is a ConfigError naming it."""
    sections = config.to_dict()
    for key, value in options.items():
        section, field = _RENAMED.get(key, (None, key))
        section = section or next((name for name, kind in _SECTIONS.items() if field in {f.name for f in fields(kind)}), None)
        if section is None:
            raise TypeError(f"unknown option {key!r}: use arch, tokenizer or a field of TokenizerConfig, DataConfig, ModelConfig or TrainConfig")
        sections[section][field] = value.item() if isinstance(value, np.generic) else value  # numpy numbers from a parameter grid
    return load(PipelineConfig, sections, where)


def _for_temporary_files(config: PipelineConfig, cache: Path, multi_label: bool = False) -> PipelineConfig:
    """The config for a run on our own JSONL files: their columns (a list of labels a row when ``multi_label``; the
    separator never splits a JSON list), a cache that goes with them, no checkpoints."""
    source = replace(config.data.source, text_columns=["text"], label_column="label", header=True, on_bad_row="error",
                     label_sep=(config.data.source.label_sep or "|") if multi_label else None)
    data = replace(config.data, source=source, cache_dir=str(cache) if config.data.cache_dir else None)
    return replace(config, data=data, train=replace(config.train, keep_checkpoints=0))


def _write_jsonl(path: Path, texts: Iterable[str], labels: Iterable, prefix: str = "", multi: bool | None = None) -> tuple[Path, dict, bool]:
    """Stream ``(text, label)`` pairs into a JSONL file; a bad pair is an error naming its index (``prefix``: "dev " for dev's).
    Returns the file, each label as the bundle will store it -> the label as given, and whether the labels are
    label sets (multi-label; ``multi`` None: as the first label is, else as ``multi`` says)."""
    what, what_labels = f"{prefix}texts", f"{prefix}labels"
    if labels is None:
        raise ValueError(f"TextClassifier requires y to be passed, but the target y is None: give the {what_labels}")
    if isinstance(texts, str) or isinstance(labels, str):
        raise TypeError(f"{what} and {what_labels} must be iterables of items, not one string")
    labels = iter(labels)
    first = next(labels, _MISSING)
    labels = itertools.chain([first] if first is not _MISSING else [], labels)
    multi = isinstance(first, LABEL_SETS) if multi is None else multi
    given: dict[str, object] = {}
    with open(path, "w", encoding="utf-8") as f:
        for i, (text, label) in enumerate(itertools.zip_longest(texts, labels, fillvalue=_MISSING)):
            if text is _MISSING or label is _MISSING:
                raise ValueError(f"{what} and {what_labels} differ in length (one ends at item {i})")
            _check_text(text, f"{what}[{i}]")
            if multi != isinstance(label, LABEL_SETS):
                kind = "a list of labels (multi-label, as the first row)" if multi else "one label (as the first row)"
                raise TypeError(f"{what_labels}[{i}]: expected {kind}, got {type(label).__name__}")
            stored = [_stored(one, f"{what_labels}[{i}]", given) for one in (label if multi else [label])]
            f.write(json.dumps({"text": text, "label": sorted(set(stored)) if multi else stored[0]}, ensure_ascii=False) + "\n")
    return path, given, multi


_MISSING = object()
LABEL_SETS = (list, tuple, set, frozenset)  # a row's labels, in multi-label y (a 2-d 0/1 array is not read as sets)


def _stored(label, where: str, given: dict) -> str:
    """``label`` as a bundle stores it, recorded in ``given``; two labels stored alike are an error."""
    stored = _check_label(label, where)
    if given.setdefault(stored, label) != label:
        raise ValueError(f"{where}: {label!r} and {given[stored]!r} are one label in a bundle ({stored!r}): give one of them")
    return stored


def _check_text(text, where: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{where}: expected a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where}: empty text")


def _check_label(label, where: str) -> str:
    """The label as a bundle stores it (a stripped string)."""
    if label is None or (isinstance(label, (float, np.floating)) and np.isnan(label)):
        raise ValueError(f"{where}: missing label")
    if isinstance(label, (float, np.floating)) and not float(label).is_integer():  # scikit-learn's rule too
        raise ValueError(f"{where}: {label!r} is a continuous value, not a class label (unknown label type: continuous)")
    if not isinstance(label, (str, int, float, np.number, np.bool_)):
        raise TypeError(f"{where}: expected a str or a number, got {type(label).__name__}")
    stored = str(label).strip()
    if not stored:
        raise ValueError(f"{where}: missing label")
    return stored


def _sorted_classes(given: dict) -> list:
    """The labels as given, sorted; fewer than 2, or labels of several kinds (strings and numbers), are an error, as in scikit-learn."""
    if len(given) < 2:
        found = f"one class, {next(iter(given.values()))!r}" if given else "no rows"
        raise ValueError(f"labels: a classifier needs labels of at least 2 classes, got {found}")
    try:
        classes = sorted(given.values())
    except TypeError:
        kinds = sorted({type(value).__name__ for value in given.values()})
        raise ValueError(f"labels of several kinds ({', '.join(kinds)}): give labels of one kind, all strings or all numbers") from None
    if len(np.unique(np.asarray(classes))) != len(classes):
        raise ValueError(f"labels {classes} hold one value written two ways (as 1 and 1.0): give labels of one kind")
    return classes


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


def _read_json(path: Path):
    return read_json_file(path, what=path.name)  # size, type and nesting checked
