"""Stage 1: text -> tokens.

Three tokenizers behind one small class:

- ``"spacy"`` (default): spaCy's rule-based English tokenizer from ``spacy.blank("en")``,
  no model download; :meth:`Tokenizer.pipe` uses spaCy's batched ``nlp.tokenizer.pipe``.
- ``"basic_english"``: torchtext's regex tokenizer (lower-cases, splits punctuation);
  about five times faster than spaCy.
- ``"whitespace"``: ``str.split``; for text that is already tokenized.

The heavy tokenizer object is built lazily and dropped when pickled, so a
``Tokenizer`` travels cheaply to DataLoader workers (``spawn`` included) and each
worker builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

TOKENIZERS = ("spacy", "basic_english", "whitespace")


@dataclass
class TokenizerConfig:
    name: str = "spacy"
    lower: bool = True


class Tokenizer:
    """Turns a string into a list of token strings.

    Example:
        >>> tok = Tokenizer("spacy", lower=True)
        >>> tok("A gorgeous, witty movie.")
        ['a', 'gorgeous', ',', 'witty', 'movie', '.']
    """

    def __init__(self, name: str = "spacy", lower: bool = True):
        if name not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")
        self.name = name
        self.lower = lower
        self._fn: Callable[[str], list[str]] | None = None
        self._nlp = None

    @classmethod
    def from_config(cls, config: TokenizerConfig) -> "Tokenizer":
        return cls(config.name, config.lower)

    @property
    def config(self) -> TokenizerConfig:
        return TokenizerConfig(self.name, self.lower)

    def __call__(self, text: str) -> list[str]:
        if self._fn is None:
            self._fn = self._build()
        return self._fn(text)

    def pipe(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator[list[str]]:
        """Tokenize many texts; with spaCy this uses its batched tokenizer."""
        if self.name != "spacy":
            yield from map(self, texts)
            return
        if self._nlp is None:
            self._build()
        for doc in self._nlp.tokenizer.pipe(texts, batch_size=batch_size):
            yield [t.lower_ if self.lower else t.text for t in doc if not t.is_space]

    def _build(self) -> Callable[[str], list[str]]:
        if self.name == "spacy":
            import spacy

            self._nlp = spacy.blank("en")
            tokenizer, lower = self._nlp.tokenizer, self.lower
            return lambda text: [t.lower_ if lower else t.text for t in tokenizer(text) if not t.is_space]
        if self.name == "basic_english":
            from . import _torchtext  # noqa: F401  (silences torchtext's import warning)
            from torchtext.data.utils import get_tokenizer

            # basic_english always lower-cases; `lower=False` cannot undo that.
            return get_tokenizer("basic_english")
        return (lambda text: text.lower().split()) if self.lower else str.split

    def __getstate__(self) -> dict:
        return {"name": self.name, "lower": self.lower}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["lower"])

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, lower={self.lower})"

