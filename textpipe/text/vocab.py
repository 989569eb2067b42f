"""Tokens -> ids.

A thin layer over ``torchtext.vocab``: ``<pad>`` is id 0, ``<unk>`` is id 1 and is
the default index, so a token never seen in training maps to ``<unk>``. The
vocabulary is saved as plain JSON (a list of tokens in id order), never pickled.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Iterable, Mapping

from . import _torchtext  # noqa: F401(silences torchtext's import warning)
from torchtext.vocab import Vocab, build_vocab_from_iterator, vocab as vocab_from_ordered_dict

from ..core.files import atomic_write, read_json_file
from ..core.specials import PAD, PAD_ID, SPECIALS, UNK, UNK_ID  # noqa: F401  (re-exported: the vocabulary's specials)


def build_vocab(token_lists: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None) -> Vocab:
    """Build a vocabulary from an iterable of token lists, in one streaming pass.

    The most frequent tokens come first; ties are in string order (torchtext's rule), so
    the ids depend on the counts alone, not on the order the rows came in.
    ``max_size`` counts the specials.

    Example:
        >>> v = build_vocab([["a", "good", "film"], ["a", "bad", "film"]])
        >>> v(["a", "film", "never-seen"])
        [2, 3, 1]
    """
    _check_limits(min_freq, max_size)  # before the pass, not after it
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return vocab_from_counts(counts, min_freq, max_size)


def vocab_from_counts(counts: Mapping[str, int], min_freq: int = 1, max_size: int | None = None) -> Vocab:
    """The vocabulary :func:`build_vocab` makes of token lists with these token counts.

    Example:
        >>> vocab_from_counts(Counter(a=2, film=2, good=1, bad=1)).get_itos()
        ['<pad>', '<unk>', 'a', 'film', 'bad', 'good']
    """
    _check_limits(min_freq, max_size)
    # torchtext adds up its token lists with Counter.update, which adds a mapping's counts:
    # the counts stand for the lists they were made from.
    vocab = build_vocab_from_iterator(
        [counts], min_freq=min_freq, specials=list(SPECIALS), special_first=True, max_tokens=max_size
    )
    vocab.set_default_index(UNK_ID)
    return vocab


def _check_limits(min_freq: int, max_size: int | None) -> None:
    if min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {min_freq}")
    if max_size is not None and max_size <= len(SPECIALS):
        raise ValueError(f"max_size must be > {len(SPECIALS)} (it counts <pad> and <unk>), got {max_size}")


def vocab_from_tokens(tokens: list[str]) -> Vocab:
    """Rebuild a vocabulary from its tokens in id order (the inverse of ``vocab.get_itos()``)."""
    if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
        raise ValueError(f"a textpipe vocabulary starts with {list(SPECIALS)}, got {tokens[:2]}")
    if len(set(tokens)) != len(tokens):
        raise ValueError("vocabulary has duplicate tokens")
    # torchtext.vocab.vocab assigns ids in the OrderedDict's order.
    vocab = vocab_from_ordered_dict(OrderedDict((t, 1) for t in tokens), min_freq=1)
    vocab.set_default_index(UNK_ID)
    return vocab


def save_vocab(vocab: Vocab, path: str | Path) -> None:
    """Write the vocabulary as a JSON list of tokens, atomically."""
    data = json.dumps(vocab.get_itos(), ensure_ascii=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(data))  # a temporary file of a unique name, then a rename


def load_vocab(path: str | Path, max_bytes: int = 1 << 30) -> Vocab:
    """Read a vocabulary written by :func:`save_vocab` (a regular file of at most ``max_bytes``)."""
    tokens = read_json_file(path, max_bytes, "vocabulary file")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: a vocabulary file holds a JSON list of strings")
    return vocab_from_tokens(tokens)
