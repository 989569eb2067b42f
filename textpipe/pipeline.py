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
from .dataset import TextClassificationDataset, is_held_out
from .models import ModelConfig, build_model
from .sources import DataError, Example, SourceConfig, read_examples
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
    source: SourceConfig = field(default_factory=SourceConfig)  # columns, header, on_bad_row, max_chars

    def __post_init__(self) -> None:
        if isinstance(self.source, dict):  # from PipelineConfig.from_dict or a config file
            self.source = SourceConfig.from_dict(self.source)


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

    source = config.data.source
    skipping = source.on_bad_row == "skip"
    skipped: dict[str, dict[str, int]] = {"train": {}}
    counts: dict[str, int] = {}  # rows per label, held-out rows included
    rows = read_examples(train, config=source, skipped=skipped["train"])
    training_texts = _training_texts(rows, counts, train_part, holdout, quiet)
    vocab = build_vocab(tokenizer.pipe(training_texts), config.data.min_freq, config.data.max_size)
    labels = sorted(label for label in counts if label is not _TRAIN_ROWS)
    if len(labels) < 2:
        raise DataError(train, None, f"training data needs at least 2 labels, found {labels}")
    num_train = counts[_TRAIN_ROWS]
    if not quiet:
        print(f"{num_train} training rows, {len(labels)} labels, vocabulary of {len(vocab)} tokens", file=sys.stderr)

    def loader(path, part="all", training=False):
        dataset = TextClassificationDataset(
            path, tokenizer, vocab, labels, holdout_every=holdout if part != "all" else 0, part=part,
            shuffle_buffer=config.data.shuffle_buffer if training else 0, seed=config.train.seed, source=source,
        )
        batch_size = config.train.batch_size if training else config.data.eval_batch_size
        return DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate, num_workers=config.data.num_workers)

    model_config = ModelConfig(**{**config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(labels)})
    model = build_model(model_config)
    dev_loader = loader(dev) if dev else loader(train, "dev")
    # Before training, so a bad dev or test row stops the run now; in skip mode, the
    # counts (the DataLoader's workers cannot report theirs). Train was counted above.
    if dev:
        skipped["dev"] = dev_loader.dataset.count_skipped()
    skipped["test"] = loader(test).dataset.count_skipped()
    result = fit(model, loader(train, train_part, training=True), dev_loader, config.train, len(labels), num_train, quiet)
    test_metrics = evaluate(model, loader(test), len(labels), config.train.device)

    save_bundle(out, model, vocab, tokenizer, labels, model_config, config.train.to_dict())
    metrics = {"test": test_metrics, "dev": result.best_dev, "best_epoch": result.best_epoch, "history": result.history}
    if skipping:
        metrics["skipped"] = skipped
    write_json_atomic(Path(out) / METRICS, metrics)
    return metrics


def evaluate_file(bundle_dir: str | Path, data: str | Path, batch_size: int = 512, source: SourceConfig | None = None) -> dict:
    """Accuracy, macro-F1, loss and row count of a saved bundle on a labelled file.

    With ``source.on_bad_row == "skip"`` the result also holds ``"skipped"``: reason -> rows.
    """
    bundle = load_bundle(bundle_dir)
    ds = TextClassificationDataset(data, bundle.tokenizer, bundle.vocab, bundle.labels, source=source)
    skipped = ds.count_skipped()
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=pad_collate)
    metrics = evaluate(bundle.model, loader, len(bundle.labels))
    if ds.source.on_bad_row == "skip":
        metrics["skipped"] = skipped
    return metrics


def _section_from_dict(name: str, kind: type, d: dict):
    known = {f.name for f in fields(kind)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in [{name}]: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return kind(**d)


_TRAIN_ROWS = None  # the key under which _training_texts counts the rows it yields (no label is None)


def _training_texts(rows: Iterable[Example], counts: dict, part: str, holdout_every: int, quiet: bool) -> Iterator[str]:
    """Texts of the training part, for the vocab builder, in one pass over the whole file.

    Counts the labels of every row on the way, held-out ones included, so a label
    only held-out dev rows have is still one of the model's labels.
    """
    counts[_TRAIN_ROWS] = 0
    for i, example in enumerate(tqdm(rows, desc="vocab", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)):
        counts[example.label] = counts.get(example.label, 0) + 1
        if part == "all" or not is_held_out(i, holdout_every):
            counts[_TRAIN_ROWS] += 1
            yield example.text
