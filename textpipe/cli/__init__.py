"""``textpipe`` (or ``python -m textpipe``): the command line; it only composes the stages.

    textpipe train --train train.csv --test test.csv --out runs/mine
    textpipe predict --model runs/mine "a gorgeous, witty, seductive movie."
    textpipe --help                                   # every command (parser.USAGE)

``parser.py`` holds every command's flags; ``train``, ``predict`` (predict, embed, evaluate),
``data`` (vocab, datasets, vectors) and ``bundles`` (info, quantize, serve) each turn a
command's flags into calls of textpipe's modules. Here: :func:`main` and :data:`EXIT_CODES`,
the table of textpipe's own errors and what the user sees for each. Any other exception is
a bug in textpipe and is not dressed up as bad input: it propagates (a traceback, exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from ..bundle.store import BundleError
from ..core.checkpoint import CheckpointError, OutputError
from ..run.config import ConfigError, SettingsError
from ..core.files import InputFileError, is_disk_full
from ..bundle.serve import ServeError
from ..text.sources import DataError
from ..run.folder import STAGE
from ..core.runtime import Interrupted
from ..core.train import TrainingDiverged
from .errors import CommandFailed, UsageError, data_hint, free_space_hint, resume_command
from .parser import build_parser, parse_args
from .streams import atomic_output

__all__ = ["main", "EXIT_CODES", "UsageError", "CommandFailed", "atomic_output", "resume_command", "build_parser"]

Hint = Callable[[Exception, argparse.Namespace], "str | None"]
no_hint: Hint = lambda err, args: None  # noqa: E731
own_hint: Hint = lambda err, args: err.hint  # noqa: E731

# textpipe's own errors -> (exit status, the hint printed under the one-line message).
# 2: the user can fix it (the input, the flags, the config, free disk space); 1: the machine.
EXIT_CODES: dict[type[Exception], tuple[int, Hint]] = {
    UsageError: (2, own_hint),
    ConfigError: (2, no_hint),
    SettingsError: (2, own_hint),
    DataError: (2, data_hint),
    BundleError: (2, no_hint),
    InputFileError: (2, no_hint),
    OutputError: (2, no_hint),
    TrainingDiverged: (2, no_hint),
    ServeError: (2, no_hint),
    CheckpointError: (2, lambda err, args: free_space_hint(args)),
    CommandFailed: (1, own_hint),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 1 the machine, 2 bad input or usage; a bug raises).

    Example:
        >>> main(["info", "runs/mine", "--json"])
    """
    args = parse_args(build_parser(), argv)  # a usage error exits 2 here, with the command's usage line
    name = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    handler = log_to_stderr(quiet=getattr(args, "quiet", False))
    try:
        return run_command(args, name)
    finally:
        stop_logging(handler)


def run_command(args: argparse.Namespace, name: str) -> int:
    try:
        args.run(args)
    except tuple(EXIT_CODES) as err:
        status, hint = next(EXIT_CODES[kind] for kind in type(err).__mro__ if kind in EXIT_CODES)
        return report(name, str(err), hint(err, args), status)
    except Interrupted as err:  # the training loop's (a checkpoint saved) or between its phases
        folder = args.resume or args.out
        then = f"resume with: {resume_command(folder)}" if (Path(folder) / STAGE).is_dir() else "nothing to resume: run the command again"
        print(f"textpipe train: {err}\n{then}", file=sys.stderr)
        return 130 if err.signal_name == "SIGINT" else 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `textpipe predict ... | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")
        return 0
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):  # anything else is a bug: the traceback is what a report needs
            raise
        # torch reports a full disk as a RuntimeError: the machine, which the user can fix.
        return report(name, f"the disk is full (No space left on device): {err}", free_space_hint(args), 2)
    return 0


def report(name: str, message: str, hint: str | None, status: int) -> int:
    print(f"textpipe {name}: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    return status


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and callers may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_to_stderr(quiet: bool) -> logging.Handler:
    """The library logs progress on the ``textpipe`` logger and prints nothing; the CLI shows it on stderr."""
    logger = logging.getLogger("textpipe")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def stop_logging(handler: logging.Handler) -> None:
    """Leave the logger as it was, for a program that calls ``main()`` and then the library."""
    logger = logging.getLogger("textpipe")
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
