"""``textpipe info``, ``quantize`` and ``serve``: a saved bundle described, shrunk, or served over HTTP."""

from __future__ import annotations

import argparse
import json
import sys

from .data import fetch_bundle_encoder
from .errors import UsageError
from .streams import require_bundle


def cmd_info(args: argparse.Namespace) -> None:
    from ..bundle.describe import bundle_info

    if args.verify or args.expect:
        return verify(args)
    info = bundle_info(require_bundle(args.model))
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return
    test = (info["metrics"] or {}).get("test") or {}
    m = info["model"]
    print(f"bundle      {info['path']}")
    print(f"model       {m.get('name', 'bag')} (embed_dim {m.get('embed_dim', 'default')}), {info['parameters']:,} parameters")
    print(f"tokenizer   {info['tokenizer']['name']} (lower={info['tokenizer'].get('lower', True)})")
    print(f"vocabulary  {info['vocab_size']} tokens")
    print(f"labels      {', '.join(info['labels'])}")
    if info.get("multi_label"):  # a set of labels a text: each predicted at its own threshold
        thresholds = ", ".join(f"{label} {t:.3f}" for label, t in zip(info["labels"], info["multi_label"]["thresholds"]))
        print(f"multi-label thresholds {thresholds}")
    if "micro_f1" in test:
        print(f"test        micro-F1 {test['micro_f1']:.4f}, macro-F1 {test['macro_f1']:.4f}, subset accuracy {test['subset_accuracy']:.4f} "
              f"(n={test['n']}; best epoch {info['metrics'].get('best_epoch')})")
    elif all(key in test for key in ("accuracy", "macro_f1", "n")):
        print(f"test        accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} (n={test['n']}; best epoch {info['metrics'].get('best_epoch')})")
    print(f"created     {info['created'] or 'unknown'}")
    if info["data"]:
        print("data        " + ", ".join(f"{k} {v}" for k, v in info["data"].items() if v))
    if info["versions"]:
        print("versions    " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    print(f"weights     {info['weights_bytes']:,} bytes, sha256 {info['weights_sha256']}")
    if info.get("encoder"):
        e = info["encoder"]
        print(f"encoder     {e['name']} (sentence vectors, cut at {e['max_wordpieces']} wordpieces, Linear layers {e['precision']}), sha256 {e['sha256']}")
    if info.get("quantized"):
        from ..bundle.quantize import describe

        print(f"quantized   {describe(info['quantized'])}")


def verify(args: argparse.Namespace) -> None:
    """``info --verify``: every check a load makes, then the digest to pin (sha256sum's format); ``--expect`` compares."""
    from ..bundle.store import META, BundleError
    from ..bundle.describe import verify_bundle

    digest = verify_bundle(require_bundle(args.model))
    expected = (args.expect or "").strip().lower()
    if expected and expected != digest:
        raise BundleError(f"{args.model / META}: sha256 {digest}, not the pinned {expected}: this is not the bundle you pinned")
    print(f"{digest}  {args.model / META}")
    print(f"verified: its files match its manifest and its tensors fit its model{'; the pinned sha256 matches' if expected else ''}", file=sys.stderr)


def cmd_quantize(args: argparse.Namespace) -> None:
    if args.cutoff < 0:
        raise UsageError(f"--cutoff must be >= 0, got {args.cutoff}")
    if args.out.resolve() == args.model.resolve():
        raise UsageError(f"{args.out}: write the quantized bundle to a new folder, not over the original")
    from ..core.files import check_folder
    from ..bundle.quantize import QuantizeConfig, quantize_bundle

    check_folder(args.out)  # a file or a link to one at --out: exit 2 naming it, before any work
    config = QuantizeConfig(cutoff=args.cutoff or None, bits=args.bits, drop_unused=not args.keep_unused, encoder_precision=args.encoder_precision)
    summary = quantize_bundle(require_bundle(args.model), args.out, config)
    print(f"{args.out}: {summary['bytes']:,} bytes, {summary['ratio']:.1%} of {args.model} ({summary['original_bytes']:,} bytes)")
    print(f"kept {summary['kept_rows']:,} of {summary['rows']:,} embedding rows as int{args.bits} ({summary['used_rows']:,} used in training, "
          f"found from {summary['used_rows_from']})")
    if "encoder_precision" in summary:
        print(f"the sentence encoder's Linear layers compute in {summary['encoder_precision']} when this bundle predicts")
    print(f"check it: textpipe evaluate --model {args.out} --data TEST_FILE")


def cmd_serve(args: argparse.Namespace) -> None:
    from ..bundle.serve import ServeConfig, serve

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535 (0: any free port), got {args.port}")
    try:
        config = ServeConfig(host=args.host, port=args.port, max_texts=args.max_texts, max_body=args.max_body)
    except ValueError as err:  # the flags' values, refused by the config's own checks
        raise UsageError(str(err)) from None
    serve(fetch_bundle_encoder(require_bundle(args.model)), config, quiet=args.quiet)
