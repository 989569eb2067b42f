"""``textpipe predict``, ``embed`` and ``evaluate``: a bundle applied to texts or to a labelled file."""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from ..core.files import RUN, atomic_write
from ..text.sources import DataError
from .data import fetch_bundle_encoder
from .errors import UsageError
from .options import source_config
from .streams import atomic_output, check_output_folder, input_blocks, input_texts, positive, print_skipped, reads_stdin, require_bundle

# Rows read and scored at a time, so predict streams input of any length. Sorted by length in a
# bigger block, batches carry less padding, and per-block costs are paid less often.
PREDICT_CHUNK = 4096


def cmd_evaluate(args: argparse.Namespace) -> None:
    bundle_dir = fetch_bundle_encoder(require_bundle(args.model))
    positive(args.batch_size, "--batch-size")
    from ..run.pipeline import report_file

    data = args.data or recorded_test_file(bundle_dir)
    out = args.out or bundle_dir / f"eval-{Path(str(data).replace(':', '-')).stem}"
    threshold = probability(args.threshold)
    summary = report_file(bundle_dir, data, out, batch_size=args.batch_size, quiet=args.quiet, source=source_config(args, bundle_dir),
                          threshold=threshold)
    skipped = {"skipped": summary["skipped"]} if "skipped" in summary else {}
    if "multi_label" in summary:
        return print_multilabel_summary(summary, skipped, threshold, out, args.quiet)
    at = {"at_threshold": summary["calibration"]["at_threshold"]} if threshold is not None else {}
    print(json.dumps({**summary["overall"], **at, **skipped}))
    print_skipped({"evaluated": summary["skipped"]} if "skipped" in summary else {})
    if not args.quiet:
        o = summary["overall"]
        print(f"accuracy {o['accuracy']:.4f}  macro-F1 {o['macro_f1']:.4f}  ECE {o['ece']:.4f}  Brier {o['brier']:.4f}  (n={o['n']})", file=sys.stderr)
        if at:
            a = at["at_threshold"]
            accuracy = "-" if a["accuracy"] is None else f"{a['accuracy']:.4f}"
            print(f"at threshold {threshold:g}: coverage {a['coverage']:.4f} ({a['n']} rows labelled), accuracy {accuracy}", file=sys.stderr)
        print(f"report: {Path(out) / 'report.md'}", file=sys.stderr)


def print_multilabel_summary(summary: dict, skipped: dict, threshold: float | None, out, quiet: bool) -> None:
    """``evaluate``'s output for a multi-label bundle: the scores as JSON on stdout, and a line of them on stderr."""
    print(json.dumps({**summary["overall"], **skipped}))
    print_skipped({"evaluated": skipped["skipped"]} if skipped else {})
    if not quiet:
        o = summary["overall"]
        at = f"every label at {threshold:g}" if threshold is not None else "each label at its own threshold"
        print(f"micro-F1 {o['micro_f1']:.4f}  macro-F1 {o['macro_f1']:.4f}  subset accuracy {o['subset_accuracy']:.4f}  "
              f"Hamming loss {o['hamming_loss']:.4f}  (n={o['n']}, {at})", file=sys.stderr)
        print(f"report: {Path(out) / 'report.md'}", file=sys.stderr)


def probability(value: float | None) -> float | None:
    """``--threshold``: a probability from 0 to 1, or None when not given."""
    if value is not None and not 0 <= value <= 1:
        raise UsageError(f"--threshold must be a probability from 0 to 1, got {value:g}")
    return value


def recorded_test_file(bundle_dir: Path) -> str:
    """The test file of the run that trained this bundle (from its run.json), or a usage error saying what to give."""
    from ..bundle.describe import RUN_FIELDS, side_file

    test = (side_file(bundle_dir / RUN, RUN_FIELDS).get("data") or {}).get("test")
    if not isinstance(test, str) or not test:
        raise UsageError(f"{bundle_dir} records no test file of its own (trained without --test?)", hint="give the labelled file to score: --data FILE (make evaluate TEST=FILE)")
    return test


def cmd_predict(args: argparse.Namespace) -> None:
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    probability(args.threshold)
    if args.explain and args.format == "csv":
        raise UsageError("--explain works with --format json or text", hint="json gives every token's weight; text the top features")
    positive(args.batch_size, "--batch-size")
    check_output_folder(args.output)
    source = source_config(args, require_bundle(args.model))
    blocks = input_blocks(args.texts, args.input, source, PREDICT_CHUNK)
    from ..bundle.predict import Predictor

    predictor = Predictor.load(fetch_bundle_encoder(require_bundle(args.model)))
    skipped: dict[str, int] = {}
    with frozen_objects(), atomic_output(args.output) as out:
        if args.format == "csv":
            first = ["text", "labels"] if predictor.multi_label else ["text", "label", "confidence"]
            csv.writer(out).writerow([*first, *(f"p_{label}" for label in predictor.labels)])
        count = write_predictions(out, predictor, blocks, args, source.on_bad_row, skipped)
        if count == 0 and not reads_stdin(args.texts, args.input):  # empty stdin (a grep that matched nothing) is no error
            raise UsageError("no texts to label", hint="give texts as arguments, or --input FILE, or --input - to read stdin")
    print_skipped({"predicted": skipped} if skipped else {})


@contextmanager
def frozen_objects() -> Iterator[None]:
    """Inside, the objects that exist now are frozen: torch, spaCy and the model leave some 180k that live as
    long as the process, and every full collection walked them (0.5 s of labelling 100k lines). Undone after,
    for a program that calls main() and goes on."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def write_predictions(out: TextIO, predictor, blocks: Iterator[list], args: argparse.Namespace, on_bad_row: str, skipped: dict) -> int:
    """Score the rows a block at a time and write one line each, in input order; return how many."""
    from tqdm.auto import tqdm

    # text is for reading: the winner only (a multi-label text's whole set)
    top_k = 1 if args.top_k is None and args.format == "text" and not predictor.multi_label else args.top_k
    count = 0
    with tqdm(desc="predict", unit="row", disable=True if args.quiet else None, file=sys.stderr, leave=False) as bar:
        for chunk in blocks:
            count_bad_rows(chunk, on_bad_row, skipped)
            texts = [row.text for row in chunk if row.problem is None]
            probs = predictor.probabilities(texts, args.batch_size)
            out.write(block_lines(predictor, chunk, texts, probs, top_k, args))  # one write per block, not per row
            count += len(chunk)
            bar.update(len(chunk))
    return count


def count_bad_rows(chunk: list, on_bad_row: str, skipped: dict) -> None:
    """Count the bad rows (blank ones aside) in ``skipped`` by reason, or stop at the first (``on_bad_row="error"``)."""
    for row in chunk:
        if row.problem is not None and row.problem[0] != "empty text":
            if on_bad_row != "skip":
                raise DataError(row.file, row.line, row.problem[1])
            skipped[row.problem[0]] = skipped.get(row.problem[0], 0) + 1


def block_lines(predictor, chunk: list, texts: list[str], probs, top_k: int | None, args: argparse.Namespace) -> str:
    """The output lines of a block: one per row (a bad row gets ``label: null``), and the explanations asked for."""
    from ..bundle.predict import ranked, top_labels

    if predictor.multi_label:
        return label_set_lines(predictor, chunk, texts, probs, top_k, args)
    plain = args.format == "text" and not args.explain and args.threshold is None
    if plain and top_k == 1:  # the usual case: one format call per row
        return top_one_block(chunk, texts, probs, predictor.labels)
    if plain:  # formatted from the ranking: no dict per row
        return text_block(chunk, texts, *ranked(probs, predictor.labels, top_k))
    results = with_bad_rows(chunk, top_labels(texts, probs, predictor.labels, top_k, args.threshold))
    if args.explain:
        from ..bundle.explain import add_explanations

        scored = [result for result in results if result["label"] is not None]
        add_explanations(scored, predictor.explain([result["text"] for result in scored]), predictor.labels)
    return ROW_FORMATS[args.format](results, predictor.labels)


def label_set_lines(predictor, chunk: list, texts: list[str], probs, top_k: int | None, args: argparse.Namespace) -> str:
    """A multi-label block's lines: each text's label set and every label's probability (a bad row: ``labels`` null),
    with ``--explain`` an explanation per label of the set."""
    results = predictor.results(texts, probs, top_k, args.threshold)
    if args.explain:
        from ..bundle.explain import add_explanations

        add_explanations(results, predictor.explain(texts), predictor.labels)
    results = with_bad_rows(chunk, results, "labels")
    if args.format == "csv":
        return set_csv_lines(results, predictor.labels, predictor.bundle.multi_label["label_sep"])
    return json_lines(results, predictor.labels) if args.format == "json" else "".join(map(set_text_line, results))


def with_bad_rows(chunk: list, results: list[dict], key: str = "label") -> list[dict]:
    """The results of the good rows and a ``label: null`` result for each bad one (with ``skipped``: why), in input order;
    ``key="labels"`` for a multi-label bundle's results (``labels: null``)."""
    scored = iter(results)
    return [next(scored) if row.problem is None else null_result(row.problem[0], key) for row in chunk]


def null_result(reason: str, key: str = "label") -> dict:
    return {"text": "", key: None, "probs": {}} if reason == "empty text" else {"text": "", key: None, "probs": {}, "skipped": reason}


def json_lines(results: list[dict], labels: list[str]) -> str:
    return "".join(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n" for result in results)  # NaN is not JSON: never written


def csv_lines(results: list[dict], labels: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for result in results:
        probs = result["probs"]
        confidence = next(iter(probs.values())) if probs else ""  # the top probability (probs come most likely first), also where abstained
        writer.writerow([result["text"], result["label"] or "", confidence, *(probs.get(label, "") for label in labels)])
    return buffer.getvalue()


def set_csv_lines(results: list[dict], labels: list[str], label_sep: str) -> str:
    """A multi-label block as CSV rows: the text, its labels joined by the bundle's ``label_sep``, each label's probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for result in results:
        writer.writerow([result["text"], label_sep.join(result["labels"] or ()), *(result["probs"].get(label, "") for label in labels)])
    return buffer.getvalue()


def set_text_line(result: dict) -> str:
    """A multi-label result as text: its labels with their probabilities (``(none)`` for the empty set), a tab, the text;
    a bad row is an empty line with a tab, as for one label a text."""
    if result["labels"] is None:
        return "\t\n"
    chosen = ", ".join(RANKED(label, result["probs"][label]) for label in result["labels"]) or NO_LABELS
    line = f"{chosen}\t{result['text']}\n"
    for label, e in result.get("explanations", {}).items():
        features = ", ".join(f"{f['feature']} ({f['weight']:+.3f})" for f in e["top"])
        line += f"  why ({e['method']}, toward {label}): {features}\n"
    return line


def text_block(chunk: list, texts: list[str], names: list[tuple], rounded: list[tuple]) -> str:
    lines = map(ranked_line, texts, names, rounded)
    return "".join([next(lines) if row.problem is None else "\t\n" for row in chunk])


def top_one_block(chunk: list, texts: list[str], probs, labels: list[str]) -> str:
    """:func:`text_block` of the best label alone (``ranked``'s choice and rounding), each line one ``str.format``."""
    values, indices = probs.topk(1, dim=1)
    names = [labels[i] for i in indices[:, 0].tolist()]
    lines = map(TOP_ONE_LINE, names, [round(v, 6) for v in values[:, 0].tolist()], texts)
    return "".join([next(lines) if row.problem is None else "\t\n" for row in chunk])


def text_lines(results: list[dict], labels: list[str]) -> str:
    return "".join(map(text_line, results))


def text_line(result: dict) -> str:
    if result.get("abstained"):  # below --threshold: no label, the best one shown for what it was
        best, p = next(iter(result["probs"].items()))
        return f"null (best: {RANKED(best, p)})\t{result['text']}\n"
    line = ranked_line(result["text"], result["probs"], result["probs"].values())
    if "explanation" in result:
        e = result["explanation"]
        features = ", ".join(f"{f['feature']} ({f['weight']:+.3f})" for f in e["top"])
        line += f"  why ({e['method']}, toward {result['label']}): {features}\n"
    return line


def ranked_line(text: str, labels, probs) -> str:
    """The text format's line: the ranked labels with their probabilities, a tab, the text."""
    return f"{', '.join(map(RANKED, labels, probs))}\t{text}\n"


NO_LABELS = "(none)"  # a multi-label text's empty set, as text shows it
RANKED = "{} ({:.3f})".format  # a label and its probability, as text shows them
TOP_ONE_LINE = "{} ({:.3f})\t{}\n".format  # ranked_line of one label
ROW_FORMATS = {"json": json_lines, "csv": csv_lines, "text": text_lines}  # a block of results -> its output lines


def cmd_embed(args: argparse.Namespace) -> None:
    positive(args.batch_size, "--batch-size")
    check_output_folder(args.output)
    texts = list(input_texts(args.texts, args.input, source_config(args, require_bundle(args.model))))
    if not texts:
        raise UsageError("no texts to embed", hint="give texts as arguments, or --input FILE, or --input - to read stdin")
    from ..bundle.predict import Predictor

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
