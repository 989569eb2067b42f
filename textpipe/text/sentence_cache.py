"""Encode once: each text's sentence vector kept on disk, keyed by the encoder and the text's bytes.

Beside the token-id cache (``cache.py``), under ``<cache root>/sentences/<encoder key>/``:
every call of :meth:`SentenceCache.vectors` looks each text up by the sha256 of its
UTF-8 bytes, encodes only the texts not found (in one call, so batches still sort
by length), and writes them as one new shard: a ``.bin`` file (the rows' 32-byte
text digests, then their float32 vectors) and a ``.json`` beside it with the row
count and the ``.bin``'s sha256, written last (its presence says the shard is whole;
both through the one atomic write, fsync before rename). A shard is checked against
its recorded sha256 when read; a damaged or truncated one is deleted with a one-line
notice and its texts are encoded again. So epochs, the refit, the NB fit, autotune
trials and ``evaluate`` never encode a text twice, in one run or the next.

Example:
    >>> cache = SentenceCache("data/cache", encoder.sha256 + "-256", encoder.dim)
    >>> cache.vectors(["a fine film", "a dull film"], encoder.encode).shape
    torch.Size([2, 384])
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.files import atomic_write, file_sha256

log = logging.getLogger("textpipe")
DIGEST = 32  # bytes of a text's sha256
MAX_SHARDS = 16  # past this many shards, the next write merges them all into one


def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class SentenceCache:
    """The sentence vectors of one encoder (``key``: its sha256 and settings), ``dim`` wide, stored under ``root``.

    Example:
        >>> cache = SentenceCache(tmp_path, "abc", dim=4)
        >>> cache.vectors(["x"], lambda texts: torch.ones(len(texts), 4)).tolist()
        [[1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, root: str | Path, key: str, dim: int):
        self.folder, self.dim = Path(root) / "sentences" / key, dim
        self.known: dict[bytes, torch.Tensor] = {}
        self._shards: list[Path] = []
        self._read()

    def _read(self) -> None:
        if not self.folder.is_dir():
            return
        for meta in sorted(self.folder.glob("*.json")):
            rows = self._read_shard(meta)
            if rows is None:
                continue
            digests, vectors = rows
            self.known.update(zip(digests, vectors))
            self._shards.append(meta)

    def _read_shard(self, meta: Path) -> tuple[list[bytes], torch.Tensor] | None:
        data = meta.with_suffix(".bin")
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
            intact = data.is_file() and file_sha256(data) == record["sha256"]
            raw = data.read_bytes() if intact else b""
            intact = intact and len(raw) == record["rows"] * (DIGEST + 4 * self.dim)
        except (OSError, ValueError, KeyError):
            intact = False
        if not intact:
            log.warning(f"sentence cache {data} is damaged or incomplete: deleted, its texts are encoded again")
            data.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return None
        n = record["rows"]
        digests = [raw[i * DIGEST : (i + 1) * DIGEST] for i in range(n)]
        vectors = torch.from_numpy(np.frombuffer(raw, dtype=np.float32, offset=n * DIGEST).reshape(n, self.dim).copy())
        return digests, vectors

    def vectors(self, texts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """``(len(texts), dim)``: cached rows read, the rest encoded by ``encode`` (once each, in one call) and stored."""
        digests = [text_digest(t) for t in texts]
        missing: dict[bytes, str] = {}
        for digest, text in zip(digests, texts):
            if digest not in self.known:
                missing.setdefault(digest, text)
        if missing:
            fresh = encode(list(missing.values())).float()
            if fresh.shape != (len(missing), self.dim):
                raise ValueError(f"the encoder gave {tuple(fresh.shape)} vectors for {len(missing)} texts, expected {self.dim}-d")
            self.known.update(zip(missing, fresh))
            self._store(list(missing), fresh)
        if not digests:
            return torch.empty(0, self.dim)
        return torch.stack([self.known[d] for d in digests])

    def _store(self, digests: list[bytes], vectors: torch.Tensor) -> None:
        if len(self._shards) >= MAX_SHARDS:  # merge: one shard holding everything known
            digests, vectors = list(self.known), torch.stack(list(self.known.values()))
            old, self._shards = self._shards, []
        else:
            old = []
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = b"".join(digests) + vectors.contiguous().numpy().astype(np.float32).tobytes()
        name = hashlib.sha256(payload).hexdigest()
        data, meta = self.folder / f"{name[:24]}.bin", self.folder / f"{name[:24]}.json"
        atomic_write(data, lambda f: f.write(payload))
        atomic_write(meta, lambda f: f.write(json.dumps({"rows": len(digests), "dim": self.dim, "sha256": name}).encode("utf-8")))
        self._shards.append(meta)
        for stale in old:
            if stale != meta:
                stale.unlink(missing_ok=True)
                stale.with_suffix(".bin").unlink(missing_ok=True)
