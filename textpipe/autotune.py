"""Choose a configuration on the user's own dev split, within a time budget (``textpipe train --autotune SECONDS``).

fastText's ``-autotune-validation`` / ``-autotune-duration``, for textpipe. Each
trial trains one configuration with early stopping on the dev part (the ``--dev``
file, or the training rows textpipe holds out, one in ``data.holdout_every``) and
is scored there; the test file is never opened during the search. The search is
greedy coordinate ascent from the configuration given: one knob at a time
(:data:`SPACE`, in order of how much each moved dev accuracy when we tuned the
defaults, the values already in force skipped), trying each of its values on top of the best configuration so far and
keeping a value only when dev accuracy improves (ties: lower dev loss). The
starting configuration is always tried first, so the search never ships a model
that scored worse on dev than the one you would have had without it.

When the budget runs out (a trial is only started when it is expected to end,
with the final training, inside it), the winner is trained the way ``train``
does it: without a dev file, its early-stopping result is reused and a fresh
model trains on every training row for that many epochs (the refit). The trials
go to ``run.json`` (``"autotune"``), the report, and a table on stderr.

Example:
    >>> metrics = autotune_files("train.csv", "test.csv", "runs/tuned", budget=120)
    >>> metrics["autotune"]["chosen"]
    {'train': {'lr': 0.002}}
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import PipelineConfig

from .nb_linear import mixed_dev_accuracy
from .pipeline import check_settings
from .run import dev_result, train_files
from .runfolder import refuse_occupied
from .runtime import RunSignals
from .tokenizer import Tokenizer

log = logging.getLogger("textpipe")  # the CLI shows it on stderr

# Knob -> the values tried besides the current one, each a partial PipelineConfig dict.
SPACE: list[tuple[str, list[dict]]] = [
    # configs/best.toml: on the dev splits of every dataset we tuned on, better than the default.
    ("size", [{"model": {"embed_dim": 128, "ngram_buckets": 2**20}, "train": {"lr": 5e-4}}]),
    ("lr", [{"train": {"lr": 1e-3}}, {"train": {"lr": 2e-3}}, {"train": {"lr": 5e-4}}]),
    ("vectors", [{"model": {"frozen_dim": 50}, "data": {"vectors": "glove-6b-50d"}}]),
    ("dropout", [{"model": {"dropout": 0.5, "token_dropout": 0.5}}, {"model": {"dropout": 0.1, "token_dropout": 0.1}}]),
    ("batch", [{"train": {"batch_size": 64}}, {"train": {"batch_size": 16}}]),
    ("ngrams", [{"model": {"max_ngram": 3}}]),
]


@dataclass
class Trial:
    """One configuration tried: its changes to the starting config and what dev said."""

    changes: dict
    dev_accuracy: float
    dev_loss: float
    best_epoch: int
    epochs: int
    seconds: float
    first_phase: dict = field(default_factory=dict, repr=False)  # the FitResult, for a refit of the winner

    def beats(self, other: "Trial") -> bool:
        return (self.dev_accuracy, -self.dev_loss) > (other.dev_accuracy, -other.dev_loss)


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it, one section deep (``{"train": {"lr": ...}}``)."""
    merged = copy.deepcopy(base)
    for section, values in changes.items():
        merged.setdefault(section, {}).update(values)
    return merged


def autotune_files(
    train: str | Path,
    test: str | Path,
    out: str | Path,
    dev: str | Path | None = None,
    config: PipelineConfig | None = None,
    budget: float = 120.0,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict:
    """Search for ``budget`` seconds on dev, then train the winner into ``out`` as :func:`train_files` does.

    Returns the winner's metrics, with ``"autotune"``: the trials and the chosen changes.
    """
    if budget <= 0:
        raise ValueError(f"--autotune needs a positive number of seconds, got {budget}")
    config = config or PipelineConfig()
    check_settings(config, {"train": train, "dev": dev, "test": test})  # not after minutes of search
    refuse_occupied(out, overwrite)
    search = _Search(train, dev, config.to_dict(), budget, quiet)
    with RunSignals(None):  # a signal between trials stops with 130 / 143 too; nothing is saved before the final run
        best = search.ascend()
    if not quiet:
        log.info(_table(search.trials, best))
    found = search.outcome(best)
    chosen = PipelineConfig.from_dict(merge(search.base, best.changes))
    metrics = train_files(train, test, out, dev=dev, config=chosen, quiet=quiet, overwrite=overwrite, search=found)
    return {**metrics, "autotune": {k: v for k, v in found.items() if k != "first_phase"}}


@dataclass
class _Search:
    """The greedy coordinate ascent over :data:`SPACE` from the configuration ``base``, one trial at a time."""

    train: str | Path
    dev: str | Path | None
    base: dict
    budget: float
    quiet: bool
    start: float = field(default_factory=time.perf_counter)
    trials: list[Trial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokenizer = Tokenizer.from_config(PipelineConfig.from_dict(self.base).tokenizer)  # one for every trial

    def ascend(self) -> Trial:
        """Try the starting configuration, then each knob's values on top of the best so far, while time is left."""
        best = self.try_changes({})
        for _, values in SPACE:
            current = best
            for value in values:
                changes = merge(current.changes, value)
                if merge(self.base, changes) == merge(self.base, current.changes) or _fits(changes, self.trials):
                    continue  # the value already in force, or tried before
                if not _time_left(self.start, self.budget, self.trials, best):
                    break
                try:
                    trial = self.try_changes(changes)
                except RuntimeError as err:  # e.g. named vectors that cannot be fetched here: search on without them
                    if not self.quiet:
                        log.info(f"autotune: skipped {_describe(changes)}: {str(err).splitlines()[0]}")
                    continue
                if trial.beats(best):
                    best = trial
        return best

    def try_changes(self, changes: dict) -> Trial:
        """Train ``base`` with ``changes`` with early stopping on dev, in a scratch folder; the trial is recorded."""
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="textpipe-autotune-") as scratch:
            result = dev_result(self.train, self.dev, PipelineConfig.from_dict(merge(self.base, changes)), self.tokenizer, Path(scratch))
        first_phase = {"epochs": result.best_epoch, "best_dev": result.best_dev, "history": result.history, "nb_linear": result.nb_linear}
        accuracy = result.best_dev["accuracy"]
        if result.nb_linear is not None:  # what the run would ship: the mix with the NB linear path
            accuracy = mixed_dev_accuracy(result.nb_linear)
        trial = Trial(changes, accuracy, result.best_dev["loss"], result.best_epoch, len(result.history),
                      round(time.perf_counter() - began, 1), first_phase)
        self.trials.append(trial)
        if not self.quiet:
            log.info(f"autotune trial {len(self.trials)}: {_describe(changes)}: dev accuracy {trial.dev_accuracy:.4f} "
                     f"loss {trial.dev_loss:.4f} ({trial.epochs} epochs, {trial.seconds:.1f} s)")
        return trial

    def outcome(self, best: Trial) -> dict:
        """What :func:`train_files` records of the search (``run.json``'s ``"autotune"``) and the winner's train phase, for its refit."""
        return {
            "budget_seconds": self.budget,
            "search_seconds": round(time.perf_counter() - self.start, 1),
            "chosen": best.changes,
            "trials": [{k: v for k, v in asdict(t).items() if k != "first_phase"} for t in self.trials],
            "first_phase": best.first_phase,
        }


def _fits(changes: dict, trials: list[Trial]) -> bool:
    return any(t.changes == changes for t in trials)


def _time_left(start: float, budget: float, trials: list[Trial], best: Trial) -> bool:
    """Whether one more trial and the final training still fit in the budget (the slowest trial so far is the estimate)."""
    final = best.seconds * (best.best_epoch + 1) / max(best.epochs, 1)  # the refit: best_epoch epochs on all rows, and the test pass
    return time.perf_counter() - start + max(t.seconds for t in trials) + final <= budget


def _describe(changes: dict) -> str:
    flat = [f"{section}.{key}={value}" for section, values in changes.items() for key, value in values.items()]
    return ", ".join(flat) or "the starting configuration"


def _table(trials: list[Trial], best: Trial) -> str:
    lines = ["autotune: configurations tried, scored on dev", f"  {'#':>2}  {'dev acc':>7}  {'dev loss':>8}  {'epochs':>6}  {'seconds':>7}  changes"]
    for i, t in enumerate(trials, 1):
        mark = "*" if t is best else " "
        lines.append(f"{mark} {i:>2}  {t.dev_accuracy:7.4f}  {t.dev_loss:8.4f}  {t.epochs:>6}  {t.seconds:7.1f}  {_describe(t.changes)}")
    return "\n".join(lines)
