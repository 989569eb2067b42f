"""``textpipe info``, ``quantize`` and ``serve``: a saved bundle described, shrunk, or served over HTTP."""

from __future__ import annotations

import argparse
import json

from .data import fetch_bundle_encoder
from .errors import UsageError
from .streams import require_bundle


def cmd_info(args: argparse.Namespace) -> None:
    from ..bundle import bundle_info

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
    if info.get("encoder"):
        e = info["encoder"]
        print(f"encoder     {e['name']} (sentence vectors, cut at {e['max_wordpieces']} wordpieces), sha256 {e['sha256']}")
    if info.get("quantized"):
        from ..quantize import describe

        print(f"quantized   {describe(info['quantized'])}")


def cmd_quantize(args: argparse.Namespace) -> None:
    if args.cutoff < 0:
        raise UsageError(f"--cutoff must be >= 0, got {args.cutoff}")
    if args.out.resolve() == args.model.resolve():
        raise UsageError(f"{args.out}: write the quantized bundle to a new folder, not over the original")
    from ..files import check_folder
    from ..quantize import QuantizeConfig, quantize_bundle

    check_folder(args.out)  # a file or a link to one at --out: exit 2 naming it, before any work
    config = QuantizeConfig(cutoff=args.cutoff or None, bits=args.bits, drop_unused=not args.keep_unused)
    summary = quantize_bundle(require_bundle(args.model), args.out, config)
    print(f"{args.out}: {summary['bytes']:,} bytes, {summary['ratio']:.1%} of {args.model} ({summary['original_bytes']:,} bytes)")
    print(f"kept {summary['kept_rows']:,} of {summary['rows']:,} embedding rows as int{args.bits} ({summary['used_rows']:,} used in training, "
          f"found from {summary['used_rows_from']})")
    print(f"check it: textpipe evaluate --model {args.out} --data TEST_FILE")


def cmd_serve(args: argparse.Namespace) -> None:
    from ..serve import ServeConfig, serve

    try:
        config = ServeConfig(host=args.host, port=args.port, max_texts=args.max_texts, max_body=args.max_body)
    except ValueError as err:  # the flags' values, refused by the config's own checks
        raise UsageError(str(err)) from None
    serve(fetch_bundle_encoder(require_bundle(args.model)), config, quiet=args.quiet)
