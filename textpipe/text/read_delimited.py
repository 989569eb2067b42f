"""CSV and TSV rows (Python ``csv`` quoting), one :class:`~textpipe.text.reading.Row` at a time.

With a header, the text and label columns are named; without one they are 0-based
indices. A malformed record (a stray quote, the wrong number of columns) becomes a
row with a problem, and the lines a stray quote swallowed are read again as rows.

Example:
    >>> rows = list(read_delimited("train.csv", "csv", SourceConfig(), with_labels=True))
"""

from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

from .reading import DataError, Lines, RecordTooLong, Row, open_lines, records, too_long

if TYPE_CHECKING:
    from .sources import SourceConfig

# The reader bounds each record itself (SourceConfig.max_chars); csv's own field limit
# would stop it before that on long reviews, so it is raised while csv parses our rows, and only then.
_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)
_AT_END_OF_FILE = "unexpected end of data"  # csv's error for a quote still open when the file ends


class Columns(NamedTuple):
    """Where a row's text (its columns joined) and label are, and whether the label is read."""

    text_at: list[int]
    label_at: int | None
    with_labels: bool


def _parse(reader) -> list[str]:
    """``next(reader)`` under a field limit as large as the record bound; the process's limit is put back."""
    previous = csv.field_size_limit(_FIELD_LIMIT)
    try:
        return next(reader)
    finally:
        csv.field_size_limit(previous)


def read_delimited(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool, start=None) -> Iterator[Row]:
    """The rows of a CSV (``fmt="csv"``) or TSV file, from ``start`` (a row's ``end`` position) when given."""
    f, max_bytes = open_lines(path, config.max_chars)
    with f:
        newline = "\r\n" if f.readline(max_bytes).endswith(b"\r\n") else "\n"  # the first line's ending: the file's
        f.seek(0)
        lines = Lines(f, max_bytes)
        new_reader = lambda: csv.reader(lines, delimiter="," if fmt == "csv" else "\t", strict=True)  # noqa: E731
        # strict=True: a quote still open at the end of the file is an error, not a field holding the rest of it.
        reader = new_reader()
        width, text_at, label_at = _columns(path, reader, config, with_labels)
        columns = Columns(text_at, label_at, with_labels)
        lines.seek(start)  # csv.reader pulls lines one at a time, so it holds none past the header
        for line, offset, row, err in records(lines, lambda: _parse(reader), (csv.Error, RecordTooLong)):
            if err is not None:
                spans_lines = lines.line > line
                yield Row(line, problem=_record_problem(err, spans_lines, fmt, config.max_chars))
                if spans_lines:
                    # A stray quote swallowed the lines after it, whatever csv then said: read them again as rows.
                    lines.restart_after(line, offset)
                reader = new_reader()
                continue
            if not row:  # csv yields [] for a blank line, which holds no row
                continue
            if width is None:
                width = len(row)  # without a header, the first row sets the number of columns
            spans_lines = lines.line > line
            swallowed = spans_lines and len(row) == width and _swallowed_rows(row, fmt, width, columns, newline)
            closed_on = lines.line
            if spans_lines and (len(row) != width or swallowed):  # a quote spread this bad row over the lines after it: they are rows of their own
                lines.restart_after(line, offset)
                reader = new_reader()
            yield Row(line, problem=_late_quote(swallowed, closed_on)) if swallowed else _row(row, line, width, columns, lines.end)


def _row(fields: list[str], line: int, width: int, columns: Columns, end) -> Row:
    """The row of a parsed record, or its problem with the columns."""
    text_at, label_at, with_labels = columns
    if len(fields) != width:
        return Row(line, problem=("wrong number of columns", f"expected {width} columns, found {len(fields)}"))
    if label_at is not None and label_at >= len(fields) and with_labels:
        return Row(line, problem=("wrong number of columns", f"no column {label_at} for the label (the row has {len(fields)})"))
    if max(text_at) >= len(fields):
        return Row(line, problem=("wrong number of columns", f"no column {max(text_at)} for the text (the row has {len(fields)})"))
    label = fields[label_at] if label_at is not None and label_at < len(fields) else None
    return Row(line, " ".join(fields[i] for i in text_at), label, end=end)


def _swallowed_rows(fields: list[str], fmt: str, width: int, columns: Columns, newline: str) -> int:
    """How many of the lines a quoted field spread over read as rows of their own (the right number of
    columns, a text, a label of one word, after the file's own line ending): a quote that opened in one
    row and closed rows later."""
    pieces = [piece.rstrip("\r") for field in fields for before, piece in itertools.pairwise(field.split("\n"))
              if before.endswith("\r") == (newline == "\r\n")]  # broken as the file breaks its rows (csv.writer's "\r\n" rows keep a text's "\n")
    return sum(1 for piece in pieces if (cells := _cells(piece, fmt)) and len(cells) == width and _row_like(cells, columns.text_at, columns.label_at))


def _cells(line: str, fmt: str) -> list[str] | None:
    try:
        return next(csv.reader([line], delimiter="," if fmt == "csv" else "\t"), None)
    except csv.Error:  # a lone carriage return, ...: not a row as a file holds one
        return None


def _row_like(cells: list[str], text_at: list[int], label_at: int | None) -> bool:
    label = cells[label_at].strip() if label_at is not None and label_at < len(cells) else "-"
    return all(cells[i].strip() for i in text_at if i < len(cells)) and 0 < len(label) <= 50 and len(label.split()) == 1


def _late_quote(rows: int, closed_on: int) -> tuple[str, str]:
    return ("stray quote", f"a quote opened in this row closes only on line {closed_on}, taking {rows} line{'s' if rows > 1 else ''} "
            "that read as rows of their own into its text")


def _record_problem(err: Exception, spans_lines: bool, fmt: str, max_chars: int) -> tuple[str, str]:
    if isinstance(err, RecordTooLong) and spans_lines:
        limit = f"{max_chars:,}-character limit (max_chars, --max-chars)"
        return "unterminated quote", f"a quote opened in this row is not closed within the {limit}"
    if isinstance(err, RecordTooLong):
        return too_long(max_chars)
    if _AT_END_OF_FILE in str(err):
        return "unterminated quote", "a quote opened in this row is never closed"
    return "malformed row", f"malformed {fmt.upper()} ({err})"


def _columns(path, reader, config: SourceConfig, with_labels: bool) -> tuple[int | None, list[int], int | None]:
    """Number of columns (None: set by the first row) and the positions of the text and label columns."""
    if not config.header:
        return None, list(config.text_columns), config.label_column
    try:
        header = _parse(reader)
    except StopIteration:
        raise DataError(path, 1, "empty file; expected a header naming the text and label columns") from None
    except (csv.Error, RecordTooLong) as err:
        raise DataError(path, 1, f"unreadable header ({err or 'too long'})") from None
    names = [h.strip().lower() for h in header]

    def position(column: str | int) -> int | None:
        if isinstance(column, int):
            return column if column < len(names) else None
        return names.index(column.lower()) if column.lower() in names else None

    text_at = [position(c) for c in config.text_columns]
    if None in text_at:
        missing = config.text_columns[text_at.index(None)]
        raise DataError(path, 1, f"header has no {missing!r} column (found: {', '.join(header)})")
    label_at = position(config.label_column)
    if label_at is None and with_labels:
        raise DataError(path, 1, f"header has no {config.label_column!r} column for the label (found: {', '.join(header)})")
    return len(names), text_at, label_at
