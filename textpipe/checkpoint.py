"""Checkpoints: a training run's full state on disk, written so that no crash can lose it.

A checkpoint is one ``torch.save`` file holding tensors and plain Python values
only (model and optimizer state, RNG states, the DataLoader's position, the
early-stopping record), so it loads with ``torch.load(weights_only=True)``.

Every write goes to a temporary file in the same folder, is flushed and
``fsync``-ed, then renamed over the real name (and the folder is ``fsync``-ed),
so a reader sees either the previous file or the new one, never half of one.
Old checkpoints are deleted only after the new one is safely in place.

Part of the tensor core: imports torch only.

Example:
    >>> store = CheckpointStore("runs/mine/checkpoints", keep=3)
    >>> store.save({"model": model.state_dict(), "step": 120}, step=120)
    >>> state = store.load_latest()
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(OSError):
    """A checkpoint could not be written or read; the message says which file and why."""


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file, fsync it and rename it to ``path``.

    If anything fails, the temporary file is removed and whatever was at ``path``
    before is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
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

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))

    def clear(self) -> None:
        """Delete every checkpoint and ``best.pt`` (a new run starts)."""
        for path in [*self.paths(), self.folder / "best.pt"]:
            path.unlink(missing_ok=True)

    def save(self, state: dict, step: int) -> Path:
        """Write ``state`` as the checkpoint of ``step``, then drop all but the newest ``keep``."""
        path = self.folder / f"step-{step:09d}.pt"
        self._write(path, {"checkpoint_version": CHECKPOINT_VERSION, **state})
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, model_state: dict) -> Path:
        """Write the best weights so far to ``best.pt``."""
        path = self.folder / "best.pt"
        self._write(path, model_state)
        return path

    def load_best(self) -> dict | None:
        """What :meth:`save_best` wrote last, or None."""
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

    def _write(self, path: Path, obj) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: torch.save(obj, f))
        except OSError as err:
            raise CheckpointError(f"could not write checkpoint {path}: {err.strerror or err}; the previous checkpoint is intact") from err
