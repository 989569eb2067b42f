"""Checkpoints: a training run's full state on disk, written so that no crash can lose it.

A checkpoint is one ``torch.save`` file holding tensors and plain Python values
only (model and optimizer state, RNG states, the DataLoader's position, the
early-stopping record), so it loads with ``torch.load(weights_only=True)``.

Every write goes to a temporary file in the same folder, is flushed and
``fsync``-ed, then renamed over the real name (and the folder is ``fsync``-ed),
so a reader sees either the previous file or the new one, never half of one.
Old checkpoints are deleted only after the new one is safely in place.

Training need not wait for the disk: :meth:`CheckpointStore.save_async` copies the
state's tensors (a memory copy, fast) and writes the copy from a background thread
while the next steps run; :meth:`CheckpointStore.wait` blocks until it is on disk
and raises its error, if any. ``best.pt`` is the checkpoint of the best epoch
itself, a hard link to its file, so marking an epoch best writes nothing.

Part of the tensor core: imports torch only.

Example:
    >>> store = CheckpointStore("runs/mine/checkpoints", keep=3)
    >>> store.save({"model": model.state_dict(), "step": 120}, step=120)
    >>> state = store.load_latest()
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from pathlib import Path

import torch

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(OSError):
    """A checkpoint could not be written or read; the message says which file and why."""


class OutputError(OSError):
    """The output folder cannot be written, or is too full for the run."""


def atomic_write(path: str | Path, write, before_rename=None) -> None:
    """Call ``write(file)`` on a temporary file, fsync it and rename it to ``path``.

    ``before_rename(tmp_path)``, if given, runs on the complete temporary file just
    before the rename. If anything fails, the temporary file is removed and whatever
    was at ``path`` before is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # A new file, not the old one truncated: a leftover temp file may share its data with best.pt (a hard link).
        tmp.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """A folder of ``step-NNNNNNNNN.pt`` files; keeps the newest ``keep`` and a ``best.pt``.

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
        """Delete every checkpoint and ``best.pt`` (a new run starts)."""
        for path in [*self.paths(), self.folder / "best.pt"]:
            path.unlink(missing_ok=True)

    def save(self, state: dict, step: int, best: bool = False) -> Path:
        """Write ``state`` as the checkpoint of ``step`` (and as ``best.pt`` when ``best``),
        then drop all but the newest ``keep``; returns once the file is on disk."""
        path = self.save_async(state, step, best)
        self.wait()
        return path

    def save_async(self, state: dict, step: int, best: bool = False) -> Path:
        """Like :meth:`save`, but the write runs in a background thread; call :meth:`wait` to finish it.

        The tensors are copied first, so training may change its weights at once. Only
        one write runs at a time: this waits for the previous one (and raises its error).
        """
        self.wait()
        path = self.folder / f"step-{step:09d}.pt"
        snapshot = _copy_tensors({"checkpoint_version": CHECKPOINT_VERSION, **state})
        self._writer = threading.Thread(target=self._write_in_background, args=(path, snapshot, best), name="checkpoint-writer")
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

    def _write_in_background(self, path: Path, snapshot: dict, best: bool) -> None:
        try:
            self._write(path, snapshot, best)
            for old in self.paths()[: -self.keep]:
                old.unlink(missing_ok=True)
        except Exception as err:  # raised in the training thread by wait()
            self._error = err

    def load_best(self) -> dict | None:
        """The checkpoint last saved with ``best=True``, or None."""
        path = self.folder / "best.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{path} is unreadable ({type(err).__name__}: {err})") from err

    def load_latest(self) -> dict | None:
        """The newest checkpoint that reads back whole, or None when there is none.

        A file that fails to load is reported and skipped in favour of the one before
        it, so one damaged file costs a few steps, not the run.
        """
        for path in reversed(self.paths()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a damaged file: fall back to an older one
                print(f"warning: skipping unreadable checkpoint {path} ({type(err).__name__}: {err})", file=sys.stderr)
                continue
            if state.get("checkpoint_version") != CHECKPOINT_VERSION:
                raise CheckpointError(f"{path}: checkpoint version {state.get('checkpoint_version')!r}, this textpipe reads {CHECKPOINT_VERSION}")
            state["path"] = str(path)
            return state
        return None

    def _write(self, path: Path, obj, best: bool = False) -> None:
        # best.pt is linked before the step file takes its name: a crash in between
        # leaves a best.pt one epoch ahead of the newest checkpoint, and the resumed
        # run, being exact, reaches that epoch again and marks the same weights best.
        def before_rename(tmp: Path) -> None:
            if best:
                _link_or_copy(tmp, self.folder / "best.pt")

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: torch.save(obj, f), before_rename)
        except OSError as err:
            raise CheckpointError(f"could not write checkpoint {path}: {err.strerror or err}; the previous checkpoint is intact") from err


def _link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a copy where hard links are not supported), atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    tmp.unlink(missing_ok=True)  # rename leaves both names when they already were one file


def _copy_tensors(obj):
    """``obj`` with every tensor in it (nested dicts, lists and tuples included) cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tensors(v) for v in obj)
    return obj
