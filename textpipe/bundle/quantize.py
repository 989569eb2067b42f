"""Compact bundles: the embedding table as 4-bit (or 8-bit) rows with a per-row scale, unused rows dropped.

fastText's ``quantize``, for a textpipe bundle. Three steps shrink the table that
makes up nearly all of a bag model's weights (2^18 hashed n-gram rows + the words):

1. Rows that training never stepped carry no information: they still hold their
   random initial values. They are dropped and their ids share one row.
2. ``cutoff`` keeps only that many of the remaining rows: the words' rows first (a
   word is in many texts, a hashed n-gram in few), then those with the largest norm
   as the classifier sees them (for the bag model: the norm of the row's effect on
   the centred logits, ``||(W - mean_c W) row||``; otherwise the row's own L2 norm).
   The shared row is the mean of every dropped row, the one vector closest to all.
3. Each kept row is stored as signed integers of ``bits`` bits (4: two to a byte)
   with its own float16 scale: ``row = q * scale``, ``scale = max|row| / (2^(bits-1) - 1)``.
   On rotten_tomatoes, mr and trec6 4 bits lose no test accuracy (measured: README,
   "Compact bundles") and fit twice the rows of int8 into the same bytes.
4. The bag's NB linear path (``nb.table``, one row per embedding row, one column per
   member) is zero but for the rows of the words and n-grams training saw: those rows
   are kept, at 8 bits with a float16 scale each, the zero rows share one (zero) row.
   Its rows are kept whether or not the embedding keeps theirs: the path reads them itself.
5. A bundle with a sentence encoder keeps its head as it is, and its encoder record gains
   ``precision`` (``QuantizeConfig.encoder_precision``, default int8): how the encoder's Linear
   layers compute when the bundle predicts (:func:`textpipe.core.minilm.quantize_linear`; the encoder
   is loaded by name, not shipped, so this saves time and memory, not bytes of the bundle).

The result is a normal bundle: the table is saved as ordinary tensors through
:func:`textpipe.bundle.store.save_bundle` (so any weights format holds it), and
:func:`dequantize_state`, called by :func:`textpipe.bundle.store.load_bundle`, rebuilds the
full float table, so ``predict``, ``evaluate``, ``serve`` and the Python API load it
unchanged. ``bundle.json`` says how it was made under ``"quantized"``.

The stored format (and :func:`~textpipe.core.compact.dequantize_state`, which reads it) is
:mod:`textpipe.core.compact`.

Example:
    >>> summary = quantize_bundle("runs/default", "runs/default-q", QuantizeConfig(cutoff=80_000))
    >>> summary["kept_rows"], summary["ratio"]
    (80000, 0.041)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .store import META, VOCAB, WEIGHTS, BundleError, load_bundle, save_bundle
from ..core.files import CONFIG, RUN
from ..core.compact import NB_TABLE, TABLE, quantize_table
from ..core.minilm import PRECISIONS
from ..core.models import build_model
from ..core.runtime import set_seed

DEFAULT_ENCODER_PRECISION = "int8"  # mr: 0.28 point below the float32 encoder in the same bundle, faster (docs/deploy.md)
COPIED = (CONFIG, RUN)  # provenance travels with the compact bundle; metrics do not (re-run evaluate)


@dataclass
class QuantizeConfig:
    """How :func:`quantize_bundle` shrinks a bundle.

    Example:
        >>> QuantizeConfig(cutoff=40_000, bits=8)  # keep 40k used rows, words first, as int8
    """

    # Keep at most this many rows besides the shared one (None: every used row). 80k takes the default
    # model on rotten_tomatoes, mr and trec6 to under 5% of its size with no loss of test accuracy.
    cutoff: int | None = 80_000
    bits: int = 4  # 4 or 8 bits per value
    drop_unused: bool = True  # rows training never stepped share one row
    # With a sentence encoder: how its Linear layers compute when the bundle predicts (minilm.quantize_linear),
    # recorded as bundle.json's encoder.precision. None: DEFAULT_ENCODER_PRECISION; set for a bundle without one: an error.
    encoder_precision: str | None = None

    def __post_init__(self) -> None:
        if self.encoder_precision is not None and self.encoder_precision not in PRECISIONS:
            raise ValueError(f"encoder_precision must be one of {', '.join(PRECISIONS)}, got {self.encoder_precision!r}")
        if self.cutoff is not None and self.cutoff < 1:
            raise ValueError(f"cutoff must be >= 1, got {self.cutoff}")
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")


def used_rows(model: nn.Module, seed: int) -> tuple[torch.Tensor, str]:
    """Which rows of ``model.embedding`` training stepped, ``(N,)`` bool, and how that was found.

    By rebuilding the seeded initial table: a row still equal, bit for bit, to its
    initial value was never stepped. (Not from the run's checkpoints: a bundle may come
    from someone else, and no file a user may receive goes through ``torch.load``.)
    If no row matches (another seed, or pretrained rows), every row counts as used,
    which only costs size, never accuracy.
    """
    table = model.embedding.weight.detach()
    rng = torch.get_rng_state()
    try:
        set_seed(seed)
        initial = build_model(model.config).embedding.weight.detach()
    finally:
        torch.set_rng_state(rng)
    same = (initial == table).all(1) & (table != 0).any(1)  # an all-zero row (<pad>) is no evidence either way
    if not same.any():
        return torch.ones(len(table), dtype=torch.bool), "none found (every row kept)"
    return ~same, "rows that differ from the seeded initial table"


def row_importance(model: nn.Module) -> torch.Tensor:
    """``(N,)`` how much each embedding row can move the prediction; :func:`quantize_bundle` keeps the largest."""
    table = model.embedding.weight.detach()
    if model.config.name == "bag":  # logits are linear in the mean row: what counts is the row seen through the head
        head = model.head.weight.detach()
        return (table @ (head - head.mean(0)).T).norm(dim=1)
    return table.norm(dim=1)


def choose_rows(model: nn.Module, used: torch.Tensor, cutoff: int | None) -> torch.Tensor:
    """The ``(N,)`` bool mask of rows to keep: the used ones, at most ``cutoff`` of them, words first, then the most important."""
    if cutoff is None or int(used.sum()) <= cutoff:
        return used.clone()
    importance = row_importance(model)
    words = torch.arange(len(used)) < model.config.vocab_size  # for the bag model, the rows before the n-gram buckets
    importance = torch.where(words, importance + importance.max() + 1, importance).masked_fill(~used, -1.0)
    keep = torch.zeros_like(used)
    keep[importance.topk(cutoff).indices] = True
    return keep


def quantize_nb_table(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Put the NB linear path's table into ``state`` as 8-bit rows, its non-zero rows kept; how many (None: no NB path)."""
    nb = getattr(model, "nb", None)
    if nb is None:
        return None
    rows = nb.table.detach()
    nonzero = rows.ne(0).any(1)  # the words and n-grams of the training rows; the others are exactly zero, as is their shared row
    state.update({f"{NB_TABLE}.{part}": tensor for part, tensor in quantize_table(rows, nonzero, bits=8).items()})
    return int(nonzero.sum())


def quantize_bundle(model_dir: str | Path, out: str | Path, config: QuantizeConfig | None = None) -> dict:
    """Write a quantized copy of the bundle in ``model_dir`` into ``out``; return what was done (also in bundle.json)."""
    config = config or QuantizeConfig()
    model_dir, out = Path(model_dir), Path(out)
    if model_dir.resolve() == out.resolve():
        raise ValueError(f"{out}: write the quantized bundle to a new folder, not over the original")
    bundle = load_bundle(model_dir)
    model, encoder = bundle.model, encoder_extra(bundle, config, model_dir)
    if not isinstance(getattr(model, "embedding", None), nn.Embedding):
        raise ValueError(f"{model_dir}: model {bundle.model_config.name!r} has no embedding table to quantize")
    table = model.embedding.weight.detach()
    seed = bundle.train_config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise BundleError(f"{model_dir / META}: field train.seed must be an integer, got {str(seed)[:40]}")
    if config.drop_unused:
        used, source = used_rows(model, seed)
    else:
        used, source = torch.ones(len(table), dtype=torch.bool), "not looked for (--keep-unused)"
    keep = choose_rows(model, used, config.cutoff)
    state = {k: v for k, v in model.state_dict().items() if k not in (TABLE, NB_TABLE)}
    state.update({f"{TABLE}.{part}": tensor for part, tensor in quantize_table(table, keep, config.bits).items()})
    nb_rows = quantize_nb_table(model, state)
    summary = {
        "method": f"int{config.bits} rows, one float16 scale per row",
        "table": TABLE,
        "rows": len(table),
        "used_rows": int(used.sum()),
        "used_rows_from": source,
        "kept_rows": int(keep.sum()),
        "cutoff": config.cutoff,
        **({"nb_table": f"{NB_TABLE}: its {nb_rows:,} non-zero rows as int8, one float16 scale per row"} if nb_rows is not None else {}),
        "from": str(model_dir),
        "original_bytes": sum((model_dir / name).stat().st_size for name in (WEIGHTS, VOCAB, META)),
    }
    # A sentence head is kept unquantized (385 x classes floats); the encoder's record gains its precision.
    save_bundle(out, replace(bundle, encoder=encoder.get("encoder")), state=state, extra={"quantized": summary})
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    summary["bytes"] = sum((out / name).stat().st_size for name in (WEIGHTS, VOCAB, META))
    summary["ratio"] = round(summary["bytes"] / summary["original_bytes"], 4)
    return {**summary, **({"encoder_precision": encoder["encoder"]["precision"]} if encoder else {})}


def encoder_extra(bundle, config: QuantizeConfig, model_dir: Path) -> dict:
    """``{"encoder": record}`` for a bundle with a sentence encoder: its record carried over, with the precision its
    Linear layers will compute at (the encoder itself is not in the bundle: it is loaded by name, then quantized)."""
    if bundle.head is None:
        if config.encoder_precision is not None:
            raise BundleError(f"{model_dir}: the bundle has no sentence encoder to set the precision of (it was trained without --encoder)")
        return {}
    return {"encoder": {**bundle.encoder, "precision": config.encoder_precision or DEFAULT_ENCODER_PRECISION}}


def describe(quantized: dict) -> str:
    """One line for ``textpipe info``: how the bundle was quantized."""
    cutoff = f", cutoff {quantized['cutoff']:,}" if quantized.get("cutoff") else ""
    return (f"{quantized['method']}; {quantized['kept_rows']:,} of {quantized['rows']:,} rows of {quantized['table']} kept"
            f" ({quantized['used_rows']:,} used in training{cutoff}), the rest share one row"
            + (f"; {quantized['nb_table']}" if quantized.get("nb_table") else ""))

