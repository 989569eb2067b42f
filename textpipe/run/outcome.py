"""What a finished run says about itself: what a phase leaves (:class:`PhaseResult`), ``metrics.json``, the report's notes.

Example:
    >>> metrics = run_metrics(state, config, trained, trained.fit, summary)
    >>> notes = report_notes(state, config, trained.fit, Path("runs/mine"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..bundle.report import relative_path, search_notes
from ..core.nb_choice import dev_score_name, mixed_dev_accuracy
from ..core.train import FitResult
from .folder import Phase, RunState
from .counts import TrainingCounts
from .pipeline import PipelineConfig


@dataclass
class PhaseResult:
    """What one phase of training leaves: the model and the vocabulary it reads, and how training went.

    Example:
        >>> trained = Run(state, config, Path("runs/mine"), Placement()).train_phase()
        >>> trained.fit.best_dev["accuracy"], len(trained.vocab)
    """

    model: torch.nn.Module
    vocab: object  # torchtext Vocab
    labels: list[str]
    fit: FitResult
    skipped: dict[str, dict[str, int]]  # part -> reason -> rows (counted in skip mode)
    counts: TrainingCounts | None  # what the vocabulary was made of (None on a resume: it was loaded)
    head: tuple | None = None  # with model.encoder: the sentence head and its record (C, beta, dev scores)
    calibration: dict | None = None  # the temperature of the shipped scores and its dev record (core/calibration.py); None: no dev rows to fit it on



def run_metrics(state: RunState, config: PipelineConfig, trained: PhaseResult, early: FitResult, summary: dict) -> dict:
    """``metrics.json``: the scores of the shipped model, the dev result that chose its epochs, and what each phase fit."""
    metrics = {"test": summary["overall"] if state.data["test"] else None, "dev": early.best_dev, "scored_on": scored_on(state, config),
               "best_epoch": early.best_epoch, "history": early.history, **summary}
    if state.phase is Phase.REFIT:
        metrics["refit"] = {"epochs": early.best_epoch, "rows": state.num_train, "history": trained.fit.history}
    if trained.fit.nb_linear is not None:  # after a refit: fit again on every row, with the train phase's choices and dev scores
        metrics["nb_linear"] = {**(early.nb_linear or {}), **trained.fit.nb_linear}
    if trained.head:  # after a refit, the train phase's dev scores beside the refit's fit
        metrics["sentence_head"] = {**((state.refit or {}).get("sentence_head") or {}), **trained.head[1]}
    metrics["calibration"] = {**(trained.calibration or {"temperature": 1.0}), **summary.get("calibration", {})}  # the fit on dev, the scores here
    if config.data.source.on_bad_row == "skip":
        metrics["skipped"] = trained.skipped
    return metrics

def scored_on(state: RunState, config: PipelineConfig, seen_from: Path | None = None) -> str:
    """What the scores are on; with ``seen_from``, its paths relative to that folder (the report's)."""
    shown = {k: v and (relative_path(v, seen_from) if seen_from else v) for k, v in state.data.items()}
    test, dev = shown["test"], shown["dev"]
    return f"test file {test}" if test else f"dev file {dev}" if dev else f"dev rows held out of {shown['train']} (1 in {config.data.holdout_every})"

def nb_note(nb: dict) -> str:
    """The report's line on the bag's NB linear path: its C, the mix and the dev scores that chose it."""
    if dev_score_name(nb) == "accuracy":
        return (f"Beside the bag, the NB-weighted linear path (C {nb['C']:g}); the shipped probabilities are {nb['alpha']:g} x the bag's"
                f" + {1 - nb['alpha']:g} x the linear path's, the share chosen on dev (bag alone {nb['dev']['bag']:.4f},"
                f" mixed {mixed_dev_accuracy(nb):.4f}).")
    return (f"Beside the bag, the NB-weighted linear path, one-vs-rest per label (C {nb['C']:g}); each label's shipped probability is"
            f" {nb['alpha']:g} x the bag's sigmoid + {1 - nb['alpha']:g} x the linear path's, the share chosen on dev by log loss"
            f" (dev micro-F1 at 0.5: bag alone {nb['dev']['bag']:.4f}, mixed {mixed_dev_accuracy(nb):.4f}).")


def report_notes(state: RunState, config: PipelineConfig, early: FitResult, out: Path) -> list[str]:
    """The report's notes on how the model was trained and what its scores are on."""
    trained = f"best epoch {early.best_epoch} of {len(early.history)}"
    if state.autotune is not None:
        trained = f"configuration chosen by autotune ({len(state.autotune['trials'])} tried on dev, see run.json); " + trained
    if state.phase is Phase.REFIT:
        trained += f", then refit on all {state.num_train} training rows for {early.best_epoch} epochs"
    train = relative_path(state.data["train"], out)
    notes = [f"Model `{config.model.name}` trained on `{train}`; {trained}. Scores are on the {scored_on(state, config, out)}."]
    if early.nb_linear is not None:
        notes.append(nb_note(early.nb_linear))
    if not state.data["test"]:
        notes.append("There was no test file: these are dev scores, which chose the epoch, so they are a little optimistic.")
    return notes + search_notes(state.autotune)


def phase_line(state: RunState, vocab_size: int, refit_epochs: int) -> str:
    """The log line that opens a phase: its training rows, labels, vocabulary and n-gram table."""
    what = f"refit for {refit_epochs} epochs on all {state.num_train} training rows" if refit_epochs else f"{state.num_train} training rows"
    table = f", {state.ngram_table['rows']:,} hashed n-gram rows for {state.ngram_table['distinct_ngrams']:,} n-grams" if state.ngram_table else ""
    return f"{what}, {len(state.labels)} labels, vocabulary of {vocab_size} tokens{table}"
