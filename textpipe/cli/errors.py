"""What the user sees when a command cannot do its work: the CLI's own errors, and the hints
that turn textpipe's errors into what to type next."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shlex
import sys
from pathlib import Path

from ..sources import DataError


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
        return "--on-bad-row skip skips such rows and counts them"
    return None


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
    return f"name the columns: {flags}"
