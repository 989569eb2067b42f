"""Why a model chose a label: each token's (and n-gram's) contribution to each class's logit.

For the bag model the answer is exact. Its logits are ``W @ mean(rows) + b`` over the
rows of the text's words and hashed n-grams (dropout is off at inference), so row
``j`` of a text with ``n`` rows adds ``W @ rows[j] / n`` to the logits: the
contributions of all features plus the bias equal the logits, to float rounding.

For the CNN, GRU and Transformer no such split exists; :func:`explain` gives
gradient x input on the word embeddings instead (``grad(logit_c, x_t) . x_t``),
labelled approximate: it is a first-order estimate, and the contributions do not
add up to the logits (the remainder is reported as the bias).

Shown to people (``textpipe predict --explain``, ``textpipe serve``), a feature's
weight is its contribution to the predicted label's logit minus its mean
contribution over all labels: positive pushes toward the label, negative away
(softmax ignores what raises every logit alike). A multi-label bundle gives each label its own
sigmoid, so there a feature's weight toward a label is its contribution to that label's logit as it
is, and the bias that label's own. For shading, each n-gram's weight
is shared out among its words, so the token weights sum to the same total.

Where the bag's NB path has a share of the shipped probabilities, and where a sentence
encoder adds ``(1 - beta) * p_model + beta * p_head``, no sum of word contributions
gives them. The explanation keeps the model's own split and adds the mix as
whole-text terms (span ``(0, 0)``: no token carries them): ``log p_model - log
softmax(bag logits)`` (kind ``"nb"``) and the encoder's ``log p_mixed - log p_model``
(kind ``"encoder"``). The terms telescope: contributions + bias = the log of the
shipped probabilities + a per-text constant, so the explanation's softmax is what
``predict`` prints, and each weight is exact. A bundle's temperature (:mod:`textpipe.core.calibration`)
divides every contribution, the bias and the logits alike: weights are in calibrated units.

Example:
    >>> [e] = explain(load_bundle("runs/default"), ["a gorgeous, witty, seductive movie."])
    >>> e.method
    'exact'
    >>> e.to_dict(e.logits.argmax().item(), top=2)["top"][0]
    {'feature': 'witty', 'kind': 'token', 'weight': 1.311967}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .store import Bundle, BundleError
from ..core.collate import pad_collate
from ..core.files import cache_home
from ..text.vocab import UNK, UNK_ID

EXACT = "exact"
APPROXIMATE = "approximate (gradient x input)"
NB_TERM = "[NB linear path]"  # the whole-text terms' names: brackets, which no token or n-gram holds
VectorSource = Callable[[list[str]], torch.Tensor]  # texts -> (n, dim) sentence vectors


@dataclass
class Explanation:
    """One text's features and their contribution to every class's logit.

    ``contributions[j, c]`` is feature ``j``'s share of logit ``c``; for the bag model
    ``contributions.sum(0) + bias == logits`` exactly. With a sentence encoder the
    ``logits`` are the mixed probabilities' logs (plus a constant): ``logits.softmax(0)``
    is what ``predict`` gives.

    Example:
        >>> e = explain(bundle, ["dull and tedious"])[0]
        >>> e.features, e.kinds
        (['dull', 'and', 'tedious', 'dull and', 'and tedious'], ['token', 'token', 'token', 'ngram', 'ngram'])
    """

    text: str
    tokens: list[str]  # the tokenizer's tokens, in text order
    features: list[str]  # the tokens, then the n-grams ("a b"), then any whole-text terms ("[sentence encoder minilm-l6]")
    kinds: list[str]  # "token", "ngram", or a whole-text term's "nb" / "encoder", per feature
    spans: list[tuple[int, int]]  # the tokens each feature covers: tokens[start:end]; (0, 0) for a whole-text term
    contributions: torch.Tensor  # (F, C)
    bias: torch.Tensor  # (C,): the head's bias (exact) or what the contributions leave unexplained (approximate)
    logits: torch.Tensor  # (C,)
    method: str
    multi_label: bool = False  # one sigmoid per label: a weight is the contribution itself, not relative to the other labels

    def weights(self, label: int) -> torch.Tensor:
        """``(F,)`` each feature's push toward class ``label``, relative to the mean over classes (multi-label: absolute)."""
        if self.multi_label:
            return self.contributions[:, label]
        return self.contributions[:, label] - self.contributions.mean(1)

    def token_weights(self, label: int) -> torch.Tensor:
        """``(T,)`` per token: its own weight plus an equal share of each n-gram it is in (whole-text terms left out)."""
        shares = torch.zeros(len(self.tokens))
        for (start, end), weight in zip(self.spans, self.weights(label).tolist()):
            if end > start:
                shares[start:end] += weight / (end - start)
        return shares

    def add_terms(self, terms: Sequence[tuple[str, str, torch.Tensor]]) -> None:
        """Whole-text terms ``(name, kind, (C,) contribution)`` appended as features; the logits grow by their sum."""
        for name, kind, row in terms:
            self.features.append(name)
            self.kinds.append(kind)
            self.spans.append((0, 0))
            self.contributions = torch.cat([self.contributions, row[None]])
            self.logits = self.logits + row

    def to_dict(self, label: int, top: int = 10) -> dict:
        """What ``predict --explain`` prints: method, the tokens with their weights, the ``top`` strongest features."""
        weights = self.weights(label)
        bias = float(self.bias[label] - (0 if self.multi_label else self.bias.mean()))
        order = weights.abs().argsort(descending=True, stable=True)[:top].tolist()
        return {
            "method": self.method,
            "bias": round(bias, 6),
            "tokens": [[token, round(w, 6)] for token, w in zip(self.tokens, self.token_weights(label).tolist())],
            "top": [{"feature": self.features[j], "kind": self.kinds[j], "weight": round(float(weights[j]), 6)} for j in order],
        }


def explain(bundle: Bundle, texts: Sequence[str], vectors: VectorSource | None = None) -> list[Explanation]:
    """One :class:`Explanation` per text: exact for the bag model, gradient x input for the others; with a
    sentence encoder, its share of the mix (and the NB path's) as whole-text terms, the texts' vectors from
    ``vectors`` (default: :func:`sentence_vector_source`, the encoder loaded now)."""
    model = bundle.model
    token_lists = [tokens or [UNK] for tokens in bundle.tokenizer.pipe(texts)]
    ids = [torch.tensor(bundle.vocab(tokens), dtype=torch.long) for tokens in token_lists]
    if bundle.model_config.name == "bag":
        explanations = [explain_bag(model, text, tokens, row) for text, tokens, row in zip(texts, token_lists, ids)]
    else:
        explanations = explain_by_gradient(model, texts, token_lists, ids)
    head, nb = getattr(bundle, "head", None), getattr(model, "nb", None)
    if explanations and (head is not None or (nb is not None and float(nb.alpha) < 1)):
        add_mix_terms(explanations, bundle, ids, None if head is None else vectors or sentence_vector_source(bundle))
    temperature = getattr(bundle, "temperature", 1.0)
    for e in explanations:
        e.multi_label = getattr(bundle, "multi_label", None) is not None
    for e in explanations if temperature != 1 else ():  # every part divided alike: the sum stays exact, its softmax calibrated
        e.contributions, e.bias, e.logits = e.contributions / temperature, e.bias / temperature, e.logits / temperature
    return explanations


def sentence_vector_source(bundle: Bundle, cache: str | Path | None = "auto") -> VectorSource:
    """The bundle's sentence encoder, loaded now at its recorded precision (its files sha256-checked): texts -> vectors,
    read through the sentence cache under ``cache`` ("auto": the token caches' home), so a text ``predict`` encoded
    is not encoded again; ``None`` keeps nothing on disk (``serve``: strangers' texts, each encoded once)."""
    from ..text.sentence import SentenceEncoder

    record = bundle.encoder or {}
    if "name" not in record:
        raise BundleError(f"the bundle's model has a sentence head but no encoder record ({bundle.model_config.encoder})")
    encoder = SentenceEncoder.from_record(record)
    if cache is None:
        return lambda texts: encoder.encode(texts)
    root = cache_home() if cache == "auto" else cache
    return lambda texts: encoder.encode_cached(texts, root, progress=False)


@torch.no_grad()
def add_mix_terms(explanations: list[Explanation], bundle: Bundle, ids: list[torch.Tensor], vectors: VectorSource | None) -> None:
    """Each explanation given the terms that take its logits to the shipped mix (see the module's docstring)."""
    model, head = bundle.model, getattr(bundle, "head", None)
    batch = pad_collate(ids)
    device = next(model.parameters()).device
    shipped = model(batch.ids.to(device), batch.mask.to(device)).float().cpu()  # (B, C): the model's output, its NB mix included
    if getattr(bundle, "multi_label", None) is not None:  # one sigmoid per label: the NB term is a difference of logits (no encoder head here)
        for e, row in zip(explanations, shipped):
            e.add_terms([(NB_TERM, "nb", row - e.logits)])
        return
    model_probs = shipped.softmax(-1)
    mixed = model_probs if head is None else head.mix(model_probs, vectors([e.text for e in explanations]).cpu())
    nb = getattr(model, "nb", None)
    nb_shares = nb is not None and float(nb.alpha) < 1
    encoder_term = f"[sentence encoder {bundle.model_config.encoder}]"
    for e, model_row, mixed_row in zip(explanations, _log(model_probs), _log(mixed)):
        terms = [(NB_TERM, "nb", model_row - e.logits.log_softmax(0))] if nb_shares else []
        e.add_terms(terms + ([(encoder_term, "encoder", mixed_row - model_row)] if head is not None else []))


def _log(probs: torch.Tensor) -> torch.Tensor:
    """As predict takes the log of a mix: a probability of 0 becomes the smallest float's log, not -inf."""
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


@torch.no_grad()
def explain_bag(model: nn.Module, text: str, tokens: list[str], ids: torch.Tensor) -> Explanation:
    """The exact split of a bag model's logits over the text's words and n-grams."""
    device = model.head.weight.device
    batch = pad_collate([ids])
    all_ids, mask = model.add_ngrams(batch.ids.to(device), batch.mask.to(device))  # (1, T')
    rows = model.embedding.weight[all_ids[mask]]  # (F, D): the mean's terms
    D = rows.shape[1]
    contributions = rows @ model.head.weight[:, :D].T / len(rows)  # (F, C)
    if model.config.frozen_dim:  # the frozen vectors' mean over the words: the first features are the words, in order
        words = all_ids[0, : batch.ids.shape[1]][mask[0, : batch.ids.shape[1]]]  # (W,)
        contributions[: len(words)] += model.frozen[words] @ model.head.weight[:, D:].T / max(len(words), 1)
    bias = model.head.bias
    features, kinds, spans = _features(tokens, mask[0].tolist(), model.config.max_ngram)
    return Explanation(text, tokens, features, kinds, spans, contributions.cpu(), bias.cpu(), (contributions.sum(0) + bias).cpu(), EXACT)


def _features(tokens: list[str], real: list[bool], max_ngram: int) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """Names, kinds and token spans of the features, in :meth:`BagOfNgrams.add_ngrams`'s order."""
    T = len(tokens)
    spans = [(t, t + 1) for t in range(T)]
    for n in range(2, max_ngram + 1):
        spans += [(t, t + n) for t in range(T - n + 1)]
    spans = [span for span, keep in zip(spans, real) if keep]
    return [" ".join(tokens[a:b]) for a, b in spans], ["token" if b - a == 1 else "ngram" for a, b in spans], spans


def explain_by_gradient(model: nn.Module, texts: Sequence[str], token_lists: list[list[str]], ids: list[torch.Tensor]) -> list[Explanation]:
    """Gradient x input on the word embeddings, for every class, in one batch."""
    device = next(model.parameters()).device
    batch = pad_collate(ids)
    captured: list[torch.Tensor] = []

    def keep_output(module, inputs, output):
        captured.append(output)

    handle = model.embedding.register_forward_hook(keep_output)
    # cuDNN computes an RNN's backward pass in training mode only; the plain kernels work in eval mode.
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        try:
            logits = model(batch.ids.to(device), batch.mask.to(device))  # (B, C)
        finally:
            handle.remove()
        x = captured[0]  # (B, T, D), T cut to max_len by the transformer
        per_class = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=True)[0] for c in range(logits.shape[1])]
    contributions = torch.stack([(g * x).sum(-1) for g in per_class], -1).detach().cpu()  # (B, T, C)
    logits = logits.detach().cpu()
    explanations = []
    for i, (text, tokens) in enumerate(zip(texts, token_lists)):
        rows = torch.zeros(len(tokens), logits.shape[1])
        seen = min(len(tokens), contributions.shape[1])  # tokens past the transformer's max_len get nothing
        rows[:seen] = contributions[i, :seen]
        spans = [(t, t + 1) for t in range(len(tokens))]
        explanations.append(Explanation(text, tokens, list(tokens), ["token"] * len(tokens), spans, rows, logits[i] - rows.sum(0), logits[i], APPROXIMATE))
    return explanations


@torch.no_grad()
def strongest_features(bundle_or_model: Bundle | nn.Module, vocab=None, labels: Sequence[str] | None = None, top: int = 10) -> dict[str, list[tuple[str, float]]]:
    """The ``top`` words of the vocabulary that push hardest toward each label.

    A word's score for label ``c`` is the logit the model gives the word alone minus
    the logit of an empty text (the head's bias), relative to the mean over labels.
    For the bag model that is exactly the word's row seen through the classifier
    head, like reading a linear model's coefficients; for the others it is the word
    out of context, an approximation.
    """
    if isinstance(bundle_or_model, Bundle):
        model, vocab, labels = bundle_or_model.model, bundle_or_model.vocab, bundle_or_model.labels
    else:
        model = bundle_or_model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    words = vocab.get_itos()
    ids = torch.arange(UNK_ID + 1, len(words), device=device)[:, None]  # (V-2, 1): every word but <pad> and <unk>
    if len(ids) == 0:
        return {label: [] for label in labels}
    scores = torch.cat([model(chunk, torch.ones_like(chunk, dtype=torch.bool)) for chunk in ids.split(4096)]).float()
    scores = scores - model.head.bias.float()  # the empty text's logits: every model pools it to zeros
    scores = (scores - scores.mean(1, keepdim=True)).cpu()  # (V-2, C)
    model.train(was_training)
    k = min(top, len(ids))
    result = {}
    for c, label in enumerate(labels):
        values, rows = scores[:, c].topk(k)
        result[label] = [(words[UNK_ID + 1 + r], round(v, 4)) for v, r in zip(values.tolist(), rows.tolist())]
    return result


def add_explanations(results: list[dict], explanations: Sequence[Explanation], labels: Sequence[str], top: int = 10) -> list[dict]:
    """``predict``'s result dicts, each given an ``"explanation"`` of its own label (see :meth:`Explanation.to_dict`);
    a multi-label result (``"labels"``) gets ``"explanations"``: one per label of its set, label -> explanation."""
    index = {label: i for i, label in enumerate(labels)}
    for result, explanation in zip(results, explanations):
        if "labels" in result:
            result["explanations"] = {label: explanation.to_dict(index[label], top) for label in result["labels"]}
        else:
            result["explanation"] = explanation.to_dict(index[result["label"]], top)
    return results
