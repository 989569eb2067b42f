"""What the user sees when a command cannot do its work: the CLI's own errors, and the hints
that turn textpipe's errors into what to type next."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import sys
from pathlib import Path

from ..text.sources import DataError, SourceConfig


class CommandError(Exception):
    """A command's own error: a one-line message and a ``hint`` saying what to do instead.

    Example:
        >>> err = UsageError("give --out DIR", hint="e.g. --out runs/mine")
        >>> err.hint
        'e.g. --out runs/mine'
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class UsageError(CommandError):
    """Bad input or usage (exit status 2).

    Example:
        >>> raise UsageError("--top-k must be >= 1, got 0", hint="give --top-k 1 or more")
    """


class CommandFailed(CommandError):
    """The command could not do its work for a reason outside the input, e.g. a failed download (exit status 1).

    Example:
        >>> raise CommandFailed("pip download failed", hint="check the network, or put the wheel in data/downloads")
    """


# The Makefile's variables for flags (Makefile); any other flag goes into ARGS="...".
MAKE_VARIABLES = {"--train": "TRAIN", "--test": "TEST", "--dev": "DEV", "--out": "OUT", "--config": "CONFIG", "--model": "MODEL",
                  "--input": "INPUT", "--format": "FORMAT", "--data": "TEST", "--host": "HOST", "--port": "PORT"}


def under_make() -> bool:
    """Whether make runs this command (make puts MAKELEVEL in its recipes' environment)."""
    return "MAKELEVEL" in os.environ


def typed(flags: str) -> str:
    """``flags`` as the user types them: as they are, or, under make, as make's variables.

    Example:
        >>> typed("--text-columns review --dev FILE")   # under make
        'DEV=FILE ARGS="--text-columns review"'
    """
    if not under_make():
        return flags
    words, variables, rest = shlex.split(flags), [], []
    while words:
        word = words.pop(0)
        if word in MAKE_VARIABLES and words:
            variables.append(f"{MAKE_VARIABLES[word]}={shlex.quote(words.pop(0))}")
        else:
            rest.append(shlex.quote(word))
    return " ".join(variables + ([f'ARGS="{" ".join(rest)}"'] if rest else []))


def check_lang_flag(lang: str, tokenizer: str) -> str:
    """``lang``, once spaCy is known to make a blank tokenizer for it; else a usage error naming the flag."""
    if lang == "en":
        return lang
    if tokenizer != "spacy":
        raise UsageError(f"--lang {lang} works with the spacy tokenizer, not {tokenizer}", hint="drop --tokenizer, or --lang")
    from ..text.tokenizer import check_lang

    try:
        check_lang(lang)
    except ValueError as err:
        raise UsageError(str(err).replace("tokenizer.lang", "--lang"), hint="xx: spaCy's tokenizer for many languages") from None
    return lang


def resume_command(out: Path) -> str:
    """A resume command that works as printed: this Python's ``-m textpipe`` (``textpipe`` may not be on PATH)."""
    command = f"{shlex.quote(sys.executable)} -m textpipe train --resume {shlex.quote(str(out))}"
    if Path("Makefile").is_file() and "resume:" in Path("Makefile").read_text(encoding="utf-8", errors="replace"):
        command += f"   (or: make resume OUT={shlex.quote(str(out))})"
    return command


def run_folder(args: argparse.Namespace) -> Path | None:
    """The folder of the training run a command works on (what ``--resume`` would be given), if any."""
    return getattr(args, "resume", None) or (getattr(args, "out", None) if args.command == "train" else None)


def free_space_hint(args: argparse.Namespace) -> str:
    run = run_folder(args)
    return f"free some space, then: {resume_command(run)}" if run else "free some space and run the command again"


TEXT_NAMES = ("text", "review", "sentence", "content", "body", "comment", "message", "document", "tweet", "question", "title", "utterance")
ID_NAMES = ("id", "idx", "index", "key", "uid", "uuid", "row", "row_id")
LABEL_NAMES = ("label", "sentiment", "class", "category", "target", "y", "stars", "rating", "polarity", "intent", "topic", "tag", "labels")


def data_hint(err: DataError, args: argparse.Namespace) -> str | None:
    """What to do about a data error, where the fix is a flag: the header's own column names, or skipping bad rows."""
    problem = err.problem or ""
    found = re.search(r"\(found: (.*)\)$", problem)
    with_label = args.command not in ("predict", "embed", "vocab")
    if problem.startswith("header has no") and found:
        return column_hint([name.strip() for name in found.group(1).split(",")], with_label)
    if problem.startswith("expected a JSON object with a string") and err.line:
        keys = jsonl_keys(Path(err.path), err.line)
        return column_hint(keys, with_label) if keys else None
    if problem == "empty text" and args.command in ("train", "evaluate"):
        return f"{typed('--on-bad-row skip')} skips such rows and counts them"
    if problem.startswith("too few rows to hold any out"):
        return f"give a dev file: {typed('--dev FILE')}"
    columns = re.search(r"\(columns: (.*)\)$", problem)
    if columns and "look like another column" in problem:
        return labels_hint([name.strip() for name in columns.group(1).split(",")], args)
    return None


def labels_hint(names: list[str], args: argparse.Namespace) -> str:
    """The file's columns, the flags naming another one as the labels, and the flag keeping these labels."""
    source = SourceConfig()
    texts = str(getattr(args, "text_columns", ",".join(source.text_columns)))
    used = {str(getattr(args, "label_column", source.label_column)).lower(), *texts.lower().split(",")}
    others = [name for name in names if name.lower() not in used and name.lower() not in ID_NAMES]
    label = next((name for name in others if name.lower() in LABEL_NAMES), others[-1] if others else None)
    flags = ("--text-columns " + texts + " " if "text_columns" in args else "") + f"--label-column {label}"
    other = f"name the label column ({typed(flags)}), or, " if label else "name the label column, or, "
    return f"the file's columns are {', '.join(names)}: {other}if these are the labels, {typed('--allow-many-labels')}"


def jsonl_keys(path: Path, line: int) -> list[str]:
    """The keys of the JSON object on ``line`` of ``path`` ([] when it is not one)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            row = json.loads(next(itertools.islice(f, line - 1, None)))
    except (OSError, StopIteration, ValueError, RecursionError):
        return []
    return [str(key) for key in row] if isinstance(row, dict) else []


def column_hint(names: list[str], with_label: bool) -> str:
    lowered = [n.lower() for n in names]
    label = next((names[lowered.index(n)] for n in LABEL_NAMES if n in lowered), names[-1] if len(names) > 1 else None)
    texts = [names[lowered.index(n)] for n in TEXT_NAMES if n in lowered and names[lowered.index(n)] != label][:1]
    texts = texts or [n for n in names if n != label][:1] or names[:1]
    flags = f"--text-columns {','.join(texts)}" + (f" --label-column {label}" if with_label and label else "")
    return f"name the columns: {typed(flags)}"
