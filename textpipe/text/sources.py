"""Files -> (text, label) examples, one row at a time.

Sources, chosen by the path:

- ``.csv`` / ``.tsv``: delimited text (Python ``csv`` quoting). With a header, the
  text and label columns are named (``text`` and ``label`` by default; other
  columns are ignored); without one (``header=False``) they are 0-based indices.
  Several text columns are joined with a space, as AG News needs title + description;
- ``.jsonl``: one JSON object per line; the text and label columns are keys;
- ``.txt``: one text per line (prediction input); labelled, fastText's lines
  (``__label__pos __label__funny the text``);
- a folder with one subfolder per label holding ``*.txt`` files, one text per file
  (the ``aclImdb/train/pos/*.txt`` layout); the subfolder ``unsup`` is not a label;

With ``label_sep`` set (multi-label data) an example's label is a sorted tuple of labels,
any number of them: a CSV/TSV cell split on ``label_sep`` (an empty cell is the empty set),
a JSONL list (or a string split the same way), or fastText's ``__label__`` words.
- ``torchtext:NAME/SPLIT`` (``torchtext:AG_NEWS/train``): a ``torchtext.datasets``
  dataset under ``SourceConfig.root``. torchtext downloads it once; with its files
  already in place (archive with the right MD5) no network is used.

Rows stream from disk; nothing here holds a whole file. A bad row raises
:class:`DataError` whose message names the file, the line and the problem; with
``on_bad_row="skip"`` it is skipped and counted by reason instead. A problem with
the whole file (no such file, an empty file, a header without the named columns)
is an error either way.

This module is the sources' public face; the readers are in :mod:`textpipe.text.read_delimited`
(CSV/TSV), :mod:`textpipe.text.read_jsonl` and :mod:`textpipe.text.read_files` (TXT, folders,
torchtext), on the shared pieces of :mod:`textpipe.text.reading` (``DataError`` is defined there).
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, MutableMapping, NamedTuple

from .read_delimited import read_delimited
from .read_files import NOT_A_CLASS, TORCHTEXT_DATASETS, TORCHTEXT_PREFIX, read_folder, read_torchtext, read_txt  # noqa: F401  (re-exported)
from .read_jsonl import read_jsonl
from .reading import DataError, Lines, Row, open_lines, too_long

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}
READERS = {"csv": read_delimited, "tsv": read_delimited, "jsonl": read_jsonl, "txt": read_txt, "folder": read_folder, "torchtext": read_torchtext}
SEEKABLE = ("csv", "tsv", "jsonl", "txt")  # formats whose readers continue at a byte offset


@dataclass
class SourceConfig:
    """How to read a source: which columns hold the text and the label, and what to do with a bad row.

    ``text_columns`` and ``label_column`` are header names (CSV/TSV with a header, or
    JSONL keys) or 0-based column indices (CSV/TSV with ``header=False``).
    ``on_bad_row="skip"`` skips bad rows and counts them by reason; ``"error"`` stops
    at the first. A text longer than ``max_chars`` characters is a bad row.
    ``root`` is where ``torchtext:`` datasets live (torchtext adds the dataset's name).
    ``label_sep`` makes the data multi-label: each row has a set of labels, a label cell
    split on it (None: one label per row).

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
    label_sep: str | None = None  # multi-label rows: label cells split on this ("|" with --multi-label); None = one label a row

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, (str, int)):
            self.text_columns = [self.text_columns]
        self.text_columns = list(self.text_columns)
        if self.on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {self.on_bad_row!r}")
        if not self.text_columns:
            raise ValueError("text_columns needs at least one column")
        if self.label_sep is not None and (not isinstance(self.label_sep, str) or not self.label_sep.strip()):
            raise ValueError(f"label_sep must be a non-blank string (or unset for one label a row), got {self.label_sep!r}")
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {self.max_chars}")
        columns = [*self.text_columns, self.label_column]
        if not self.header and not all(isinstance(c, int) and c >= 0 for c in columns):
            raise ValueError(f"without a header, text_columns and label_column are column indices (0, 1, ...), got {columns}")


class Position(NamedTuple):
    """Where a reader stands after a row: byte offset and line count in the file, and
    how many examples it has yielded. ``read_examples(..., start=position)`` continues
    from there without reading what came before (a resume re-reads nothing)."""

    offset: int
    line: int
    index: int


class Example(NamedTuple):
    text: str
    label: str | tuple[str, ...] | None  # a sorted tuple (maybe empty) for multi-label data
    line: int | None  # None when a whole file is one example (folder-per-class)
    file: str | None = None  # the file it came from, where that is not the source path itself
    after: Position | None = None  # the reader's position after this row (CSV, TSV, JSONL, TXT)


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
    seekable = fmt in SEEKABLE
    rows = READERS[fmt](path, fmt, config, with_labels, *([start] if seekable else []))
    index = start.index if start else 0
    for row in rows:
        problem = row.problem or _row_problem(row, with_labels, config)
        label = None
        if problem is None and with_labels:
            label, problem = row_label(row.label, config.label_sep)
        if problem is None:
            index += 1
            if start and not seekable and index <= start.index:
                continue
            after = Position(*row.end, index) if row.end else None
            yield Example(row.text, label, row.line, row.file, after)
        elif start and not seekable and index < start.index:
            continue  # counted before the resume
        elif config.on_bad_row == "skip":
            skipped[problem[0]] = skipped.get(problem[0], 0) + 1
        else:
            raise DataError(row.file or path, row.line, problem[1])


def column_names(path: str | Path, config: SourceConfig | None = None) -> list[str]:
    """The columns a labelled file offers: a CSV/TSV header's names (indices without a header), a
    JSONL file's first object's keys; [] for other sources or an unreadable first row. For hints.

    Example:
        >>> column_names("reviews.csv")
        ['id', 'review', 'stars']
    """
    config = config or SourceConfig()
    fmt = file_format(path)
    if fmt not in ("csv", "tsv", "jsonl"):
        return []
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            first = f.readline(config.max_chars)
    except OSError:
        return []
    if fmt == "jsonl":
        try:
            row = json.loads(first)
        except ValueError:
            return []
        return [str(key) for key in row] if isinstance(row, dict) else []
    fields = next(csv.reader([first], delimiter="\t" if fmt == "tsv" else ","), [])
    return [name.strip() for name in fields] if config.header else [str(i) for i in range(len(fields))]


def read_texts(path: str | Path, config: SourceConfig | None = None, skipped: dict[str, int] | None = None) -> Iterator[str]:
    """Stream just the texts of a source (labels, if any, are ignored); rows skipped under
    ``on_bad_row="skip"`` are counted in ``skipped`` (reason -> count) when it is given."""
    for example in read_examples(path, with_labels=False, config=config, skipped={} if skipped is None else skipped):
        yield example.text


class InputRow(NamedTuple):
    """One row of prediction input: its ``text``, or ``problem`` (reason, message) and an empty text."""

    line: int | None
    text: str
    problem: tuple[str, str] | None
    file: str


def read_input_blocks(path: str | Path | None, config: SourceConfig | None = None, size: int = 1024) -> Iterator[list[InputRow]]:
    """Every row of unlabelled input in order, bad ones included (so each can get an output line), ``size`` at a time.

    ``path=None`` reads stdin, one text per line, under the same ``max_chars`` limit as a file.
    Lines (a ``.txt`` file, stdin) are read a block at a time, not through a generator per row.

    Example:
        >>> [row.problem for row in next(read_input_blocks("texts.txt"))][:2]
        [None, ('empty text', 'empty text')]
    """
    config = config or SourceConfig()
    if path is None:
        yield from _line_blocks(sys.stdin.buffer, 4 * config.max_chars + 4096, "<stdin>", config, size)
    elif file_format(path) == "txt":
        f, max_bytes = open_lines(path, config.max_chars)
        with f:
            yield from _line_blocks(f, max_bytes, str(path), config, size)
    else:
        fmt = file_format(path)
        rows = (_input_row(row, row.problem or _row_problem(row, False, config), str(path)) for row in READERS[fmt](path, fmt, config, False))
        while block := list(itertools.islice(rows, size)):
            yield block


def _line_blocks(f: IO[bytes], max_bytes: int, name: str, config: SourceConfig, size: int) -> Iterator[list[InputRow]]:
    lines, over = Lines(f, max_bytes), too_long(config.max_chars)
    while block := lines.take(size):
        rows = []
        for line, raw in enumerate(block, start=lines.line - len(block) + 1):
            text = "" if raw is None else raw.rstrip("\r\n")
            problem = over if raw is None else _problem(text, "", False, config.max_chars)
            rows.append(InputRow(line, "" if problem else text, problem, name))
        yield rows


def _input_row(row: Row, problem: tuple[str, str] | None, name: str) -> InputRow:
    return InputRow(row.line, "" if problem else row.text, problem, row.file or name)


def row_label(raw: str | tuple[str, ...] | None, label_sep: str | None) -> tuple[str | tuple[str, ...] | None, tuple[str, str] | None]:
    """A row's label as a reader found it -> ``(label, None)``, or ``(None, problem)``.

    One label a row (``label_sep`` None): a stripped string (" DESC" and "DESC" are one class).
    Multi-label: a sorted tuple of distinct stripped labels; an empty cell is the empty set.

    Example:
        >>> row_label(" sports| news ", "|")
        (('news', 'sports'), None)
    """
    if label_sep is None:
        if isinstance(raw, tuple):
            if len(raw) != 1:
                return None, (("missing label", "missing label: no __label__NAME word (fastText's format), or an empty list") if not raw
                              else ("several labels", f"{len(raw)} labels in one row; train with --multi-label"))
            raw = raw[0]
        return (raw.strip(), None) if raw and raw.strip() else (None, ("missing label", "missing label"))
    if raw is None:
        return None, ("missing label", "missing label")
    labels = [label.strip() for label in (raw.split(label_sep) if isinstance(raw, str) else raw)]
    if isinstance(raw, str) and not raw.strip():
        labels = []  # an empty cell: a text with none of the labels
    if not all(labels):
        return None, ("empty label", f"an empty label in {raw!r} (labels are split on {label_sep!r})")
    return tuple(sorted(set(labels))), None


def _row_problem(row: Row, with_labels: bool, config: SourceConfig) -> tuple[str, str] | None:
    label = row.label if isinstance(row.label, str) else " ".join(row.label or ())
    return _problem(row.text, label, with_labels and config.label_sep is None and not isinstance(row.label, tuple), config.max_chars)


def _problem(text: str, label: str, with_labels: bool, max_chars: int) -> tuple[str, str] | None:
    # The reader decodes with "surrogateescape": a byte that is not UTF-8 becomes a lone surrogate.
    if not (text.isascii() or _is_utf8(text)) or not (label.isascii() or _is_utf8(label)):
        return "undecodable bytes", "bytes that are not valid UTF-8 (save the file as UTF-8)"
    if "\x00" in text or "\x00" in label:
        return "NUL byte", "NUL byte in the row (a binary or UTF-16 file?)"
    if not text.strip():
        return "empty text", "empty text"
    if len(text) > max_chars:
        return "text too long", f"text of {len(text):,} characters is over the {max_chars:,}-character limit (max_chars, --max-chars)"
    if with_labels and not label.strip():
        return "missing label", "missing label"
    return None


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
