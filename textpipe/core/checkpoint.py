"""Checkpoints: a training run's full state on disk, written so that no crash can lose it.

A checkpoint is one ``torch.save`` file holding tensors and plain Python values
only (model and optimizer state, RNG states, the DataLoader's position, the
early-stopping record and the best epoch's weights). The store records each
file's sha256 in ``digests.json`` as it writes it, and loads only a zip-format
file whose hash it recorded: a file the run did not write itself never reaches
``torch.load`` (whose legacy loaders are not safe on torch 2.3).

Every write goes through :func:`textpipe.core.files.atomic_write` (temporary file, fsync,
rename), so a reader sees either the previous file or the new one, never half of one. Old checkpoints are deleted only after the new one is safely in place.

Training need not wait for the disk: :meth:`CheckpointStore.save_async` copies the
state's tensors (a memory copy, fast) and writes the copy from a background thread
while the next steps run; :meth:`CheckpointStore.wait` blocks until it is on disk
and raises its error, if any.

Named points (:mod:`textpipe.core.events`) that the kill tests hook into: ``checkpoint_temp_written``
(``step``, ``path``, ``file``: the bytes are in the open temporary file, not yet renamed),
``checkpoint_saved`` (``step``, ``path``: on disk and recorded) and ``checkpoints_cleared``.
The first two are announced from the background writer thread.

Part of the tensor core: imports torch and the standard library only.

Example:
    >>> store = CheckpointStore("runs/mine/.textpipe-run/checkpoints", keep=3)
    >>> store.save({"model": model.state_dict(), "step": 120}, step=120)
    >>> state = store.load_latest()
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import torch

from .events import emit
from .files import OutputError, atomic_write, file_sha256, is_disk_full, write_json_atomic  # noqa: F401 (OutputError: its old home)

CHECKPOINT_VERSION = 2
_NAME = re.compile(r"^step-(\d{9})\.pt$")
log = logging.getLogger("textpipe")  # the CLI shows it on stderr

DIGESTS = "digests.json"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since 1.6; the legacy tar and raw-pickle formats are refused


class CheckpointError(OSError):
    """A checkpoint could not be written or read; the message says which file and why."""


class CheckpointStore:
    """A folder of ``step-NNNNNNNNN.pt`` files; keeps the newest ``keep``, each recorded with its sha256.

    Example:
        >>> store = CheckpointStore("runs/mine/checkpoints", keep=2)
        >>> store.save(state, step=40); store.save(state, step=80); store.save(state, step=120)
        >>> [p.name for p in store.paths()]
        ['step-000000080.pt', 'step-000000120.pt']
    """

    def __init__(self, folder: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder, self.keep = Path(folder), keep
        self._writer: threading.Thread | None = None
        self._error: Exception | None = None

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))

    def clear(self) -> None:
        """Delete every checkpoint (a new phase starts); the digests go last."""
        for path in self.paths():
            path.unlink(missing_ok=True)
        (self.folder / DIGESTS).unlink(missing_ok=True)
        emit("checkpoints_cleared")

    def save(self, state: dict, step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step``, then drop all but the newest ``keep``;
        returns once the file is on disk."""
        path = self.save_async(state, step)
        self.wait()
        return path

    def save_async(self, state: dict, step: int) -> Path:
        """Like :meth:`save`, but the write runs in a background thread; call :meth:`wait` to finish it.

        The tensors are copied first, so training may change its weights at once. Only
        one write runs at a time: this waits for the previous one (and raises its error).
        """
        self.wait()
        path = self.folder / f"step-{step:09d}.pt"
        snapshot = _copy_tensors({"checkpoint_version": CHECKPOINT_VERSION, **state})
        self._writer = threading.Thread(target=self._write_in_background, args=(path, snapshot, step), name="checkpoint-writer")
        self._writer.start()
        return path

    def wait(self) -> None:
        """Block until the background write (if any) is done; raise its error (a :class:`CheckpointError` for I/O)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_in_background(self, path: Path, snapshot: dict, step: int) -> None:
        try:
            self._write(path, snapshot, step)
        except Exception as err:  # raised in the training thread by wait()
            self._error = err

    def load_latest(self) -> dict | None:
        """The newest checkpoint that reads back whole and is the file this store wrote, or None.

        A file that fails to load, or whose sha256 is not the one recorded when it was
        written, is reported and skipped in favour of the one before it, so one damaged
        file costs a few steps, not the run.
        """
        recorded = self._digests()
        for path in reversed(self.paths()):
            problem = _unrecorded(path, recorded.get(path.name))
            if problem is None:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as err:  # noqa: BLE001  (a damaged file: fall back to an older one)
                    problem = f"{type(err).__name__}: {err}"
            if problem is not None:
                log.warning(f"warning: skipping checkpoint {path} ({problem})")
                continue
            if state.get("checkpoint_version") != CHECKPOINT_VERSION:
                raise CheckpointError(f"{path}: checkpoint version {state.get('checkpoint_version')!r}, this textpipe reads {CHECKPOINT_VERSION}")
            state["path"] = str(path)
            return state
        return None

    def _digests(self) -> dict:
        try:
            digests = json.loads((self.folder / DIGESTS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return digests if isinstance(digests, dict) else {}

    def _write(self, path: Path, obj, step: int) -> None:
        # The digest is recorded after the rename and old files go after that: a crash in
        # between leaves an unrecorded newest file, skipped in favour of the recorded one before it.
        digest = {}

        def write(f) -> None:
            torch.save(obj, f)
            emit("checkpoint_temp_written", step=step, path=path, file=f)

        def hash_it(tmp: Path) -> None:
            digest["sha256"] = file_sha256(tmp)

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, write, hash_it)
            kept = {p.name for p in self.paths()[-self.keep:]}
            recorded = {**self._digests(), path.name: digest["sha256"]}
            write_json_atomic(self.folder / DIGESTS, {name: h for name, h in recorded.items() if name in kept}, indent=1, sort_keys=True)
            for old in self.paths()[: -self.keep]:
                old.unlink(missing_ok=True)
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not is_disk_full(err):
                raise
            reason = "No space left on device" if is_disk_full(err) else getattr(err, "strerror", None) or err
            raise CheckpointError(f"could not write checkpoint {path}: {reason}; the previous checkpoint is intact") from err
        emit("checkpoint_saved", step=step, path=path)


def _unrecorded(path: Path, recorded: str | None) -> str | None:
    """Why ``path`` must not be loaded, or None: it is a zip file with the recorded sha256."""
    if recorded is None:
        return "not recorded as written by this run"
    with open(path, "rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return "not a zip-format torch file"
    if file_sha256(path) != recorded:
        return "its sha256 is not the one recorded when it was written"
    return None


def _copy_tensors(obj):
    """``obj`` with every tensor in it (nested dicts, lists and tuples included) cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tensors(v) for v in obj)
    return obj
