"""JSONL rows: one JSON object per line; the text and label columns are keys.

Example:
    >>> rows = list(read_jsonl("train.jsonl", "jsonl", SourceConfig(), with_labels=True))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .reading import DataError, Lines, Row, line_records, open_lines, too_long

if TYPE_CHECKING:
    from .sources import SourceConfig

_NOT_A_LABEL = object()


def read_jsonl(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool, start=None) -> Iterator[Row]:
    """The rows of a JSONL file, from ``start`` (a row's ``end`` position) when given."""
    if any(isinstance(c, int) for c in [*config.text_columns, config.label_column]):
        raise DataError(path, None, "JSONL columns are keys, not indices; set text_columns/label_column to names")
    f, max_bytes = open_lines(path, config.max_chars)
    with f:
        lines = Lines(f, max_bytes)
        lines.seek(start)
        for line, raw in line_records(lines):
            if raw is None:
                yield Row(line, problem=too_long(config.max_chars))
            elif raw.strip():
                yield _row(raw, line, config, lines.end)


def _row(raw: str, line: int, config: SourceConfig, end: tuple[int, int]) -> Row:
    """The row of one line, or its problem."""
    try:
        obj = json.loads(raw.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        return Row(line, problem=("invalid JSON", f"invalid JSON ({err.msg} at column {err.colno})"))
    except RecursionError:
        return Row(line, problem=("invalid JSON", "invalid JSON (nested too deeply)"))
    except ValueError:  # Python reads no integer of over 4,300 digits
        return Row(line, problem=("invalid JSON", "invalid JSON (a number of over 4,300 digits)"))
    texts = [obj.get(c) for c in config.text_columns] if isinstance(obj, dict) else [None]
    if not all(isinstance(t, str) for t in texts):
        keys = " and ".join(repr(c) for c in config.text_columns)
        return Row(line, problem=("wrong columns", f"expected a JSON object with a string {keys}"))
    label = _json_label(obj.get(config.label_column))
    if label is _NOT_A_LABEL:
        found = _shown(obj.get(config.label_column))
        return Row(line, problem=("bad label", f"the label {config.label_column!r} must be a string, an integer or a list of them, got {found}"))
    return Row(line, " ".join(texts), label, end=end)


def _shown(value) -> str:
    """The start of a bad label as the message shows it (a list or object nested too deep for ``json.dumps``: its kind)."""
    try:
        return json.dumps(value)[:60]
    except (RecursionError, ValueError):
        return "a JSON list" if isinstance(value, list) else "a JSON object"


def _json_label(value):
    """A JSON label as a string: ``1`` and ``1.0`` are both ``"1"``; a list of labels as a tuple of them
    (a multi-label row); a bool, a fraction, a nested list or an object is not a label."""
    if isinstance(value, list):
        labels = tuple(_json_label(v) if not isinstance(v, list) else _NOT_A_LABEL for v in value)
        return _NOT_A_LABEL if any(label is _NOT_A_LABEL or label is None for label in labels) else labels
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _NOT_A_LABEL
    if isinstance(value, float) and not value.is_integer():
        return _NOT_A_LABEL
    return str(int(value))
