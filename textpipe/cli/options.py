"""Flags -> config: defaults < the ``--config`` file < ``--set`` items < explicit flags, read by
:func:`textpipe.run.config.load` (the one loader) into a :class:`~textpipe.run.config.PipelineConfig`."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from ..run.config import PipelineConfig, SourceConfig, load, read_file
from ..core.files import CONFIG, JSON_MAX_DEPTH, json_depth
from .errors import UsageError

def config_keys(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    """Flag dest -> the config key it overrides, as each flag declares it (parser.config_flag)."""
    return {action.dest: action.config_key for action in parser._actions if hasattr(action, "config_key")}


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """defaults < the --config file < --set items < explicit flags."""
    d = read_file(args.config) if args.config else {}
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
    for dest, (section, key) in config_keys(args.parser).items():
        if dest in given:
            none = dest == "vectors" and given[dest].lower() == "none"  # --vectors none: train without the default's vectors
            d.setdefault(section, {})[key] = None if none else given[dest]
            sources.append("flags")
    if source_flags(args):
        d.setdefault("data", {}).setdefault("source", {}).update(source_flags(args))
        sources.append("flags")
    return load(PipelineConfig, d, " + ".join(dict.fromkeys(sources)) or "config")


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
    except (ValueError, RecursionError):  # an integer of over 4,300 digits, lists nested too deep to read
        raise UsageError(f"--set {name.strip()}: the value cannot be read (a number too long, or nested too deeply)") from None
    if json_depth(value) > JSON_MAX_DEPTH:
        raise UsageError(f"--set {name.strip()}: the value is nested more than {JSON_MAX_DEPTH} deep")
    return section, key.strip(), value


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
    if "label_sep" in given and "multi_label" not in given:
        raise UsageError("--label-sep splits multi-label cells: give --multi-label too")
    if "multi_label" in given:
        d["label_sep"] = given.get("label_sep", "|")
    return d


def source_config(args: argparse.Namespace, bundle: Path | None = None) -> SourceConfig:
    """The reading flags given, over the bundle's own ``data.source`` (how its training file was read)."""
    from ..bundle.describe import saved_config

    saved = saved_config(bundle).get("data", {}).get("source", {}) if bundle is not None else {}
    # Columns, header and length limit describe the files; what to do with a bad row, and
    # where the named datasets live, are this command's business.
    kept = {k: v for k, v in saved.items() if k not in ("root", "on_bad_row")}
    if bundle is not None and "multi_label" in vars(args) and kept.get("label_sep") is None:
        raise UsageError(f"{bundle} is a single-label model: --multi-label and --label-sep are for a model trained with --multi-label")
    if kept:  # the bundle's own settings are checked as its file's, so a bad one is named there
        load(SourceConfig, kept, str(bundle / CONFIG), "data.source")
    return load(SourceConfig, {**kept, **source_flags(args)}, "flags", "data.source")
