"""Stage 0: files -> (text, label) examples, one row at a time.

Sources, chosen by the path:

- ``.csv`` / ``.tsv``: delimited text (Python ``csv`` quoting). With a header, the
  text and label columns are named (``text`` and ``label`` by default; other
  columns are ignored); without one (``header=False``) they are 0-based indices.
  Several text columns are joined with a space, as AG News needs title + description;
- ``.jsonl``: one JSON object per line; the text and label columns are keys;
- ``.txt``: one text per line, no labels (prediction input);
- a folder with one subfolder per label holding ``*.txt`` files, one text per file
  (the ``aclImdb/train/pos/*.txt`` layout); the subfolder ``unsup`` is not a label;
- ``torchtext:NAME/SPLIT`` (``torchtext:AG_NEWS/train``): a ``torchtext.datasets``
  dataset under ``SourceConfig.root``. torchtext downloads it once; with its files
  already in place (archive with the right MD5) no network is used.

Rows stream from disk; nothing here holds a whole file. A bad row raises
:class:`DataError` whose message names the file, the line and the problem; with
``on_bad_row="skip"`` it is skipped and counted by reason instead. A problem with
the whole file (no such file, an empty file, a header without the named columns)
is an error either way.
"""

from __future__ import annotations

import codecs
import csv
import json
import stat
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Iterator, MutableMapping, NamedTuple

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}
TORCHTEXT_PREFIX = "torchtext:"
# torchtext.datasets readers, and where each puts the label and the text in the tuples it yields.
TORCHTEXT_DATASETS = {
    "AG_NEWS": "label,text", "IMDB": "label,text", "SST2": "text,label",
    "YelpReviewPolarity": "label,text", "DBpedia": "label,text", "AmazonReviewPolarity": "label,text",
}
NOT_A_CLASS = ("unsup",)  # aclImdb's unlabelled reviews sit beside pos/ and neg/

# The reader bounds each record itself (SourceConfig.max_chars); csv's own limit would
# stop it before that on long reviews.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class DataError(ValueError):
    """A problem with an input file, located at ``path:line``."""

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


@dataclass
class SourceConfig:
    """How to read a source: which columns hold the text and the label, and what to do with a bad row.

    ``text_columns`` and ``label_column`` are header names (CSV/TSV with a header, or
    JSONL keys) or 0-based column indices (CSV/TSV with ``header=False``).
    ``on_bad_row="skip"`` skips bad rows and counts them by reason; ``"error"`` stops
    at the first. A text longer than ``max_chars`` characters is a bad row.
    ``root`` is where ``torchtext:`` datasets live (torchtext adds the dataset's name).

    Example:
        >>> ag_news = SourceConfig(text_columns=[1, 2], label_column=0, header=False)
        >>> skipped = {}
        >>> rows = list(read_examples("ag_news_csv/train.csv", config=SourceConfig(on_bad_row="skip"), skipped=skipped))
    """

    text_columns: list[str | int] = field(default_factory=lambda: ["text"])
    label_column: str | int = "label"
    header: bool = True
    on_bad_row: str = "error"
    max_chars: int = 100_000
    root: str = "data"

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, (str, int)):
            self.text_columns = [self.text_columns]
        self.text_columns = list(self.text_columns)
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if not self.text_columns:
            raise ValueError("text_columns needs at least one column")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        columns = [*self.text_columns, self.label_column]
        if not self.header and not all(isinstance(c, int) and c >= 0 for c in columns):
            raise ValueError(f"without a header, text_columns and label_column are column indices (0, 1, ...), got {columns}")

    @classmethod
    def from_dict(cls, d: dict) -> "SourceConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys in [data.source]: {', '.join(sorted(unknown))}")
        return cls(**d)


class Position(NamedTuple):
    """Where a reader stands after a row: byte offset and line count in the file, and
    how many examples it has yielded. ``read_examples(..., start=position)`` continues
    from there without reading what came before (a resume re-reads nothing)."""

    offset: int
    line: int
    index: int


class Example(NamedTuple):
    text: str
    label: str | None
    line: int | None  # None when a whole file is one example (folder-per-class)
    file: str | None = None  # the file it came from, where that is not the source path itself
    after: Position | None = None  # the reader's position after this row (CSV, TSV, JSONL, TXT)


class _Row(NamedTuple):
    """A row as a reader found it; ``problem`` is ``(reason, message)`` for a row that cannot be used."""

    line: int | None
    text: str | None = None
    label: str | None = None
    problem: tuple[str, str] | None = None
    file: str | None = None
    end: tuple[int, int] | None = None  # byte offset and line count after the row


def file_format(path: str | Path) -> str:
    """``csv``, ``tsv``, ``jsonl``, ``txt``, ``folder`` or ``torchtext``, from the path."""
    if str(path).startswith(TORCHTEXT_PREFIX):
        return "torchtext"
    if Path(path).is_dir():
        return "folder"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, None, f"unknown file type {suffix!r}; use one of {', '.join(FORMATS)}, a folder per class, or torchtext:NAME/SPLIT")
    return FORMATS[suffix]


def read_examples(
    path: str | Path,
    with_labels: bool = True,
    config: SourceConfig | None = None,
    skipped: MutableMapping[str, int] | None = None,
    start: Position | None = None,
) -> Iterator[Example]:
    """Stream the examples of a source (see the module docstring for the kinds).

    With ``with_labels=False`` the label column may be absent and labels are ``None``.
    With ``config.on_bad_row == "skip"``, pass a dict as ``skipped``: each bad row adds
    one to ``skipped[reason]`` instead of raising. ``start`` (an example's ``after``)
    continues a stream there: files seek to it, a folder or torchtext source reads
    past the first ``start.index`` examples.

    Example:
        >>> for ex in read_examples("data/rotten_tomatoes/train.csv"):
        ...     print(ex.line, ex.label, ex.text[:40])
        2 fresh a gorgeous, witty, seductive movie.
    """
    config = config or SourceConfig()
    if config.on_bad_row == "skip" and skipped is None:
        raise ValueError("on_bad_row='skip' needs a `skipped` dict to count the skipped rows in")
    fmt = file_format(path)
    if fmt == "txt" and with_labels:
        raise DataError(path, None, "a .txt file holds texts only; labelled data must be .csv, .tsv, .jsonl, a folder per class or torchtext:NAME/SPLIT")
    readers = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "txt": _read_txt,
               "folder": _read_folder, "torchtext": _read_torchtext}
    seekable = fmt in ("csv", "tsv", "jsonl", "txt")
    rows = readers[fmt](path, fmt, config, with_labels, *([start] if seekable else []))
    index = start.index if start else 0
    for row in rows:
        problem = row.problem or _row_problem(row, with_labels, config)
        if problem is None:
            index += 1
            if start and not seekable and index <= start.index:
                continue
            after = Position(*row.end, index) if row.end else None
            # " DESC" and "DESC" are one class: labels are stripped (texts keep their spaces)
            yield Example(row.text, row.label.strip() if with_labels else None, row.line, row.file, after)
        elif start and not seekable and index < start.index:
            continue  # counted before the resume
        elif config.on_bad_row == "skip":
            skipped[problem[0]] = skipped.get(problem[0], 0) + 1
        else:
            raise DataError(row.file or path, row.line, problem[1])


def read_texts(path: str | Path, config: SourceConfig | None = None) -> Iterator[str]:
    """Stream just the texts of a source (labels, if any, are ignored)."""
    for example in read_examples(path, with_labels=False, config=config):
        yield example.text


class InputRow(NamedTuple):
    """One row of prediction input: its ``text``, or ``problem`` (reason, message) and an empty text."""

    line: int | None
    text: str
    problem: tuple[str, str] | None
    file: str


def read_input_rows(path: str | Path | None, config: SourceConfig | None = None) -> Iterator[InputRow]:
    """Every row of unlabelled input in order, bad ones included, so each can get an output line.

    ``path=None`` reads stdin, one text per line, under the same ``max_chars`` limit as a file.

    Example:
        >>> [row.problem for row in read_input_rows("texts.txt")][:2]
        [None, ('empty text', 'empty text')]
    """
    config = config or SourceConfig()
    if path is None:
        rows, name = _txt_rows(sys.stdin.buffer, 4 * config.max_chars + 4096, config), "<stdin>"
    else:
        fmt = file_format(path)
        readers = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "txt": _read_txt,
                   "folder": _read_folder, "torchtext": _read_torchtext}
        rows, name = readers[fmt](path, fmt, config, False), str(path)
    for row in rows:
        problem = row.problem or _row_problem(row, False, config)
        yield InputRow(row.line, "" if problem else row.text, problem, row.file or name)


def _row_problem(row: _Row, with_labels: bool, config: SourceConfig) -> tuple[str, str] | None:
    text, label = row.text, row.label or ""
    # The reader decodes with "surrogateescape": a byte that is not UTF-8 becomes a lone surrogate.
    if not (text.isascii() or _is_utf8(text)) or not (label.isascii() or _is_utf8(label)):
        return "undecodable bytes", "bytes that are not valid UTF-8 (save the file as UTF-8)"
    if "\x00" in text or "\x00" in label:
        return "NUL byte", "NUL byte in the row (a binary or UTF-16 file?)"
    if not text.strip():
        return "empty text", "empty text"
    if len(text) > config.max_chars:
        return "text too long", f"text of {len(text):,} characters is over the {config.max_chars:,}-character limit (max_chars, --max-chars)"
    if with_labels and not label.strip():
        return "missing label", "missing label"
    return None


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _too_long(config: SourceConfig) -> tuple[str, str]:
    return "text too long", f"row over the {config.max_chars:,}-character limit (max_chars, --max-chars)"


class _RecordTooLong(Exception):
    pass


class _Lines:
    """Decoded lines of a file opened in binary mode, for ``csv.reader`` and the line readers.

    Reads at most ``max_bytes`` of one record (a row, which a quoted field can spread
    over several lines), so a runaway quote or a gigabyte line cannot fill memory;
    counts lines and bytes so a reader can name a row's line and restart after it.
    """

    def __init__(self, f: IO[bytes], max_bytes: int):
        self.f, self.max_bytes = f, max_bytes
        self.line, self.offset, self.record_bytes = 0, 0, 0

    def __iter__(self) -> "_Lines":
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
            raise _RecordTooLong
        if self.line == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        return raw.decode("utf-8", "surrogateescape")

    def seek(self, start: "Position | None") -> None:
        """Continue at ``start`` (a position this reader reported), if given."""
        if start is not None:
            self.f.seek(start.offset)
            self.offset, self.line = start.offset, start.line

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


def _open_lines(path: str | Path, config: SourceConfig):
    if not Path(path).is_file():
        raise DataError(path, None, "no such file")
    if Path(path).stat().st_size == 0:
        raise DataError(path, 1, "empty file")
    # A UTF-8 character is at most 4 bytes; the rest of a row (label, quotes, other columns) gets slack.
    return open(path, "rb"), 4 * config.max_chars + 4096


def _read_delimited(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool, start: Position | None = None) -> Iterator[_Row]:
    f, max_bytes = _open_lines(path, config)
    with f:
        lines = _Lines(f, max_bytes)
        delimiter = "," if fmt == "csv" else "\t"
        # strict=True: a quote still open at the end of the file is an error, not a field holding the rest of it.
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        width, text_at, label_at = _columns(path, reader, config, with_labels)
        lines.seek(start)  # csv.reader pulls lines one at a time, so it holds none past the header
        while True:
            line, offset = lines.start_record()
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, _RecordTooLong) as err:
                spans_lines = lines.line > line
                yield _Row(line, problem=_record_problem(err, spans_lines, fmt, config))
                if spans_lines:
                    # A stray quote swallowed the lines after it, whatever csv then said: read them again as rows.
                    lines.restart_after(line, offset)
                reader = csv.reader(lines, delimiter=delimiter, strict=True)
                continue
            if not row:  # csv yields [] for a blank line, which holds no row
                continue
            if width is None:
                width = len(row)  # without a header, the first row sets the number of columns
            if len(row) != width:
                yield _Row(line, problem=("wrong number of columns", f"expected {width} columns, found {len(row)}"))
                if lines.line > line:  # a quote spread this bad row over the lines after it: they are rows of their own
                    lines.restart_after(line, offset)
                    reader = csv.reader(lines, delimiter=delimiter, strict=True)
                continue
            label = row[label_at] if label_at is not None and label_at < len(row) else None
            if label_at is not None and label_at >= len(row) and with_labels:
                yield _Row(line, problem=("wrong number of columns", f"no column {label_at} for the label (the row has {len(row)})"))
                continue
            if max(text_at) >= len(row):
                yield _Row(line, problem=("wrong number of columns", f"no column {max(text_at)} for the text (the row has {len(row)})"))
                continue
            yield _Row(line, " ".join(row[i] for i in text_at), label, end=lines.end)


_AT_END_OF_FILE = "unexpected end of data"  # csv's error for a quote still open when the file ends


def _record_problem(err: Exception, spans_lines: bool, fmt: str, config: SourceConfig) -> tuple[str, str]:
    if isinstance(err, _RecordTooLong) and spans_lines:
        limit = f"{config.max_chars:,}-character limit (max_chars, --max-chars)"
        return "unterminated quote", f"a quote opened in this row is not closed within the {limit}"
    if isinstance(err, _RecordTooLong):
        return _too_long(config)
    if _AT_END_OF_FILE in str(err):
        return "unterminated quote", "a quote opened in this row is never closed"
    return "malformed row", f"malformed {fmt.upper()} ({err})"


def _columns(path, reader, config: SourceConfig, with_labels: bool) -> tuple[int | None, list[int], int | None]:
    """Number of columns (None: set by the first row) and the positions of the text and label columns."""
    if not config.header:
        return None, list(config.text_columns), config.label_column
    try:
        header = next(reader, None)
    except (csv.Error, _RecordTooLong) as err:
        raise DataError(path, 1, f"unreadable header ({err or 'too long'})") from None
    if header is None:
        raise DataError(path, 1, "empty file; expected a header naming the text and label columns")
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


def _read_jsonl(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool, start: Position | None = None) -> Iterator[_Row]:
    if any(isinstance(c, int) for c in [*config.text_columns, config.label_column]):
        raise DataError(path, None, "JSONL columns are keys, not indices; set text_columns/label_column to names")
    f, max_bytes = _open_lines(path, config)
    with f:
        lines = _Lines(f, max_bytes)
        lines.seek(start)
        while True:
            line, _ = lines.start_record()
            try:
                raw = next(lines)
            except StopIteration:
                return
            except _RecordTooLong:
                yield _Row(line, problem=_too_long(config))
                continue
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield _Row(line, problem=("invalid JSON", f"invalid JSON ({err.msg} at column {err.colno})"))
                continue
            texts = [obj.get(c) for c in config.text_columns] if isinstance(obj, dict) else [None]
            if not all(isinstance(t, str) for t in texts):
                keys = " and ".join(repr(c) for c in config.text_columns)
                yield _Row(line, problem=("wrong columns", f"expected a JSON object with a string {keys}"))
                continue
            label = _json_label(obj.get(config.label_column))
            if label is _NOT_A_LABEL:
                yield _Row(line, problem=("bad label", f"the label {config.label_column!r} must be a string or an integer, got {json.dumps(obj.get(config.label_column))[:60]}"))
                continue
            yield _Row(line, " ".join(texts), label, end=lines.end)


_NOT_A_LABEL = object()


def _json_label(value):
    """A JSON label as a string: ``1`` and ``1.0`` are both ``"1"``; a bool, a fraction, a list or an object is not a label."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _NOT_A_LABEL
    if isinstance(value, float) and not value.is_integer():
        return _NOT_A_LABEL
    return str(int(value))


def _read_txt(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool, start: Position | None = None) -> Iterator[_Row]:
    f, max_bytes = _open_lines(path, config)
    with f:
        yield from _txt_rows(f, max_bytes, config, start)


def _txt_rows(f: IO[bytes], max_bytes: int, config: SourceConfig, start: Position | None = None) -> Iterator[_Row]:
    lines = _Lines(f, max_bytes)
    lines.seek(start)
    while True:
        line, _ = lines.start_record()
        try:
            raw = next(lines)
        except StopIteration:
            return
        except _RecordTooLong:
            yield _Row(line, problem=_too_long(config))
            continue
        yield _Row(line, raw.rstrip("\r\n"), end=lines.end)


def _read_folder(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool) -> Iterator[_Row]:
    """One example per ``*.txt`` file; its label is the name of the subfolder it is in.

    Files are taken in turn from each class (sorted names), so a stream of a large
    folder mixes the labels even before the shuffle buffer.
    """
    folder = Path(path)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in NOT_A_CLASS and not d.name.startswith("."))
    files = {c: sorted((folder / c).glob("*.txt")) for c in classes}
    classes = [c for c in classes if files[c]]
    if not classes:
        raise DataError(path, None, "no class folders: expected one subfolder per label (pos/, neg/, ...) holding .txt files")
    max_bytes = 4 * config.max_chars
    for i in range(max(len(files[c]) for c in classes)):
        for label in classes:
            if i < len(files[label]):
                yield _read_one_file(files[label][i], label, max_bytes, config)


def _read_one_file(file: Path, label: str, max_bytes: int, config: SourceConfig) -> _Row:
    try:
        if not stat.S_ISREG(file.stat().st_mode):  # a FIFO or a device would block the read forever
            return _Row(None, problem=("not a regular file", "not a regular file (a pipe, device or socket)"), file=str(file))
        if file.stat().st_size > max_bytes:
            return _Row(None, problem=_too_long(config), file=str(file))
        data = file.read_bytes()
    except OSError as err:  # a dangling link, no permission
        return _Row(None, problem=("unreadable file", f"unreadable ({err.strerror or err})"), file=str(file))
    text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    return _Row(None, text.strip(), label, file=str(file))


def _read_torchtext(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool) -> Iterator[_Row]:
    spec = str(path)
    name, _, split = spec[len(TORCHTEXT_PREFIX):].partition("/")
    if name not in TORCHTEXT_DATASETS or not split:
        raise DataError(spec, None, f"use torchtext:NAME/SPLIT with NAME one of {', '.join(TORCHTEXT_DATASETS)} (for example torchtext:AG_NEWS/train)")
    from . import _torchtext  # noqa: F401  (silences torchtext's import warning)

    order = TORCHTEXT_DATASETS[name].split(",")
    try:
        with warnings.catch_warnings():  # torchdata warns on import that its datapipes are deprecated
            warnings.filterwarnings("ignore", message="(?s).*datapipes.*deprecated", category=UserWarning)
            import torchtext.datasets

            rows = getattr(torchtext.datasets, name)(root=config.root, split=split)
        for line, item in enumerate(rows, start=1):
            fields_ = dict(zip(order, item))
            label = fields_.get("label")
            yield _Row(line, fields_.get("text"), None if label is None else str(label))
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        # torchtext's own failures (no network, a bad checksum, an unknown split), in one line.
        first = next((s for s in str(err).splitlines() if s.strip()), "")
        where = Path(config.root) / "datasets" / name
        problem = f"torchtext could not read {name} {split!r} ({type(err).__name__}: {first.strip()}); offline, its downloaded files belong in {where}/"
        raise DataError(spec, None, problem) from None
