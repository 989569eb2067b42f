"""``model.encoder`` in a run: the sentence head fit beside the trained model, and the mix it ships with.

With ``--encoder minilm-l6`` each phase of a run, once its model has trained (and its
NB path is fit), reads the phase's texts in the order of their labels (the training
part, and the dev file or the very rows the model held out, through the same
:func:`~textpipe.text.dataset.select_part`), looks their sentence vectors up in the
:class:`~textpipe.text.sentence_cache.SentenceCache` (each text encoded once), and fits
:class:`~textpipe.core.sentence_head.SentenceHead` on them: C and the head's share beta
chosen on dev against the model's own dev probabilities, or (the refit) the train
phase's choices reused on every training row. The test scores are those of the mix.
Nothing here runs while ``model.encoder`` is unset.

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
from ..core.metrics import predict_logits
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


def logits_mixer(head: SentenceHead, config: PipelineConfig, quiet: bool = True) -> Callable[[torch.Tensor, list[str]], torch.Tensor]:
    """``mix(logits, texts)``: the log of the mixed probabilities, what argmax, the report and the metrics read."""
    def mix(logits: torch.Tensor, texts: list[str]) -> torch.Tensor:
        vectors = sentence_vectors(sentence_encoder(config.model.encoder), texts, run_cache(config), quiet)
        return mixed_log_probs(head, logits.softmax(1), vectors)
    return mix


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

