"""A training run's output folder: locked while a run uses it, replaced only by a finished run.

A run writes everything (``run.json``, the vocabulary, checkpoints, then the bundle
and the report) into a staging folder, ``OUT/.textpipe-run/``. Only when all of it is
on disk does :func:`commit` move the files into ``OUT``, ``bundle.json`` last, so a
run that fails or is killed leaves the previous bundle in ``OUT`` loadable, and
``--resume OUT`` finds the unfinished run where it stopped. Files that are not the
run's own are never touched.

``run.json`` in the staging folder holds the run's :class:`RunState`: its data files,
config and provenance, its :class:`Phase`, and what a resume must not redo.

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

import hashlib
import json
import logging
import os
import platform
import shutil
import stat
import time
from dataclasses import dataclass, fields, replace
from enum import Enum
from importlib import metadata
from pathlib import Path

from ..core.events import emit
from ..core.files import META, METRICS, RUN, InputFileError, OutputError, atomic_write, check_folder, check_regular_file, file_sha256, kind_of, read_json_file, temp_file_beside, write_json_atomic
from .config import PipelineConfig, SettingsError
from .lock import LOCK, RunLock  # noqa: F401  (RunLock re-exported: run.py and the CLI take it from here)
from ..core.runtime import held_signals
from ..text.sources import TORCHTEXT_PREFIX, DataError

log = logging.getLogger("textpipe")  # the CLI shows it on stderr

STAGE, COMPLETE = ".textpipe-run", "COMPLETE"
CHECKPOINTS = "checkpoints"
PACKAGES = ("textpipe", "torch", "torchtext", "torchdata", "spacy", "numpy", "matplotlib")  # their versions go into run.json


def prepare_output(out: Path) -> None:
    """Fail now, not after hours of training, when ``out`` cannot hold the run."""
    check_folder(out)  # a file, FIFO or link to nothing where the folder should be
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = temp_file_beside(out / ".write-test")  # a new file of its own name: nothing there is touched
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write to output folder {out}: {err.strerror or err}") from None


def check_free_space(out: Path, model, keep: int, quiet: bool) -> None:
    """Refuse a run the disk surely cannot hold; warn when it may not (``model``: the ``nn.Module`` to train)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Each checkpoint holds the weights, the best epoch's weights once there is one, and Adam's
    # two moments for the rows trained so far (none to all of them); one more is written while
    # the kept ones exist. Then the bundle: the weights once more.
    least = weights * (keep + 2) if keep else weights
    most = weights * (4 * (keep + 1) + 1) if keep else weights
    free = shutil.disk_usage(out).free
    out = out.parent if out.name == STAGE else out  # the folder the user named
    if free < least:
        raise OutputError(f"output folder {out} has {free / 1e6:.0f} MB free; this run's checkpoints and bundle need at least {least / 1e6:.0f} MB")
    if free < most and not quiet:
        log.warning(f"warning: output folder {out} has {free / 1e6:.0f} MB free; this run's checkpoints and bundle may need up to "
                    f"{most / 1e6:.0f} MB (fewer with --keep-checkpoints 1, or 0 for none)")


def stage_of(out: str | Path) -> Path:
    return Path(out) / STAGE


def check_stage(stage: Path) -> None:
    """OutputError unless the staging folder, if there, is textpipe's own: a real folder (not a link)
    of regular files and real folders. What is not the run's own is never followed, written or deleted."""
    try:
        mode = os.lstat(stage).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise OutputError(f"{stage} is {kind_of(mode)}, not textpipe's staging folder: textpipe never follows or deletes it; remove it and run again")
    entries = list(os.scandir(stage))
    entries += list(os.scandir(stage / CHECKPOINTS)) if any(e.name == CHECKPOINTS and e.is_dir(follow_symlinks=False) for e in entries) else []
    for entry in entries:
        mode = entry.stat(follow_symlinks=False).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise OutputError(f"{entry.path} is {kind_of(mode)}, not a file of textpipe's staging folder: textpipe never follows it; "
                              "remove it and run again")


def start_fresh(out: str | Path, overwrite: bool) -> Path:
    """An empty staging folder for a new run in ``out``; ``out`` must hold nothing but the lock unless ``overwrite``.

    With ``overwrite`` only an unfinished run's staging folder is deleted now; the
    previous bundle stays until the new run's :func:`commit` replaces it.
    """
    refuse_occupied(out, overwrite)
    stage = stage_of(out)
    check_stage(stage)
    if stage.exists() and mid_commit(stage):  # a run killed halfway through its moves: finish them, so ``out`` holds a whole bundle
        commit(stage, out)
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


def nothing_to_resume(out: Path) -> SettingsError:
    done = " (its run has finished)" if (out / META).is_file() else ""
    return SettingsError(f"{out} holds no unfinished run{done}: is it the --out folder of a textpipe train run?")


def unfinished(out: str | Path) -> Path | None:
    """The staging folder of the unfinished run in ``out``, or None; an OutputError if it is not textpipe's own."""
    stage = stage_of(out)
    check_stage(stage)
    return stage if stage.is_dir() else None


def first_missing(out: Path) -> Path | None:
    """The outermost folder of ``out``'s path (``out`` itself included) that does not exist yet, if any."""
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]
    return missing[-1] if missing else None


def remove_empty(out: Path, top: Path | None) -> None:
    """Remove ``out`` and its parents up to ``top`` (from :func:`first_missing`) while they are empty."""
    for folder in (out, *out.parents) if top is not None else ():
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): what is left there is not only the run's
            return
        if folder == top:
            return


def discard_unstarted(stage: Path) -> bool:
    """Remove ``stage`` if a resume of it would redo all a new run does (it is still in the train phase
    and holds no checkpoint): a run that failed its checks leaves no unfinished run behind. True if removed."""
    try:
        started = RunState.load(stage).phase is not Phase.TRAIN or any((stage / CHECKPOINTS).glob("step-*.pt"))
    except (OSError, ValueError, TypeError, KeyError):
        started = False  # no readable run.json: nothing a resume could use
    if not started:
        shutil.rmtree(stage, ignore_errors=True)
    return not started


def is_complete(stage: Path) -> bool:
    """True once every output of the run is in ``stage`` (only :func:`commit` is left to do)."""
    return (stage / COMPLETE).is_file()


def mid_commit(stage: Path) -> bool:
    """True while a commit is halfway (killed during the moves): ``out`` may hold new files beside the previous ``bundle.json``."""
    return is_complete(stage) and (stage / META).is_file()


def commit(stage: str | Path, out: str | Path, keep_checkpoints: bool = False) -> None:
    """Move the finished run's files from ``stage`` into ``out``, ``bundle.json`` last, then remove ``stage``.

    Safe to repeat after a crash: files already moved are not in ``stage`` any more. A SIGINT or
    SIGTERM during the moves waits until all of them are done (:func:`held_signals`): a stopped
    run never leaves the new weights beside the previous ``bundle.json``.
    """
    stage, out = Path(stage), Path(out)
    emit("commit_start", stage=stage, out=out)
    files = sorted(p for p in stage.iterdir() if p.is_file() and p.name not in (COMPLETE, META) and not p.name.startswith("."))
    moves = [path for path in [*files, stage / META] if path.exists()]  # the manifest last: until then OUT holds the previous bundle's
    _check_destinations([out / path.name for path in moves], out / CHECKPOINTS if keep_checkpoints else None, out)
    with held_signals() as stop_here:
        if not is_complete(stage):
            atomic_write(stage / COMPLETE, lambda f: f.write(b"every output of the run is here; only the move into the folder above is left\n"))
        for path in moves:
            os.replace(path, out / path.name)
        if keep_checkpoints and (stage / CHECKPOINTS).is_dir():
            if (out / CHECKPOINTS).is_dir():
                shutil.rmtree(out / CHECKPOINTS)
            os.replace(stage / CHECKPOINTS, out / CHECKPOINTS)
        emit("commit_files_moved")
        stop_here()  # every file in place, the staging folder still there: a resume removes it
        _remove_stage(stage)


def _check_destinations(files: list[Path], checkpoints: Path | None, out: Path) -> None:
    """Before any move: each name the run replaces in ``out`` holds nothing or a regular file (a folder for checkpoints)."""
    try:
        for path in files:
            check_regular_file(path)
        if checkpoints is not None and (checkpoints.is_symlink() or checkpoints.exists() and not checkpoints.is_dir()):
            raise OutputError(f"{checkpoints} is {kind_of(os.lstat(checkpoints).st_mode)}, not a folder: textpipe never replaces it")
    except OutputError as err:
        raise OutputError(f"{err}; the finished run waits in {stage_of(out)}: move that path away, then textpipe train --resume {out}") from None


def _remove_stage(stage: Path) -> None:
    """Remove the staging folder, its COMPLETE mark last: killed halfway, a resume still sees a finished run to commit."""
    for entry in stage.iterdir():
        if entry.name == COMPLETE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (stage / COMPLETE).unlink(missing_ok=True)
    stage.rmdir()


class Phase(str, Enum):
    """Where a run is; ``run.json`` records it, so a resume continues the right phase."""

    TRAIN = "train"  # early stopping on dev picks the epoch count
    REFIT = "refit"  # a fresh model on every training row for the chosen epoch count
    DONE = "done"  # every output is in the staging folder; only the commit is left


@dataclass(frozen=True)
class RunState:
    """Everything ``run.json`` holds: where the run came from, and what a resume must not redo.

    Never changed in place: each step of a run (:mod:`textpipe.run.phases`) makes a new one with
    :func:`dataclasses.replace` and saves it.

    Example:
        >>> state = RunState.start({"train": "train.csv", "dev": None, "test": "test.csv"}, {"train": {"epochs": 5}})
        >>> RunState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
        True
    """

    phase: Phase
    created: str  # UTC, ISO 8601
    versions: dict  # package -> version, python included
    data: dict  # "train", "dev", "test" -> absolute path (or torchtext:NAME), None when absent
    config: dict  # PipelineConfig.to_dict()
    autotune: dict | None = None  # the search that chose the config: its trials and the chosen changes
    refit: dict | None = None  # what the refit starts from: the train phase's "epochs", "best_dev" and "history"
    labels: list[str] | None = None  # from here on: the training file's counts, for the current phase
    label_counts: dict[str, int] | None = None
    num_train: int | None = None
    rows: int | None = None  # the training file's rows, held-out ones included (absent from runs before multi-label)
    skipped: dict[str, int] | None = None
    fingerprint: dict | None = None  # "train" (and "dev") -> the file's content digest: a resume refuses a changed file
    vectors: dict | None = None  # pretrained vectors' coverage of the vocabulary
    ngram_table: dict | None = None  # the bag's hashed n-gram table: its rows, the training file's n-grams, the cap and the rule
    batch: dict | None = None  # the training batch size (and lr) chosen from the training rows: train.batch_size = "auto" (config.batch_choice)
    seconds: dict | None = None  # where the time went: "train.count", "train.epochs", "train.nb_linear", "refit.*", "score", "save" -> seconds

    @classmethod
    def start(cls, data: dict, config: dict) -> "RunState":
        """A new run's state, in the train phase: its data files (made absolute), config and provenance."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return cls(Phase.TRAIN, created, _versions(), {k: None if v is None else _absolute(v) for k, v in data.items()}, config)

    def timed(self, key: str, start: float) -> "RunState":
        """This state with the seconds since ``start`` (a ``time.perf_counter()``) added to ``seconds[key]``."""
        seconds = dict(self.seconds or {})
        seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - start, 3)
        return replace(self, seconds=seconds)

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "phase"}
        return {"phase": self.phase.value, **{k: v for k, v in values.items() if v is not None}}

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**{**d, "phase": Phase(d["phase"])})

    @classmethod
    def load(cls, folder: Path) -> "RunState":
        """The state in ``folder``'s ``run.json``; InputFileError (exit 2) for one that is not a run's state."""
        path = folder / RUN
        state = read_json_file(path, what="run state")
        try:
            return cls.from_dict(state)
        except (TypeError, KeyError, ValueError) as e:
            raise InputFileError(f"{path}: not the state of a textpipe run ({type(e).__name__}: {e})") from None

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / RUN, self.to_dict())


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _absolute(path: str | Path) -> str:
    return str(path) if str(path).startswith(TORCHTEXT_PREFIX) else str(Path(path).resolve())


def data_fingerprint(path: str | Path) -> dict:
    """What a resume compares: the content's sha256 (a same-size edit with an old mtime is still caught)."""
    if str(path).startswith(TORCHTEXT_PREFIX):
        return {"torchtext": str(path)}  # torchtext checks its files' MD5 itself
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path) if path.is_dir() else ''}\0".encode("utf-8", "surrogateescape"))
        digest.update(file_sha256(file).encode())
    return {"sha256": digest.hexdigest()}


def data_fingerprints(data: dict) -> dict:
    """What a resume compares (``RunState.fingerprint``): the training and dev files' :func:`data_fingerprint`."""
    return {part: data_fingerprint(data[part]) for part in ("train", "dev") if data.get(part) is not None}


def check_same_data(state: RunState) -> None:
    """DataError (one line) unless the training and dev files are where and what they were when the run started."""
    recorded = state.fingerprint or {}
    if "sha256" in recorded or "torchtext" in recorded:  # a run.json of a textpipe that recorded the training file alone
        recorded = {"train": recorded}
    for part in ("train", "dev", "test"):  # the test file is read at the end: missing, it is said now, not after the training
        path, what = state.data.get(part), {"train": "training file", "dev": "dev file", "test": "test file"}[part]
        if path is not None and not str(path).startswith(TORCHTEXT_PREFIX) and not Path(path).exists():
            raise DataError(path, None, f"the {what} is gone (moved or deleted since the run started); a resume needs the same data "
                            "at the same path (put it back, or start a new run)")
    for part in ("train", "dev"):
        path, what = state.data.get(part), "training file" if part == "train" else "dev file"
        if path is None or part not in recorded:
            continue
        try:
            same = data_fingerprint(path) == recorded[part]
        except OSError as err:
            raise DataError(path, None, f"the {what} cannot be read ({err.strerror or err}); a resume needs the same data") from None
        if not same:
            raise DataError(path, None, f"the {what} changed since the run started; a resume needs the same data (start a new run instead)")


def commit_finished(stage: Path, out: Path, state: RunState) -> dict:
    """Finish the commit of a run that had done its phases (killed before or while moving its files into ``out``); its metrics."""
    if mid_commit(stage):  # said even with --quiet: the folder was not loadable until now
        log.warning(f"{out}: the run had stopped while moving its files into place; the move is finished now, the bundle whole again")
    commit(stage, out, PipelineConfig.from_dict(state.config).train.keep_checkpoints_after)
    return json.loads((out / METRICS).read_text(encoding="utf-8"))
