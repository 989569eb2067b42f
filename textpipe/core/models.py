"""A padded batch of ids -> class logits.

Pure ``nn.Module``s and a config dataclass; tensors in, tensors out, no text.
Every model has the same call: ``model(ids, mask) -> logits`` with ``ids`` and
``mask`` of shape ``(B, T)`` as made by :func:`textpipe.core.collate.pad_collate`.

The pooled sentence vector passes through ``model.pool``, an ``nn.Module`` of its
own, so a forward hook on it captures sentence embeddings
(:func:`capture_pooled`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .kernels import bag_mean_table_grad, bag_ngram_ids
from .nb_linear import NBLinear


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved inside each bundle."""

    name: str = "bag"
    vocab_size: int = 0  # from the vocabulary
    num_classes: int = 0  # from the labels
    embed_dim: int = 64
    ngram_buckets: int = 2**18  # hashed word-n-gram rows added to the table; 0 = unigrams only
    max_ngram: int = 2  # bag: hashed n-grams of 2 .. max_ngram words (fastText's wordNgrams)
    dropout: float = 0.3  # on the pooled vector
    token_dropout: float = 0.3  # training only: each word / bigram is left out of the mean with this probability
    frozen_dim: int = 0  # bag: width of a frozen table of pretrained word vectors (data.vectors) whose mean joins the pooled vector
    nb_linear: bool = True  # bag: beside it, a linear model on NB-weighted word / n-gram presence (NBSVM-style), probabilities mixed by a weight chosen on dev
    # The fields below are read by the cnn, gru and transformer models only; "bag" ignores them.
    hidden_dim: int = 128  # conv filters per width (cnn), GRU units per direction (gru), feed-forward units (transformer)
    kernel_sizes: tuple[int, ...] = (3, 4, 5)  # cnn: widths, in tokens, of the convolution filters
    num_layers: int = 2  # gru and transformer: stacked layers
    num_heads: int = 4  # transformer: attention heads; must divide embed_dim
    max_len: int = 512  # transformer: longer inputs are cut to their first max_len tokens
    encoder: str | None = None  # a named sentence encoder (minilm-l6): a logistic regression on its vectors joins the mix (sentence_head.py)
    multi_label: bool = False  # set from the data (--multi-label): one sigmoid per label; the bag's NB path one member per label

    def __post_init__(self) -> None:
        # JSON has no tuples: a config read back from a bundle brings kernel_sizes as a list.
        self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:  # without an encoder or multi-label, the keys of every config and bundle saved before they existed
        return {k: v for k, v in asdict(self).items() if (k != "encoder" or v is not None) and (k != "multi_label" or v)}


class MaskedMeanPool(nn.Module):
    """Mean of the vectors at the positions where ``mask`` is True."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D), mask: (B, T)
        mask = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)


class MaskedMaxPool(nn.Module):
    """Per-feature maximum over the positions where ``mask`` is True; zeros for a row with none."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D), mask: (B, T)
        pooled = x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)  # (B, D)
        return pooled.masked_fill(~mask.any(1, keepdim=True), 0.0)  # an empty row would be -inf


class EmbeddingBagMean(nn.Module):
    """Mean of the rows of ``table`` at each bag's ids, in one ``F.embedding_bag`` call.

    Bag ``i`` is the next ``lengths[i]`` ids of ``flat_ids``. Same result as
    :class:`MaskedMeanPool` over ``table[ids]``, without building the ``(B, T, D)``
    tensor of looked-up vectors: the fused kernel sums rows straight into the
    output. With ``sparse=True`` the table's gradient is sparse, and with
    ``closed_form`` (the default) it is :func:`bag_mean_table_grad`'s, which holds
    each used row once, in sorted order, rather than autograd's one entry per id
    that the optimizer must then sort and sum.

    Example:
        >>> pool = EmbeddingBagMean()
        >>> table = nn.Parameter(torch.randn(10, 4))
        >>> pool(table, torch.tensor([1, 2, 2]), torch.tensor([3]), sparse=True).sum().backward()
        >>> table.grad._indices()  # rows 1 and 2, each once
        tensor([[1, 2]])
    """

    def __init__(self, closed_form: bool = True):
        super().__init__()
        self.closed_form = closed_form  # False: autograd's own sparse gradient (the reference the tests compare with)

    def forward(self, table: torch.Tensor, flat_ids: torch.Tensor, lengths: torch.Tensor, sparse: bool) -> torch.Tensor:
        # Only real ids come in, so padding and dropped tokens add nothing to the sparse gradient.
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        if sparse and self.closed_form and table.requires_grad and torch.is_grad_enabled():
            return _BagMean.apply(table, flat_ids, offsets, lengths)  # (B, D)
        return nn.functional.embedding_bag(flat_ids, table, offsets, mode="mean", sparse=sparse)  # (B, D); an empty bag is 0


class _BagMean(torch.autograd.Function):
    """``embedding_bag(mode="mean")`` forward; :func:`bag_mean_table_grad` backward (table only)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, flat_ids: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat_ids, lengths)
        ctx.table_shape, ctx.table_dtype = table.shape, table.dtype
        return nn.functional.embedding_bag(flat_ids, table, offsets, mode="mean")

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):
        flat_ids, lengths = ctx.saved_tensors
        grad = bag_mean_table_grad(flat_ids, lengths, grad_pooled.to(ctx.table_dtype), ctx.table_shape[0])
        return grad, None, None, None


def check_sizes(config: ModelConfig) -> None:
    if config.vocab_size < 2 or config.num_classes < 2:
        raise ValueError(f"need vocab_size >= 2 and num_classes >= 2, got {config.vocab_size}, {config.num_classes}")


class BagOfNgrams(nn.Module):
    """fastText-style classifier: mean of word and hashed word-bigram embeddings, then a linear layer.

    Bigram ``(a, b)`` of token ids is hashed into one of ``ngram_buckets`` extra rows
    of the embedding table, so the table's size does not grow with the data. The
    table is sparse: only the rows a batch touches get a gradient, which is what
    makes a 2^18-row table cheap to train (pair it with ``textpipe.core.optim.RowAdam``).
    With ``nb_linear`` an ``NBLinear`` (:mod:`textpipe.core.nb_linear`) over the same ids sits beside it.

    Example:
        >>> model = BagOfNgrams(ModelConfig(vocab_size=1000, num_classes=2))
        >>> batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
        >>> model(batch.ids, batch.mask).shape
        torch.Size([2, 2])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_sizes(config)
        if config.max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {config.max_ngram}")
        self.config = config
        rows = config.vocab_size + config.ngram_buckets
        self.embedding = nn.Embedding(rows, config.embed_dim, padding_idx=0, sparse=True)
        self.pool = EmbeddingBagMean()
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.embed_dim + config.frozen_dim, config.num_classes)
        bound = 1.0 / config.embed_dim  # fastText's initialization
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        if config.frozen_dim:
            # Pretrained word vectors, never trained (a buffer, saved with the weights); filled from
            # data.vectors by textpipe.text.vectors.load_into_frozen. Words they lack stay zero.
            self.register_buffer("frozen", nn.init.zeros_(torch.empty(config.vocab_size, config.frozen_dim)))  # not torch.zeros, which imports sympy on the meta device (model_skeleton)
        self.nb = NBLinear(rows, config.num_classes, config.multi_label) if config.nb_linear else None

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = None
        if self.training and self.config.token_dropout > 0:  # each word / n-gram left out of the mean with this probability
            keep = torch.rand((ids.shape[0], self.feature_width(ids.shape[1])), device=ids.device) >= self.config.token_dropout
        flat_ids, lengths = self.flat_features(ids, mask, keep)
        pooled = self.pool(self.embedding.weight, flat_ids, lengths, self.embedding.sparse)  # (B, D)
        if self.config.frozen_dim:
            # The mean of the same words (not the n-grams) in the frozen table, beside the learned mean.
            words = mask if keep is None else mask & keep[:, : ids.shape[1]]
            pooled = torch.cat([pooled, self.pool(self.frozen, ids[words], words.sum(1), False)], 1)  # (B, D + F)
        logits = self.head(self.dropout(pooled))  # (B, C)
        return logits if self.nb is None or self.training else self.nb.mix(logits, flat_ids, lengths)

    def feature_width(self, T: int) -> int:
        """Columns of :meth:`add_ngrams`' output for ``T`` words: T words, T-1 bigrams, T-2 trigrams, ..."""
        top = min(self.config.max_ngram if self.config.ngram_buckets else 1, T)
        return sum(T - n + 1 for n in range(1, top + 1))

    def flat_features(self, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's real word and n-gram ids (where ``keep``, if given), end to end, and each text's count.

        :meth:`add_ngrams` then a mask, or the same in one pass of compiled C (``textpipe.core.kernels``).
        """
        c = self.config
        fast = bag_ngram_ids(ids, mask, keep, (c.vocab_size, c.ngram_buckets, c.max_ngram))
        if fast is not None:
            return fast
        all_ids, all_mask = self.add_ngrams(ids, mask)  # (B, T')
        if keep is not None:
            all_mask = all_mask & keep
        return all_ids[all_mask], all_mask.sum(1)

    def add_ngrams(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the hashed rows of every n-gram (n = 2 .. max_ngram) whose words are all real."""
        buckets, T = self.config.ngram_buckets, ids.shape[1]
        all_ids, all_mask = [ids], [mask]
        for n in range(2, self.config.max_ngram + 1) if buckets else ():
            if T < n:
                break
            code, real = ids[:, : T - n + 1], mask[:, : T - n + 1]  # (B, T-n+1)
            for k in range(1, n):
                # int64 arithmetic wraps on overflow (n >= 4), which is harmless in a hash.
                code = code * 1_000_003 + ids[:, k : T - n + 1 + k]
                real = real & mask[:, k : T - n + 1 + k]
            all_ids.append(self.config.vocab_size + code % buckets)
            all_mask.append(real)
        return torch.cat(all_ids, 1), torch.cat(all_mask, 1)


class TextCNN(nn.Module):
    """Kim-style CNN: 1-D convolutions of several widths over word embeddings, max over time, a linear layer.

    Each filter is a learned n-gram detector (n = its width); the max over time
    keeps its strongest match anywhere in the text. Convolution outputs at
    positions past a text's length are left out of the max, so padding never
    changes a prediction.

    Example:
        >>> model = TextCNN(ModelConfig(name="cnn", vocab_size=1000, num_classes=2))
        >>> batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
        >>> model(batch.ids, batch.mask).shape
        torch.Size([2, 2])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_sizes(config)
        if not config.kernel_sizes or min(config.kernel_sizes) < 1:
            raise ValueError(f"kernel_sizes must be positive widths, got {config.kernel_sizes}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        # padding=k//2 gives at least T outputs for every width, so position t < length always exists.
        self.convs = nn.ModuleList(nn.Conv1d(config.embed_dim, config.hidden_dim, k, padding=k // 2) for k in config.kernel_sizes)
        self.pool = MaskedMaxPool()
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_dim * len(config.kernel_sizes), config.num_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.embedding(ids.masked_fill(~mask, 0)) * mask.unsqueeze(-1)  # (B, T, D), exact zeros on padding
        x = x.transpose(1, 2)  # (B, D, T): Conv1d wants channels first
        features = [torch.relu(conv(x))[:, :, :T] for conv in self.convs]  # K x (B, F, T)
        h = torch.cat(features, 1).transpose(1, 2)  # (B, T, K*F)
        pooled = self.pool(h, mask)  # (B, K*F)
        return self.head(self.dropout(pooled))  # (B, C)


class BiGRU(nn.Module):
    """Bidirectional GRU over word embeddings, mean of its outputs over the real tokens, a linear layer.

    The padded batch is packed (``pack_padded_sequence``) so the GRU runs over each
    text's real tokens only: the backward direction starts at the last word, not
    at the padding, and padding never changes a prediction. Expects ``mask`` to be
    True on a prefix of each row, as :func:`textpipe.core.collate.pad_collate` makes it.

    Example:
        >>> model = BiGRU(ModelConfig(name="gru", vocab_size=1000, num_classes=2))
        >>> batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
        >>> model(batch.ids, batch.mask).shape
        torch.Size([2, 2])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_sizes(config)
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.gru = nn.GRU(config.embed_dim, config.hidden_dim, num_layers=config.num_layers, batch_first=True, bidirectional=True,
                          dropout=config.dropout if config.num_layers > 1 else 0.0)  # nn.GRU applies dropout between layers only
        self.pool = MaskedMeanPool()
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * config.hidden_dim, config.num_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.embedding(ids.masked_fill(~mask, 0))  # (B, T, D)
        # pack_padded_sequence wants lengths on the CPU and rejects 0; an empty row pools to zeros below anyway.
        lengths = mask.sum(1).clamp(min=1).cpu()  # (B,)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, 2H)
        pooled = self.pool(h, mask)  # (B, 2H)
        return self.head(self.dropout(pooled))  # (B, C)


class TransformerClassifier(nn.Module):
    """Small Transformer encoder: word + learned position embeddings, self-attention layers, masked mean, a linear layer.

    Padding positions are hidden from attention (``src_key_padding_mask``) and
    left out of the mean, so padding never changes a prediction. Texts longer than
    ``max_len`` tokens are cut to their first ``max_len``.

    Example:
        >>> model = TransformerClassifier(ModelConfig(name="transformer", vocab_size=1000, num_classes=2))
        >>> batch = pad_collate([torch.tensor([5, 6, 7]), torch.tensor([8])])
        >>> model(batch.ids, batch.mask).shape
        torch.Size([2, 2])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_sizes(config)
        if config.embed_dim % config.num_heads != 0:
            raise ValueError(f"embed_dim ({config.embed_dim}) must be a multiple of num_heads ({config.num_heads})")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.position = nn.Embedding(config.max_len, config.embed_dim)
        layer = nn.TransformerEncoderLayer(
            config.embed_dim,
            config.num_heads,
            dim_feedforward=config.hidden_dim,
            dropout=0.1,  # PyTorch's default inside the layers; config.dropout is for the pooled vector
            batch_first=True,
            norm_first=True,  # pre-norm trains stably without a learning-rate warmup
        )
        # No nested tensors: they drop padded positions in eval (not with norm_first anyway, where asking only warns).
        self.encoder = nn.TransformerEncoder(
            layer, config.num_layers, norm=nn.LayerNorm(config.embed_dim), enable_nested_tensor=False
        )
        self.pool = MaskedMeanPool()
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = min(ids.shape[1], self.config.max_len)
        ids, mask = ids[:, :T], mask[:, :T]  # (B, T)
        positions = torch.arange(T, device=ids.device)  # (T,)
        x = self.embedding(ids.masked_fill(~mask, 0)) + self.position(positions)  # (B, T, D)
        # A row with no real token would attend to nothing (NaN); let it attend anywhere, its mean is zeros anyway.
        attend = mask | ~mask.any(1, keepdim=True)  # (B, T)
        h = self.encoder(x, src_key_padding_mask=~attend)  # (B, T, D)
        pooled = self.pool(h, mask)  # (B, D)
        return self.head(self.dropout(pooled))  # (B, C)


MODELS: dict[str, type[nn.Module]] = {"bag": BagOfNgrams, "cnn": TextCNN, "gru": BiGRU, "transformer": TransformerClassifier}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model named by ``config.name``."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[config.name](config)


# What a module's __init__ calls to fill its tensors: torch.nn.init's functions and Tensor's own fills.
INITIALIZERS = frozenset(n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")) | {"fill_", "zero_", "uniform_", "normal_"}


class _SkipInitializers(TorchFunctionMode):
    # On the meta device an initializer fills nothing, yet its first call imports sympy, slowly.
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in INITIALIZERS:
            return kwargs["tensor"] if kwargs and "tensor" in kwargs else args[0]  # nn.init passes it by name
        return func(*args, **(kwargs or {}))


def model_skeleton(config: ModelConfig) -> nn.Module:
    """The model of ``config`` on the meta device, initializers skipped: every tensor's shape and dtype, no memory
    (a bundle's weights are checked against it, then become its tensors: ``load_state_dict(assign=True)``).

    Example:
        >>> model_skeleton(ModelConfig(vocab_size=1000, num_classes=2)).embedding.weight.device
        device(type='meta')
    """
    with torch.device("meta"), _SkipInitializers():
        return build_model(config)


@contextmanager
def capture_pooled(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the pooled sentence vectors of every forward pass inside the block.

    Example:
        >>> with capture_pooled(model) as vectors:
        ...     model(batch.ids, batch.mask)
        >>> vectors[0].shape  # (B, D)
    """
    captured: list[torch.Tensor] = []
    handle = model.pool.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        handle.remove()
