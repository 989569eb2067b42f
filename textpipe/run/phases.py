"""One training run as a small state machine: a labelled file in, a trained bundle out.

A run goes through explicit phases (:class:`Phase`): ``train`` (early stopping on the
dev file, or on the rows held out of the training file, picks the epoch count), then,
when there is a test file and no dev file, ``refit`` (a fresh model on every training
row for that many epochs), then ``done`` (every output is in the staging folder; only
:func:`textpipe.run.folder.commit` is left). What a resume needs is a frozen
:class:`RunState`, written to ``run.json`` by one method, :meth:`Run.save_state`, each
time the run learns something a resume must not redo. One :class:`Run` object carries a
run through its phases: its state, settings, folders, tokenizer, checkpoints and its
:class:`Placement` (rank, world size and device, resolved once by :func:`distributed_scope`).

Named events (:mod:`textpipe.core.events`) mark the phase changes, so tests and tools can
act at exact points: ``phase_start(phase=...)`` once ``run.json`` records a phase, and
``phase_end(phase=...)`` when a phase's training is over (for ``train`` followed by a
refit: its checkpoints deleted, the refit not yet recorded).

Example:
    >>> metrics = train_files("train.csv", "test.csv", "runs/mine", config=PipelineConfig(train=TrainConfig(epochs=5)))
    >>> metrics = resume_run("runs/mine")   # after a run was killed
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..core.checkpoint import CheckpointError, CheckpointStore
from ..core.events import emit
from ..core.files import is_disk_full
from ..core.models import ModelConfig, build_model, model_skeleton
from ..core.nb_linear import fit_candidates, fit_nb_for_phase, phase_every
from .config import REFIT_MAX_ROWS, SettingsError, batch_choice, refits, with_batch
from .counts import TrainingCounts, count_training_file, label_order, ngram_count_limit, ngram_table
from .pipeline import VOCAB, Loaders, Outputs, PipelineConfig, check_settings, config_summary, save_outputs, score_and_list_mistakes
from ..bundle.report import write_plots
from ..bundle.store import Bundle
from .folder import (
    CHECKPOINTS, RUN, Phase, RunLock, RunState, check_free_space, check_same_data, commit, data_fingerprints, discard_unstarted, first_missing,
    commit_finished, is_complete, nothing_to_resume, prepare_output, remove_empty, stage_of, start_fresh, unfinished,
)
from .outcome import PhaseResult, phase_line, report_notes, run_metrics
from .refit_ahead import Job, RefitAhead, may_run_ahead, scratch_folder
from .sentence_mix import calibration_notes, encoder_record, fit_phase_calibration, fit_phase_head, head_notes, logits_mixer
from ..text.sources import DataError
from ..text.token_stream import TokenStream
from ..text.tokenizer import Tokenizer
from ..core.runtime import Interrupted, Placement, RunContext, RunSignals, distributed_scope, resolve_device, run_scope, set_seed, start_distributed, under_torchrun  # noqa: F401 (re-exported)
from ..core.optim import lr_for_rows
from ..core.train import FitResult, TrainConfig, fit
from ..core.multilabel import start_at_label_rates
from ..text.vectors import fill_with_vectors
from ..text.vocab import load_vocab, save_vocab

log = logging.getLogger("textpipe")  # progress lines; the CLI sends them to stderr, a library caller chooses


def train_files(train: str | Path, test: str | Path | None, out: str | Path, *, dev: str | Path | None = None,
                config: PipelineConfig | None = None, quiet: bool = False, overwrite: bool = False, search: dict | None = None) -> dict:
    """Train on ``train``, pick the best epoch on ``dev`` (or a held-out part of train),
    score ``test``, and write the bundle and ``metrics.json`` into ``out``.

    Everything is written into ``out/.textpipe-run/`` first (``run.json``, then
    checkpoints, so :func:`resume_run` can finish a run that was killed) and moved into
    ``out`` once the run has finished. A non-empty ``out`` is refused unless ``overwrite``.
    Without ``test`` the report and ``metrics["scored_on"]`` are on the dev data; then
    no refit follows, so the shipped model has never seen the rows it is scored on.
    Progress goes to the ``textpipe`` logger. ``search`` is what :func:`textpipe.run.autotune.autotune_files`
    found (its trials, and the chosen configuration's early-stopping result, which the refit then starts from).

    Example:
        >>> train_files("train.csv", "test.csv", "runs/mine")["test"]["accuracy"]
    """
    config, data = config or PipelineConfig(), {"train": train, "dev": dev, "test": test}
    check_settings(config, data)
    state = _first_state(data, config, search)
    with distributed_scope(config.train.device) as placement:
        return _run_in_place(state, config, Path(out), placement, quiet=quiet, overwrite=overwrite)


def _run_in_place(state: RunState, config: PipelineConfig, out: Path, placement: Placement, *, quiet: bool = False, overwrite: bool = False) -> dict:
    if not placement.writes:  # under torchrun only rank 0 writes files
        return Run(state, config, out, placement, quiet=quiet).phases()
    created = first_missing(out)  # the folders the run makes, removed again if it fails leaving them empty
    prepare_output(out)
    try:
        with RunLock(out), RunSignals(stage_of(out)):  # a signal between the training loops: stop there, every file whole
            return _fresh_run(Run(state, config, out, placement, quiet=quiet), overwrite)
    except Exception:
        remove_empty(out, created)
        raise


def _fresh_run(run: Run, overwrite: bool) -> dict:
    """A new run in its locked folder: staged, run, committed (failing its checks, no staging folder: a rerun is not refused)."""
    start_fresh(run.out, overwrite)
    run.save_state()
    run.store = _checkpoint_store(run.stage, run.config)
    emit("phase_start", phase=run.state.phase.value)
    try:
        metrics = run.phases()
    except Exception as err:
        if not isinstance(err, (Interrupted, CheckpointError)) and not is_disk_full(err):  # those hint at --resume
            discard_unstarted(run.stage)
        raise
    finally:
        run.ahead and run.ahead.close()  # a refit still training on the other core (refit_ahead.py) goes with the run
    commit(run.stage, run.out, run.config.train.keep_checkpoints_after)
    return metrics


def resume_run(out: str | Path, quiet: bool = False) -> dict:
    """Finish the run in ``out`` from its newest checkpoint (from the start of its phase when it has none).

    Example:
        >>> metrics = resume_run("runs/mine")   # after the first run was killed
    """
    out = Path(out)
    if under_torchrun():
        raise SettingsError("--resume runs in one process: a checkpoint holds one rank's place in the data", hint="run it without torchrun")
    if not out.is_dir():  # before the lock, which would make the folder
        raise nothing_to_resume(out)
    with RunLock(out), RunSignals(stage_of(out)):  # another run holding the folder is the better message (an OutputError)
        stage = unfinished(out)
        if stage is not None and is_complete(stage):  # killed while moving the finished files into place
            return commit_finished(stage, out, RunState.load(stage if (stage / RUN).is_file() else out))
        if stage is None or not (stage / RUN).is_file():
            raise nothing_to_resume(out)
        state = RunState.load(stage)
        if state.phase is Phase.DONE:  # killed before the commit began
            return commit_finished(stage, out, state)
        config = PipelineConfig.from_dict(state.config)
        store = _checkpoint_store(stage, config)
        checkpoint = store.load_latest() if store else None
        check_same_data(state)  # in every phase that reads the data again, with a checkpoint or without
        if checkpoint is not None and not quiet:
            log.info(f"resuming from {checkpoint['path']} (epoch {checkpoint['state']['epoch']}, step {checkpoint['state']['step']})")
        run = Run(state, config, out, start_distributed(config.train.device), store=store, quiet=quiet)
        metrics = run.phases(resume=checkpoint)
        commit(stage, out, config.train.keep_checkpoints_after)
    return metrics


def dev_result(train: str | Path, dev: str | Path | None, config: PipelineConfig, tokenizer: Tokenizer, scratch: Path) -> PhaseResult:
    """Only the train phase of a run, quietly, nothing kept on disk: train with early stopping on ``dev``
    (or the held-out rows of ``train``) and return what the phase left: the model, its vocabulary and
    labels, the epoch count and dev scores it reached (``.fit``), with ``model.encoder`` the sentence head."""
    config = replace(config, train=replace(config.train, keep_checkpoints=0))
    state = RunState.start({"train": train, "dev": dev, "test": None}, config.to_dict())
    run = Run(state, config, scratch, start_distributed(config.train.device), quiet=True, tokenizer=tokenizer, stage=scratch)
    return run.train_phase()


def _first_state(data: dict, config: PipelineConfig, search: dict | None) -> RunState:
    """A new run's state; after an autotune search, the phase its result lets the run start in."""
    state = RunState.start(data, config.to_dict())
    state = replace(state, fingerprint=data_fingerprints(state.data))  # in the first run.json: any resume compares it
    if search is None:
        return state
    state = replace(state, autotune={k: v for k, v in search.items() if k != "first_phase"})
    # The search already ran the train phase of the chosen config: the refit starts from its result.
    return replace(state, phase=Phase.REFIT, refit=search["first_phase"]) if refits(config, state.data) else state


def _checkpoint_store(stage: Path, config: PipelineConfig) -> CheckpointStore | None:
    keep = config.train.keep_checkpoints
    return CheckpointStore(stage / CHECKPOINTS, keep) if keep else None


@dataclass
class Run:
    """One training run: what ``run.json`` holds (``state``, replaced as the run learns), its settings, the
    folder it stages in and the one it commits to, this process's place (rank, device), its tokenizer and
    checkpoints. Its methods are the phases: :meth:`phases` runs those left, each one's :meth:`vocab`,
    :meth:`loaders`, :meth:`train_phase`, then :meth:`enter_refit` and :meth:`finish`.

    Example:
        >>> run = Run(RunState.start({"train": "train.csv", "dev": None, "test": None}, config.to_dict()), config, Path("runs/mine"), Placement())
        >>> run.train_phase().fit.best_dev["accuracy"]
    """

    state: RunState
    config: PipelineConfig
    out: Path
    placement: Placement
    store: CheckpointStore | None = None
    quiet: bool = False
    tokenizer: Tokenizer | None = None  # one for every phase and loader: they share its chunk memo
    stage: Path | None = None  # the staging folder; by default out's
    ahead: RefitAhead | None = None  # the refit, training on the other core beside the train phase (refit_ahead.py)

    def __post_init__(self) -> None:
        self.quiet = self.quiet or not self.placement.writes
        self.tokenizer = self.tokenizer or Tokenizer.from_config(self.config.tokenizer)
        self.stage = self.stage or stage_of(self.out)

    def phases(self, resume: dict | None = None) -> dict:
        """Run the phases left from ``state.phase`` on (from the checkpoint ``resume`` when given), score the
        test file and save everything into the staging folder. Returns the metrics."""
        counts = None
        if self.state.phase is Phase.TRAIN:
            trained = self.train_phase(resume)
            rows = self.state.num_train  # the rows trained on, as the batch rule counts them (a multi-label row once)
            if not refits(self.config, self.state.data, rows):
                if not self.quiet and refits(self.config, self.state.data):
                    log.info(f"no refit: {rows:,} training rows (train.refit \"auto\" refits under {REFIT_MAX_ROWS:,}; --set train.refit=true forces it)")
                emit("phase_end", phase=Phase.TRAIN.value)
                return self.finish(trained, trained.fit)
            self.enter_refit(trained.fit, trained.head[1] if trained.head else None, trained.calibration)
            counts = trained.counts.all_rows() if trained.counts is not None else None  # that pass counted the held-out rows too
            trained, resume = None, None  # let the first model's weights go before the refit builds its own
        refit = self.state.refit
        early = FitResult(refit["epochs"], refit["best_dev"], refit["history"], refit.get("nb_linear"))
        refitted = self.train_phase(resume, refit_epochs=early.best_epoch, counts=counts)
        emit("phase_end", phase=Phase.REFIT.value)
        return self.finish(refitted, early)

    def save_state(self) -> None:
        """The one place ``run.json`` is written (by rank 0)."""
        if self.placement.writes:
            self.state.save(self.stage)

    def enter_refit(self, early: FitResult, head: dict | None, calibration: dict | None) -> None:
        """Record the train phase's result, which the refit starts from, and delete its checkpoints."""
        if self.store is not None:
            self.store.clear()  # first, so a run.json that names the refit never sits beside the train phase's checkpoints
        emit("phase_end", phase=Phase.TRAIN.value)
        self.state = replace(self.state, phase=Phase.REFIT, refit={
            "epochs": early.best_epoch, "best_dev": early.best_dev, "history": early.history, "nb_linear": early.nb_linear,
            **({"sentence_head": head} if head else {}), **({"calibration": calibration} if calibration else {})})
        self.save_state()
        emit("phase_start", phase=Phase.REFIT.value)

    def train_phase(self, resume: dict | None = None, refit_epochs: int = 0, counts: TrainingCounts | None = None) -> PhaseResult:
        """Build (or reload) the vocabulary and train one model: with early stopping on dev, or,
        given ``refit_epochs``, on every training row for that many epochs. ``counts``: the training
        file's, when an earlier pass counted them for this phase's vocabulary."""
        config, (train, test, dev) = self.config, (self.state.data[k] for k in ("train", "test", "dev"))
        set_seed(config.train.seed)
        holdout = 0 if dev or refit_epochs else config.data.holdout_every
        phase, start = "refit" if refit_epochs else "train", time.perf_counter()
        vocab, counts = self.vocab(holdout, resume, counts)
        self.timed(f"{phase}.count", start)
        config = self.choose_batch()
        if not self.quiet:
            log.info(phase_line(self.state, len(vocab), refit_epochs))
        loaders = self.loaders(vocab, holdout, counts.stream if counts is not None else None)
        if not refit_epochs and resume is None and refits(config, self.state.data, self.state.num_train):  # before this phase's model
            self.start_refit_ahead(vocab, counts)  # exists: fewer pages for the fork to copy
        model = build_model(self.model_config(vocab, self.state.labels))
        if resume is None and model.config.multi_label:  # a resume has its biases in the checkpoint
            start_at_label_rates(model.head, [self.state.label_counts[k] for k in self.state.labels], self.state.rows)
        if config.data.vectors and resume is None:  # a resume gets the weights from its checkpoint
            self.state = replace(self.state, vectors=fill_with_vectors(model, vocab, config.data.vectors, bool(config.model.frozen_dim), self.quiet))
        if resume is None:  # the vocabulary's labels and counts, the vectors' coverage: saved before the first checkpoint
            self.save_state()
        if self.placement.writes:
            check_free_space(self.stage, model, config.train.keep_checkpoints, self.quiet)
        dev_loader = None if refit_epochs else loaders.of(dev) if dev else loaders.of(train, "dev")
        skipped = loaders.count_skipped(self.state.skipped, dev_loader if dev else None, test)
        if not self.quiet and not refit_epochs and resume is None:
            log.info(config_summary(config))  # after the data passed its checks: an error is the first thing a user sees
        start, chosen = time.perf_counter(), self.state.refit if refit_epochs else {}
        # A refit training ahead: its NB fit (from the rows alone) here, while the child's last epochs run.
        C = self.ahead and getattr(model, "nb", None) is not None and (chosen.get("nb_linear") or {}).get("C")
        refit_nb = fit_candidates(model, loaders.of(train, "all"), (C,), every=phase_every(self.state.num_train)) if C else None
        start = self.timed(f"{phase}.nb_linear", start) if C else start
        result = self._fit(model, loaders.of(train, loaders.train_part, training=True), dev_loader, resume, refit_epochs)
        start = self.timed(f"{phase}.epochs", start)
        if getattr(model, "nb", None) is not None:
            nb = lambda candidates=refit_nb: fit_nb_for_phase(model, loaders.of(train, loaders.train_part), dev_loader,  # noqa: E731
                                                              chosen.get("nb_linear"), self.state.num_train, quiet=self.quiet, candidates=candidates)
            result.nb_linear = self.ahead.fit_nb(nb) if self.ahead and not refit_epochs else nb()
            self.timed(f"{phase}.nb_linear", start)
        head = fit_phase_head(model, loaders, train, dev, chosen.get("sentence_head"), quiet=self.quiet) if config.model.encoder else None
        calibration = fit_phase_calibration(model, dev_loader, head and head[0], config, chosen.get("calibration"), quiet=self.quiet)
        return PhaseResult(model, vocab, self.state.labels, result, skipped, counts, head, calibration)

    def start_refit_ahead(self, vocab, counts: TrainingCounts) -> None:
        """Fork the refit, and this phase's NB fits (which need no model), to run beside this train phase where that gives
        the same weights and a core is free (refit_ahead.py)."""
        config = self.config
        if may_run_ahead(config.model.name, config.train, self.placement, config.data.num_workers):
            loaders, skeleton, folder = self.loaders(vocab, config.data.holdout_every), model_skeleton(self.model_config(vocab, self.state.labels)), scratch_folder()
            child, all_rows = Run(self.state, config, self.out, self.placement, quiet=True, tokenizer=self.tokenizer, stage=folder), counts.all_rows()
            nb = lambda: fit_candidates(skeleton, loaders.of(self.state.data["train"], "train"), every=phase_every(self.state.num_train))  # noqa: E731
            self.ahead = RefitAhead.start(Job(nb if config.model.nb_linear else None, lambda: child.train_phase(refit_epochs=config.train.epochs, counts=all_rows),
                                              config.train.epochs), folder)

    def vocab(self, holdout: int, resume: dict | None, counts: TrainingCounts | None):
        """The phase's vocabulary and the counts it was made of (recording its labels in ``state``): made from
        ``counts``, else from a pass over the training file (every rank makes the same; rank 0 saves it);
        on a resume, the one saved before the checkpoint."""
        if resume is not None:
            return load_vocab(self.stage / VOCAB), None
        config, train = self.config, self.state.data["train"]
        if counts is None:
            counts = count_training_file(train, holdout, self.tokenizer, config.data, quiet=self.quiet, ngrams=ngram_count_limit(config.model))
        if self.state.ngram_table is None and ngram_count_limit(config.model)[1]:  # sized once, by the run's first count: every phase's alike
            self.state = replace(self.state, ngram_table=ngram_table(config.model, counts.ngrams))
        if holdout and counts.training_rows == counts.rows:
            raise DataError(train, None, f"too few rows to hold any out for early stopping (about 1 in {holdout} is; none of "
                            f"these {counts.training_rows}): give a dev file (--dev) or more rows")
        vocab = counts.vocab(config.data)
        self.state = replace(self.state, labels=label_order(counts.label_counts), label_counts=counts.label_counts,
                             num_train=counts.training_rows, rows=counts.rows, skipped=counts.skipped)
        if self.placement.writes:
            save_vocab(vocab, self.stage / VOCAB)
        return vocab, counts

    def choose_batch(self) -> PipelineConfig:
        """The batch size (and lr) the run trains with, chosen once from the first phase's training rows (so the refit
        trains alike) and recorded in ``run.json``; the run's config from here on trains with it."""
        if self.state.batch is None:
            self.state = replace(self.state, batch=batch_choice(self.config.train, self.state.num_train))
            if not self.quiet and self.config.train.batch_size == "auto":
                log.info(f"batch size {self.state.batch['size']} (chosen from the {self.state.num_train:,} training rows; --batch-size sets it)")
        self.config = with_batch(self.config, self.state.batch)
        return self.config

    def timed(self, key: str, start: float) -> float:
        """Add the seconds since ``start`` to ``run.json``'s ``seconds[key]``; returns now, the next step's start."""
        self.state = self.state.timed(key, start)
        return time.perf_counter()

    def loaders(self, vocab, holdout: int, stream: TokenStream | None = None) -> Loaders:
        """The phase's loaders: its vocabulary and labels, 1 training row in ``holdout`` held out for dev (0: none); ``stream``: the count's tokens."""
        return Loaders(self.config, self.tokenizer, vocab, self.state.labels, holdout, self.placement, self.config.data.num_workers, stream)

    def model_config(self, vocab, labels: list[str]) -> ModelConfig:
        """The model's config: the run's, sized to the vocabulary, the labels and the n-gram table the first count chose, multi-label as the data."""
        sized = {"ngram_buckets": self.state.ngram_table["rows"]} if self.state.ngram_table else {}  # none recorded: a run from before the sizing
        return ModelConfig(**{**self.config.model.to_dict(), "vocab_size": len(vocab), "num_classes": len(labels),
                              "multi_label": self.config.data.source.label_sep is not None, **sized})

    def finish(self, trained: PhaseResult, early: FitResult) -> dict:
        """Score the shipped model (on the test file, else on dev), and on rank 0 write the bundle, config, metrics and
        report into the staging folder and record the phase ``done``."""
        config, start = self.config, time.perf_counter()  # with the batch size trained with (choose_batch): config.json and the bundle say it
        state, test, dev = self.state, self.state.data["test"], self.state.data["dev"]
        loaders = Loaders(config, self.tokenizer, trained.vocab, trained.labels, 0 if test or dev else config.data.holdout_every, self.placement)
        temperature = (trained.calibration or {}).get("temperature", 1.0)
        mix = logits_mixer(trained.head and trained.head[0], config, self.quiet, temperature)
        rows = loaders.of(test or dev or state.data["train"], "dev" if loaders.holdout else "all")
        multi_label = self.multi_label(trained.calibration)
        thresholds = torch.tensor(multi_label["thresholds"]) if multi_label else None
        summary, mistakes = score_and_list_mistakes(trained.model, rows, trained.labels, self.placement.device, quiet=self.quiet, mix=mix,
                                                    thresholds=thresholds)
        metrics = run_metrics(self.state, self.config, trained, early, summary)
        start = self.timed("score", start)
        if not self.placement.writes:
            return metrics
        head, encoder = (trained.head[0], encoder_record(config.model.encoder)) if trained.head else (None, None)
        bundle = Bundle(trained.model, trained.vocab, self.tokenizer, trained.labels, self.model_config(trained.vocab, trained.labels),
                        config.train.to_dict(), head, encoder, temperature, multi_label)
        drawing = self.ahead is not None and self.ahead.draw(self.stage, summary, early.history)  # the PNGs on the other core
        save_outputs(self.stage, bundle, Outputs(config, metrics, summary, mistakes, early.history, title=f"textpipe report: {self.out.name}",
                                                 notes=report_notes(self.state, self.config, early, self.out) + head_notes(trained.head)
                                                 + calibration_notes(trained.calibration, early.nb_linear)), plots=not drawing)
        if drawing and not self.ahead.drawn():
            write_plots(self.stage, summary, early.history)
        self.timed("save", start)
        self.state = replace(self.state, phase=Phase.DONE)
        self.save_state()
        emit("phase_start", phase=Phase.DONE.value)
        return metrics

    def multi_label(self, calibration: dict | None) -> dict | None:
        """What the bundle records of multi-label data: the label separator and each label's threshold (0.5 without dev rows)."""
        sep, thresholds = self.config.data.source.label_sep, (calibration or {}).get("thresholds")
        return None if sep is None else {"label_sep": sep, "thresholds": thresholds or [0.5] * len(self.state.labels)}

    def _lr(self, refit_epochs: int) -> float:
        """The default lr by the file's rows (both phases alike, optim.lr_for_rows); an lr set to anything else is used as given."""
        lr, rows = self.config.train.lr, self.state.rows or sum(self.state.label_counts.values())
        if lr != TrainConfig.lr:
            return lr
        scaled = lr_for_rows(lr, rows, self.config.model.name)
        if scaled != lr and not self.quiet and not refit_epochs:
            log.info(f"a small file ({rows} rows): the bag trains at lr {scaled:.3g}, not {lr:g} (optim.lr_for_rows)")
        return scaled

    def _fit(self, model: torch.nn.Module, train_rows, dev_rows, resume: dict | None, refit_epochs: int) -> FitResult:
        history = self.ahead.take(model) if refit_epochs and self.ahead else None
        if history is not None:
            return FitResult(0, None, history)
        state, placement = self.state, self.placement
        train_config = replace(self.config.train, device=str(placement.device), epochs=refit_epochs or self.config.train.epochs, lr=self._lr(refit_epochs))
        with run_scope(train_config.deterministic) as stop:
            context = RunContext(placement.device, placement.rank, placement.world, self.quiet, checkpoints=self.store, resume=resume, stop=stop)
            train = lambda: fit(model, train_rows, dev_rows, train_config, len(state.labels), num_train=state.num_train,  # noqa: E731
                                class_counts=[state.label_counts.get(label, 0) for label in state.labels], context=context,
                                multi_label=self.config.data.source.label_sep is not None)
            return self.ahead.follow(train) if self.ahead is not None and not refit_epochs else train()
