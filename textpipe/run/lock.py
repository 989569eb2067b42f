"""The run lock: ``with RunLock(out)``, this process is the only textpipe run using folder ``out``.

An exclusive ``flock`` on ``OUT/.textpipe.lock`` for the whole run: a second run on the same
folder is refused with the first one's pid, and the kernel drops the lock when its process dies,
even by ``kill -9``. The lock file is never followed through a link, never truncated unless it
holds a pid, and never removed unless it is still this run's own file.

Example:
    >>> with RunLock("runs/mine"):
    ...     pass  # a second `textpipe train --out runs/mine` now exits 2, naming this pid
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

from ..core.files import OutputError, kind_of

LOCK = ".textpipe.lock"


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
            mode = os.lstat(path).st_mode if os.path.lexists(path) else stat.S_IFREG
            if not stat.S_ISREG(mode):  # a device or FIFO is not even opened
                raise OutputError(f"{path} is {kind_of(mode)}, not textpipe's run lock: textpipe never opens it; remove it and run again")
            # Never through a link, never truncated on open: a lock left by a killed run is reused,
            # anything else at that name is not textpipe's (checked before a byte is written).
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OutputError:
            raise
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OutputError(f"{path} is a symbolic link, not textpipe's run lock: textpipe never follows it; remove it and run again") from None
            raise OutputError(f"cannot write to output folder {self.out}: {err.strerror or err}") from None
        try:
            _check_lock_file(path, fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if isinstance(err, OutputError):
                raise
            raise OutputError(f"output folder {self.out} is in use by another textpipe run (pid {holder}); wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)  # a pid, checked above: nothing of anyone else's
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            path = self.out / LOCK
            if _same_file(path, self._fd):  # while still held: no other run can be inside
                path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _check_lock_file(path: Path, fd: int) -> None:
    """OutputError unless ``fd`` is a lock file textpipe could have written: a regular file of one
    name, empty or holding a pid (a killed run's). A hard link or a file of other content is someone's."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} is {kind_of(st.st_mode)}, not textpipe's run lock; remove it and run again")
    if st.st_nlink > 1 or st.st_size > 32 or not re.fullmatch(rb"\d*\s*", os.pread(fd, 33, 0)):
        raise OutputError(f"{path} is not textpipe's run lock (it holds other content or is a link to another file); "
                          "textpipe leaves it as it is: move it away and run again")


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)
