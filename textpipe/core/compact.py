"""The compact table format of quantized bundles: rows as 4- or 8-bit integers with one float16 scale each.

:mod:`textpipe.bundle.quantize` decides which rows to keep and writes a quantized bundle;
this module holds only the tensor format, so :func:`textpipe.bundle.store.load_bundle` can
read a quantized table back (:func:`dequantize_state`) without depending on the
command that made it. Torch only.

Tensors stored for a table ``NAME`` (e.g. ``embedding.weight``) of ``N x D``, ``K`` rows kept:

- ``NAME.q_values`` uint8: the kept rows in id order, then the shared row, each value
  offset to be non-negative; ``(K+1, D)`` at 8 bits, ``(K+1, ceil(D/2))`` at 4;
- ``NAME.q_scale`` ``(K+1,)`` float16: each row's scale;
- ``NAME.q_kept`` ``(ceil(N/8),)`` uint8: one bit per original row, set where it was kept;
- ``NAME.q_shape`` ``(3,)`` int64: ``N, D, bits``.

Example:
    >>> parts = quantize_table(torch.randn(10, 4), keep=torch.ones(10, dtype=torch.bool))
    >>> dequantize_table(parts).shape
    torch.Size([10, 4])
"""

from __future__ import annotations

import torch

TABLE = "embedding.weight"
NB_TABLE = "nb.table"  # the bag's NB linear path (textpipe.core.nb_linear): one row per embedding row
PARTS = ("q_values", "q_scale", "q_kept", "q_shape")
PART_DTYPES = {"q_values": "U8", "q_scale": "F16", "q_kept": "U8", "q_shape": "I64"}  # as a safetensors header names them
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def quantize_rows(rows: torch.Tensor, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, D)`` float rows -> ``(R, D)`` integers in ``[-L, L]`` (``L = 2^(bits-1) - 1``) and ``(R,)`` float16 scales."""
    levels = 2 ** (bits - 1) - 1
    scale = (rows.abs().amax(1).float() / levels).half()  # (R,); rounded to float16 before use, so q matches it
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row (e.g. <pad>) stays zero
    q = torch.round(rows.float() / scale.float()[:, None]).clamp(-levels, levels).to(torch.int16)
    return q, scale


def pack_values(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integers -> uint8, offset by ``2^(bits-1)``; at 4 bits two per byte (high nibble first)."""
    u = (q + 2 ** (bits - 1)).to(torch.uint8)  # (R, D)
    if bits == 8:
        return u
    if u.shape[1] % 2:
        u = torch.cat([u, u.new_full((len(u), 1), 8)], 1)  # an odd width gets a zero value
    return (u[:, 0::2] << 4) | u[:, 1::2]  # (R, ceil(D/2))


def unpack_values(packed: torch.Tensor, width: int, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack_values`: ``(R, width)`` float32."""
    if bits == 4:
        packed = torch.stack([packed >> 4, packed & 15], -1).flatten(1)[:, :width]
    return packed.float() - 2 ** (bits - 1)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool -> ``(ceil(N/8),)`` uint8, eight rows a byte (like ``numpy.packbits``)."""
    padded = torch.cat([mask, mask.new_zeros(-len(mask) % 8)]).view(-1, 8)
    return (padded.to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    return (packed[:, None] & _BITS).bool().flatten()[:n]


def quantize_table(table: torch.Tensor, keep: torch.Tensor, bits: int = 4) -> dict[str, torch.Tensor]:
    """The four tensors (see the module doc) of ``table`` ``(N, D)`` keeping the rows where ``keep`` ``(N,)`` is True."""
    dropped = ~keep
    shared = table[dropped].mean(0, keepdim=True) if dropped.any() else table.new_zeros(1, table.shape[1])
    q, scale = quantize_rows(torch.cat([table[keep], shared]), bits)
    return {"q_values": pack_values(q, bits), "q_scale": scale, "q_kept": pack_mask(keep), "q_shape": torch.tensor([*table.shape, bits])}


def dequantize_table(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The full ``(N, D)`` float32 table back from :func:`quantize_table`'s tensors; ValueError for parts
    that contradict each other (a forged file: wrong dtypes, a q_shape or a q_kept that does not fit)."""
    for part, dtype in PART_DTYPES.items():
        if parts[part].dtype != _TORCH_DTYPES[dtype]:
            raise ValueError(f"quantized table: {part} is {parts[part].dtype}, not {_TORCH_DTYPES[dtype]}")
    values = parts["q_values"]
    if parts["q_shape"].shape != (3,) or values.dim() != 2 or parts["q_scale"].shape != (len(values),):
        raise ValueError("quantized table: q_shape, q_values and q_scale do not fit together")
    n, width, bits = parts["q_shape"].tolist()
    if bits not in (4, 8) or n < 0 or width < 1 or (n + 7) // 8 != len(parts["q_kept"]) or values.shape[1] != (width if bits == 8 else (width + 1) // 2):
        raise ValueError(f"quantized table: q_shape {[n, width, bits]} does not fit its parts")
    kept = unpack_mask(parts["q_kept"], n)
    if int(kept.sum()) != len(values) - 1:
        raise ValueError(f"quantized table: q_kept marks {int(kept.sum())} rows kept, but q_values holds {len(values) - 1}")
    rows = unpack_values(values, width, bits) * parts["q_scale"].float()[:, None]  # (K+1, D)
    index = torch.full((n,), len(rows) - 1, dtype=torch.long)  # every id -> the shared row ...
    index[kept] = torch.arange(len(rows) - 1)  # ... but the kept ones
    return rows[index]


def fold_quantized_shapes(found: dict[str, list[int]], expected: dict[str, list[int]]) -> dict[str, list[int]]:
    """Weights-file shapes with each quantized table's parts replaced by the table's own ``(N, D)``,
    once the parts' shapes fit the ``(N, D)`` that ``expected`` (the model config's) says; ValueError otherwise.
    Read from the file's header, before anything is allocated: a crafted part cannot ask for more memory than the model."""
    folded = dict(found)
    for name in [key[: -len(".q_values")] for key in found if key.endswith(".q_values")]:
        parts = {p: folded.pop(f"{name}.{p}", None) for p in PARTS}
        n, d = expected.get(name, (0, 0))
        values = parts["q_values"] or [0, 0]
        fits = (len(values) == 2 and 1 <= values[0] <= n + 1 and values[1] in (d, (d + 1) // 2) and parts["q_scale"] == [values[0]]
                and parts["q_kept"] == [(n + 7) // 8] and parts["q_shape"] == [3])
        if not fits:
            raise ValueError(f"quantized table {name}: parts of shapes {parts} do not fit the model's {n} x {d} table")
        folded[name] = [n, d]
    return folded


_TORCH_DTYPES = {"U8": torch.uint8, "F16": torch.float16, "I64": torch.int64}


def part_dtype(name: str) -> str | None:
    """The dtype (safetensors' name) a quantized table's part ``NAME.q_...`` must have; None for another tensor."""
    return PART_DTYPES.get(name.rpartition(".")[2]) if "." in name else None


def check_summary(summary) -> tuple[str, str] | None:
    """What is wrong with bundle.json's ``quantized`` field (``(".field", why)``), or None; it is shown by ``textpipe info``."""
    if not isinstance(summary, dict):
        return "", "must be an object"
    for field in ("method", "table", "used_rows_from", "from"):
        if not isinstance(summary.get(field, ""), str):
            return f".{field}", "must be a string"
    for field in ("rows", "used_rows", "kept_rows", "original_bytes", "cutoff"):
        value = summary.get(field, 0) if field != "cutoff" else summary.get(field) or 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f".{field}", "must be a non-negative integer" + (" or null" if field == "cutoff" else "")
    missing = [field for field in ("method", "table", "rows", "used_rows", "kept_rows") if field not in summary]
    return (f".{missing[0]}", "is missing") if missing else None


def is_quantized(state: dict[str, torch.Tensor]) -> bool:
    return any(key.endswith(".q_values") for key in state)


def dequantize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every quantized table turned back into a float tensor; others pass through."""
    if not is_quantized(state):
        return state
    tables = {key[: -len(".q_values")] for key in state if key.endswith(".q_values")}
    out = {k: v for k, v in state.items() if k.rpartition(".")[0] not in tables or k.rpartition(".")[2] not in PARTS}
    for name in tables:
        missing = [p for p in PARTS if f"{name}.{p}" not in state]
        if missing:
            raise ValueError(f"quantized table {name} lacks {', '.join(missing)}")
        out[name] = dequantize_table({p: state[f"{name}.{p}"] for p in PARTS})
    return out
