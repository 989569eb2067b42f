"""A training run's output folder: locked while a run uses it, replaced only by a finished run.

A run writes everything (``run.json``, the vocabulary, checkpoints, then the bundle
and the report) into a staging folder, ``OUT/.textpipe-run/``. Only when all of it is
on disk does :func:`commit` move the files into ``OUT``, ``bundle.json`` last, so a
run that fails or is killed leaves the previous bundle in ``OUT`` loadable, and
``--resume OUT`` finds the unfinished run where it stopped. Files that are not the
run's own are never touched.

:class:`RunLock` holds an exclusive ``flock`` on ``OUT/.textpipe.lock`` for the whole
run: a second run on the same folder is refused with the first one's pid. The kernel
drops the lock when its process dies, even by ``kill -9``.

Example:
    >>> with RunLock("runs/mine"):
    ...     stage = start_fresh("runs/mine", overwrite=False)
    ...     ...  # train, writing into stage
    ...     commit(stage, "runs/mine")
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from .checkpoint import OutputError
from .events import emit
from .files import atomic_write

STAGE, LOCK, COMPLETE = ".textpipe-run", ".textpipe.lock", "COMPLETE"
CHECKPOINTS = "checkpoints"
META = "bundle.json"  # moved last: until then OUT holds the previous bundle's manifest


class RunLock:
    """``with RunLock(out)``: this process is the only textpipe run using folder ``out``.

    Example:
        >>> with RunLock("runs/mine"):
        ...     pass  # a second `textpipe train --out runs/mine` now exits 2, naming this pid
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        path = self.out / LOCK
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"cannot write to output folder {self.out}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"output folder {self.out} is in use by another textpipe run (pid {holder}); wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            (self.out / LOCK).unlink(missing_ok=True)  # while still held: no other run can be inside
            os.close(self._fd)
            self._fd = None


def stage_of(out: str | Path) -> Path:
    return Path(out) / STAGE


def start_fresh(out: str | Path, overwrite: bool) -> Path:
    """An empty staging folder for a new run in ``out``; ``out`` must hold nothing but the lock unless ``overwrite``.

    With ``overwrite`` only an unfinished run's staging folder is deleted now; the
    previous bundle stays until the new run's :func:`commit` replaces it.
    """
    refuse_occupied(out, overwrite)
    stage = stage_of(out)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def refuse_occupied(out: str | Path, overwrite: bool) -> None:
    """OutputError unless ``out`` holds nothing but the lock, or ``overwrite`` says it may hold a run to replace."""
    out = Path(out)
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if present and not overwrite:
        what = "an unfinished run" if present == [STAGE] else ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
        resume = f", --resume {out} to finish the unfinished run" if STAGE in present else ""
        raise OutputError(
            f"output folder {out} is not empty ({what}); give --overwrite to replace the textpipe run there "
            f"(other files are left alone){resume}, or another --out"
        )


def unfinished(out: str | Path) -> Path | None:
    """The staging folder of the unfinished run in ``out``, or None."""
    stage = stage_of(out)
    return stage if stage.is_dir() else None


def is_complete(stage: Path) -> bool:
    """True once every output of the run is in ``stage`` (only :func:`commit` is left to do)."""
    return (stage / COMPLETE).is_file()


def commit(stage: str | Path, out: str | Path, keep_checkpoints: bool = False) -> None:
    """Move the finished run's files from ``stage`` into ``out``, ``bundle.json`` last, then remove ``stage``.

    Safe to repeat after a crash: files already moved are not in ``stage`` any more.
    """
    stage, out = Path(stage), Path(out)
    emit("commit_start")
    if not is_complete(stage):
        atomic_write(stage / COMPLETE, lambda f: f.write(b"every output of the run is here; only the move into the folder above is left\n"))
    files = sorted(p for p in stage.iterdir() if p.is_file() and p.name not in (COMPLETE, META) and not p.name.startswith("."))
    for path in [*files, stage / META]:
        if path.exists():
            os.replace(path, out / path.name)
    if keep_checkpoints and (stage / CHECKPOINTS).is_dir():
        if (out / CHECKPOINTS).is_dir():
            shutil.rmtree(out / CHECKPOINTS)
        os.replace(stage / CHECKPOINTS, out / CHECKPOINTS)
    emit("commit_files_moved")
    shutil.rmtree(stage)
