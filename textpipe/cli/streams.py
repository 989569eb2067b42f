"""The commands' input and output: texts from arguments, files or stdin, streamed; output written atomically."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Iterator, TextIO

from ..files import temp_file_beside
from ..sources import DataError, SourceConfig
from .errors import UsageError


def require_bundle(path: Path) -> Path:
    """``path`` when it holds a bundle; a usage error saying what it holds otherwise."""
    from ..runfolder import unfinished

    if not (path / "bundle.json").is_file() and unfinished(path):
        raise UsageError(f"{path} holds an unfinished training run, not yet a bundle", hint=f"finish it with: textpipe train --resume {path}")
    if not (path / "bundle.json").is_file():
        raise UsageError(f"{path} is not a textpipe bundle (no bundle.json)", hint="give the folder that `textpipe train --out DIR` wrote")
    return path


def positive(value: int, flag: str) -> None:
    if value < 1:
        raise UsageError(f"{flag} must be >= 1, got {value}")


def reads_stdin(texts: list[str], source: str | None) -> bool:
    return source == "-" or (source is None and texts == ["-"])


def input_source(texts: list[str], source: str | None) -> tuple[list[str], str | None]:
    """The command-line texts and the ``--input`` source, checked before the model loads.

    A lone ``-`` as the only text reads stdin, as fastText's ``predict model.bin -`` does."""
    from ..sources import file_format

    if source is None and texts == ["-"]:
        texts, source = [], "-"
    for number, text in enumerate(texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # bytes the shell passed that are not UTF-8 (argv decodes them as surrogates)
            raise UsageError(f"text argument {number} is not UTF-8 (character {err.start + 1})", hint="pass UTF-8 text, or --input FILE") from None
    if source is not None and source != "-":
        file_format(source)  # an unknown suffix is an error now, before the model loads
        if not Path(source).exists():
            raise UsageError(f"{source}: no such file", hint="use --input - to read texts from stdin")
    return texts, source


def input_texts(texts: list[str], source: str | None, config: SourceConfig | None = None) -> Iterator[str]:
    """The command-line texts, then those of ``source`` ('-' is stdin, one text per line), streamed."""
    from ..sources import read_texts

    texts, source = input_source(texts, source)

    def stream() -> Iterator[str]:
        yield from texts
        if source == "-":
            yield from stdin_texts(sys.stdin)
        elif source is not None:
            yield from read_texts(source, config)

    return stream()


def input_blocks(texts: list[str], source: str | None, config: SourceConfig, size: int) -> Iterator[list]:
    """The command-line texts, then the rows of ``source`` ('-' is stdin), bad ones included, ``size`` rows at a time."""
    from ..sources import InputRow, read_input_blocks

    texts, source = input_source(texts, source)

    def stream() -> Iterator[list]:
        arguments = [InputRow(i, text, None if text.strip() else ("empty text", "empty text"), "<argument>") for i, text in enumerate(texts, start=1)]
        for start in range(0, len(arguments), size):
            yield arguments[start : start + size]
        if source is not None:
            yield from read_input_blocks(None if source == "-" else source, config, size)

    return stream()


def stdin_texts(stream: TextIO) -> Iterator[str]:
    for line_number, line in enumerate(stream, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            raise DataError("<stdin>", line_number, "empty text")
        yield text


def check_output_folder(path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"--output {path}: folder {path.parent} does not exist", hint=f"create it first: mkdir -p {shlex.quote(str(path.parent))}")


class atomic_output:
    """``with atomic_output(path) as f``: a text file written to a temporary file of a unique name
    beside ``path`` and renamed on success (so two runs never mix their rows); stdout if path is None.

    Example:
        >>> with atomic_output(Path("labels.csv")) as out:
        ...     out.write("text,label\\n")
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.tmp: Path | None = None

    def __enter__(self) -> TextIO:
        if self.path is None:
            return sys.stdout
        if not self.path.parent.is_dir():
            raise UsageError(f"{self.path}: its folder {self.path.parent} does not exist", hint="create it, or give another --output")
        fd, self.tmp = temp_file_beside(self.path)
        self.file = open(fd, "w", encoding="utf-8", newline="")
        return self.file

    def __exit__(self, kind, error, traceback) -> None:
        if self.tmp is None:
            return
        self.file.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)  # a failed run leaves no half-written file behind


def print_skipped(skipped: dict) -> None:
    """One line per file, on stderr: how many rows were skipped and why."""
    for part, reasons in skipped.items():
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        print(f"skipped {sum(reasons.values())} {part} rows" + (f": {detail}" if detail else ""), file=sys.stderr)
