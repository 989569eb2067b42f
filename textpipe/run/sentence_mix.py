"""``model.encoder`` in a run: the sentence head fit beside the trained model, and the mix it ships with.

With ``--encoder minilm-l6`` each phase of a run, once its model has trained (and its
NB path is fit), reads the phase's texts in the order of their labels (the training
part, and the dev file or the very rows the model held out, through the same
:func:`~textpipe.text.dataset.select_part`), looks their sentence vectors up in the
:class:`~textpipe.text.sentence_cache.SentenceCache` (each text encoded once), and fits
:class:`~textpipe.core.sentence_head.SentenceHead` on them: C and the head's share beta
chosen on dev against the model's own dev probabilities, or (the refit) the train
phase's choices reused on every training row. The test scores are those of the mix.
Nothing of that runs while ``model.encoder`` is unset; :func:`fit_phase_calibration`, the one
temperature of the shipped scores (:mod:`textpipe.core.calibration`), runs in every phase with dev rows.

Example:
    >>> head, record = fit_phase_head(model, Loaders(config, tokenizer, vocab, labels, holdout=10), "train.csv", None, None)
    >>> summary, _ = score_and_list_mistakes(model, rows, labels, "cpu", mix=logits_mixer(head, config))
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..text.dataset import TextClassificationDataset
from ..core.calibration import chance, did_not_learn, expected_calibration_error, fit_temperature, scale
from ..core.metrics import predict_logits
from ..core.multilabel import bce_log_loss, choose_thresholds, fit_temperature_multilabel, multi_hot, multilabel_report
from ..core.nb_choice import not_learned_line
from .pipeline import Loaders, PipelineConfig, cache_folder
from ..core.sentence_head import SentenceHead, fit_head

if TYPE_CHECKING:  # imported when first used: a run without an encoder never loads torchtext's BERT tokenizer
    from ..text.sentence import SentenceEncoder

log = logging.getLogger("textpipe")
MAX_WORDPIECES = 256  # the cut of every text, [CLS] and [SEP] included, as sentence-transformers encodes


@lru_cache(maxsize=2)
def sentence_encoder(name: str, max_wordpieces: int = MAX_WORDPIECES) -> "SentenceEncoder":
    """The named encoder, loaded (and its files sha256-checked) once per process."""
    from ..text.sentence import SentenceEncoder

    return SentenceEncoder(name, max_tokens=max_wordpieces)


def encoder_record(name: str, max_wordpieces: int = MAX_WORDPIECES) -> dict:
    """What ``bundle.json`` records of the encoder: ``{"name", "sha256", "max_wordpieces"}``."""
    from ..text.sentence import NAMED_ENCODERS

    return {"name": name, "sha256": NAMED_ENCODERS[name].weights_sha256, "max_wordpieces": max_wordpieces}


def sentence_vectors(encoder: "SentenceEncoder", texts: list[str], cache: str | Path | None, quiet: bool = True) -> torch.Tensor:
    """(n, dim) vectors of ``texts``, through the sentence cache under ``cache`` (None: encoded, nothing kept)."""
    if cache is None:
        return encoder.encode(texts, progress=not quiet)
    return encoder.encode_cached(texts, cache, progress=not quiet)


def run_cache(config: PipelineConfig) -> Path | None:
    return cache_folder(config.data.cache_dir)


def fit_phase_head(model: torch.nn.Module, loaders: Loaders, train, dev, chosen: dict | None, *, quiet: bool = True) -> tuple[SentenceHead, dict]:
    """The head on the phase's training rows of ``train``: C and beta chosen on dev (``dev``: a dev file, or None
    for the rows held out of ``train``), or ``chosen``'s (a refit)."""
    if chosen is None and dev is None and loaders.train_part == "all":  # a refit that inherits no choice (after --autotune)
        raise ValueError("the sentence head's C and beta are chosen on dev: this phase has neither dev rows nor the train phase's choice")
    config = loaders.config
    encoder = sentence_encoder(config.model.encoder)
    part = TextClassificationDataset(train, loaders.tokenizer, loaders.vocab, loaders.labels, holdout_every=loaders.holdout,
                                     part=loaders.train_part, source=config.data.source)
    rows = [(example.text, part.label_index[example.label]) for example in part.examples()]
    x = sentence_vectors(encoder, [text for text, _ in rows], run_cache(config), quiet)
    y = torch.tensor([label for _, label in rows], dtype=torch.long)
    labels = loaders.labels
    if chosen is not None:
        head, record = fit_head(x, y, len(labels), C=chosen["C"], beta=chosen["beta"])
    else:
        dev_rows = loaders.in_order().of(dev or train, "all" if dev else "dev")
        logits, gold = predict_logits(model, dev_rows, next(model.parameters()).device)
        dev_x = sentence_vectors(encoder, [example.text for example in dev_rows.dataset.examples()], run_cache(config), quiet)
        head, record = fit_head(x, y, len(labels), dev=(dev_x, gold, logits.softmax(1)))
    if not quiet:
        scores = f" (dev accuracy: model {record['dev']['model']:.4f}, head {record['dev']['head']:.4f}, mixed {record['dev']['mixed']:.4f})" \
            if "dev" in record else ""
        log.info(f"sentence encoder {config.model.encoder}: head C {record['C']:g}, its share of the mix {record['beta']:g}{scores}")
    return head, record


def logits_mixer(head: SentenceHead | None, config: PipelineConfig, quiet: bool = True,
                 temperature: float = 1.0) -> Callable[[torch.Tensor, list[str]], torch.Tensor] | None:
    """``mix(logits, texts)``: the shipped scores, what argmax, the report and the metrics read: the log of the
    mixed probabilities (with a ``head``), divided by ``temperature``; None where there is nothing to change."""
    if head is None and temperature == 1:
        return None

    def mix(logits: torch.Tensor, texts: list[str]) -> torch.Tensor:
        if head is not None:
            vectors = sentence_vectors(sentence_encoder(config.model.encoder), texts, run_cache(config), quiet)
            logits = mixed_log_probs(head, logits.softmax(1), vectors)
        return scale(logits, temperature)
    return mix


def fit_phase_calibration(model: torch.nn.Module, dev_rows, head: SentenceHead | None, config: PipelineConfig, chosen: dict | None, *,
                          quiet: bool = True) -> dict | None:
    """The temperature of the shipped scores (the model's, mixed with ``head``'s) fit on ``dev_rows``, with their
    dev ECE before and after and whether the model learned at all; ``chosen`` (a refit: the train phase's) as it is;
    None with neither (a refit after ``--autotune`` chose the sentence head: uncalibrated, temperature 1)."""
    if chosen is not None or dev_rows is None:
        return chosen
    logits, gold = predict_logits(model, dev_rows, next(model.parameters()).device)
    if gold.dim() == 2:
        return multi_label_calibration(logits, multi_hot(gold, logits.shape[1]), quiet)
    if head is not None:
        logits = logits_mixer(head, config, quiet)(logits, [example.text for example in dev_rows.dataset.examples()])
    temperature = fit_temperature(logits, gold)
    probs = scale(logits, temperature).softmax(1)
    record = {"temperature": temperature, "dev": {"ece_before": round(expected_calibration_error(logits.softmax(1), gold), 6),
                                                  "ece": round(expected_calibration_error(probs, gold), 6), "rows": len(gold),
                                                  "chance": round(chance(gold, probs.shape[1]), 6), "learned": not did_not_learn(probs, gold)}}
    if not record["dev"]["learned"]:  # said even when quiet: these probabilities are no better than a guess
        log.warning(f"the model did not learn: its dev accuracy is no better than always answering the most common label ({record['dev']['chance']:.4f})")
    if not quiet:
        log.info(f"calibration: temperature {temperature:g} fit on {len(gold)} dev rows (dev ECE {record['dev']['ece_before']:.4f} -> {record['dev']['ece']:.4f})")
    return record


def multi_label_calibration(logits: torch.Tensor, targets: torch.Tensor, quiet: bool = True) -> dict:
    """One temperature for the labels' sigmoids, then each label's threshold (the one of best dev F1), both on dev."""
    temperature = fit_temperature_multilabel(logits, targets)
    probs = scale(logits, temperature).sigmoid()
    thresholds = choose_thresholds(probs, targets)
    at_half = multilabel_report(probs >= 0.5, targets.bool(), [str(i) for i in range(targets.shape[1])])["micro"]["f1"]
    tuned = multilabel_report(probs >= thresholds, targets.bool(), [str(i) for i in range(targets.shape[1])])["micro"]["f1"]
    record = {"temperature": temperature, "thresholds": [round(float(t), 6) for t in thresholds],
              "dev": {"rows": len(targets), "loss_before": round(bce_log_loss(logits, targets), 6),
                      "loss": round(bce_log_loss(scale(logits, temperature), targets), 6), "micro_f1_at_half": at_half, "micro_f1": tuned}}
    if not quiet:
        log.info(f"calibration: temperature {temperature:g} and each label's threshold fit on {len(targets)} dev rows "
                 f"(dev micro-F1 {at_half:.4f} at 0.5, {tuned:.4f} at the thresholds)")
    return record


def calibration_notes(calibration: dict | None, nb: dict | None) -> list[str]:
    """The report's lines on the temperature, and on a model or bag that did not learn."""
    notes = []
    if nb and not nb.get("dev", {}).get("bag_learned", True):
        notes.append(f"**The bag did not learn** ({not_learned_line(nb)}), so it is left out of the mix: the shipped model is the NB linear path alone.")
    if calibration is None:
        return notes + ["The probabilities are not calibrated (no dev rows to fit a temperature on): temperature 1."]
    dev = calibration["dev"]
    if "thresholds" in calibration:
        return notes + [f"One sigmoid per label, calibrated by a temperature of {calibration['temperature']:g}; each label is predicted where "
                        f"its probability reaches its threshold, the one of best F1 on {dev['rows']} dev rows (0.5 for a label with too few "
                        f"of them): dev micro-F1 {dev['micro_f1_at_half']:.4f} at 0.5, {dev['micro_f1']:.4f} at the thresholds."]
    if not dev["learned"]:
        notes.append(f"**The model did not learn**: its dev accuracy is no better than always answering the most common label ({dev['chance']:.4f}).")
    return notes + [f"Probabilities calibrated by a temperature of {calibration['temperature']:g}, fit on {dev['rows']} dev rows "
                    f"(dev expected calibration error {dev['ece_before']:.4f} before, {dev['ece']:.4f} after)."]


def head_notes(head: tuple | None) -> list[str]:
    """The report's line on the sentence encoder's share of the mix (none without an encoder)."""
    if not head:
        return []
    record = head[1]
    dev = record.get("dev")
    scores = f" (dev accuracy: model {dev['model']:.4f}, head alone {dev['head']:.4f}, mixed {dev['mixed']:.4f})" if dev else ""
    return [f"Beside the model, a logistic regression (C {record['C']:g}) on each text's sentence vector; the shipped probabilities are "
            f"{1 - record['beta']:g} x the model's + {record['beta']:g} x its, the share chosen on dev{scores}."]


def mixed_log_probs(head: SentenceHead, model_probs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    mixed = head.mix(model_probs, vectors)
    return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log()

