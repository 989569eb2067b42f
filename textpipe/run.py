"""One training run as a small state machine: a labelled file in, a trained bundle out.

A run goes through explicit phases (:class:`Phase`): ``train`` (early stopping on the
dev file, or on the rows held out of the training file, picks the epoch count), then,
when there is a test file and no dev file, ``refit`` (a fresh model on every training
row for that many epochs), then ``done`` (every output is in the staging folder; only
:func:`textpipe.runfolder.commit` is left). What a resume needs is a frozen
:class:`RunState`, written to ``run.json`` by one function, :func:`_save_state`, each
time the run learns something a resume must not redo. The rank, world size and device
are resolved once, by :func:`start_distributed` (which starts the torchrun process
group), and travel as a :class:`Placement`.

Named events (:mod:`textpipe.events`) mark the phase changes, so tests and tools can
act at exact points: ``phase_start(phase=...)`` once ``run.json`` records a phase, and
``phase_end(phase=...)`` when a phase's training is over (for ``train`` followed by a
refit: its checkpoints deleted, the refit not yet recorded).

Example:
    >>> metrics = train_files("train.csv", "test.csv", "runs/mine", config=PipelineConfig(train=TrainConfig(epochs=5)))
    >>> metrics = resume_run("runs/mine")   # after a run was killed
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from .checkpoint import CheckpointError, CheckpointStore
from .events import emit
from .files import is_disk_full
from .models import ModelConfig, build_model
from .nb_linear import fit_nb_for_phase, mixed_dev_accuracy
from .pipeline import (
    METRICS, VOCAB, PipelineConfig, TrainingCounts, _loader, check_settings, config_summary, count_training_file, label_order, ngram_count_limit,
    ngram_table, save_outputs, score_and_list_mistakes,
)
from .report import relative_path, search_notes
from .runfolder import (
    CHECKPOINTS, RUN, Phase, RunLock, RunState, check_free_space, check_same_data, commit, data_fingerprints, discard_unstarted, first_missing,
    is_complete, mid_commit, prepare_output, remove_empty, stage_of, start_fresh, unfinished,
)
from .optim import lr_for_rows
from .sentence_mix import calibration_notes, encoder_record, fit_phase_calibration, fit_phase_head, head_notes, logits_mixer
from .sources import DataError
from .tokenizer import Tokenizer
from .runtime import Interrupted, Placement, RunContext, RunSignals, resolve_device, run_scope, set_seed, start_distributed  # noqa: F401 (re-exported)
from .train import FitResult, TrainConfig, fit
from .vectors import fill_with_vectors
from .vocab import load_vocab, save_vocab

log = logging.getLogger("textpipe")  # progress lines; the CLI sends them to stderr, a library caller chooses


@dataclass
class PhaseResult:
    """What one phase of training leaves: the model and the vocabulary it reads, and how training went."""

    model: torch.nn.Module
    vocab: object  # torchtext Vocab
    labels: list[str]
    fit: FitResult
    skipped: dict[str, dict[str, int]]  # part -> reason -> rows (counted in skip mode)
    counts: TrainingCounts | None  # what the vocabulary was made of (None on a resume: it was loaded)
    head: tuple | None = None  # with model.encoder: the sentence head and its record (C, beta, dev scores)
    calibration: dict | None = None  # the temperature of the shipped scores and its dev record (calibration.py); None: no dev rows to fit it on


def refits(config: PipelineConfig, data: dict) -> bool:
    """Whether a refit follows the train phase. A dev file's rows are not training rows: nothing to
    refit on. Without a test file the held-out rows are the only honest score: they stay out of training."""
    return bool(config.train.refit and not data["dev"] and data["test"] is not None)


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

    Example:
        >>> train_files("train.csv", "test.csv", "runs/mine")["test"]["accuracy"]
    """
    config = config or PipelineConfig()
    data = {"train": train, "dev": dev, "test": test}
    check_settings(config, data)
    state = _first_state(data, config, search)
    out = Path(out)
    placement = start_distributed(config.train.device)
    if not placement.writes:  # under torchrun only rank 0 writes files
        return _run_phases(state, stage_of(out), out, config, None, placement, quiet, resume=None)
    created = first_missing(out)  # the folders the run makes, removed again if it fails leaving them empty
    prepare_output(out)
    try:
        with RunLock(out), RunSignals(stage_of(out)):  # a signal between the training loops: stop there, every file whole
            return _fresh_run(state, out, config, placement, quiet, overwrite)
    except Exception:
        remove_empty(out, created)
        raise


def _fresh_run(state: RunState, out: Path, config: PipelineConfig, placement: Placement, quiet: bool, overwrite: bool) -> dict:
    """A new run in the locked folder ``out``: staged, run, committed. A run that fails its checks leaves
    no staging folder, so a rerun with the hint's flag is not refused as an unfinished run."""
    stage = start_fresh(out, overwrite)
    _save_state(state, stage, placement)
    emit("phase_start", phase=state.phase.value)
    try:
        metrics = _run_phases(state, stage, out, config, _checkpoint_store(stage, config), placement, quiet, resume=None)
    except Exception as err:
        if not isinstance(err, (Interrupted, CheckpointError)) and not is_disk_full(err):  # those hint at --resume
            discard_unstarted(stage)
        raise
    commit(stage, out, config.train.keep_checkpoints_after)
    return metrics


def resume_run(out: str | Path, quiet: bool = False) -> dict:
    """Finish the run in ``out`` from its newest checkpoint (from the start of its phase when it has none).

    Example:
        >>> metrics = resume_run("runs/mine")   # after the first run was killed
    """
    out = Path(out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--resume runs in one process: a checkpoint holds one rank's place in the data")
    with RunLock(out), RunSignals(stage_of(out)):
        stage = unfinished(out)
        if stage is not None and is_complete(stage):  # killed while moving the finished files into place
            return _commit_finished(stage, out, RunState.load(stage if (stage / RUN).is_file() else out))
        if stage is None or not (stage / RUN).is_file():
            done = " (its run has finished)" if (out / "bundle.json").is_file() else ""
            raise FileNotFoundError(f"{out} holds no unfinished run{done}: is it the --out folder of a textpipe train run?")
        state = RunState.load(stage)
        if state.phase is Phase.DONE:  # killed before the commit began
            return _commit_finished(stage, out, state)
        config = PipelineConfig.from_dict(state.config)
        store = _checkpoint_store(stage, config)
        checkpoint = store.load_latest() if store else None
        if state.phase is not Phase.DONE:
            check_same_data(state)  # in every phase that reads the data again, with a checkpoint or without
        if checkpoint is not None and not quiet:
            log.info(f"resuming from {checkpoint['path']} (epoch {checkpoint['state']['epoch']}, step {checkpoint['state']['step']})")
        metrics = _run_phases(state, stage, out, config, store, start_distributed(config.train.device), quiet, resume=checkpoint)
        commit(stage, out, config.train.keep_checkpoints_after)
    return metrics


def dev_result(train: str | Path, dev: str | Path | None, config: PipelineConfig, tokenizer: Tokenizer, scratch: Path) -> PhaseResult:
    """Only the train phase of a run, quietly, nothing kept on disk: train with early stopping on ``dev``
    (or the held-out rows of ``train``) and return what the phase left: the model, its vocabulary and
    labels, the epoch count and dev scores it reached (``.fit``), with ``model.encoder`` the sentence head.

    Example:
        >>> dev_result("train.csv", None, PipelineConfig(), Tokenizer(), Path("/tmp/scratch")).fit.best_dev["accuracy"]
    """
    config = replace(config, train=replace(config.train, keep_checkpoints=0))
    state = RunState.start({"train": train, "dev": dev, "test": None}, config.to_dict())
    _, trained = _train_phase(state, scratch, config, tokenizer, None, start_distributed(config.train.device), True, None)
    return trained


def _first_state(data: dict, config: PipelineConfig, search: dict | None) -> RunState:
    """A new run's state; after an autotune search, the phase its result lets the run start in."""
    state = RunState.start(data, config.to_dict())
    state = replace(state, fingerprint=data_fingerprints(state.data))  # in the first run.json: any resume compares it
    if search is None:
        return state
    state = replace(state, autotune={k: v for k, v in search.items() if k != "first_phase"})
    # The search already ran the train phase of the chosen config: the refit starts from its result.
    return replace(state, phase=Phase.REFIT, refit=search["first_phase"]) if refits(config, state.data) else state


def _commit_finished(stage: Path, out: Path, state: RunState) -> dict:
    if mid_commit(stage):  # said even with --quiet: the folder was not loadable until now
        log.warning(f"{out}: the run had stopped while moving its files into place; the move is finished now, the bundle whole again")
    commit(stage, out, PipelineConfig.from_dict(state.config).train.keep_checkpoints_after)
    return json.loads((out / METRICS).read_text(encoding="utf-8"))


def _run_phases(state: RunState, stage: Path, final: Path, config: PipelineConfig, store: CheckpointStore | None,
                placement: Placement, quiet: bool, resume: dict | None) -> dict:
    """Run the phases left from ``state.phase`` on, score the test file and save everything into
    ``stage``, the staging folder of the run whose outputs go to ``final``. Returns the metrics."""
    quiet = quiet or not placement.writes
    tokenizer = Tokenizer.from_config(config.tokenizer)  # one for every phase and loader: they share its chunk memo
    counts = None
    if state.phase is Phase.TRAIN:
        state, trained = _train_phase(state, stage, config, tokenizer, store, placement, quiet, resume)
        if not refits(config, state.data):
            emit("phase_end", phase=Phase.TRAIN.value)
            return _score_and_save(state, trained, trained.fit, stage, final, config, placement, quiet, tokenizer)
        state = _enter_refit(state, trained.fit, stage, store, placement, trained.head[1] if trained.head else None, trained.calibration)
        counts = trained.counts.all_rows() if trained.counts is not None else None  # that pass counted the held-out rows too
        trained, resume = None, None  # let the first model's weights go before the refit builds its own
    early = FitResult(state.refit["epochs"], state.refit["best_dev"], state.refit["history"], state.refit.get("nb_linear"))
    state, refitted = _train_phase(state, stage, config, tokenizer, store, placement, quiet, resume, refit_epochs=early.best_epoch,
                                    counts=counts)
    emit("phase_end", phase=Phase.REFIT.value)
    return _score_and_save(state, refitted, early, stage, final, config, placement, quiet, tokenizer)


def _enter_refit(state: RunState, early: FitResult, stage: Path, store: CheckpointStore | None, placement: Placement,
                 head: dict | None, calibration: dict | None = None) -> RunState:
    """Record the train phase's result, which the refit starts from, and delete its checkpoints."""
    if store is not None:
        store.clear()  # first, so a run.json that names the refit never sits beside the train phase's checkpoints
    emit("phase_end", phase=Phase.TRAIN.value)
    state = replace(state, phase=Phase.REFIT, refit={"epochs": early.best_epoch, "best_dev": early.best_dev, "history": early.history,
                                                      "nb_linear": early.nb_linear, **({"sentence_head": head} if head else {}),
                                                      **({"calibration": calibration} if calibration else {})})
    _save_state(state, stage, placement)
    emit("phase_start", phase=Phase.REFIT.value)
    return state


def _train_phase(state: RunState, stage: Path, config: PipelineConfig, tokenizer: Tokenizer, store: CheckpointStore | None,
                 placement: Placement, quiet: bool, resume: dict | None, refit_epochs: int = 0,
                 counts: TrainingCounts | None = None) -> tuple[RunState, PhaseResult]:
    """Build (or reload) the vocabulary and train one model: with early stopping on dev, or,
    given ``refit_epochs``, on every training row for that many epochs. ``counts``: the training
    file's, when an earlier pass counted them for this phase's vocabulary."""
    train, test, dev = state.data["train"], state.data["test"], state.data["dev"]
    set_seed(config.train.seed)
    train_part = "all" if dev or refit_epochs else "train"
    holdout = 0 if train_part == "all" else config.data.holdout_every
    state, vocab, counts = _phase_vocab(state, stage, config, tokenizer, placement, holdout, quiet, resume, counts)
    if not quiet:
        what = f"refit for {refit_epochs} epochs on all {state.num_train} training rows" if refit_epochs else f"{state.num_train} training rows"
        table = f", {state.ngram_table['rows']:,} hashed n-gram rows for {state.ngram_table['distinct_ngrams']:,} n-grams" if state.ngram_table else ""
        log.info(f"{what}, {len(state.labels)} labels, vocabulary of {len(vocab)} tokens{table}")
    loader = partial(_phase_loader, config=config, tokenizer=tokenizer, vocab=vocab, labels=state.labels, placement=placement, holdout=holdout)
    sized = {"ngram_buckets": state.ngram_table["rows"]} if state.ngram_table else {}  # none recorded: a run from before the sizing
    model = build_model(ModelConfig(**{**config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(state.labels), **sized}))
    if config.data.vectors and resume is None:  # a resume gets the weights from its checkpoint
        state = replace(state, vectors=fill_with_vectors(model, vocab, config.data.vectors, bool(config.model.frozen_dim), quiet))
    if resume is None:  # the vocabulary's labels and counts, the vectors' coverage: saved before the first checkpoint
        _save_state(state, stage, placement)
    if placement.writes:
        check_free_space(stage, model, config.train.keep_checkpoints, quiet)
    dev_loader = None if refit_epochs else loader(dev) if dev else loader(train, "dev")
    # Before training, so a bad dev or test row stops the run now; in skip mode, the
    # counts (the DataLoader's workers cannot report theirs). Train was counted with the vocabulary.
    skipped = {"train": state.skipped or {}}
    if dev:
        skipped["dev"] = dev_loader.dataset.count_skipped()
    if test:
        skipped["test"] = loader(test).dataset.count_skipped()
    if not quiet and not refit_epochs and resume is None:
        log.info(config_summary(config))  # after the data passed its checks: an error is the first thing a user sees
    # The default lr by the file's rows (both phases alike); an lr set to anything else is used as given.
    lr = lr_for_rows(config.train.lr, sum(state.label_counts.values()), config.model.name) if config.train.lr == TrainConfig.lr else config.train.lr
    if lr != config.train.lr and not quiet and not refit_epochs:
        log.info(f"a small file ({sum(state.label_counts.values())} rows): the bag trains at lr {lr:.3g}, not {config.train.lr:g} (optim.lr_for_rows)")
    train_config = replace(config.train, device=str(placement.device), epochs=refit_epochs or config.train.epochs, lr=lr)
    with run_scope(train_config.deterministic) as stop:
        context = RunContext(placement.device, placement.rank, placement.world, quiet, checkpoints=store, resume=resume, stop=stop)
        result = fit(model, loader(train, train_part, training=True), dev_loader, train_config, len(state.labels), num_train=state.num_train,
                     class_counts=[state.label_counts.get(label, 0) for label in state.labels], context=context)
    if getattr(model, "nb", None) is not None:
        result.nb_linear = fit_nb_for_phase(model, loader(train, train_part), dev_loader, state.refit.get("nb_linear") if refit_epochs else None,
                                          state.num_train, quiet)
    head = fit_phase_head(model, config, tokenizer, vocab, state.labels, train, train_part, holdout, dev,
                          state.refit.get("sentence_head") if refit_epochs else None, quiet) if config.model.encoder else None
    calibration = fit_phase_calibration(model, dev_loader, head and head[0], config, state.refit.get("calibration") if refit_epochs else None, quiet)
    return state, PhaseResult(model, vocab, state.labels, result, skipped, counts, head, calibration)


def _phase_vocab(state: RunState, stage: Path, config: PipelineConfig, tokenizer: Tokenizer, placement: Placement,
                 holdout: int, quiet: bool, resume: dict | None, counts: TrainingCounts | None):
    """The phase's vocabulary, the counts it was made of, and the state that records its labels: made from
    ``counts``, else from a pass over the training file (every rank makes the same; rank 0 saves it);
    on a resume, the one saved before the checkpoint."""
    if resume is not None:
        return state, load_vocab(stage / VOCAB), None
    if counts is None:
        counts = count_training_file(state.data["train"], holdout, tokenizer, config.data, quiet, ngram_count_limit(config.model))
    if state.ngram_table is None and ngram_count_limit(config.model)[1]:  # sized once, by the run's first count: every phase's model alike
        state = replace(state, ngram_table=ngram_table(config.model, counts.ngrams))
    if holdout and counts.training_rows == sum(counts.label_counts.values()):
        raise DataError(state.data["train"], None, f"too few rows to hold any out for early stopping (about 1 in {holdout} is; none of "
                        f"these {counts.training_rows}): give a dev file (--dev) or more rows")
    vocab = counts.vocab(config.data)
    state = replace(state, labels=label_order(counts.label_counts), label_counts=counts.label_counts, num_train=counts.training_rows,
                    skipped=counts.skipped)
    if placement.writes:
        save_vocab(vocab, stage / VOCAB)
    return state, vocab, counts


def _phase_loader(path, part: str = "all", training: bool = False, *, config: PipelineConfig, tokenizer: Tokenizer, vocab, labels: list[str],
                  placement: Placement, holdout: int):
    holdout_every = holdout if part != "all" else 0
    return _loader(path, config, tokenizer, vocab, labels, placement.device, part, holdout_every, training, placement.rank, placement.world,
                   config.data.num_workers)


def _score_and_save(state: RunState, trained: PhaseResult, early: FitResult, stage: Path, final: Path, config: PipelineConfig,
                    placement: Placement, quiet: bool, tokenizer: Tokenizer) -> dict:
    """Score the shipped model (on the test file, else on dev), and on rank 0 write the bundle, config, metrics and report."""
    test, dev = state.data["test"], state.data["dev"]
    # No workers for the scoring pass: predictions then come in file order and line up with the texts.
    holdout = 0 if test or dev else config.data.holdout_every
    rows = _loader(test or dev or state.data["train"], config, tokenizer, trained.vocab, trained.labels, placement.device,
                   "all" if holdout == 0 else "dev", holdout)
    temperature = (trained.calibration or {}).get("temperature", 1.0)
    mix = logits_mixer(trained.head and trained.head[0], config, quiet, temperature)
    summary, mistakes = score_and_list_mistakes(trained.model, rows, trained.labels, placement.device, quiet, mix)
    metrics = {"test": summary["overall"] if test else None, "dev": early.best_dev, "scored_on": _scored_on(state, config),
               "best_epoch": early.best_epoch, "history": early.history, **summary}
    if state.phase is Phase.REFIT:
        metrics["refit"] = {"epochs": early.best_epoch, "rows": state.num_train, "history": trained.fit.history}
    if trained.fit.nb_linear is not None:  # after a refit: fit again on every row, with the train phase's choices and dev scores
        metrics["nb_linear"] = {**(early.nb_linear or {}), **trained.fit.nb_linear}
    if trained.head:  # after a refit, the train phase's dev scores beside the refit's fit
        metrics["sentence_head"] = {**((state.refit or {}).get("sentence_head") or {}), **trained.head[1]}
    metrics["calibration"] = {**(trained.calibration or {"temperature": 1.0}), **summary["calibration"]}  # the fit on dev, the scores here
    if config.data.source.on_bad_row == "skip":
        metrics["skipped"] = trained.skipped
    if not placement.writes:
        return metrics
    save_outputs(stage, trained.model, trained.vocab, tokenizer, trained.labels, config, metrics, summary, mistakes, early.history,
                 title=f"textpipe report: {final.name}",
                 notes=_report_notes(state, config, early, final) + head_notes(trained.head) + calibration_notes(trained.calibration, early.nb_linear),
                 head=trained.head and trained.head[0], temperature=temperature,
                 encoder=trained.head and encoder_record(config.model.encoder))
    _save_state(replace(state, phase=Phase.DONE), stage, placement)
    emit("phase_start", phase=Phase.DONE.value)
    return metrics


def _scored_on(state: RunState, config: PipelineConfig, seen_from: Path | None = None) -> str:
    """What the scores are on; with ``seen_from``, its paths relative to that folder (the report's)."""
    shown = {k: v and (relative_path(v, seen_from) if seen_from else v) for k, v in state.data.items()}
    test, dev = shown["test"], shown["dev"]
    return f"test file {test}" if test else f"dev file {dev}" if dev else f"dev rows held out of {shown['train']} (1 in {config.data.holdout_every})"


def _report_notes(state: RunState, config: PipelineConfig, early: FitResult, final: Path) -> list[str]:
    trained = f"best epoch {early.best_epoch} of {len(early.history)}"
    if state.autotune is not None:
        trained = f"configuration chosen by autotune ({len(state.autotune['trials'])} tried on dev, see run.json); " + trained
    if state.phase is Phase.REFIT:
        trained += f", then refit on all {state.num_train} training rows for {early.best_epoch} epochs"
    train = relative_path(state.data["train"], final)
    notes = [f"Model `{config.model.name}` trained on `{train}`; {trained}. Scores are on the {_scored_on(state, config, final)}."]
    if early.nb_linear is not None:
        nb = early.nb_linear
        notes.append(f"Beside the bag, the NB-weighted linear path (C {nb['C']:g}); the shipped probabilities are {nb['alpha']:g} x the bag's"
                     f" + {1 - nb['alpha']:g} x the linear path's, the share chosen on dev (bag alone {nb['dev']['bag']:.4f},"
                     f" mixed {mixed_dev_accuracy(nb):.4f}).")
    if not state.data["test"]:
        notes.append("There was no test file: these are dev scores, which chose the epoch, so they are a little optimistic.")
    return notes + search_notes(state.autotune)


def _save_state(state: RunState, stage: Path, placement: Placement) -> None:
    """The one place ``run.json`` is written (by rank 0)."""
    if placement.writes:
        state.save(stage)


def _checkpoint_store(stage: Path, config: PipelineConfig) -> CheckpointStore | None:
    keep = config.train.keep_checkpoints
    return CheckpointStore(stage / CHECKPOINTS, keep) if keep else None


