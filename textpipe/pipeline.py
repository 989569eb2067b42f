"""Where the text stages meet the tensor core: a labelled file in, a trained bundle out.

:func:`train_files` runs every stage in order: read the training file once to
build the vocabulary and the label set, stream it through a
:class:`~textpipe.dataset.TextClassificationDataset` into a ``DataLoader`` with the
padding ``collate_fn``, train, score the test file, and save a bundle,
``metrics.json``, the effective config (``config.json``) and the report of
:mod:`textpipe.report` on the test file. ``run.json`` (written first: data files,
config, creation time, package versions) and ``checkpoints/`` let
:func:`resume_run` finish a run that was killed. :func:`report_file` writes the
same report for a saved bundle on any labelled file. The CLI and ``make train``
are thin wrappers over these.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm

from .bundle import load_bundle, save_bundle
from .checkpoint import CheckpointStore, OutputError
from .files import file_sha256, write_json_atomic
from .events import emit
from .explain import strongest_features
from .runfolder import STAGE, RunLock, commit, is_complete, stage_of, start_fresh, unfinished
from .collate import pad_collate
from .dataset import TextClassificationDataset, is_held_out
from .models import ModelConfig, build_model
from .report import misclassified, search_notes, summarize, write_report
from .sources import TORCHTEXT_PREFIX, DataError, Example, SourceConfig, read_examples
from .tokenizer import Tokenizer, TokenizerConfig
from .metrics import evaluate, predict_logits
from .runtime import RunContext, resolve_device, run_scope, set_seed
from .train import FitResult, TrainConfig, fit
from .vectors import load_into_embedding, load_into_frozen, resolve_vectors
from .vocab import build_vocab, load_vocab, save_vocab

METRICS, CONFIG, RUN, VOCAB, CHECKPOINTS = "metrics.json", "config.json", "run.json", "vocab.json", "checkpoints"
PACKAGES = ("textpipe", "torch", "torchtext", "torchdata", "spacy", "numpy", "matplotlib")

log = logging.getLogger("textpipe")  # progress lines; the CLI sends them to stderr, a library caller chooses


@dataclass
class DataConfig:
    min_freq: int = 1
    max_size: int | None = None
    holdout_every: int = 10  # without a dev file, about 1 training row in 10 is held out for dev
    shuffle_buffer: int = 100_000
    num_workers: int = 0
    eval_batch_size: int = 512
    bucket: bool = True  # training batches of rows of similar length (sorted inside each shuffle block), so less padding
    # Tokenize each file once into a memory-mapped cache there; "auto": the user's cache folder
    # (see cache_folder); false (`--set data.cache_dir=false`), None or "": tokenize every epoch.
    cache_dir: str | bool | None = "auto"
    source: SourceConfig = field(default_factory=SourceConfig)  # columns, header, on_bad_row, max_chars
    vectors: str | None = None  # named vectors (glove-6b-50d, fetched once) or a GloVe / word2vec text file: start of the word rows
    max_labels: int = 1000  # more labels than this (or one over 100 characters) looks like swapped columns: an error

    def __post_init__(self) -> None:
        if isinstance(self.source, dict):  # from PipelineConfig.from_dict or a config file
            self.source = SourceConfig.from_dict(self.source)
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
    test: str | Path | None,
    out: str | Path,
    dev: str | Path | None = None,
    config: PipelineConfig | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    search: dict | None = None,
) -> dict:
    """Train on ``train``, pick the best epoch on ``dev`` (or a held-out part of train),
    score ``test``, and write the bundle and ``metrics.json`` into ``out``.

    Everything is written into ``out/.textpipe-run/`` first (``run.json``, then
    checkpoints, so :func:`resume_run` can finish a run that was killed) and moved into
    ``out`` once the run has finished. A non-empty ``out`` is refused unless ``overwrite``.
    Without ``test`` the report and ``metrics["scored_on"]`` are on the dev data; then
    no refit follows, so the shipped model has never seen the rows it is scored on.
    Progress goes to the ``textpipe`` logger (silent unless the caller configures logging).
    ``search`` is what :func:`textpipe.autotune.autotune_files` found (its trials, and
    the chosen configuration's early-stopping result, which the refit then starts from).
    """
    config = config or PipelineConfig()
    check_settings(config, {"train": train, "dev": dev, "test": test})
    run = {**run_info({"train": train, "dev": dev, "test": test}), "config": config.to_dict()}
    if search is not None:
        run["autotune"] = {k: v for k, v in search.items() if k != "first_phase"}
        if config.train.refit and dev is None:
            run["refit"] = search["first_phase"]
    out = Path(out)
    rank, _ = distributed_rank(config.train.device)
    if rank != 0:  # under torchrun only rank 0 writes files
        return _run(run, stage_of(out), out, config, None, quiet, resume=None)
    _prepare_output(out)
    with RunLock(out):
        stage = start_fresh(out, overwrite)
        write_json_atomic(stage / RUN, run)
        metrics = _run(run, stage, out, config, _checkpoint_store(stage, config), quiet, resume=None)
        commit(stage, out, config.train.keep_checkpoints_after)
    return metrics


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


def dev_result(train: str | Path, dev: str | Path | None, config: PipelineConfig, tokenizer: Tokenizer, scratch: Path) -> FitResult:
    """Only the first phase of a run, quietly, nothing kept: train with early stopping on ``dev``
    (or the held-out rows of ``train``) and return the epoch count and dev scores it reached.

    Example:
        >>> dev_result("train.csv", None, PipelineConfig(), Tokenizer(), Path("/tmp/scratch")).best_dev["accuracy"]
    """
    run = {"data": {"train": _absolute(train), "dev": None if dev is None else _absolute(dev), "test": None}}
    config = replace(config, train=replace(config.train, keep_checkpoints=0))
    _, _, _, result, _ = _train_phase(run, scratch, config, tokenizer, None, True, None, refit_epochs=0)
    return result


def distributed_rank(device: str) -> tuple[int, int]:
    """``(rank, world_size)``: under ``torchrun`` (its WORLD_SIZE / RANK variables) the
    process group is started once, gloo on cpu and nccl on cuda; ``(0, 1)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if resolve_device(device).type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world


def resume_run(out: str | Path, quiet: bool = False) -> dict:
    """Finish the run in ``out`` from its newest checkpoint (from the start when it has none).

    Example:
        >>> metrics = resume_run("runs/mine")   # after the first run was killed
    """
    out = Path(out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--resume runs in one process: a checkpoint holds one rank's place in the data")
    with RunLock(out):
        stage = unfinished(out)
        if stage is not None and is_complete(stage):  # killed while moving the finished files into place
            run = json.loads(((stage if (stage / RUN).is_file() else out) / RUN).read_text(encoding="utf-8"))
            commit(stage, out, run["config"]["train"].get("keep_checkpoints_after", False))
            return json.loads((out / METRICS).read_text(encoding="utf-8"))
        if stage is None or not (stage / RUN).is_file():
            done = " (its run has finished)" if (out / "bundle.json").is_file() else ""
            raise FileNotFoundError(f"{out} holds no unfinished run{done}: is it the --out folder of a textpipe train run?")
        run = json.loads((stage / RUN).read_text(encoding="utf-8"))
        config = PipelineConfig.from_dict(run["config"])
        store = _checkpoint_store(stage, config)
        checkpoint = store.load_latest() if store else None
        if checkpoint is not None and run["fingerprint"] != _fingerprint(run["data"]["train"]):
            raise DataError(run["data"]["train"], None, "the training file changed since the run started; a resume needs the same data (start a new run instead)")
        if checkpoint is not None and not quiet:
            log.info(f"resuming from {checkpoint['path']} (epoch {checkpoint['state']['epoch']}, step {checkpoint['state']['step']})")
        metrics = _run(run, stage, out, config, store, quiet, resume=checkpoint)
        commit(stage, out, config.train.keep_checkpoints_after)
    return metrics


def _checkpoint_store(out: Path, config: PipelineConfig) -> CheckpointStore | None:
    keep = config.train.keep_checkpoints
    return CheckpointStore(out / CHECKPOINTS, keep) if keep else None


def _run(run: dict, out: Path, final: Path, config: PipelineConfig, store: CheckpointStore | None, quiet: bool, resume: dict | None) -> dict:
    """Train (and refit, see ``TrainConfig.refit``), score the test file and save everything into
    ``out``, the staging folder of the run whose outputs go to ``final``.

    Where a refit follows, ``run.json`` records the first phase's result before the
    refit begins, so a resume knows which phase its checkpoints belong to.
    """
    rank, _ = distributed_rank(config.train.device)
    tokenizer = Tokenizer.from_config(config.tokenizer)  # one for every phase and loader: they share its chunk memo
    # A dev file's rows are not training rows: nothing to refit on. Without a test file the
    # held-out rows are the only honest score, so they must stay out of training.
    refit = config.train.refit and not run["data"]["dev"] and run["data"]["test"] is not None
    if "refit" not in run:
        model, vocab, labels, result, skipped = _train_phase(run, out, config, tokenizer, store, quiet, resume, refit_epochs=0)
        if refit:
            run["refit"] = {"epochs": result.best_epoch, "best_dev": result.best_dev, "history": result.history}
            model = None  # let the first phase's weights go before the refit builds its own
            if store is not None:
                store.clear()  # first, so a run.json that names the refit never sits beside the first phase's checkpoints
            if rank == 0:
                write_json_atomic(out / RUN, run)
            emit("refit_recorded")
            resume = None
    if refit:
        model, vocab, labels, refit_result, skipped = _train_phase(run, out, config, tokenizer, store, quiet, resume, refit_epochs=run["refit"]["epochs"])
        result = FitResult(run["refit"]["epochs"], run["refit"]["best_dev"], run["refit"]["history"])

    device = next(model.parameters()).device
    test, dev = run["data"]["test"], run["data"]["dev"]
    scored_on = f"test file {test}" if test else f"dev file {dev}" if dev else f"dev rows held out of {run['data']['train']} (1 in {config.data.holdout_every})"
    # No workers for the scoring pass: predictions then come in file order and line up with the texts.
    holdout = 0 if test or dev else config.data.holdout_every
    rows = _loader(test or dev or run["data"]["train"], config, tokenizer, vocab, labels, device, "all" if holdout == 0 else "dev", holdout)
    summary, mistakes = score(model, rows, labels, device, quiet)
    metrics = {"test": summary["overall"] if test else None, "dev": result.best_dev, "scored_on": scored_on,
               "best_epoch": result.best_epoch, "history": result.history, **summary}
    if refit:
        metrics["refit"] = {"epochs": result.best_epoch, "rows": run["num_train"], "history": refit_result.history}
    if config.data.source.on_bad_row == "skip":
        metrics["skipped"] = skipped
    if rank != 0:
        return metrics
    model_config = ModelConfig(**{**config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(labels)})
    save_bundle(out, model, vocab, tokenizer, labels, model_config, config.train.to_dict())
    write_json_atomic(out / CONFIG, config.to_dict())
    write_json_atomic(out / METRICS, metrics)
    trained = f"best epoch {result.best_epoch} of {len(result.history)}"
    if "autotune" in run:
        trained = f"configuration chosen by autotune ({len(run['autotune']['trials'])} tried on dev, see run.json); " + trained
    if refit:
        trained += f", then refit on all {run['num_train']} training rows for {result.best_epoch} epochs"
    notes = [f"Model `{config.model.name}` trained on `{run['data']['train']}`; {trained}. Scores are on the {scored_on}.",
             *([] if test else ["There was no test file: these are dev scores, which chose the epoch, so they are a little optimistic."])]
    features = strongest_features(model, vocab, labels)
    write_report(out, summary, mistakes, result.history, title=f"textpipe report: {final.name}", features=features,
                 notes=notes + search_notes(run.get("autotune")))
    return metrics


def _train_phase(run: dict, out: Path, config: PipelineConfig, tokenizer: Tokenizer, store: CheckpointStore | None, quiet: bool, resume: dict | None, refit_epochs: int):
    """Build (or reload) the vocabulary and train one model: with early stopping on dev, or,
    given ``refit_epochs``, on every training row for that many epochs.

    Returns the model, the vocabulary, the labels, the ``FitResult`` and the skipped-row counts.
    """
    train, test, dev = run["data"]["train"], run["data"]["test"], run["data"]["dev"]
    set_seed(config.train.seed)
    train_part = "all" if dev or refit_epochs else "train"
    holdout = 0 if train_part == "all" else config.data.holdout_every

    rank, world = distributed_rank(config.train.device)
    quiet = quiet or rank != 0
    if resume is None:  # every rank builds the same vocabulary; rank 0 saves it
        vocab, label_counts, num_train, train_skipped = _build_vocab_and_labels(train, train_part, holdout, tokenizer, config.data, quiet)
        labels = label_order(label_counts)
        run.update(labels=labels, label_counts=label_counts, num_train=num_train, skipped=train_skipped, fingerprint=_fingerprint(train))
        if rank == 0:
            save_vocab(vocab, out / VOCAB)
            write_json_atomic(out / RUN, run)
    else:  # the vocabulary, labels and skip counts were saved before the first checkpoint
        vocab, labels, num_train = load_vocab(out / VOCAB), run["labels"], run["num_train"]
        label_counts = run.get("label_counts", {})
        train_skipped = run.get("skipped", {})
    skipped = {"train": train_skipped}
    if not quiet:
        what = f"refit for {refit_epochs} epochs on all {num_train} training rows" if refit_epochs else f"{num_train} training rows"
        log.info(f"{what}, {len(labels)} labels, vocabulary of {len(vocab)} tokens")

    device = resolve_device(config.train.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    def loader(path, part="all", training=False):
        holdout_every = holdout if part != "all" else 0
        return _loader(path, config, tokenizer, vocab, labels, device, part, holdout_every, training, rank, world, config.data.num_workers)

    model_config = ModelConfig(**{**config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(labels)})
    model = build_model(model_config)
    if config.data.vectors and resume is None:  # a resume gets the weights from its checkpoint
        if config.model.frozen_dim:
            coverage = load_into_frozen(model, vocab, resolve_vectors(config.data.vectors))
        else:
            coverage = load_into_embedding(model.embedding, vocab, resolve_vectors(config.data.vectors))
        run["vectors"] = coverage.to_dict()
        if rank == 0:
            write_json_atomic(out / RUN, run)
        if not quiet:
            log.info(coverage.describe())
    if rank == 0:
        _check_free_space(out, model, config.train.keep_checkpoints, quiet)
    dev_loader = None if refit_epochs else loader(dev) if dev else loader(train, "dev")
    # Before training, so a bad dev or test row stops the run now; in skip mode, the
    # counts (the DataLoader's workers cannot report theirs). Train was counted above.
    if dev:
        skipped["dev"] = dev_loader.dataset.count_skipped()
    if test:
        skipped["test"] = loader(test).dataset.count_skipped()
    if not quiet and not refit_epochs and resume is None:
        log.info(config_summary(config))  # after the data passed its checks: an error is the first thing a user sees
    train_config = replace(config.train, device=str(device), epochs=refit_epochs or config.train.epochs)
    with run_scope(train_config.deterministic) as stop:
        context = RunContext(device, rank, world, quiet, checkpoints=store, resume=resume, stop=stop)
        result = fit(model, loader(train, train_part, training=True), dev_loader, train_config, len(labels), num_train=num_train,
                     class_counts=[label_counts.get(label, 0) for label in labels], context=context)
    return model, vocab, labels, result, skipped


def _loader(path, config: PipelineConfig, tokenizer: Tokenizer, vocab, labels, device, part="all", holdout=0, training=False, rank=0, world=1, num_workers=0) -> StatefulDataLoader:
    # The dataset makes whole batches (bucketed by length when training), read from the cache when there is one.
    dataset = TextClassificationDataset(
        path, tokenizer, vocab, labels, holdout_every=holdout, part=part,
        shuffle_buffer=config.data.shuffle_buffer if training else 0, seed=config.train.seed, source=config.data.source,
        batch_size=config.train.batch_size if training else config.data.eval_batch_size,
        bucket=config.data.bucket and training, cache_dir=cache_folder(config.data.cache_dir),
        rank=rank if training else 0, world_size=world if training else 1,  # each rank evaluates all of dev and test
    )
    # Its own generator, so creating a loader's iterator never draws from torch's global
    # generator (which dropout uses): a resumed run sees the same random numbers.
    return StatefulDataLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.train.seed),
    )


def _build_vocab_and_labels(train, part: str, holdout: int, tokenizer: Tokenizer, data: DataConfig, quiet: bool):
    """One streaming pass over the training file: the vocabulary (of the training part),
    the rows per label (held-out rows included), the number of training rows, and the rows skipped by reason."""
    tally = _Tally()
    skipped: dict[str, int] = {}
    rows = read_examples(train, config=data.source, skipped=skipped)
    vocab = build_vocab(tokenizer.pipe(_training_texts(rows, tally, part, holdout, quiet)), data.min_freq, data.max_size)
    labels = label_order(tally.labels)
    if len(labels) < 2:
        raise DataError(train, None, f"training data needs at least 2 labels, found {labels}")
    _check_labels_look_like_labels(train, labels, data.max_labels)
    return vocab, {label: tally.labels[label] for label in labels}, tally.training_rows, skipped


def _check_labels_look_like_labels(train, labels: list[str], max_labels: int) -> None:
    longest = max(labels, key=len)
    if len(labels) > max_labels or len(longest) > 100:
        raise DataError(train, None, (
            f"{len(labels):,} different labels, the longest {len(longest):,} characters ({longest[:40]!r}...): the label column looks like text; "
            f"are the label and text columns swapped? (--label-column, --text-columns; data.max_labels={max_labels} allows more labels)"
        ))


def _prepare_output(out: Path) -> None:
    """Fail now, not after hours of training, when ``out`` cannot hold the run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to output folder {out}: {err.strerror or err}") from None


def _check_free_space(out: Path, model: torch.nn.Module, keep: int, quiet: bool) -> None:
    """Refuse a run the disk surely cannot hold; warn when it may not."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Each checkpoint holds the weights, the best epoch's weights once there is one, and Adam's
    # two moments for the rows trained so far (none to all of them); one more is written while
    # the kept ones exist. Then the bundle: the weights once more.
    least = weights * (keep + 2) if keep else weights
    most = weights * (4 * (keep + 1) + 1) if keep else weights
    free = shutil.disk_usage(out).free
    out = out.parent if out.name == STAGE else out  # the folder the user named
    if free < least:
        raise OutputError(f"output folder {out} has {free / 1e6:.0f} MB free; this run's checkpoints and bundle need at least {least / 1e6:.0f} MB")
    if free < most and not quiet:
        print(f"warning: output folder {out} has {free / 1e6:.0f} MB free; this run's checkpoints and bundle may need up to "
              f"{most / 1e6:.0f} MB (fewer with --keep-checkpoints 1, or 0 for none)", file=sys.stderr)


def config_summary(config: PipelineConfig) -> str:
    """The effective config, one line per section (``key=value`` as in TOML)."""
    lines = ["effective config (saved as config.json in the bundle):"]
    for section, values in config.to_dict().items():
        shown = (f"{k}={_toml(v)}" for k, v in values.items() if v is not None and k not in ("vocab_size", "num_classes"))
        lines.append(f"  [{section}] {' '.join(shown)}")
    return "\n".join(lines)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value) if isinstance(value, str) else repr(value)


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
    if setting != "auto":
        return Path(setting)
    if os.environ.get("TEXTPIPE_CACHE"):
        return Path(os.environ["TEXTPIPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textpipe"


def _absolute(path: str | Path) -> str:
    return str(path) if str(path).startswith(TORCHTEXT_PREFIX) else str(Path(path).resolve())


def _fingerprint(path: str | Path) -> dict:
    """What a resume compares: the content's sha256 (a same-size edit with an old mtime is still caught)."""
    if str(path).startswith(TORCHTEXT_PREFIX):
        return {"torchtext": str(path)}  # torchtext checks its files' MD5 itself
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path) if path.is_dir() else ''}\0".encode("utf-8", "surrogateescape"))
        digest.update(file_sha256(file).encode())
    return {"sha256": digest.hexdigest()}


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
    bundle = load_bundle(bundle_dir)
    ds = TextClassificationDataset(data, bundle.tokenizer, bundle.vocab, bundle.labels, source=source)
    skipped = ds.count_skipped()
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=pad_collate)
    summary, mistakes = score(bundle.model, loader, bundle.labels, "cpu", quiet)
    if ds.source.on_bad_row == "skip":
        summary["skipped"] = skipped
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out) / METRICS, summary)
    trained = Path(bundle_dir) / METRICS
    history = json.loads(trained.read_text(encoding="utf-8")).get("history") if trained.is_file() else None
    write_report(out, summary, mistakes, history, title=f"textpipe report: {Path(data).name}", notes=[
        f"The model in `{bundle_dir}` scored on `{data}`." + (" The training curves are the model's own." if history else ""),
    ])
    return summary


def score(model, loader: DataLoader, labels: list[str], device, quiet: bool = True) -> tuple[dict, list]:
    """The report's numbers and the misclassified rows of ``model`` on a labelled loader without workers."""
    if loader.num_workers:
        raise ValueError("score() needs a loader without workers, so that predictions come in file order")
    rows = _with_progress(loader, "evaluate", quiet)
    logits, gold = predict_logits(model, rows, torch.device(device))
    summary = summarize(logits, gold, labels)
    texts = (example.text for example in loader.dataset.examples())
    return summary, misclassified(texts, logits, gold, labels)


def run_info(data: dict) -> dict:
    """Where a run came from: creation time (UTC), package versions, the data files."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"created": created, "versions": versions, "data": {k: None if v is None else _absolute(v) for k, v in data.items()}}


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


def _with_progress(batches: Iterable, desc: str, quiet: bool) -> Iterator:
    """The batches, counted in rows on a tqdm bar (on a terminal, and unless quiet)."""
    with tqdm(desc=desc, unit="row", disable=True if quiet else None, file=sys.stderr, leave=False) as bar:
        for batch in batches:
            bar.update(len(batch))
            yield batch


def _section_from_dict(name: str, kind: type, d: dict):
    known = {f.name for f in fields(kind)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in [{name}]: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return kind(**d)


@dataclass
class _Tally:
    labels: dict[str, int] = field(default_factory=dict)  # rows per label, held-out rows included
    training_rows: int = 0


def _training_texts(rows: Iterable[Example], tally: _Tally, part: str, holdout_every: int, quiet: bool) -> Iterator[str]:
    """Texts of the training part, for the vocab builder, in one pass over the whole file.

    Counts the labels of every row on the way, held-out ones included, so a label
    only held-out dev rows have is still one of the model's labels.
    """
    for i, example in enumerate(tqdm(rows, desc="vocab", unit="row", disable=True if quiet else None, file=sys.stderr, leave=False)):
        tally.labels[example.label] = tally.labels.get(example.label, 0) + 1
        if part == "all" or not is_held_out(i, holdout_every):
            tally.training_rows += 1
            yield example.text
