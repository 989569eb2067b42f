"""Rows of the other sources: ``.txt`` (one text per line, no labels; stdin too),
a folder with one subfolder per label, and ``torchtext.datasets``.

Example:
    >>> rows = list(read_folder("aclImdb/train", "folder", SourceConfig(), with_labels=True))
"""

from __future__ import annotations

import codecs
import stat
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

from .reading import DataError, Lines, Row, line_records, open_lines, too_long

if TYPE_CHECKING:
    from .sources import SourceConfig

TORCHTEXT_PREFIX = "torchtext:"
# torchtext.datasets readers, and where each puts the label and the text in the tuples it yields.
TORCHTEXT_DATASETS = {
    "AG_NEWS": "label,text", "IMDB": "label,text", "SST2": "text,label",
    "YelpReviewPolarity": "label,text", "DBpedia": "label,text", "AmazonReviewPolarity": "label,text",
}
NOT_A_CLASS = ("unsup",)  # aclImdb's unlabelled reviews sit beside pos/ and neg/


FASTTEXT_LABEL = "__label__"


def read_txt(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool, start=None) -> Iterator[Row]:
    """One text per line of a ``.txt`` file, from ``start`` (a row's ``end`` position) when given.

    With labels the lines are fastText's: ``__label__a __label__b the text`` (the labels
    are the ``__label__`` words the line starts with; a line may have none).
    """
    f, max_bytes = open_lines(path, config.max_chars)
    with f:
        rows = txt_rows(f, max_bytes, config.max_chars, start)
        yield from (map(fasttext_row, rows) if with_labels else rows)


def fasttext_row(row: Row) -> Row:
    """A fastText line's leading ``__label__NAME`` words as its label tuple, the rest as its text."""
    if row.text is None:
        return row
    words, labels = row.text.split(" "), []
    while words and words[0].startswith(FASTTEXT_LABEL):
        labels.append(words.pop(0).removeprefix(FASTTEXT_LABEL))
    return row._replace(text=" ".join(words), label=tuple(labels))


def txt_rows(f: IO[bytes], max_bytes: int, max_chars: int, start=None) -> Iterator[Row]:
    """One text per line of a binary stream (a file, or stdin)."""
    lines = Lines(f, max_bytes)
    lines.seek(start)
    for line, raw in line_records(lines):
        yield Row(line, problem=too_long(max_chars)) if raw is None else Row(line, raw.rstrip("\r\n"), end=lines.end)


def read_folder(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool) -> Iterator[Row]:
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
                yield _read_one_file(files[label][i], label, max_bytes, config.max_chars)


def _read_one_file(file: Path, label: str, max_bytes: int, max_chars: int) -> Row:
    try:
        if not stat.S_ISREG(file.stat().st_mode):  # a FIFO or a device would block the read forever
            return Row(None, problem=("not a regular file", "not a regular file (a pipe, device or socket)"), file=str(file))
        if file.stat().st_size > max_bytes:
            return Row(None, problem=too_long(max_chars), file=str(file))
        data = file.read_bytes()
    except OSError as err:  # a dangling link, no permission
        return Row(None, problem=("unreadable file", f"unreadable ({err.strerror or err})"), file=str(file))
    text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8", "surrogateescape")
    return Row(None, text.strip(), label, file=str(file))


def read_torchtext(path: str | Path, fmt: str, config: SourceConfig, with_labels: bool) -> Iterator[Row]:
    """The rows of ``torchtext:NAME/SPLIT``, a ``torchtext.datasets`` dataset under ``config.root``."""
    spec = str(path)
    name, _, split = spec[len(TORCHTEXT_PREFIX):].partition("/")
    if name not in TORCHTEXT_DATASETS or not split:
        raise DataError(spec, None, f"use torchtext:NAME/SPLIT with NAME one of {', '.join(TORCHTEXT_DATASETS)} (for example torchtext:AG_NEWS/train)")
    from . import _torchtext  # noqa: F401(silences torchtext's import warning)

    order = TORCHTEXT_DATASETS[name].split(",")
    try:
        with warnings.catch_warnings():  # torchdata warns on import that its datapipes are deprecated
            warnings.filterwarnings("ignore", message="(?s).*datapipes.*deprecated", category=UserWarning)
            import torchtext.datasets

            rows = getattr(torchtext.datasets, name)(root=config.root, split=split)
        for line, item in enumerate(rows, start=1):
            fields_ = dict(zip(order, item))
            label = fields_.get("label")
            yield Row(line, fields_.get("text"), None if label is None else str(label))
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        # torchtext's own failures (no network, a bad checksum, an unknown split), in one line.
        first = next((s for s in str(err).splitlines() if s.strip()), "")
        where = Path(config.root) / "datasets" / name
        problem = f"torchtext could not read {name} {split!r} ({type(err).__name__}: {first.strip()}); offline, its downloaded files belong in {where}/"
        raise DataError(spec, None, problem) from None
