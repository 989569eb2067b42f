"""MiniLM-L6, the pretrained sentence encoder, in plain torch: wordpiece ids -> one unit vector per text.

A BERT encoder (Devlin et al., 2019) as sentence-transformers' ``all-MiniLM-L6-v2``
trained it: token + position + segment embeddings and a LayerNorm, six post-LN
blocks (self-attention, then a GELU feed-forward, each added to its input and
normalized), the last layer's vectors averaged over the text's real tokens and
scaled to length 1. Attention is written out (the Q, K, V projections, the heads
split and merged by ``view``/``transpose``, the padding mask as a large negative
bias before the softmax), so ``docs/concepts.md``'s review of the Transformer can
point at every step. :func:`load_minilm` reads the weights from a safetensors file
by name, each checked for shape and dtype before a byte of it is read.
Tensor core: torch and safetensors only (the wordpiece tokenizer is ``sentence.py``'s).

Example:
    >>> model = load_minilm("data/encoders/minilm-l6/model.safetensors")
    >>> ids = torch.tensor([[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]])
    >>> model(ids, ids != 0).shape
    torch.Size([1, 384])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("float32", "float16", "int8")  # how the Linear layers compute: quantize_linear
MASKED = -1e4  # added to a padded key's score: exp() of it is 0 in float32 and float16 alike


@dataclass(frozen=True)
class MiniLMConfig:
    """The encoder's shape: what the published ``config.json`` of all-MiniLM-L6-v2 says."""

    vocab_size: int = 30522
    dim: int = 384
    layers: int = 6
    heads: int = 12
    ffn_dim: int = 1536
    max_positions: int = 512
    segments: int = 2
    eps: float = 1e-12


class Block(nn.Module):
    """One post-LN transformer block: x = norm(x + attention(x)); x = norm(x + ffn(x))."""

    def __init__(self, c: MiniLMConfig):
        super().__init__()
        self.heads = c.heads
        self.query, self.key, self.value = nn.Linear(c.dim, c.dim), nn.Linear(c.dim, c.dim), nn.Linear(c.dim, c.dim)
        self.attn_out, self.attn_norm = nn.Linear(c.dim, c.dim), nn.LayerNorm(c.dim, eps=c.eps)
        self.ffn_in, self.ffn_out = nn.Linear(c.dim, c.ffn_dim), nn.Linear(c.ffn_dim, c.dim)
        self.ffn_norm = nn.LayerNorm(c.dim, eps=c.eps)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, D) -> (B, H, T, D/H): each head sees its own slice of the features
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def attention(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))  # (B, H, T, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias  # (B, H, T, T); bias (B, 1, 1, T)
        mixed = scores.softmax(dim=-1) @ v  # (B, H, T, d): each position a weighted mean of the values
        b, h, t, d = mixed.shape
        return self.attn_out(mixed.transpose(1, 2).reshape(b, t, h * d))  # heads merged back: (B, T, D)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attention(x, bias))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class MiniLM(nn.Module):
    """The sentence encoder: ``model(ids, mask)`` -> ``(B, dim)`` unit vectors, mean-pooled over ``mask``.

    ``ids`` (B, T) wordpiece ids with ``[CLS]`` first and ``[SEP]`` last, 0 after;
    ``mask`` (B, T) True on real tokens. Frozen: textpipe never trains it.

    Example:
        >>> model = MiniLM(MiniLMConfig(layers=1))   # random weights, for tests
        >>> model(torch.tensor([[101, 7592, 102]]), torch.tensor([[True, True, True]])).norm(dim=1)
        tensor([1.0000])
    """

    def __init__(self, c: MiniLMConfig = MiniLMConfig()):
        super().__init__()
        self.config = c
        self.word = nn.Embedding(c.vocab_size, c.dim)
        self.position = nn.Embedding(c.max_positions, c.dim)
        self.segment = nn.Embedding(c.segments, c.dim)
        self.norm = nn.LayerNorm(c.dim, eps=c.eps)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.requires_grad_(False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        # every text is one segment (type 0), as sentence-transformers encodes a single sentence
        x = self.word(ids) + self.position.weight[:t] + self.segment.weight[0]  # (B, T, D)
        x = self.norm(x)
        bias = (~mask)[:, None, None, :].to(x.dtype) * MASKED  # (B, 1, 1, T): padded keys get no attention
        for block in self.blocks:
            x = block(x, bias)
        keep = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, D): the mean over real tokens
        return F.normalize(pooled, dim=-1)


def _file_names(c: MiniLMConfig) -> dict[str, str]:
    """Our parameter names -> the names in the published file (BERT's, without the ``bert.`` prefix)."""
    names = {
        "word.weight": "embeddings.word_embeddings.weight",
        "position.weight": "embeddings.position_embeddings.weight",
        "segment.weight": "embeddings.token_type_embeddings.weight",
        "norm.weight": "embeddings.LayerNorm.weight",
        "norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
             "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
    for i in range(c.layers):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
    return names


def load_minilm(path: str | Path, config: MiniLMConfig = MiniLMConfig()) -> MiniLM:
    """The encoder with the weights of the safetensors file ``path``, read by name.

    Every tensor's shape and dtype is checked against the model's from the file's
    header before any is read; a missing, misshapen or non-float32 tensor is a
    ValueError naming it. Tensors the encoder does not use (the pooler) are ignored.

    Example:
        >>> load_minilm("data/encoders/minilm-l6/model.safetensors").config.dim
        384
    """
    from safetensors import safe_open

    with torch.device("meta"):
        model = MiniLM(config)  # shapes only: nothing allocated until every tensor checks out
    expected = dict(model.state_dict())
    with safe_open(str(path), framework="pt") as f:
        present = set(f.keys())
        for ours, theirs in _file_names(config).items():
            if theirs not in present:
                raise ValueError(f"{path}: no tensor {theirs!r}")
            piece = f.get_slice(theirs)
            if tuple(piece.get_shape()) != tuple(expected[ours].shape) or piece.get_dtype() != "F32":
                raise ValueError(f"{path}: {theirs} is {piece.get_dtype()} {piece.get_shape()}, expected F32 {list(expected[ours].shape)}")
        state = {ours: f.get_tensor(theirs) for ours, theirs in _file_names(config).items()}
    model.load_state_dict(state, assign=True)
    return model.requires_grad_(False).eval()


class Float16Linear(nn.Module):
    """A Linear layer whose weight is stored as float16 (half the bytes) and widened to float32 for each call:
    float16 matrix products have no fast kernel on a CPU without AVX512-FP16 (measured 20x slower on AVX2).

    Example:
        >>> Float16Linear(nn.Linear(4, 2))(torch.ones(1, 4)).dtype
        torch.float32
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().half())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.float(), self.bias)


def quantize_linear(model: MiniLM, kind: str) -> MiniLM:
    """The encoder with its Linear layers as ``"int8"`` (torch's dynamic quantization: int8 weights with a scale per
    output row, activations quantized per batch; the fastest on CPU; each block's ``ffn_out`` stays float32) or ``"float16"`` (:class:`Float16Linear`: weights stored at half
    size, computed in float32); ``"float32"`` leaves it as it is. Embeddings and LayerNorms stay float32.

    Example:
        >>> fast = quantize_linear(load_minilm("data/encoders/minilm-l6/model.safetensors"), "int8")
    """
    # A recipe changed here changes the vectors: give it a new name in sentence.sentence_cache_key, or cached ones get mixed in.
    if kind not in PRECISIONS:
        raise ValueError(f"encoder precision must be one of {', '.join(PRECISIONS)}, got {kind!r}")
    if kind == "int8":
        # One weight scale per output row (one per matrix cost 0.75 point on mr, this 0.47); ffn_out stays float32: its
        # input, the GELU's output, has a few large values that one int8 scale per batch cannot hold (0.47 -> 0.28 point).
        chosen = {name: torch.ao.quantization.per_channel_dynamic_qconfig for name, module in model.named_modules()
                  if isinstance(module, nn.Linear) and not name.endswith("ffn_out")}
        return torch.ao.quantization.quantize_dynamic(model, chosen, dtype=torch.qint8)
    if kind == "float16":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Float16Linear(child))
    return model
