"""``python -m textpipe`` (or ``textpipe``): train, evaluate, predict.

Exit status: 0 success, 2 bad input or usage (the message names the file and
line), 1 an internal error.

    python -m textpipe train --dataset rotten_tomatoes --out runs/default
    python -m textpipe train --train train.csv --test test.csv --out runs/mine
    python -m textpipe train --resume runs/mine          # finish a run that was stopped or killed
    python -m textpipe evaluate --model runs/mine --data test.csv
    python -m textpipe predict --model runs/mine "a gorgeous, witty, seductive movie."
    python -m textpipe predict --model runs/mine --input texts.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .bundle import BundleError
from .checkpoint import CheckpointError
from .datasets import rotten_tomatoes
from .models import MODELS, ModelConfig
from .pipeline import DataConfig, OutputError, PipelineConfig, evaluate_file, resume_run, train_files
from .predict import Predictor
from .sources import DataError, SourceConfig, read_texts
from .tokenizer import TOKENIZERS, TokenizerConfig
from .train import TrainConfig, TrainingInterrupted

DATASETS = {"rotten_tomatoes": rotten_tomatoes}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a classifier and save a bundle")
    src = t.add_argument_group("data (give --dataset, or --train and --test)")
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a named dataset, fetched and cached under data/")
    src.add_argument("--train", type=Path, help="labelled training file (.csv with label,text header, .tsv, .jsonl)")
    src.add_argument("--test", type=Path, help="labelled test file, scored once after training")
    src.add_argument("--dev", type=Path, help="labelled dev file for early stopping (default: hold out about 1 training row in 10)")
    t.add_argument("--out", type=Path, help="folder for the bundle, metrics.json, run.json and checkpoints/")
    t.add_argument("--resume", type=Path, metavar="DIR", help="finish the run whose --out was DIR from its newest checkpoint (no other flag needed)")
    t.add_argument("--model", default=ModelConfig.name, choices=sorted(MODELS), help="model architecture (default: %(default)s)")
    t.add_argument("--tokenizer", default=TokenizerConfig.name, choices=TOKENIZERS, help="tokenizer (default: %(default)s)")
    t.add_argument("--no-lower", action="store_true", help="keep case (spacy and whitespace tokenizers)")
    t.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="maximum epochs (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="training batch size (default: %(default)s)")
    t.add_argument("--lr", type=float, default=TrainConfig.lr, help="learning rate (default: %(default)s)")
    t.add_argument("--seed", type=int, default=TrainConfig.seed, help="random seed (default: %(default)s)")
    t.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, metavar="N", help="also checkpoint every N steps (default: %(default)s = at each epoch's end only)")
    t.add_argument("--keep-checkpoints", type=int, default=TrainConfig.keep_checkpoints, metavar="K", help="newest checkpoints to keep besides best.pt (default: %(default)s)")
    t.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True): same seed, same data -> same weights on any run")
    t.add_argument("--num-workers", type=int, default=DataConfig.num_workers, help="DataLoader worker processes (default: %(default)s)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    add_source_arguments(t)

    e = sub.add_parser("evaluate", help="score a saved bundle on a labelled file")
    e.add_argument("--model", type=Path, required=True, help="bundle folder written by train")
    e.add_argument("--data", type=Path, required=True, help="labelled file (.csv, .tsv, .jsonl)")
    add_source_arguments(e)

    p = sub.add_parser("predict", help="label texts with a saved bundle (one JSON line per text)")
    p.add_argument("--model", type=Path, required=True, help="bundle folder written by train")
    p.add_argument("texts", nargs="*", help="texts to label")
    p.add_argument("--input", type=Path, help="file of texts: .txt (one per line), or .csv/.tsv/.jsonl with a text column")
    p.add_argument("--top-k", type=int, default=None, help="keep only the k most likely classes in probs")
    return parser


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("reading the data (--train/--test/--dev/--data: a file, a folder per class, or torchtext:NAME/SPLIT)")
    g.add_argument("--on-bad-row", choices=("error", "skip"), default="error", help="stop at the first bad row, or skip and count bad rows (default: %(default)s)")
    g.add_argument("--text-columns", default="text", help="comma-separated text column names, or 0-based indices with --no-header; joined with a space (default: %(default)s)")
    g.add_argument("--label-column", default="label", help="label column name, or index with --no-header (default: %(default)s)")
    g.add_argument("--no-header", action="store_true", help="CSV/TSV files have no header row")
    g.add_argument("--max-chars", type=int, default=SourceConfig.max_chars, help="a longer text is a bad row (default: %(default)s)")
    g.add_argument("--data-root", default=SourceConfig.root, help="folder of torchtext:NAME datasets (default: %(default)s)")


def source_config(args: argparse.Namespace) -> SourceConfig:
    column = lambda c: int(c) if args.no_header and c.strip().isdigit() else c.strip()  # noqa: E731
    try:
        return SourceConfig(
            text_columns=[column(c) for c in args.text_columns.split(",")], label_column=column(args.label_column),
            header=not args.no_header, on_bad_row=args.on_bad_row, max_chars=args.max_chars, root=args.data_root,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None


def print_skipped(skipped: dict) -> None:
    """One line per file, on stderr: how many rows were skipped and why."""
    for part, reasons in skipped.items():
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        print(f"skipped {sum(reasons.values())} {part} rows" + (f": {detail}" if detail else ""), file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        if args.dataset or args.train or args.test or args.out:
            raise UsageError("--resume DIR takes the data and settings from DIR/run.json; give no --dataset/--train/--test/--out")
        report_training(resume_run(args.resume, quiet=args.quiet), args.resume, time.perf_counter())
        return
    if not args.out:
        raise UsageError("give --out DIR (where the bundle goes), or --resume DIR")
    if args.dataset:
        if args.train or args.test:
            raise UsageError("give either --dataset or --train/--test, not both")
        splits = DATASETS[args.dataset]()
        train, dev, test = splits.train, splits.dev, splits.test
    elif args.train and args.test:
        train, dev, test = args.train, args.dev, args.test
    else:
        raise UsageError("give --train and --test (or --dataset NAME)")
    try:
        config = PipelineConfig(
            tokenizer=TokenizerConfig(args.tokenizer, lower=not args.no_lower),
            data=DataConfig(num_workers=args.num_workers, source=source_config(args)),
            model=ModelConfig(name=args.model),
            train=TrainConfig(
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, deterministic=args.deterministic,
            ),
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    start = time.perf_counter()
    report_training(train_files(train, test, args.out, dev=dev, config=config, quiet=args.quiet), args.out, start)


def report_training(metrics: dict, out: Path, start: float) -> None:
    test_metrics = metrics["test"]
    print(
        f"test accuracy {test_metrics['accuracy']:.4f}  macro-F1 {test_metrics['macro_f1']:.4f}  "
        f"(n={test_metrics['n']}, best epoch {metrics['best_epoch']}, {time.perf_counter() - start:.1f}s)"
    )
    print(f"model bundle: {out}")
    print_skipped(metrics.get("skipped", {}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    metrics = evaluate_file(args.model, args.data, source=source_config(args))
    print(json.dumps(metrics))
    print_skipped({"evaluated": metrics["skipped"]} if "skipped" in metrics else {})


def cmd_predict(args: argparse.Namespace) -> None:
    texts = list(args.texts)
    if args.input:
        texts += list(read_texts(args.input))
    if not texts:
        raise UsageError("give texts to label, or --input FILE")
    for result in Predictor.load(args.model).predict(texts, top_k=args.top_k):
        print(json.dumps(result, ensure_ascii=False))


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}[args.command]
    try:
        command(args)
    except (DataError, UsageError, FileNotFoundError, OutputError, CheckpointError, BundleError) as err:
        print(f"textpipe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        out = args.resume or args.out
        print(f"textpipe train: {err}\nresume with: textpipe train --resume {out}", file=sys.stderr)
        return 130 if err.signal_name == "SIGINT" else 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
