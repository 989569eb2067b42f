"""Text -> tokens.

Three tokenizers behind one small class:

- ``"spacy"`` (default): spaCy's rule-based tokenizer from ``spacy.blank(lang)``, English
  unless ``lang`` names another language (``"de"``, ``"fr"``, ..., ``"xx"`` for many), no model download. spaCy splits a text at whitespace and tokenizes each chunk on
  its own, so textpipe memoizes chunk -> tokens: a chunk seen before ("movie.",
  "don't") costs one dict lookup instead of a trip through spaCy. The tokens equal
  spaCy's on every row of the benchmark data (``tests/test_tokenizer.py``); a warm
  pass is much faster than ``nlp.tokenizer.pipe`` (``make bench`` measures it). One known
  difference: spaCy's special-case matcher can match emoticon-like punctuation
  across a space (``"(' ''s"``, ``") :)<3"``), and textpipe keeps each chunk's own tokens.
- ``"basic_english"``: torchtext's regex tokenizer (lower-cases, splits punctuation);
  faster than spaCy.
- ``"whitespace"``: ``str.split``; for text that is already tokenized.

The heavy tokenizer object is built lazily and dropped when pickled, so a
``Tokenizer`` travels cheaply to DataLoader workers (``spawn`` included) and each
worker builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

TOKENIZERS = ("spacy", "basic_english", "whitespace")
# spaCy languages whose tokenizer is not the rule-based one that cuts at whitespace first (a segmenter, or a
# dictionary): their tokens are not their chunks' tokens end to end, so they are not memoized chunk by chunk.
SEGMENTED = ("zh", "ja", "ko", "th", "vi")
CHUNK_CACHE_SIZE = 2**18  # distinct whitespace chunks remembered; the cache starts over when full


@dataclass
class TokenizerConfig:
    name: str = "spacy"
    lower: bool = True
    lang: str = "en"  # spacy: the language of spacy.blank(lang); "xx" for many languages


class Tokenizer:
    """Turns a string into a list of token strings.

    Example:
        >>> tok = Tokenizer("spacy", lower=True)
        >>> tok("A gorgeous, witty movie.")
        ['a', 'gorgeous', ',', 'witty', 'movie', '.']
    """

    def __init__(self, name: str = "spacy", lower: bool = True, lang: str = "en"):
        if name not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")
        if lang != "en" and name != "spacy":
            raise ValueError(f"tokenizer.lang {lang!r} needs the spacy tokenizer, not {name!r}")
        self.name = name
        self.lower = lower
        self.lang = lang
        self._fn: Callable[[str], list[str]] | None = None
        self._nlp = None

    @classmethod
    def from_config(cls, config: TokenizerConfig) -> "Tokenizer":
        return cls(config.name, config.lower, config.lang)

    @property
    def config(self) -> TokenizerConfig:
        return TokenizerConfig(self.name, self.lower, self.lang)

    @property
    def chunkwise(self) -> bool:
        """True when a text's tokens are those of its whitespace chunks (``text.split()``), each
        tokenized alone, end to end (spaCy, see :class:`_ChunkMemo`): a chunk's tokens can be remembered."""
        return self.name == "spacy" and self.lang not in SEGMENTED

    def __call__(self, text: str) -> list[str]:
        if self._fn is None:
            self._fn = self._build()
        return self._fn(text)

    def pipe(self, texts: Iterable[str]) -> Iterator[list[str]]:
        """Tokenize many texts, lazily, in order."""
        if self._fn is None:
            self._fn = self._build()
        if isinstance(self._fn, _ChunkMemo):
            return self._fn.many(texts)
        return map(self._fn, texts)

    def pipe_chunks(self, chunks: list[str]) -> list[list[str]]:
        """``list(self.pipe(chunks))`` where, for a :attr:`chunkwise` tokenizer, each text is one whitespace
        chunk: its tokens are read straight from the memo (the unseen chunks tokenized in one spaCy call)."""
        if self._fn is None:
            self._fn = self._build()
        if isinstance(self._fn, _ChunkMemo):
            return self._fn.tokens_of(chunks)
        return list(map(self._fn, chunks))

    def _build(self) -> Callable[[str], list[str]]:
        if self.name == "spacy":
            self._nlp = _blank(self.lang)
            if not self.chunkwise:
                return lambda text: [t.lower_ if self.lower else t.text for t in self._nlp(text) if not t.is_space]
            return _ChunkMemo(self._nlp.tokenizer, self.lower, renew=self._renew_spacy)
        if self.name == "basic_english":
            from . import _torchtext  # noqa: F401(silences torchtext's import warning)
            from torchtext.data.utils import get_tokenizer

            # basic_english always lower-cases; `lower=False` cannot undo that.
            return get_tokenizer("basic_english")
        return (lambda text: text.lower().split()) if self.lower else str.split

    def _renew_spacy(self):
        # spaCy's vocabulary keeps every lexeme it has seen: over a long prediction stream
        # of unique tokens it grows without bound. A new one each time the memo starts over.
        self._nlp = _blank(self.lang)
        return self._nlp.tokenizer

    def __getstate__(self) -> dict:
        return {"name": self.name, "lower": self.lower, "lang": self.lang}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["lower"], state.get("lang", "en"))

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, lower={self.lower}" + (f", lang={self.lang!r})" if self.lang != "en" else ")")


def check_lang(lang: str) -> None:
    """ValueError unless spaCy makes a blank tokenizer for ``lang`` here (e.g. en, de, fr, zh, xx; ja needs SudachiPy)."""
    import spacy

    try:
        spacy.blank(lang)
    except Exception as err:  # spaCy raises ImportError (a missing package) or its own error (an unknown code)
        why = str(err).splitlines()[0][:200] if isinstance(err, ImportError) else "spaCy has no such language"
        raise ValueError(f"tokenizer.lang {lang!r}: {why} (e.g. en, de, fr, es; xx for many languages)") from None


def _blank(lang: str = "en"):
    """``spacy.blank(lang)``, its words given only the attributes textpipe reads (``lower_``, ``is_space``)."""
    import spacy
    from spacy.attrs import IS_SPACE, LOWER

    nlp = spacy.blank(lang)
    # spaCy computes some 25 attributes (like_num, shape, is_stop, ...) of each word it meets first,
    # a large share of its time on new text. The tokens do not depend on them.
    getters = nlp.vocab.lex_attr_getters
    nlp.vocab.lex_attr_getters = {attr: getters[attr] for attr in (LOWER, IS_SPACE)}
    return nlp


class _ChunkMemo:
    """Text -> tokens equal to spaCy's, remembering each whitespace chunk's tokens.

    spaCy's tokenizer cuts the text at runs of whitespace (``str.isspace``, as
    ``str.split()`` does) and tokenizes each chunk on its own (prefixes, suffixes
    and infixes never span a space), so the tokens of a text are the concatenation
    of its chunks' tokens. Whitespace tokens are dropped.
    """

    def __init__(self, spacy_tokenizer, lower: bool, renew=None):
        self.spacy_tokenizer, self.lower, self.renew = spacy_tokenizer, lower, renew
        self.memo: dict[str, list[str]] = {}

    def __call__(self, text: str) -> list[str]:
        return next(self._join([text.split()]))

    def many(self, texts: Iterable[str], batch_size: int = 2048) -> Iterator[list[str]]:
        batch: list[list[str]] = []
        for text in texts:
            batch.append(text.split())
            if len(batch) == batch_size:
                yield from self._join(batch)
                batch = []
        yield from self._join(batch)

    def _join(self, split_texts: list[list[str]]) -> Iterator[list[str]]:
        self.learn([chunk for chunks in split_texts for chunk in chunks])
        memo = self.memo
        for chunks in split_texts:
            tokens: list[str] = []
            for chunk in chunks:
                tokens += memo[chunk]
            yield tokens

    def tokens_of(self, chunks: list[str]) -> list[list[str]]:
        self.learn(chunks)
        return list(map(self.memo.__getitem__, chunks))  # self.memo after learn: it may have started over

    def learn(self, chunks: list[str]) -> None:
        """Tokenize the chunks not in the memo, all in one spaCy call."""
        memo = self.memo
        new = list(dict.fromkeys(c for c in chunks if c not in memo))
        if not new:
            return
        if len(memo) + len(new) > CHUNK_CACHE_SIZE:
            # A new dict, not clear(): a batch being read from the old one keeps its chunks.
            self.memo = memo = {}
            new = list(dict.fromkeys(chunks))  # the chunks already known are gone too
            if self.renew is not None:
                self.spacy_tokenizer = self.renew()
        # One Doc for all new chunks, one newline between two: the newline becomes a
        # whitespace token of its own, which marks where each chunk's tokens end.
        doc = self.spacy_tokenizer("\n".join(new))
        tokens: list[str] = []
        found = iter(new)
        for token in doc:
            if token.is_space:
                memo[next(found)], tokens = tokens, []
            else:
                tokens.append(token.lower_ if self.lower else token.text)
        memo[next(found)] = tokens
