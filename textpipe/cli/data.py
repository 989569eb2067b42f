"""``textpipe vocab``, ``datasets`` and ``vectors``: building and inspecting vocabularies, and
the two catalogues of named things fetched once (datasets, pretrained vectors), listed and
fetched by the same two commands."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..text.catalogue import DATASETS, Splits
from ..core.files import META, VOCAB, InputFileError, read_json_file
from ..text.tokenizer import TokenizerConfig
from .errors import CommandFailed, UsageError, check_lang_flag
from .options import source_config
from .streams import print_skipped, require_bundle


def fetching(fetch: Callable, *args):
    """``fetch(*args)``, a download or checksum failure (a RuntimeError) reported as the machine's, not the input's."""
    try:
        return fetch(*args)
    except RuntimeError as err:
        message, _, hint = str(err).partition("\nhint: ")
        raise CommandFailed(message, hint or None) from None


def fetch_bundle_encoder(bundle_dir: Path) -> Path:
    """``bundle_dir``, its sentence encoder (if it names one) fetched once and checked first: a failed download is exit 1."""
    try:  # through the safe reader: a bundle.json it refuses is left for load_bundle to refuse, naming the field
        meta = read_json_file(bundle_dir / META, what="bundle file")
    except (InputFileError, OSError):
        return bundle_dir
    encoder = meta.get("encoder") if isinstance(meta, dict) else None
    if isinstance(encoder, dict) and isinstance(encoder.get("name"), str):
        from ..text.sentence import NAMED_ENCODERS, fetch_encoder

        if encoder["name"] in NAMED_ENCODERS:  # an unknown name: load_bundle refuses it, naming the field
            fetching(fetch_encoder, encoder["name"])
    return bundle_dir


def fetch_dataset(name: str, root: Path = Path("data")) -> Splits:
    return fetching(DATASETS[name].fetch, root)


# --- the catalogues: datasets and vectors -------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """A family of named things fetched once into a cache folder: what ``list`` and ``fetch`` need to know.

    Example:
        >>> CATALOGUES["vectors"].cached("glove-6b-50d", Path("data"))   # None until fetched
        'cached as data/vectors/glove-6b-50d.txt'
    """

    about: Callable[[], dict[str, str]]  # name -> one line about it
    cached: Callable[[str, Path], str | None]  # name, root -> where it is cached ("cached in data/x"), None if not yet
    fetch: Callable[[str, Path], list[str]]  # name, root -> fetch it; the lines to print


def dataset_lines(name: str, root: Path) -> list[str]:
    from ..text.analysis import file_stats

    splits = fetch_dataset(name, root)
    return [f"{part}\t{getattr(splits, part)}\t{file_stats(getattr(splits, part))['rows']} rows" for part in ("train", "dev", "test")]


def vectors_about() -> dict[str, str]:
    """Named word vectors and named sentence encoders: one catalogue of pretrained things."""
    from ..text.sentence import NAMED_ENCODERS
    from ..text.vectors import NAMED_VECTORS

    return {name: spec.about for name, spec in NAMED_VECTORS.items()} | {name: spec.about for name, spec in NAMED_ENCODERS.items()}


def vectors_lines(name: str, root: Path) -> list[str]:
    from ..text.sentence import NAMED_ENCODERS, fetch_encoder
    from ..text.vectors import NAMED_VECTORS, fetch_vectors

    if name in NAMED_ENCODERS:
        return [f"{name}\t{fetching(fetch_encoder, name, root)}\t{NAMED_ENCODERS[name].dim}-d sentence vectors"]
    return [f"{name}\t{fetching(fetch_vectors, name, root)}\t{NAMED_VECTORS[name].dim}-d"]


def vectors_file(name: str, root: Path) -> Path:
    """What a finished fetch leaves: the vectors' text file, or an encoder's converted weights."""
    from ..text.sentence import NAMED_ENCODERS, encoder_folder

    return encoder_folder(name, root) / "model.safetensors" if name in NAMED_ENCODERS else root / "vectors" / f"{name}.txt"


CATALOGUES = {
    "datasets": Catalogue(
        about=lambda: {name: entry.about for name, entry in DATASETS.items()},
        cached=lambda name, root: f"cached in {root / name}" if (root / name / "train.csv").is_file() else None,
        fetch=dataset_lines,
    ),
    "vectors": Catalogue(
        about=vectors_about,
        cached=lambda name, root: f"cached as {vectors_file(name, root)}" if vectors_file(name, root).is_file() else None,
        fetch=vectors_lines,
    ),
}


def cmd_catalogue_list(args: argparse.Namespace) -> None:
    catalogue = CATALOGUES[args.command]
    for name, about in sorted(catalogue.about().items()):
        print(f"{name}\t{catalogue.cached(name, args.root) or 'not fetched yet'}\t{about}")


def cmd_catalogue_fetch(args: argparse.Namespace) -> None:
    catalogue = CATALOGUES[args.command]
    known = catalogue.about()
    if args.name not in known:
        raise UsageError(f"unknown {args.command} {args.name!r}", hint=f"named {args.command}: {', '.join(sorted(known))} (textpipe {args.command} list)")
    from ..core.files import check_folder

    check_folder(args.root)
    for line in catalogue.fetch(args.name, args.root):
        print(line)


def cmd_datasets_stats(args: argparse.Namespace) -> None:
    from ..text.analysis import file_stats

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


# --- vocab ---------------------------------------------------------------------------------------


def cmd_vocab_build(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from ..core.files import check_regular_file
    from ..text.sources import read_texts
    from ..text.tokenizer import Tokenizer
    from ..text.vocab import build_vocab, save_vocab

    if args.min_freq < 1:
        raise UsageError(f"--min-freq must be >= 1, got {args.min_freq}")
    if args.max_size is not None and args.max_size <= 2:
        raise UsageError(f"--max-size must be > 2 (it counts <pad> and <unk>), got {args.max_size}")
    check_regular_file(args.out)  # before the pass over the data: a link, FIFO or folder at --out is never replaced
    tokenizer = Tokenizer(args.tokenizer, lower=args.lower, lang=check_lang_flag(args.lang, args.tokenizer))
    skipped: dict[str, int] = {}
    texts = tqdm(read_texts(args.data, source_config(args), skipped), desc="vocab", unit="row", disable=True if args.quiet else None, file=sys.stderr, leave=False)
    vocab = build_vocab(tokenizer.pipe(texts), args.min_freq, args.max_size)
    save_vocab(vocab, args.out)
    print_skipped({"vocabulary": skipped} if skipped else {})
    tokens = vocab.get_itos()
    print(f"{args.out}: {len(tokens)} tokens (<pad> and <unk> included), tokenizer {args.tokenizer}")
    print(f"top tokens: {' '.join(tokens[2 : 2 + args.top])}")


def vocab_and_tokenizer(args: argparse.Namespace):
    """The vocabulary file to show and the tokenizer for ``--data``: a bundle's own, or ``--tokenizer``."""
    from ..text.tokenizer import Tokenizer

    if args.vocab.is_dir():
        from ..bundle.store import read_meta

        meta = read_meta(require_bundle(args.vocab))
        tokenizer = Tokenizer(args.tokenizer) if args.tokenizer else Tokenizer(**meta["tokenizer"])
        return args.vocab / VOCAB, tokenizer
    if args.vocab.is_file():
        return args.vocab, Tokenizer(args.tokenizer or TokenizerConfig.name)
    raise UsageError(f"{args.vocab}: no such file or folder", hint="give a vocab.json or a bundle folder")


def cmd_vocab_show(args: argparse.Namespace) -> None:
    from ..text.vocab import load_vocab

    source = source_config(args, args.vocab if args.vocab.is_dir() else None)
    vocab_path, tokenizer = vocab_and_tokenizer(args)
    try:
        tokens = load_vocab(vocab_path).get_itos()
    except (ValueError, json.JSONDecodeError) as err:
        raise UsageError(f"{vocab_path}: not a textpipe vocabulary ({err})") from None
    report = {"vocab": str(vocab_path), "size": len(tokens), "top_tokens": tokens[2 : 2 + args.top]}
    if args.data:
        from ..text.analysis import vocab_coverage

        report.update(data=str(args.data), tokenizer=tokenizer.name, **vocab_coverage(tokens, tokenizer, args.data, args.top, source))
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
