"""Texts -> token ids, many at once: every text's ids end to end in one tensor, and each text's length.

With spaCy, a text's tokens are its whitespace chunks' tokens end to end
(:attr:`~textpipe.text.tokenizer.Tokenizer.chunkwise`), and the vocabulary maps token by
token, so the ids of a text are its chunks' ids end to end. :class:`TextEncoder`
looks each chunk's ids up once and remembers them: a text then costs one dict
lookup per chunk, and the ids of all the texts are gathered in one tensor
operation, where tokens -> ids row by row cost more than spaCy itself.
"""

from __future__ import annotations

import itertools
import sys
import threading
from typing import Protocol, Sequence

import numpy as np
import torch

from .tokenizer import Tokenizer
from .vocab import UNK_ID, Vocab

MEMO_SIZE = 2**18  # pieces whose ids are remembered; the memo starts over when full
# ... and the bytes they hold: a long-running server meeting unique long words would otherwise grow
# by some 8 bytes per character (this memo, the tokenizer's, spaCy's vocabulary) up to MEMO_SIZE pieces.
MEMO_BYTES = 32 << 20


def memo_bytes(pieces: Sequence[str]) -> int:
    """What remembering ``pieces`` costs, about: measured, 8 bytes per byte of string and 500 per piece."""
    return sum(map(sys.getsizeof, pieces)) * 8 + 500 * len(pieces)


class ChunkLookup(Protocol):
    """What :class:`TextEncoder` asks of a compiled chunk table (:class:`textpipe.core.kernels.ChunkTable`)."""

    def codes(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[str]]: ...
    def add(self, chunks: list[str], codes: list[int]) -> None: ...
    def fresh(self) -> "ChunkLookup": ...


class TextEncoder:
    """Texts -> ``(ids, lengths)``: all the texts' token ids end to end, and each text's count.

    A text without tokens gets ``[<unk>]`` (a model needs one id per row at least).
    With spaCy each whitespace chunk's ids are remembered across calls; with the
    other tokenizers a piece is a whole text, remembered for one call only (a text
    can be long, and those tokenizers are cheap).

    Example:
        >>> encoder = TextEncoder(Tokenizer("whitespace"), build_vocab([["great", "fun"]]))
        >>> encoder(["great fun", "a great bore", ""])
        (tensor([2, 3, 1, 2, 1, 1]), tensor([2, 3, 1]))
    """

    def __init__(self, tokenizer: Tokenizer, vocab: Vocab, chunk_table: ChunkLookup | None = None):
        self.tokenizer, self.vocab = tokenizer, vocab
        # With spaCy, a compiled table can split the texts and number their chunks
        # (textpipe.core.kernels.ChunkTable): the same numbers, no Python string per chunk.
        self.chunk_table = chunk_table if tokenizer.chunkwise else None
        # One call at a time: the memo is shared state, and ctypes lets go of the GIL inside
        # the compiled table, where a lookup meeting another thread's insert would crash.
        self._one_call = threading.Lock()
        self.start_over()

    def __getstate__(self) -> dict:
        # A lock and a compiled table do not pickle (a spawned DataLoader worker gets a copy):
        # the copy numbers chunks from the memo's dict alone, which gives the same ids.
        return {**self.__dict__, "_one_call": None, "chunk_table": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._one_call = threading.Lock()

    def start_over(self) -> None:
        """Forget every remembered piece."""
        self.codes: dict[str, int] = {}  # piece -> its number, an index into starts and counts
        self.table = torch.empty(0, dtype=torch.long)  # the remembered pieces' ids, end to end
        self.starts = torch.empty(0, dtype=torch.long)  # where each piece's ids start in the table
        self.counts = torch.empty(0, dtype=torch.long)  # how many ids each piece has
        self.bytes = 0  # memo_bytes of the remembered pieces
        if getattr(self, "chunk_table", None) is not None:
            self.chunk_table = self.chunk_table.fresh()

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._one_call:
            return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunk_table is not None:
            return unk_for_empty(*self._gather(*self._table_codes(texts)))
        if self.tokenizer.chunkwise:
            pieces = list(map(str.split, texts))
        else:
            self.start_over()
            pieces = [[text] for text in texts]
        flat = list(itertools.chain.from_iterable(pieces))
        ids, lengths = self._gather(self._codes(flat), torch.tensor(list(map(len, pieces)), dtype=torch.long))
        return unk_for_empty(ids, lengths)

    def _codes(self, pieces: list[str]) -> torch.Tensor:
        """The number of each piece, learning the new ones first."""
        codes = np.fromiter(map(self.codes.get, pieces, itertools.repeat(-1)), dtype=np.int64, count=len(pieces))
        missing = np.flatnonzero(codes < 0).tolist()
        new = {pieces[i] for i in missing}
        if self.codes and self._full(new):
            self._start_over_with_tokenizer()
            new, missing = set(pieces), list(range(len(pieces)))
        if new:
            self._learn(sorted(new))  # sorted: the same numbers whatever the hash seed
            codes[missing] = [self.codes[pieces[i]] for i in missing]
        return torch.from_numpy(codes)

    def _table_codes(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The number of each chunk of the texts and each text's chunk count, from the compiled table, learning the new chunks first."""
        codes, per_text, missing, unknown = self.chunk_table.codes(texts)
        new = sorted(set(unknown))  # sorted: the same numbers whatever the hash seed
        if self.codes and self._full(new):  # start over: then every chunk is new
            self._start_over_with_tokenizer()
            return self._table_codes(texts)
        if new:
            self._learn(new)
            self.chunk_table.add(new, [self.codes[piece] for piece in new])
            codes[missing] = torch.tensor([self.codes[piece] for piece in unknown], dtype=torch.long)
        return codes, per_text

    def _full(self, new: Sequence[str]) -> bool:
        return len(self.codes) + len(new) > MEMO_SIZE or self.bytes + memo_bytes(new) > MEMO_BYTES

    def _start_over_with_tokenizer(self) -> None:
        # The tokenizer remembers the same chunks (and spaCy their words): they are forgotten together,
        # the tokenizer made anew the way a pickled copy is (its heavy parts rebuilt on first use).
        self.start_over()
        self.tokenizer.__setstate__(self.tokenizer.__getstate__())

    def _learn(self, pieces: list[str]) -> None:
        token_lists = self.tokenizer.pipe_chunks(pieces)  # one spaCy call for the chunks it has not seen
        counts = torch.tensor(list(map(len, token_lists)), dtype=torch.long)
        ids = torch.tensor(self.vocab(list(itertools.chain.from_iterable(token_lists))), dtype=torch.long)
        self.codes.update(zip(pieces, range(len(self.codes), len(self.codes) + len(pieces))))
        self.starts = torch.cat([self.starts, len(self.table) + counts.cumsum(0) - counts])
        self.counts = torch.cat([self.counts, counts])
        self.table = torch.cat([self.table, ids])
        self.bytes += memo_bytes(pieces)

    def _gather(self, codes: torch.Tensor, pieces_per_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids of the pieces ``codes`` end to end, and each text's count (its pieces' counts summed)."""
        counts = self.counts[codes]  # (P,)
        ends = counts.cumsum(0)  # (P,) where each piece ends in the output
        total = int(ends[-1]) if len(ends) else 0
        shift = (self.starts[codes] - (ends - counts)).repeat_interleave(counts, output_size=total)  # (N,) output -> table
        ids = self.table[torch.arange(total) + shift]
        text_ends = torch.cat([ends.new_zeros(1), ends])[pieces_per_text.cumsum(0)]  # (B,)
        return ids, text_ends.diff(prepend=ends.new_zeros(1))


def unk_for_empty(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[<unk>]`` for each row of length 0 of flat ``ids`` (rows of ``lengths``); the others unchanged."""
    if bool((lengths > 0).all()):
        return ids, lengths
    unk = torch.tensor([UNK_ID])
    rows = [row if len(row) else unk for row in ids.split(lengths.tolist())]
    return torch.cat(rows), lengths.clamp(min=1)
