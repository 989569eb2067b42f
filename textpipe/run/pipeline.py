"""Where the text stages meet the tensor core: the pieces that compose files into a trained bundle.

The checks made before the first token is read (:func:`check_settings`), the loaders
over a file (:class:`Loaders`) (the one pass over the training file is :mod:`textpipe.run.counts`),
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

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm

from ..bundle.store import Bundle, BundleError, load_bundle, save_bundle
from ..bundle.describe import side_file
from .config import PipelineConfig, SettingsError, toml_value
from ..text.dataset import TextClassificationDataset
from ..bundle.explain import strongest_features
from ..core.files import CONFIG, METRICS, VOCAB, check_folder, make_folder, write_json_atomic  # noqa: F401 (METRICS, VOCAB: phases reads them here)
from ..text.loader import make_loader
from ..bundle.predict import shipped_mixer
from ..bundle.report import misclassified, misclassified_sets, relative_path, summarize, summarize_multilabel, write_report
from ..text.sources import TORCHTEXT_PREFIX, DataError, SourceConfig, read_examples
from ..text.token_stream import TokenStream
from ..text.tokenizer import Tokenizer
from ..core.metrics import predict_logits
from ..core.runtime import Placement, resolve_device
from .counts import cache_folder

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
    stream: TokenStream | None = None  # the training file's tokens from its count pass: its token caches are written from them

    @property
    def train_part(self) -> str:
        return "train" if self.holdout else "all"

    def of(self, path, part: str = "all", *, training: bool = False) -> StatefulDataLoader:
        """A loader over ``path``'s ``part`` ("all", "train" or "dev"): shuffled and bucketed by length when ``training``,
        read from the token cache when there is one."""
        config, placement = self.config, self.placement
        dataset = TextClassificationDataset(path, self.tokenizer, self.vocab, self.labels, holdout_every=self.holdout if part != "all" else 0,
                                            part=part, source=config.data.source, cache_dir=cache_folder(config.data.cache_dir), stream=self.stream)
        return make_loader(
            dataset, config.train.batch_size if training else config.data.eval_batch_size,
            shuffle_buffer=config.data.shuffle_buffer if training else 0, bucket=config.data.bucket and training, seed=config.train.seed,
            rank=placement.rank if training else 0, world_size=placement.world if training else 1,
            num_workers=self.workers, pin_memory=placement.device.type == "cuda",
        )

    def count_skipped(self, train: dict | None, dev_file_loader, test) -> dict:
        """Each file's skipped rows by reason, read before training, so a bad dev or test row stops the run now (in skip mode,
        the counts: the DataLoader's workers cannot report theirs). ``train``: counted with the vocabulary."""
        skipped = {"train": train or {}}
        if dev_file_loader is not None:
            skipped["dev"] = dev_file_loader.dataset.count_skipped()
        if test:
            skipped["test"] = self.of(test).dataset.count_skipped()
        return skipped

    def in_order(self) -> "Loaders":
        """The same loaders without workers, for a pass whose predictions must line up with the file's rows."""
        return replace(self, workers=0)


def config_summary(config: PipelineConfig) -> str:
    """The effective config, one line per section (``key=value`` as in TOML)."""
    lines = ["effective config (saved as config.json in the bundle):"]
    for section, values in config.to_dict().items():
        shown = (f"{k}={toml_value(v)}" for k, v in values.items() if v is not None and k not in ("vocab_size", "num_classes"))
        lines.append(f"  [{section}] {' '.join(shown)}")
    return "\n".join(lines)


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
    holds the coverage and accuracy of the rows whose top probability reaches it. A multi-label bundle's rows are
    scored as label sets (``summary["multi_label"]``), each label at its own threshold, or at ``threshold`` when given;
    without ``source`` its file is read as the bundle's training file was (its ``label_sep``).

    Example:
        >>> report_file("runs/mine", "other.csv", "runs/mine/eval-other")["overall"]["accuracy"]
    """
    check_folder(out)  # before the scoring, which may take long
    bundle = load_bundle(bundle_dir)
    thresholds = None
    if bundle.multi_label is not None:
        saved = bundle.multi_label["thresholds"]
        thresholds = torch.tensor([threshold] * len(saved) if threshold is not None else saved, dtype=torch.float64)
        source = source or SourceConfig(label_sep=bundle.multi_label["label_sep"])
    ds = TextClassificationDataset(data, bundle.tokenizer, bundle.vocab, bundle.labels, source=source)
    skipped = ds.count_skipped()
    loader = make_loader(ds, batch_size)
    summary, mistakes = score_and_list_mistakes(bundle.model, loader, bundle.labels, "cpu", quiet=quiet, mix=shipped_mixer(bundle), threshold=threshold,
                                                thresholds=thresholds)
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
                            threshold: float | None = None, thresholds: torch.Tensor | None = None) -> tuple[dict, list]:
    """The report's numbers and the misclassified rows of ``model`` on a labelled loader without workers;
    ``mix(logits, texts)``, when given, turns the model's logits into the shipped ones (the sentence encoder's mix, the temperature);
    with ``threshold``, the coverage and accuracy there too (``summary["calibration"]["at_threshold"]``). Multi-label
    rows are scored as label sets, each label predicted at its ``thresholds`` entry (0.5 for all when not given)."""
    if loader.num_workers:
        raise ValueError("score_and_list_mistakes() needs a loader without workers, so that predictions come in file order")
    rows = _with_progress(loader, "evaluate", quiet)
    logits, gold = predict_logits(model, rows, torch.device(device))
    texts = (example.text for example in loader.dataset.examples())
    if mix is not None:
        texts = list(texts)
        logits = mix(logits, texts)
    if gold.dim() == 2:
        thresholds = torch.full((len(labels),), 0.5) if thresholds is None else thresholds
        return summarize_multilabel(logits, gold, labels, thresholds), misclassified_sets(texts, logits, gold, labels, thresholds)
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


def save_outputs(out: Path, bundle: Bundle, outputs: Outputs, plots: bool = True) -> None:
    """Write a trained model's bundle (with a sentence head, its weights and encoder record too), ``config.json``,
    ``metrics.json`` and the report into ``out`` (``plots=False``: its PNGs are drawn elsewhere)."""
    save_bundle(out, bundle)
    write_json_atomic(out / CONFIG, outputs.config.to_dict())
    write_json_atomic(out / METRICS, outputs.metrics)
    features = strongest_features(bundle.model, bundle.vocab, bundle.labels)
    write_report(out, outputs.summary, outputs.mistakes, outputs.history, title=outputs.title, features=features, notes=outputs.notes,
                 plots=plots)


def _with_progress(batches: Iterable, desc: str, quiet: bool) -> Iterator:
    """The batches, counted in rows on a tqdm bar (on a terminal, and unless quiet)."""
    with tqdm(desc=desc, unit="row", disable=True if quiet else None, file=sys.stderr, leave=False) as bar:
        for batch in batches:
            bar.update(len(batch))
            yield batch
