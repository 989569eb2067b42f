"""The configuration of a run in one place: its dataclasses, one loader, and TOML out.

A run's config is a :class:`PipelineConfig` of four sections, one per stage:
``[tokenizer]`` :class:`~textpipe.text.tokenizer.TokenizerConfig`, ``[data]`` :class:`DataConfig`
(with ``[data.source]`` :class:`~textpipe.text.sources.SourceConfig`), ``[model]``
:class:`~textpipe.core.models.ModelConfig` and ``[train]`` :class:`~textpipe.core.train.TrainConfig`.
Each stage's dataclass stays beside its stage (so ``models.py`` and ``train.py`` are usable
alone, as nanoGPT keeps ``GPTConfig`` in its model file); the two that belong to no single
stage live here. :func:`load` is the only place where plain data (TOML, JSON, a dict)
becomes a config: unknown keys and values of the wrong type are errors naming where they
came from. :func:`config_toml` writes a config back as TOML, and ``configs/default.toml``
is generated from the dataclasses (``python -m textpipe.run.config > configs/default.toml``)
and tested to be what they say.

Example:
    >>> config = load(PipelineConfig, {"model": {"name": "cnn"}, "train": {"epochs": 5}})
    >>> print(config_toml(config))
"""

from __future__ import annotations

import inspect
import io
import json
import tokenize
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

from ..core.files import JSON_MAX_BYTES, JSON_MAX_DEPTH, InputFileError, json_depth, read_json_file, read_small_file
from ..core.models import ModelConfig
from ..text.sources import SourceConfig
from ..text.tokenizer import TOKENIZERS, TokenizerConfig
from ..core.train import TrainConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used: an unknown section or key, a value of the wrong type,
    or one its stage refuses. The message names the source (a file, ``--set``, flags).

    Example:
        >>> load(PipelineConfig, {"train": {"epoch": 3}}, "my.toml")
        Traceback (most recent call last):
        ConfigError: my.toml: unknown keys in [train]: epoch (known: ...)
    """


class SettingsError(ValueError):
    """Settings the world outside the config refuses: no CUDA GPU here, --resume or --autotune under
    torchrun, a folder with no run to resume. ``hint`` says what to do instead (the CLI prints it).

    Example:
        >>> raise SettingsError("device 'cuda': no CUDA GPU is available here", hint="use --device cpu, or auto")
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass
class DataConfig:
    """How the data becomes training batches: vocabulary limits, dev hold-out, shuffling, caching.

    Example:
        >>> DataConfig(min_freq=2, vectors="glove-6b-50d")
    """

    min_freq: int = 1  # tokens seen fewer times in training map to <unk>
    max_size: int | None = None  # cap the vocabulary (counts <pad> and <unk>); unset = no cap
    holdout_every: int = 10  # without a dev file, about 1 training row in 10 is held out for dev
    shuffle_buffer: int = 100_000  # rows in the streaming shuffle buffer
    num_workers: int = 0  # DataLoader worker processes (tokenizing in parallel)
    eval_batch_size: int = 512
    bucket: bool = True  # training batches of rows of similar length (sorted inside each shuffle block), so less padding
    # Tokenize each file once into a memory-mapped cache there (see cache.cache_folder);
    # false (`--set data.cache_dir=false`), None or "": tokenize every epoch.
    cache_dir: str | Literal[False] | None = "auto"  # token-id caches: "auto" = $TEXTPIPE_CACHE, $XDG_CACHE_HOME/textpipe or ~/.cache/textpipe; false = none
    source: SourceConfig = field(default_factory=SourceConfig)  # columns, header, on_bad_row, max_chars
    vectors: str | None = None  # named vectors (glove-6b-50d, fetched once) or a GloVe / word2vec text file: start of the word rows
    max_labels: int = 1000  # more labels than this (or one over 100 characters) looks like swapped columns: an error
    allow_many_labels: bool = False  # accept labels that look like another column: over half as many labels as rows, or fractions

    def __post_init__(self) -> None:
        if isinstance(self.source, dict):  # DataConfig(source={...}) from Python
            self.source = load(SourceConfig, self.source, section="data.source")
        for name, least in (("holdout_every", 2), ("min_freq", 1), ("eval_batch_size", 1), ("shuffle_buffer", 0), ("num_workers", 0), ("max_labels", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"data.{name} must be an integer >= {least}, got {value!r}")
        if self.max_size is not None and (not isinstance(self.max_size, int) or self.max_size < 3):
            raise ValueError(f"data.max_size must be an integer >= 3 (<pad>, <unk> and a token) or unset, got {self.max_size!r}")


@dataclass
class PipelineConfig:
    """All the knobs of one training run, grouped by stage.

    Example:
        >>> config = PipelineConfig(train=TrainConfig(epochs=5, seed=1))
        >>> metrics = train_files("train.csv", "test.csv", "runs/mine", config=config)
        >>> metrics["test"]["accuracy"]
    """

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        from ..bundle.store import check_model_config  # the model fields' ranges (ModelConfig itself checks none)

        check_model_config(self.model.to_dict())
        # The rest spans sections, or has no check of its own.
        if self.tokenizer.name not in TOKENIZERS:
            raise ValueError(f"tokenizer.name must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer.name!r}")
        if self.tokenizer.lang != "en" and self.tokenizer.name != "spacy":
            raise ValueError(f"tokenizer.lang {self.tokenizer.lang!r} needs tokenizer.name = \"spacy\", got {self.tokenizer.name!r}")
        if self.model.frozen_dim and not self.data.vectors:
            raise ValueError("model.frozen_dim needs pretrained vectors to fill the frozen table: set data.vectors (e.g. --vectors glove-6b-50d)")
        if self.model.encoder and self.data.source.label_sep is not None:
            raise ValueError("--encoder is not available with --multi-label yet (model.encoder with data.source.label_sep set)")

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_dict()}  # model.encoder only when set, as bundle.json has it

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        """The inverse of :meth:`to_dict` (see :func:`load`): missing keys keep their defaults."""
        return load(cls, d)


STEPS_PER_EPOCH = 512  # train.batch_size "auto": at least this many optimizer steps an epoch, once the data is large enough for it
BATCH_RANGE = (32, 1024)  # ... in powers of two between these: 32, best on small files (up to 32,767 rows), to 1024


def batch_choice(train: TrainConfig, rows: int) -> dict:
    """The batch size (and learning rate) a run trains with, from its ``rows`` training rows: ``train``'s own
    when it sets one, else (``batch_size = "auto"``) the largest power of two of at most ``rows /
    STEPS_PER_EPOCH``, within ``BATCH_RANGE``. Recorded in ``run.json`` as ``batch``; the rule was chosen on dev
    splits of tiled training files (``bench/results/batch_rule.json``).

    Example:
        >>> batch_choice(TrainConfig(), 8_636)["size"], batch_choice(TrainConfig(), 100_000)["size"], batch_choice(TrainConfig(), 900_000)["size"]
        (32, 128, 1024)
    """
    if train.batch_size != "auto":
        return {"size": train.batch_size, "lr": train.lr, "rows": rows, "rule": "train.batch_size"}
    low, high = BATCH_RANGE
    size = max(low, min(high, 1 << max(0, (rows // STEPS_PER_EPOCH).bit_length() - 1)))
    return {"size": size, "lr": train.lr, "rows": rows,
            "rule": f"auto: the largest power of two <= training rows / {STEPS_PER_EPOCH}, from {low} to {high}"}


REFIT_MAX_ROWS = 100_000  # train.refit "auto": refit when the train phase had fewer training rows than this (docs/benchmarks.md, Speed at scale)


def refit_wanted(train: TrainConfig, rows: int | None) -> bool:
    """Whether ``train`` asks for the refit after a train phase on ``rows`` training rows (the held-out ones not
    counted, as ``batch_choice`` counts them; None: not counted yet).
    ``refit = "auto"`` refits under ``REFIT_MAX_ROWS`` rows: past that the held-out tenth adds little to what
    the model learns, and the refit would double the training time.

    Example:
        >>> refit_wanted(TrainConfig(), 9_596), refit_wanted(TrainConfig(), 1_000_000), refit_wanted(TrainConfig(refit=True), 1_000_000)
        (True, False, True)
    """
    if train.refit == "auto":
        return rows is None or rows < REFIT_MAX_ROWS
    return bool(train.refit)


def refits(config: PipelineConfig, data: dict, rows: int | None = None) -> bool:
    """Whether a refit follows the train phase (``rows``: the train phase's training rows, once counted, for ``train.refit = "auto"``).
    A dev file's rows are not training rows; without a test file the held-out rows are the only honest score."""
    return bool(refit_wanted(config.train, rows) and not data["dev"] and data["test"] is not None)


def with_batch(config: PipelineConfig, choice: dict | None) -> PipelineConfig:
    """``config`` training with the batch size and learning rate of ``choice`` (a :func:`batch_choice`; None: as it is)."""
    if choice is None:  # a run.json from before the choice was recorded
        return config
    return replace(config, train=replace(config.train, batch_size=choice["size"], lr=choice["lr"]))


# --- in: plain data -> dataclasses ---------------------------------------------------------------


def load(kind: type[T], data: dict, source: str = "config", section: str = "") -> T:
    """Build the dataclass ``kind`` from plain data, checking every key and value on the way.

    Missing keys keep their defaults; an unknown key, a value of the wrong type (an int is a
    fine float, a bool is not an int) or one the dataclass refuses raises :class:`ConfigError`
    naming ``source`` and the section. A table for a dataclass field is loaded the same way.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{section}] must be a table of key = value lines")
    hints = typing.get_type_hints(kind)
    known = [f.name for f in fields(kind)]
    unknown = [key for key in data if key not in known]
    if unknown:
        what = f"unknown keys in [{section}]" if section else "unknown config sections"
        raise ConfigError(f"{source}: {what}: {', '.join(sorted(unknown))} (known: {', '.join(known if not section else sorted(known))})")
    values = {}
    for key, value in data.items():
        inner = f"{section}.{key}" if section else key
        if is_dataclass(hints[key]) and not isinstance(value, hints[key]):
            value = load(hints[key], value, source, inner)
        elif not matches(value, hints[key]):
            raise ConfigError(f"{source}: [{section}] {key} = {value!r}: expected {describe(hints[key])}")
        values[key] = value
    try:
        return kind(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: {err}") from None


def matches(value, hint) -> bool:
    """Whether ``value`` (plain data) fits the type annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(matches(value, arg) for arg in args)
    if origin is Literal:
        return any(value is arg or (type(value) is type(arg) and value == arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(matches(v, args[0]) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:  # an int is a fine float (TOML's `lr = 1`)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(hint, type) and isinstance(value, hint)


def describe(hint) -> str:
    """A type annotation in the words of an error message: ``int``, ``a list of integers``, ``str or false``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(arg) for arg in args if arg is not type(None))  # TOML has no null
    if origin is Literal:
        return " or ".join(toml_value(arg) for arg in args)
    if origin in (list, tuple):
        return "a list of integers" if args[0] is int else f"a list of {describe(args[0])}"
    return getattr(hint, "__name__", str(hint))


def read_file(path: Path) -> dict:
    """A config file as plain data: TOML (``[tokenizer] [data] [model] [train]``) or a bundle's ``config.json``."""
    if not path.exists():
        raise ConfigError(f"{path}: no such config file (see configs/*.toml for examples)")
    try:
        if path.suffix.lower() == ".json":
            return read_json_file(path, JSON_MAX_BYTES, "config file")
        data = tomllib.loads(read_small_file(path, JSON_MAX_BYTES, "config file").decode("utf-8"))
    except (InputFileError, OSError) as err:
        raise ConfigError(str(err) if str(path) in str(err) else f"{path}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except ValueError as err:  # TOMLDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    if json_depth(data) > JSON_MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {JSON_MAX_DEPTH} deep")
    return data


# --- out: dataclasses -> TOML --------------------------------------------------------------------

SET_FROM_DATA = {"model": ("vocab_size", "num_classes", "multi_label")}  # filled in at training time, never configured


def config_toml(config, comments: bool = False) -> str:
    """The config as TOML, readable back with :func:`read_file` (an unset optional value becomes
    a comment); with ``comments``, each key carries the comment of its dataclass field."""
    lines: list[str] = []
    for section, values in asdict(config).items():  # every key, an unset encoder too
        lines += _table(section, getattr(config, section), values, comments)
    return "\n".join(lines)


def _table(name: str, obj, values: dict, comments: bool) -> list[str]:
    notes = field_comments(type(obj)) if comments else {}
    lines, tables = [f"[{name}]"], []
    for key, value in values.items():
        if key in SET_FROM_DATA.get(name, ()):
            continue
        if is_dataclass(getattr(obj, key)):  # a nested table, e.g. [data.source], after the plain keys
            tables += _table(f"{name}.{key}", getattr(obj, key), value, comments)
            continue
        line = f"# {key} = (unset)" if value is None else f"{key} = {toml_value(value)}"
        lines.append(f"{line}  # {notes[key]}" if notes.get(key) else line)
    return lines + [""] + tables


def toml_value(value) -> str:
    """One value as TOML: ``true``, ``[3, 4, 5]``, ``"spacy"``, ``{ header = true }``, ``0.001``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


def field_comments(kind: type) -> dict[str, str]:
    """Each field's comment in the dataclass's source (at the end of its line, else the lines just
    above it): the one place a config key is documented, copied into ``configs/default.toml``."""
    trailing: dict[str, str] = {}
    above: dict[str, str] = {}
    starts: dict[int, str] = {}  # line -> the name a line of the class body starts with
    pending: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(inspect.getsource(kind)).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if token.start[0] in starts:
                trailing[starts[token.start[0]]] = text
            else:
                pending.append(text)
        elif token.type == tokenize.NAME and token.start[1] == 4 and token.start[0] not in starts:
            starts[token.start[0]] = token.string
            above[token.string], pending = " ".join(pending), []
    names = [f.name for f in fields(kind)]
    return {name: trailing.get(name) or above[name] for name in names if trailing.get(name) or above.get(name)}


DEFAULT_HEADER = """\
# textpipe's defaults, every key of every section: copy this file, change what you need, and
#   textpipe train --config my.toml --train my_train.csv --test my_test.csv --out runs/mine
# Flags on the command line override the file; `--print-config` shows the result.
# Each section mirrors a dataclass: [tokenizer] TokenizerConfig, [data] DataConfig (config.py),
# [data.source] SourceConfig, [model] ModelConfig, [train] TrainConfig. Unknown keys are errors.
# Generated from those dataclasses (a test checks it): python -m textpipe.run.config > configs/default.toml
"""


def default_toml() -> str:
    """``configs/default.toml``: every default, with each field's comment."""
    return DEFAULT_HEADER + "\n" + config_toml(PipelineConfig(), comments=True)


if __name__ == "__main__":
    print(default_toml(), end="")
