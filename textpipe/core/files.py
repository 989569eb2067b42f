"""Files that matter, written so that no crash leaves half of one: the one atomic write, the one file digest, and where caches live.

Every write goes to a temporary file of a unique name in the same folder, is flushed and
``fsync``-ed, then renamed over the real name (and the folder is ``fsync``-ed): a reader sees
the previous file or the new one, never half of one. Checkpoints, bundles, vocabularies,
reports, caches, downloads and the CLI's ``--output`` files all write through :func:`atomic_file`.
Only a regular file is ever replaced: a symlink, FIFO, device, socket or folder at the path is
not textpipe's to replace, and the write stops with an :class:`OutputError` naming it
(:func:`check_regular_file`), so ``--output /dev/null`` or a user's symlink is never swapped for a file.

Imports the standard library only, so every stage, the tensor core included, may use it.

Example:
    >>> atomic_write_text("runs/mine/notes.txt", "trained on data/mine/train.csv\\n")
    >>> write_json_atomic("runs/mine/extra.json", {"epochs": 5})
    >>> file_sha256("runs/mine/notes.txt")[:12]
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

_CHUNK = 1 << 20


class OutputError(OSError):
    """An output textpipe may not or cannot write: the wrong kind of file at its path, a folder
    that cannot be written, a disk too full for the run. The message names the path."""


_KINDS = {stat.S_IFREG: "a regular file", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a symbolic link", "a folder", ...)."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular_file(path: str | Path) -> None:
    """OutputError unless ``path`` is free to write: nothing there yet, or a regular file (not
    followed through a link), in an existing folder.

    Example:
        >>> check_regular_file("/dev/null")
        Traceback (most recent call last):
        textpipe.core.files.OutputError: /dev/null is a character device, not a regular file: textpipe never replaces it; give another path
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise OutputError(f"{path}: its folder {path.parent} does not exist") from None
        return
    except OSError as err:  # a file where a folder of the path should be, a name too long, ...
        raise OutputError(f"{path}: cannot write there ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise OutputError(f"{path} is {kind_of(mode)}, not a regular file: textpipe never replaces it; give another path")


def check_folder(path: str | Path) -> None:
    """OutputError when ``path`` exists and is not a folder (a link to one is the user's way of placing it)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise OutputError(f"{path} is {kind_of(os.lstat(path).st_mode)}, not a folder; give a folder (it is created if missing)")


def make_folder(path: str | Path) -> Path:
    """``path`` as a folder, created (parents too) if missing; an OutputError naming it when it cannot be one."""
    path = Path(path)
    check_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create folder {path}: {err.strerror or err}") from None
    return path


@contextlib.contextmanager
def atomic_file(path: str | Path, before_rename: Callable[[Path], object] | None = None) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as f``: write ``f`` (binary); on success it is fsync-ed and renamed to ``path``.

    ``path`` must be free to write (:func:`check_regular_file`), checked before the first byte
    and again just before the rename. ``before_rename(tmp_path)``, if given, runs on the
    complete temporary file just before the rename. If anything fails, the temporary file is
    removed and whatever was at ``path`` before is left untouched.

    Example:
        >>> with atomic_file("runs/mine/labels.txt") as f:
        ...     f.write(b"pos\n")
    """
    path = Path(path)
    check_regular_file(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        check_regular_file(path)  # nothing else took the name meanwhile
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], before_rename: Callable[[Path], object] | None = None) -> None:
    """Call ``write(file)`` on a temporary file, fsync it and rename it to ``path`` (:func:`atomic_file`)."""
    with atomic_file(path, before_rename) as f:
        write(f)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path: str | Path, obj, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON (UTF-8, a newline at the end) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def temp_file_beside(path: Path) -> tuple[int, Path]:
    """An open new file of a unique name in ``path``'s folder, so two processes writing the
    same file never share a temporary file; its mode is what ``open`` would give (umask applied)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, Path(name)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class InputFileError(ValueError):
    """A file textpipe was given to read that is not what it must be: not a regular file, larger
    than such a file can be, not UTF-8, not JSON, or nested too deep. The message names the file."""


# The names of the files of a bundle and of a run's --out folder: every module takes them from here.
META, WEIGHTS, VOCAB, HEAD = "bundle.json", "weights.safetensors", "vocab.json", "sentence_head.safetensors"  # HEAD: with model.encoder
CONFIG, METRICS, RUN = "config.json", "metrics.json", "run.json"

JSON_MAX_BYTES = 64 << 20  # bundle.json, run.json, config.json, a cache's meta.json: a few KB in practice
JSON_MAX_DEPTH = 32  # textpipe's own JSON files nest 4 deep


def open_regular(path: str | Path, max_bytes: int | None = None, what: str = "file") -> BinaryIO:
    """``path`` opened for reading once it is a regular file of at most ``max_bytes``; InputFileError otherwise.

    Opened without blocking and checked on the open descriptor, so a FIFO or a device in its place
    (or swapped in after a check) is refused at once, never waited on or read without end."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(f"{path}: the {what} is not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputFileError(f"{path}: the {what} is {info.st_size:,} bytes, more than such a file can be ({max_bytes:,})")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_small_file(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before reading); InputFileError otherwise."""
    with open_regular(path, max_bytes, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the check
        raise InputFileError(f"{path}: the {what} is more than {max_bytes:,} bytes")
    return data


def read_json_file(path: str | Path, max_bytes: int = JSON_MAX_BYTES, what: str = "JSON file"):
    """A small JSON file, read safely: a regular file (never a FIFO), size-checked before it is read,
    strict UTF-8, nested at most :data:`JSON_MAX_DEPTH` deep, numbers of at most 4,300 digits.
    Anything else is an :class:`InputFileError` naming the file, never another exception.

    Example:
        >>> read_json_file("runs/mine/bundle.json", what="bundle file")["labels"]
        ['neg', 'pos']
    """
    data = read_small_file(path, max_bytes, what)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InputFileError(f"{path}: the {what} is not UTF-8 (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputFileError(f"{path} is damaged: not valid JSON ({err})") from None
    except RecursionError:
        raise InputFileError(f"{path}: the {what} is nested too deeply") from None
    except ValueError as err:  # Python's limit on the digits of an integer
        raise InputFileError(f"{path}: the {what} holds a number too long to read ({str(err).split(':')[0]})") from None
    if json_depth(value) > JSON_MAX_DEPTH:
        raise InputFileError(f"{path}: the {what} is nested more than {JSON_MAX_DEPTH} deep")
    return value


def json_depth(value, limit: int = JSON_MAX_DEPTH) -> int:
    """How deep lists and objects nest in ``value`` (0 for a scalar), counted without recursion and
    only up to ``limit + 1``: a value built to exhaust the stack is measured, not followed."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [c for c in level if isinstance(c, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [v for c in containers for v in (c.values() if isinstance(c, dict) else c)]
    return depth


def is_disk_full(err: BaseException | None) -> bool:
    """True for a full disk or quota, also as torch reports it: a RuntimeError of its zip
    writer ("unexpected pos ..."), whose context is the OSError of the failed write."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, RuntimeError) and ("file write failed" in str(err) or "No space left" in str(err)):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def cache_home() -> Path:
    """``$TEXTPIPE_CACHE``, else ``$XDG_CACHE_HOME/textpipe``, else ``~/.cache/textpipe``: textpipe's cache folder."""
    if os.environ.get("TEXTPIPE_CACHE"):
        return Path(os.environ["TEXTPIPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textpipe"
