"""``textpipe train``: flags -> config -> :func:`textpipe.run.phases.train_files` (or ``resume_run``, ``autotune_files``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..run.config import PipelineConfig, config_toml
from .data import fetch_dataset, fetching
from .errors import UsageError, check_lang_flag
from .options import config_from_args
from .streams import print_skipped


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        return resume(args)
    config = config_from_args(args)
    if args.print_config:
        print(config_toml(config), end="")
        return
    if not args.out:
        raise UsageError("give --out DIR, the folder for the bundle and the report", hint="e.g. --out runs/mine")
    train, dev, test = data_files(args)
    check_runnable(config)  # the library checks the rest (SettingsError, DataError: EXIT_CODES)
    if args.autotune is not None:
        from ..run.autotune import autotune_files

        metrics = autotune_files(train, test, args.out, dev=dev, config=config, budget=args.autotune, quiet=args.quiet, overwrite=args.overwrite)
    else:
        from ..run.phases import train_files

        metrics = train_files(train, test, args.out, dev=dev, config=config, quiet=args.quiet, overwrite=args.overwrite)
    report_training(metrics, args.out)


def resume(args: argparse.Namespace) -> None:
    """``--resume DIR``: the data and settings come from DIR/run.json, so no other may be given."""
    given = flags_given(args, keep=("resume", "quiet"))
    if given:
        raise UsageError(f"--resume DIR takes the data and settings from DIR/run.json, so it would ignore {', '.join(given)}; drop them",
                         hint=f"to change them, start a new run: textpipe train ... --out {args.resume} --overwrite")
    from ..run.phases import resume_run

    report_training(resume_run(args.resume, quiet=args.quiet), args.resume)


def flags_given(args: argparse.Namespace, keep: tuple[str, ...]) -> list[str]:
    """Every flag of the command that was given (its value is not the default), but those whose dest is in ``keep``.

    Read from the command's own parser, so a flag added later is covered without a list here."""
    given = {}
    for action in args.parser._actions:
        if not action.option_strings or action.dest in keep or action.dest == "help" or action.dest not in args:
            continue
        if action.default == argparse.SUPPRESS or getattr(args, action.dest) != action.default:
            given.setdefault(action.dest, action.option_strings[0])
    return list(given.values())


def check_runnable(config: PipelineConfig) -> None:
    """What only the command line checks before training: the language flag, the encoder fetched (exit 1 if it cannot be)."""
    check_lang_flag(config.tokenizer.lang, config.tokenizer.name)
    if config.model.encoder:  # fetched (once) and checked before any training: a failed download is exit 1, not a traceback
        from ..text.sentence import fetch_encoder

        fetching(fetch_encoder, config.model.encoder)


def data_files(args: argparse.Namespace) -> tuple:
    """``(train, dev, test)``: the splits of ``--dataset``, or ``--train`` / ``--dev`` / ``--test``."""
    if args.dataset:
        if args.train or args.test:
            raise UsageError("give either --dataset or --train/--test, not both")
        splits = fetch_dataset(args.dataset)
        return splits.train, splits.dev, splits.test
    if args.train:
        return args.train, args.dev, args.test
    raise UsageError("give --train FILE (and --test FILE), or --dataset NAME", hint="textpipe train --train my_train.csv --test my_test.csv --out runs/mine")


def report_training(metrics: dict, out: Path) -> None:
    scored = metrics["overall"]
    refit = metrics.get("refit")
    trained = f"best epoch {metrics['best_epoch']}" + (f", refit on {refit['rows']} rows" if refit else "")
    what = "test" if metrics.get("test") else "dev"
    if "micro_f1" in scored:  # multi-label: label sets, scored per label and as whole sets
        print(f"{what} micro-F1 {scored['micro_f1']:.4f}  macro-F1 {scored['macro_f1']:.4f}  subset accuracy {scored['subset_accuracy']:.4f}  "
              f"(n={scored['n']}, {trained})")
    else:
        print(f"{what} accuracy {scored['accuracy']:.4f}  macro-F1 {scored['macro_f1']:.4f}  (n={scored['n']}, {trained})")
    if what == "dev":
        print(f"no --test file: scored on the {metrics.get('scored_on', 'dev data')}, which chose the epoch (a little optimistic)")
    print(f"report: {Path(out) / 'report.md'}")
    print(f"model bundle: {out}")
    print_skipped(metrics.get("skipped", {}))
