"""Where the text stages meet the tensor core: a labelled file in, a trained bundle out.

:func:`train_files` runs every stage in order: read the training file once to
build the vocabulary and the label set, stream it through a
:class:`~textpipe.dataset.TextClassificationDataset` into a ``DataLoader`` with the
padding ``collate_fn``, train, score the test file, and save a bundle and
``metrics.json``. The CLI and ``make train`` are thin wrappers over it.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .bundle import load_bundle, save_bundle, write_json_atomic
from .collate import pad_collate
from .dataset import TextClassificationDataset, select_part
from .models import ModelConfig, build_model
from .sources import DataError, Example, read_examples
from .tokenizer import Tokenizer, TokenizerConfig
from .train import TrainConfig, evaluate, fit, set_seed
from .vocab import build_vocab

METRICS = "metrics.json"


@dataclass
class DataConfig:
    min_freq: int = 1
    max_size: int | None = None
    holdout_every: int = 10  # without a dev file, about 1 training row in 10 is held out for dev
    shuffle_buffer: int = 100_000
    num_workers: int = 0
    eval_batch_size: int = 512


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        """The inverse of :meth:`to_dict`. Missing keys keep their defaults; unknown
        sections or keys are errors, so a typo in a config file is never ignored."""
        sections = {f.name: f.default_factory for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown config sections: {', '.join(sorted(unknown))} (known: {', '.join(sections)})")
        return cls(**{name: _section_from_dict(name, kind, d.get(name, {})) for name, kind in sections.items()})


def train_files(
    train: str | Path,
    test: str | Path,
    out: str | Path,
    dev: str | Path | None = None,
    config: PipelineConfig | None = None,
    quiet: bool = False,
) -> dict:
    """Train on ``train``, pick the best epoch on ``dev`` (or a held-out part of train),
    score ``test``, and write the bundle and ``metrics.json`` into ``out``."""
    config = config or PipelineConfig()
    set_seed(config.train.seed)
    tokenizer = Tokenizer.from_config(config.tokenizer)
    train_part = "all" if dev else "train"
    holdout = 0 if dev else config.data.holdout_every
    Path(out).mkdir(parents=True, exist_ok=True)  # fail on an unusable folder now, not after training

    counts: dict[str, int] = {}
    rows = select_part(read_examples(train), train_part, holdout)
    vocab = build_vocab(_tokens_counting_labels(rows, tokenizer, counts, quiet), config.data.min_freq, config.data.max_size)
    labels = sorted(counts)
    if len(labels) < 2:
        raise DataError(train, None, f"training data needs at least 2 labels, found {labels}")
    num_train = sum(counts.values())
    if not quiet:
        print(f"{num_train} training rows, {len(labels)} labels, vocabulary of {len(vocab)} tokens", file=sys.stderr)

    def loader(path, part="all", training=False):
        dataset = TextClassificationDataset(
            path, tokenizer, vocab, labels, holdout_every=holdout if part != "all" else 0, part=part,
            shuffle_buffer=config.data.shuffle_buffer if training else 0, seed=config.train.seed,
        )
        batch_size = config.train.batch_size if training else config.data.eval_batch_size
        return DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate, num_workers=config.data.num_workers)

    model_config = ModelConfig(**{**config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(labels)})
    model = build_model(model_config)
    dev_loader = loader(dev) if dev else loader(train, "dev")
    result = fit(model, loader(train, train_part, training=True), dev_loader, config.train, len(labels), num_train, quiet)
    test_metrics = evaluate(model, loader(test), len(labels), config.train.device)

    save_bundle(out, model, vocab, tokenizer, labels, model_config, config.train.to_dict())
    metrics = {"test": test_metrics, "dev": result.best_dev, "best_epoch": result.best_epoch, "history": result.history}
    write_json_atomic(Path(out) / METRICS, metrics)
    return metrics


def evaluate_file(bundle_dir: str | Path, data: str | Path, batch_size: int = 512) -> dict:
    """Accuracy, macro-F1, loss and row count of a saved bundle on a labelled file."""
    bundle = load_bundle(bundle_dir)
    ds = TextClassificationDataset(data, bundle.tokenizer, bundle.vocab, bundle.labels)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=pad_collate)
    return evaluate(bundle.model, loader, len(bundle.labels))


def _section_from_dict(name: str, kind: type, d: dict):
    known = {f.name for f in fields(kind)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in [{name}]: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return kind(**d)


def _tokens_counting_labels(rows: Iterable[Example], tokenizer: Tokenizer, counts: dict, quiet: bool) -> Iterator[list[str]]:
    """Tokens of each training row, for the vocab builder; counts the labels on the way."""

    def texts() -> Iterator[str]:
        for example in tqdm(rows, desc="vocab", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False):
            counts[example.label] = counts.get(example.label, 0) + 1
            yield example.text

    return tokenizer.pipe(texts())
