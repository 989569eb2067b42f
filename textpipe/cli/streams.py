"""The commands' input and output: texts from arguments, files or stdin, streamed; output written atomically."""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from pathlib import Path
from typing import Iterator, TextIO

from ..core.files import META, OutputError, atomic_file, check_regular_file
from ..text.sources import DataError, SourceConfig
from .errors import UsageError


def require_bundle(path: Path) -> Path:
    """``path`` when it holds a bundle; a usage error saying what it holds otherwise."""
    from ..run.folder import mid_commit, unfinished

    stage = unfinished(path)
    if stage is not None and mid_commit(stage):
        raise UsageError(f"{path}: a finished training run was stopped while moving its files in (some new, some old)",
                         hint=f"finish the move with: textpipe train --resume {path}")
    if not (path / META).is_file() and stage:
        raise UsageError(f"{path} holds an unfinished training run, not yet a bundle", hint=f"finish it with: textpipe train --resume {path}")
    if not (path / META).is_file():
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
    from ..text.sources import file_format

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
    from ..text.sources import read_texts

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
    from ..text.sources import InputRow, read_input_blocks

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


def to_stdout(path: Path | None) -> bool:
    """Whether ``--output`` means standard output: not given, or ``-``."""
    return path is None or str(path) == "-"


def check_output_folder(path: Path | None) -> None:
    """Before any work: ``--output`` can be written (its folder exists; nothing but a regular file is at the path)."""
    if to_stdout(path):
        return
    if not path.parent.is_dir():
        raise UsageError(f"--output {path}: folder {path.parent} does not exist", hint=f"create it first: mkdir -p {shlex.quote(str(path.parent))}")
    try:
        check_regular_file(path)
    except OutputError as err:
        raise UsageError(f"--output {err}", hint="give the name of a regular file, or - for standard output") from None


class atomic_output:
    """``with atomic_output(path) as f``: a text file written through :func:`textpipe.core.files.atomic_file`
    (a temporary file of a unique name beside ``path``, renamed on success, so two runs never mix their
    rows; only ever a regular file replaced); stdout if path is None or ``-``.

    Example:
        >>> with atomic_output(Path("labels.csv")) as out:
        ...     out.write("text,label\\n")
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._file: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> TextIO:
        if to_stdout(self.path):
            return sys.stdout
        check_output_folder(self.path)
        self._file = atomic_file(self.path)
        self.text = io.TextIOWrapper(self._file.__enter__(), encoding="utf-8", newline="")
        return self.text

    def __exit__(self, kind, error, traceback) -> None:
        if self._file is None:
            return
        failed = None
        if kind is None:
            try:
                self.text.flush()
            except BaseException as err:  # e.g. a full disk: the temporary file goes, the old file stays
                failed = err
                kind, error, traceback = type(err), err, err.__traceback__
        self.text.detach()  # the binary file is atomic_file's to close
        self._file.__exit__(kind, error, traceback)
        if failed is not None:
            raise failed


def print_skipped(skipped: dict) -> None:
    """One line per file, on stderr: how many rows were skipped and why."""
    for part, reasons in skipped.items():
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        print(f"skipped {sum(reasons.values())} {part} rows" + (f": {detail}" if detail else ""), file=sys.stderr)
