"""What every source reader shares: the error type, the row a reader yields, and a bounded line reader.

:class:`Lines` reads a file opened in binary mode line by line, never more than
``max_bytes`` of one record (a runaway quote or a gigabyte line cannot fill
memory), and counts lines and bytes so a row can name its line and a stream can
restart after it. :func:`records` is the record loop of every line-based reader
(CSV, TSV, JSONL, TXT). The public face of the readers is :mod:`textpipe.text.sources`.

Example:
    >>> with open("texts.txt", "rb") as f:
    ...     lines = Lines(f, max_bytes=1 << 20)
    ...     first = [(line, raw) for line, raw in line_records(lines)][0]
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import IO, Callable, Iterator, NamedTuple, TypeVar

T = TypeVar("T")


class DataError(ValueError):
    """A problem with an input file, located at ``path:line``.

    Example:
        >>> str(DataError("train.csv", 7, "missing label"))
        'train.csv:7: missing label'
    """

    def __init__(self, path: str | Path, line: int | None = None, problem: str | None = None):
        self.path, self.line, self.problem = str(path), line, problem
        if problem is None:
            # A DataLoader worker's error is re-raised as DataError(text), the text ending
            # in the worker's traceback; its last line is the original message.
            last = str(path).rstrip().splitlines()[-1] if str(path).strip() else ""
            super().__init__(last.split("DataError: ", 1)[-1])
            return
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class Row(NamedTuple):
    """A row as a reader found it; ``problem`` is ``(reason, message)`` for a row that cannot be used."""

    line: int | None
    text: str | None = None
    label: str | tuple[str, ...] | None = None  # a tuple: a JSONL list, fastText's __label__ words
    problem: tuple[str, str] | None = None
    file: str | None = None
    end: tuple[int, int] | None = None  # byte offset and line count after the row


class RecordTooLong(Exception):
    """A record ran past :class:`Lines`' ``max_bytes``."""


def too_long(max_chars: int) -> tuple[str, str]:
    """The problem of a row over the ``max_chars`` limit."""
    return "text too long", f"row over the {max_chars:,}-character limit (max_chars, --max-chars)"


class Lines:
    """Decoded lines of a file opened in binary mode, for ``csv.reader`` and the line readers.

    Reads at most ``max_bytes`` of one record (a row, which a quoted field can spread
    over several lines), so a runaway quote or a gigabyte line cannot fill memory;
    counts lines and bytes so a reader can name a row's line and restart after it.

    Example:
        >>> lines = Lines(open("a.csv", "rb"), max_bytes=4096)
        >>> header = next(lines); lines.end
        (11, 1)
    """

    def __init__(self, f: IO[bytes], max_bytes: int):
        self.f, self.max_bytes = f, max_bytes
        self.line, self.offset, self.record_bytes = 0, 0, 0

    def __iter__(self) -> "Lines":
        return self

    def __next__(self) -> str:
        raw = self.f.readline(self.max_bytes + 1)
        if not raw:
            raise StopIteration
        self.line += 1
        self.offset += len(raw)
        self.record_bytes += len(raw)
        if self.record_bytes > self.max_bytes:
            if not raw.endswith(b"\n"):
                self.offset += self._skip_rest_of_line()  # counted, not told: stdin cannot tell
            raise RecordTooLong
        if self.line == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        return raw.decode("utf-8", "surrogateescape")

    def take(self, n: int) -> list[str | None]:
        """Up to ``n`` more lines in one call, each a record of its own (None: over the byte limit);
        fewer only at the end. The lines are numbered ``self.line - len(block) + 1`` on."""
        block: list[str | None] = []
        while len(block) < n:
            self.record_bytes = 0
            try:
                block.append(self.__next__())
            except StopIteration:
                break
            except RecordTooLong:
                block.append(None)
        return block

    def seek(self, start: tuple[int, int] | None) -> None:
        """Continue at ``start`` (a position this reader reported: offset, line), if given."""
        if start is not None:
            self.f.seek(start[0])
            self.offset, self.line = start[0], start[1]

    @property
    def end(self) -> tuple[int, int]:
        return self.offset, self.line

    def start_record(self) -> tuple[int, int]:
        """Mark the start of a record; returns its first line number and byte offset."""
        self.record_bytes = 0
        return self.line + 1, self.offset

    def restart_after(self, line: int, offset: int) -> None:
        """Go back to the record that starts at ``line`` / ``offset`` and skip its first line."""
        self.f.seek(offset)
        self._skip_rest_of_line()
        self.line, self.offset = line, self.f.tell()

    def _skip_rest_of_line(self) -> int:
        skipped = 0
        while chunk := self.f.readline(1 << 20):
            skipped += len(chunk)
            if chunk.endswith(b"\n"):
                break
        return skipped


def open_lines(path: str | Path, max_chars: int) -> tuple[IO[bytes], int]:
    """The file opened for :class:`Lines`, and the bytes a record of ``max_chars`` characters may take."""
    if not Path(path).is_file():
        raise DataError(path, None, "no such file")
    if Path(path).stat().st_size == 0:
        raise DataError(path, 1, "empty file")
    # A UTF-8 character is at most 4 bytes; the rest of a row (label, quotes, other columns) gets slack.
    return open(path, "rb"), 4 * max_chars + 4096


def records(lines: Lines, parse: Callable[[], T], errors: tuple[type[Exception], ...] = (RecordTooLong,)) -> Iterator[tuple[int, int, T | None, Exception | None]]:
    """Each record ``parse`` reads from ``lines``, with where it starts: ``(first line, byte offset, record, None)``,
    or ``(first line, byte offset, None, error)`` when ``parse`` raised one of ``errors``; ends when it raises StopIteration."""
    while True:
        line, offset = lines.start_record()
        try:
            record = parse()
        except StopIteration:
            return
        except errors as err:
            yield line, offset, None, err
            continue
        yield line, offset, record, None


def line_records(lines: Lines) -> Iterator[tuple[int, str | None]]:
    """``(line number, line)`` of each line; the line is None when it runs past the byte limit."""
    for line, _, raw, _ in records(lines, lines.__next__):
        yield line, raw
