"""Tokenize once: a numericalized copy of a data file, memory-mapped from disk.

A cache holds every row of one dataset part as token ids: one flat ``int32`` file
(``ids.i32``) with all rows end to end, ``offsets.i64`` (row ``r`` is
``ids[offsets[r]:offsets[r + 1]]``), ``labels.i64`` (label indices, -1 without
labels) and ``meta.json`` (row count, the rows skipped by reason, the key's parts).
Its folder is named by a key: the sha256 of the data file's bytes and of
everything that decides the ids (tokenizer, vocabulary, labels, the part and the
source settings), so a changed file, tokenizer or vocabulary gets a new cache
and a stale one is never read. It is written to a temporary folder and renamed
into place, so a killed run leaves no half-written cache. ``meta.json`` records the
sha256 of each file (and of its own fields); every file is fsync-ed before the rename.
A run checks them once when it opens the cache (hashlib over the raw bytes: about 1 GB/s),
and a cache that was edited or truncated is deleted and built again, with a one-line
notice, never read. Later epochs and later runs read the ids through a memory map:
no text is read and nothing is tokenized.
This module knows arrays and files only (no tokenizer, no vocabulary).

Example:
    >>> key = cache_key("train.csv", {"tokenizer": "spacy", "vocab": vocab_hash})
    >>> cache = NumericCache.load("data/cache", key) or write_cache("data/cache", key, rows, {})
    >>> cache.ids_of(0), cache.labels[0]
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from array import array
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..core.files import InputFileError, file_sha256, fsync_dir, open_regular, read_json_file

log = logging.getLogger("textpipe")  # the CLI shows it on stderr
FORMAT = 2  # bump when the layout changes, so old caches are not read (2: each file's sha256 in meta.json)
FILES = ("ids.i32", "offsets.i64", "labels.i64")
# The cache folder keeps the most recently used entries within these bounds; older ones are
# deleted when a new one is written (never one used in the last RECENT_S seconds: a run may hold it).
MAX_ENTRIES, MAX_BYTES, RECENT_S = 32, 2 << 30, 600
STALE_S = 2 * 86400  # a temporary folder (a cache being written, a count pass's token stream) untouched this long: a killed run's


def tokens_sha256(tokens: Sequence[str]) -> str:
    """A hash of a vocabulary's tokens in id order (what makes its ids)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def cache_key(path: str | Path, parts: dict) -> str:
    """The key of the cache of ``path`` read with the settings in ``parts`` (JSON-serializable)."""
    described = json.dumps({"format": FORMAT, "file": file_sha256(path), **parts}, sort_keys=True, default=str)
    return hashlib.sha256(described.encode("utf-8")).hexdigest()[:32]


class NumericCache:
    """The token ids, offsets and labels of one cached dataset part, memory-mapped.

    Pickles as its folder alone, so DataLoader workers map the files themselves
    instead of receiving a copy of the arrays.

    Example:
        >>> cache = NumericCache.load("data/cache", key)
        >>> len(cache), cache.ids_of(3)
        (8530, tensor([  12,  907,    4], dtype=torch.int32))
    """

    def __init__(self, folder: str | Path, verify: bool = True):
        self.folder = Path(folder)
        self.meta = read_json_file(self.folder / "meta.json", what="cache's meta.json")
        if verify:
            check_cache(self.folder, self.meta)
        self._open()

    def _open(self) -> None:
        n = self.meta["rows"]
        self._maps: list[mmap.mmap] = []
        self.offsets = self._map("offsets.i64", np.int64, n + 1)
        words = self.meta.get("label_words", 0)  # multi-label: each row's label set packed in this many int64 words
        self.labels = self._map("labels.i64", np.int64, n * max(words, 1))
        if words:
            self.labels = self.labels.view(n, words)
        self.ids = self._map("ids.i32", np.int32, int(self.offsets[-1]))

    def _map(self, name: str, dtype, count: int) -> torch.Tensor:
        if count == 0:
            return torch.from_numpy(np.empty(0, dtype))
        with open(self.folder / name, "rb") as f:
            # ACCESS_COPY (copy-on-write) gives a writable buffer, so torch.from_numpy does not warn; nothing is written back.
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self._maps.append(mapped)
        return torch.from_numpy(np.frombuffer(mapped, dtype=dtype, count=count))

    def release(self) -> None:
        """Drop the pages read so far from this process's memory (the OS keeps them
        in its file cache), so reading a large cache does not grow the process."""
        for mapped in self._maps:
            mapped.madvise(mmap.MADV_DONTNEED)

    @classmethod
    def load(cls, root: str | Path, key: str) -> "NumericCache | None":
        """The cache ``key`` under ``root`` once its files match their recorded sha256; None when there is
        none, or when it was damaged (then it is deleted, with a one-line notice, to be built again)."""
        folder = Path(root) / key
        if not folder.exists():
            return None
        try:
            cache = cls(folder)
        except (CacheDamaged, InputFileError, OSError) as err:
            log.warning(f"token cache {folder} is damaged ({err}); building it again")
            discard(folder)
            return None
        os.utime(folder / "meta.json")  # last use, for prune()
        return cache

    def __len__(self) -> int:
        return self.meta["rows"]

    def ids_of(self, row: int) -> torch.Tensor:
        return self.ids[int(self.offsets[row]) : int(self.offsets[row + 1])]

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.folder, self.meta = state["folder"], state["meta"]
        self._open()  # checked once, by the process that loaded it


class CacheDamaged(ValueError):
    """A token cache whose files do not match the sha256 its meta.json records."""


def meta_digest(meta: dict) -> str:
    """sha256 of meta.json's own fields (all but ``sha256``), as canonical JSON."""
    fields = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def check_cache(folder: Path, meta) -> None:
    """Raise CacheDamaged unless every file of the cache in ``folder`` matches the sha256 in ``meta``."""
    digests = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(digests, dict) or digests.get("meta.json") != meta_digest(meta):
        raise CacheDamaged("meta.json does not match its recorded sha256")
    for name in FILES:
        with open_regular(folder / name, None, "cache file") as f:  # a FIFO in its place is refused, not waited on
            if hashlib.file_digest(f, "sha256").hexdigest() != digests.get(name):
                raise CacheDamaged(f"{name} does not match its recorded sha256")


def discard(folder: Path) -> None:
    """Remove a cache folder: first renamed aside (one step, so its key is free at once), then deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.damaged.", dir=folder.parent))
    try:
        os.replace(folder, trash / folder.name)
    except OSError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


def write_cache(root: str | Path, key: str, rows: Iterable[tuple[Sequence[int], int | Sequence[int]]], meta: dict) -> NumericCache:
    """Write ``(ids, label_index)`` rows (label -1 when there is none) as the cache ``key`` under ``root``;
    a multi-label row's label is its packed label set, ``meta["label_words"]`` int64 words.

    Atomic: the files go to a temporary folder that is renamed into place; when
    another process finished the same cache first, its copy is kept.
    """
    def write(ids_file, ids_digest, offsets: array, labels: array) -> None:
        total = 0
        for ids, label in rows:
            row_ids = np.asarray(ids, dtype=np.int32).tobytes()
            ids_file.write(row_ids)
            ids_digest.update(row_ids)
            total += len(row_ids) // 4
            offsets.append(total)
            if isinstance(label, int):
                labels.append(label)
            else:
                labels.extend(label)

    return _commit(root, key, meta, write)


def write_cache_chunks(root: str | Path, key: str, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], meta: dict) -> NumericCache:
    """:func:`write_cache` of rows given a block at a time as arrays: ``(ids, lengths, labels)``, the block's ids end to
    end (int32), each row's token count and label (int64); the same files, byte for byte, without a Python loop per row."""
    def write(ids_file, ids_digest, offsets: array, labels: array) -> None:
        for ids, lengths, block_labels in chunks:
            data = np.ascontiguousarray(ids, dtype=np.int32).tobytes()
            ids_file.write(data)
            ids_digest.update(data)
            offsets.frombytes((np.cumsum(lengths, dtype=np.int64) + offsets[-1]).tobytes())
            labels.frombytes(np.ascontiguousarray(block_labels, dtype=np.int64).tobytes())

    return _commit(root, key, meta, write)


def _commit(root: str | Path, key: str, meta: dict, write) -> NumericCache:
    """The cache ``key``: ``write(ids_file, ids_digest, offsets, labels)`` fills the ids and the two arrays in a
    temporary folder, which gets the other files, is fsync-ed and renamed into place (or dropped, when another
    process finished the same cache first)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        ids_digest = hashlib.sha256()
        offsets, labels = array("q", [0]), array("q")  # 8 bytes a row, not a Python int each
        with open(tmp / "ids.i32", "wb") as ids_file:
            write(ids_file, ids_digest, offsets, labels)
            synced(ids_file)
        digests = {"ids.i32": ids_digest.hexdigest(), "offsets.i64": write_synced(tmp / "offsets.i64", offsets.tobytes()),
                   "labels.i64": write_synced(tmp / "labels.i64", labels.tobytes())}
        full = {**meta, "rows": len(offsets) - 1, "tokens": offsets[-1]}
        full["sha256"] = {**digests, "meta.json": meta_digest(json.loads(json.dumps(full, default=str)))}
        write_synced(tmp / "meta.json", json.dumps(full, indent=1, default=str).encode("utf-8"))
        fsync_dir(tmp)
        try:
            os.rename(tmp, root / key)
            fsync_dir(root)
            ours = True
        except OSError:  # the same cache appeared meanwhile (another run or rank): use that one, once checked
            shutil.rmtree(tmp, ignore_errors=True)
            ours = False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root)
    return NumericCache(root / key, verify=not ours)


def synced(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def write_synced(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` and fsync it; its sha256."""
    with open(path, "wb") as f:
        f.write(data)
        synced(f)
    return hashlib.sha256(data).hexdigest()


def prune(root: str | Path, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Delete the least recently used caches under ``root`` beyond ``max_entries`` or ``max_bytes``; returns them.
    Temporary folders a killed run left (a cache half written, a token stream) go once :data:`STALE_S` old.

    Example:
        >>> prune("data/cache", max_entries=4)   # keep the 4 most recently used
    """
    import time

    entries, now = [], time.time()
    for folder in Path(root).iterdir():
        if folder.name.startswith(".") and _untouched(folder, now):
            shutil.rmtree(folder, ignore_errors=True)  # left by a killed run: never read, only taking space
            continue
        meta = folder / "meta.json"
        if len(folder.name) == 32 and meta.is_file():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append((meta.stat().st_mtime, size, folder))
    entries.sort(reverse=True)  # newest first
    removed, total = [], 0
    for i, (used, size, folder) in enumerate(entries):
        total += size
        if (i >= max_entries or total > max_bytes) and now - used > RECENT_S:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _untouched(folder: Path, now: float) -> bool:
    """Whether ``folder`` is a folder not modified in :data:`STALE_S` seconds."""
    try:
        return folder.is_dir() and now - folder.stat().st_mtime > STALE_S
    except OSError:
        return False
