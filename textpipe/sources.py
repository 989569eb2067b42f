"""Stage 0: files -> (text, label) examples, one row at a time.

Formats, chosen by file suffix:

- ``.csv``: comma-separated with a header naming a ``text`` and a ``label`` column
  (Python ``csv`` quoting; other columns are ignored);
- ``.tsv``: the same, tab-separated;
- ``.jsonl``: one JSON object per line with ``text`` and ``label`` keys;
- ``.txt``: one text per line, no labels (prediction input).

Rows stream from disk; nothing here holds a whole file. A bad row raises
:class:`DataError` whose message names the file, the line and the problem.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "txt"}

# Real review datasets have rows far over csv's default 128 kB field limit.
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


class Example(NamedTuple):
    text: str
    label: str | None
    line: int


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, None, f"unknown file type {suffix!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def read_examples(path: str | Path, with_labels: bool = True) -> Iterator[Example]:
    """Stream the examples of a CSV, TSV, JSONL or TXT file.

    With ``with_labels=False`` the label column may be absent and labels are ``None``.

    Example:
        >>> for ex in read_examples("data/rotten_tomatoes/train.csv"):
        ...     print(ex.line, ex.label, ex.text[:40])
        2 fresh a gorgeous, witty, seductive movie.
    """
    path = Path(path)
    fmt = file_format(path)
    if fmt == "txt" and with_labels:
        raise DataError(path, None, "a .txt file holds texts only; labelled data must be .csv, .tsv or .jsonl")
    if not path.is_file():
        raise DataError(path, None, "no such file")
    readers = {"csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl, "txt": _read_txt}
    rows = readers[fmt](path, fmt)
    try:
        for text, label, line in rows:
            if not text.strip():
                raise DataError(path, line, "empty text")
            if with_labels and not label:
                raise DataError(path, line, "missing label")
            yield Example(text, label if with_labels else None, line)
    except UnicodeDecodeError as err:
        raise DataError(path, None, f"not valid UTF-8 ({err.reason} at byte {err.start} of a chunk)") from None


def read_texts(path: str | Path) -> Iterator[str]:
    """Stream just the texts of a file (labels, if any, are ignored)."""
    for example in read_examples(path, with_labels=False):
        yield example.text


def _open(path: Path):
    # utf-8-sig drops a byte-order mark; newline="" lets csv handle CRLF and quoted newlines.
    return open(path, encoding="utf-8-sig", newline="")


def _read_delimited(path: Path, fmt: str) -> Iterator[tuple[str, str | None, int]]:
    with _open(path) as f:
        reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
        header = next(reader, None)
        if header is None:
            raise DataError(path, 1, "empty file; expected a header with 'text' and 'label' columns")
        columns = [h.strip().lower() for h in header]
        if "text" not in columns:
            raise DataError(path, 1, f"header has no 'text' column (found: {', '.join(header)})")
        text_at = columns.index("text")
        label_at = columns.index("label") if "label" in columns else None
        line = reader.line_num + 1
        try:
            for row in reader:
                if row:  # csv yields [] for a blank line
                    if len(row) != len(columns):
                        raise DataError(path, line, f"expected {len(columns)} columns, found {len(row)}")
                    yield row[text_at], (row[label_at] if label_at is not None else None), line
                line = reader.line_num + 1
        except csv.Error as err:
            raise DataError(path, line, f"malformed {fmt.upper()} ({err})") from None


def _read_jsonl(path: Path, fmt: str) -> Iterator[tuple[str, str | None, int]]:
    with _open(path) as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(path, line, f"invalid JSON ({err.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(path, line, "expected a JSON object with a string 'text'")
            label = obj.get("label")
            yield obj["text"], (None if label is None else str(label)), line


def _read_txt(path: Path, fmt: str) -> Iterator[tuple[str, None, int]]:
    with _open(path) as f:
        for line, raw in enumerate(f, start=1):
            yield raw.rstrip("\r\n"), None, line
