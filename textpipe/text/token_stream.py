"""Tokenize once on a cold run: the count pass keeps each row's tokens as provisional ids on disk.

The count pass (:func:`textpipe.run.counts.count_training_file`) tokenizes every row of the
training file before any vocabulary exists. A :class:`TokenStream` keeps what it saw: each
distinct token gets a provisional id at first sight (a dict bounded by the distinct tokens),
the rows' ids go end to end into a file in a temporary folder of the cache folder (not RAM),
beside each row's token count, label and whether it was held out. Once the vocabulary is
made, :meth:`TokenStream.write_part` turns one part of the file into its token-id cache
(:mod:`textpipe.text.cache`) with one lookup array, provisional id -> final id, applied a
block of rows at a time: the same files, byte for byte, as tokenizing the part again.

The folder is removed when the stream is dropped (or the process ends); a killed run can
leave it, but nothing ever reads a stream it did not write (its name is not a cache key),
and ``cache.prune`` deletes it once it is two days old (``cache.STALE_S``).
This module knows arrays and files only (no tokenizer, no vocabulary).

Example:
    >>> stream = TokenStream("data/cache", holdout=10, file="train.csv")
    >>> stream.add(["a", "fine", "film"], "pos", held=False); stream.finish({})
    >>> stream.write_part("data/cache", key, remap, label_map, meta, part="train")   # remap: vocab ids of stream.tokens
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from array import array
from pathlib import Path

import numpy as np

from .cache import NumericCache, write_cache_chunks

EMPTY = 0  # the provisional id of a row with no tokens: its one id in the cache (<unk>), as the text path writes it
BLOCK_ROWS = 65536  # rows remapped at a time: memory stays a few MB whatever the file's size
FLUSH_IDS = 1 << 20  # provisional ids buffered before they are written out


def file_identity(path: str | Path) -> tuple[str, int, int]:
    """What says a file is the one a stream read: its path, size and modification time."""
    stat = os.stat(path)
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


class TokenStream:
    """The rows of one file as provisional token ids, written while they are counted.

    ``tokens[i]`` is the token of provisional id ``i`` (``tokens[0]`` stands for an empty row).

    Example:
        >>> stream = TokenStream(root, holdout=10, file="train.csv")
        >>> for i, (tokens, label) in enumerate(rows): stream.add(tokens, label, held=is_held_out(i, 10))
        >>> stream.finish(skipped)
    """

    def __init__(self, root: str | Path, holdout: int, file: str | Path):
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".stream.", dir=root))
        self._remove = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.holdout, self.file = holdout, file_identity(file)
        self.index: dict[str, int] = {}
        self.tokens: list[str | None] = [None]
        self.label_index: dict[str, int] = {}
        self.lengths, self.labels, self.held = array("i"), array("i"), bytearray()
        self.skipped: dict[str, int] | None = None  # set by finish(): the rows the reader skipped, by reason
        self._ids = open(self.folder / "ids.i32", "wb")
        self._buffer: list[int] = []

    def add(self, tokens: list[str], label: str, held: bool) -> None:
        """One row, in file order: its tokens, its label and whether it is held out."""
        index = self.index
        try:
            ids = [index[t] for t in tokens]
        except KeyError:
            for t in tokens:
                if t not in index:
                    index[t] = len(self.tokens)
                    self.tokens.append(t)
            ids = [index[t] for t in tokens]
        ids = ids or [EMPTY]
        self._buffer += ids
        if len(self._buffer) >= FLUSH_IDS:
            self._flush()
        self.lengths.append(len(ids))
        self.labels.append(self.label_index.setdefault(label, len(self.label_index)))
        self.held.append(bool(held))

    def _flush(self) -> None:
        self._ids.write(np.asarray(self._buffer, dtype=np.int32).tobytes())
        self._buffer = []

    def finish(self, skipped: dict[str, int]) -> None:
        """The file was read to its end: ``skipped`` is what its reader skipped."""
        self._flush()
        self._ids.close()
        self.skipped = dict(skipped)

    def discard(self) -> None:
        """Remove the stream's folder now."""
        if not self._ids.closed:
            self._ids.close()
        self._remove()

    def usable_for(self, file: str | Path, part: str, holdout_every: int) -> bool:
        """Whether this stream holds ``part`` of ``file`` as it is now (the part's rows are chosen as its count chose them)."""
        if self.skipped is None or not (self.folder / "ids.i32").is_file() or file_identity(file) != self.file:
            return False
        return part == "all" or holdout_every == self.holdout

    def write_part(self, root: str | Path, key: str, remap: np.ndarray, label_map: np.ndarray, meta: dict, *, part: str = "all") -> NumericCache:
        """The token-id cache ``key`` of ``part`` ("all", "train": the rows not held out, "dev": those held out): each
        provisional id ``i`` becomes ``remap[i]``, each label ``j`` (in first-seen order) ``label_map[j]``."""
        return write_cache_chunks(root, key, self._blocks(part, np.asarray(remap, np.int32), np.asarray(label_map, np.int64)), meta)

    def _blocks(self, part: str, remap: np.ndarray, label_map: np.ndarray):
        lengths = np.frombuffer(self.lengths, dtype=np.int32)
        labels = label_map[np.frombuffer(self.labels, dtype=np.int32)]
        held = np.frombuffer(bytes(self.held), dtype=np.bool_)
        keep = None if part == "all" else held if part == "dev" else ~held
        with open(self.folder / "ids.i32", "rb") as ids_file:
            for start in range(0, len(lengths), BLOCK_ROWS):
                rows = slice(start, start + BLOCK_ROWS)
                block_lengths = lengths[rows]
                ids = np.fromfile(ids_file, dtype=np.int32, count=int(block_lengths.sum()))
                if keep is not None:
                    ids, block_lengths = ids[np.repeat(keep[rows], block_lengths)], block_lengths[keep[rows]]
                yield remap[ids], block_lengths, labels[rows] if keep is None else labels[rows][keep[rows]]
